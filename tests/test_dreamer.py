"""Dreamer agent: returns and normalisation by hand, critic, actor masks, imagination."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from agents.dreamer.actor_critic import (
    ActionDist,
    ActionSpec,
    ActorCritic,
    Critic,
    ReturnNorm,
    imagine,
    lambda_returns,
)
from agents.dreamer.agent import DreamerAgent
from agents.dreamer.config import DreamerAgentConfig, dreamer_config
from agents.dreamer.planner import PlannerPolicy, WhatIfPlanner
from agents.dreamer.policy import DreamerPolicy
from agents.policy import Policy
from agents.world_model import ObsLayout, WorldModel
from agents.world_model.rssm import Carry
from envs.gym.envs import AutoscaleEnv, ClusterOpsEnv, RemediateEnv
from envs.scenarios.loader import load_scenario
from envs.sim.actions import Scale, validate_action
from envs.sim.simulator import Simulator
from experiments import train as train_mod
from experiments.cli import CONFIG_DIR, ConfigError
from experiments.evaluate import build_policy, resolve_policy

# chain3 with a bad deploy of api (rollback becomes valid) and a one-minute telemetry gap
INCIDENT = {
    "horizon_s": 300,
    "faults": [
        {"kind": "bad_deploy", "service": "api", "at_s": 45, "error_rate": 0.3},
        {"kind": "telemetry", "mode": "gap", "at_s": 120, "duration_s": 60},
    ],
}
TINY_WM = {"deter": 32, "hidden": 16, "stoch": 4, "classes": 4, "gru_blocks": 2, "units": 16}


def tiny_agent(**overrides: object) -> DreamerAgentConfig:
    return DreamerAgentConfig(
        world_model=TINY_WM, net_arch=[16], batch=2, seq_len=8, horizon=5, **overrides
    )


# --------------------------------------------------------------------------- returns


def test_lambda_returns_match_a_hand_computation() -> None:
    g, lam = 0.9, 0.5
    r = [0.0, 1.0, -2.0, 3.0]  # r[t]: reward for arriving at state t (r[0] unused)
    v = [0.5, 1.5, -1.0, 4.0]
    c = [1.0, 1.0, 0.5, 1.0]
    # R_3 = v_3; R_t = r_{t+1} + g c_{t+1} ((1 - lam) v_{t+1} + lam R_{t+1})
    r3 = 4.0
    r2 = 3.0 + g * 1.0 * ((1 - lam) * 4.0 + lam * r3)
    r1 = -2.0 + g * 0.5 * ((1 - lam) * -1.0 + lam * r2)
    r0 = 1.0 + g * 1.0 * ((1 - lam) * 1.5 + lam * r1)
    t = lambda x: torch.tensor(x)[:, None].repeat(1, 2)  # [T+1, N=2]
    got = lambda_returns(t(r), t(v), t(c), g, lam)
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got[:, 0].numpy(), [r0, r1, r2], rtol=1e-6)
    # lam = 0: one-step TD targets; lam = 1: discounted sum bootstrapped at the end
    td = lambda_returns(t(r), t(v), t(c), g, 0.0)[:, 0].numpy()
    np.testing.assert_allclose(td, [1 + g * 1.5, -2 + g * 0.5 * -1.0, 3 + g * 4.0], rtol=1e-6)
    mc = lambda_returns(t(r), t(v), t(c), g, 1.0)[:, 0].numpy()
    np.testing.assert_allclose(mc[2], 3 + g * 4.0, rtol=1e-6)
    np.testing.assert_allclose(mc[0], 1 + g * (-2 + g * 0.5 * (3 + g * 4.0)), rtol=1e-6)


def test_return_norm_tracks_the_percentiles_with_a_floor() -> None:
    norm = ReturnNorm(rate=0.01, low=5.0, high=95.0, limit=1.0)
    x = torch.arange(101, dtype=torch.float32)  # 5th percentile 5, 95th 95
    scale = norm.update(x)
    assert float(norm.low) == pytest.approx(0.05) and float(norm.high) == pytest.approx(0.95)
    assert float(scale) == 1.0  # 0.9 < limit
    for _ in range(2000):
        scale = norm.update(x)
    assert float(norm.low) == pytest.approx(5.0, rel=1e-3)
    assert float(scale) == pytest.approx(90.0, rel=1e-3)
    small = ReturnNorm()
    for _ in range(2000):
        small.update(torch.linspace(0, 0.5, 50))
    assert float(small.scale()) == 1.0  # a spread below the limit is not magnified
    state = norm.state_dict()
    assert set(state) == {"low", "high"}


def test_two_hot_critic_starts_at_zero_and_learns_a_constant() -> None:
    torch.manual_seed(0)
    critic = Critic(feat_size=8, hidden=[32], bins=255)
    feat = torch.randn(64, 8)
    assert torch.equal(critic.value(feat), torch.zeros(64))  # zero-initialised output
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    for _ in range(400):
        loss = critic.loss(feat, torch.full((64,), -37.5)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    np.testing.assert_allclose(critic.value(feat).detach().numpy(), -37.5, rtol=0.05)


# --------------------------------------------------------------------------- actor


def test_action_specs_of_the_three_envs() -> None:
    auto = ActionSpec.from_env(AutoscaleEnv(scenario="chain3"))
    assert auto.nvec == (5, 5, 5) and not auto.masked and not auto.discrete
    assert auto.matrix.shape == (15, 12)
    rem = ActionSpec.from_env(RemediateEnv(scenario="chain3"))
    assert rem.dims == 1 and rem.masked and rem.discrete and rem.to_env(np.array([3])) == 3
    ops = ActionSpec.from_env(ClusterOpsEnv(scenario="chain3"))
    assert ops.nvec[:3] == (5, 5, 5) and ops.nvec[3] == rem.nvec[0] and ops.masked
    # features = onehot @ M: +1 replica of service 1 is symlog(1) in its scale slot
    f = auto.features(torch.tensor([[2, 3, 2]]))
    expected = np.zeros(12, np.float32)
    expected[3] = math.log(2.0)
    np.testing.assert_allclose(f[0].numpy(), expected, rtol=1e-6)


def test_action_dist_shapes_unimix_and_masks() -> None:
    torch.manual_seed(0)
    nvec = (3, 4)
    logits = torch.randn(10, 7) * 5
    mask = torch.ones(10, 7, dtype=torch.bool)
    mask[:, 1] = False  # dim 0, choice 1
    mask[:, 4:6] = False  # dim 1, choices 1 and 2
    dist = ActionDist(logits, nvec, unimix=0.01, mask=mask)
    a = dist.sample()
    assert a.shape == (10, 2) and a.dtype == torch.long
    for _ in range(20):
        s = dist.sample()
        assert not (s[:, 0] == 1).any() and not ((s[:, 1] == 1) | (s[:, 1] == 2)).any()
    p0, p1 = dist.probs
    assert torch.all(p0[:, 1] == 0) and torch.all(p1[:, 1:3] == 0)
    assert torch.all(p0[:, [0, 2]] >= 0.01 / 2 - 1e-7)  # unimix over the valid choices
    torch.testing.assert_close(p1.sum(-1), torch.ones(10))
    assert dist.log_prob(a).shape == (10,) and torch.isfinite(dist.log_prob(a)).all()
    assert dist.mode().shape == (10, 2)
    ent = dist.entropy()
    assert (
        ent.shape == (10,) and torch.all(ent >= 0) and torch.all(ent <= math.log(2) + math.log(2))
    )
    # gradients stay finite through masked choices
    lg = logits.clone().requires_grad_(True)
    d = ActionDist(lg, nvec, 0.01, mask)
    (d.log_prob(a).sum() + d.entropy().sum()).backward()
    assert lg.grad is not None and torch.isfinite(lg.grad).all()
    assert torch.all(lg.grad[:, 1] == 0)
    # no mask: every choice has at least unimix / n
    free = ActionDist(logits, nvec, 0.01)
    assert torch.all(free.probs[1] >= 0.01 / 4 - 1e-7)


# --------------------------------------------------------------------------- imagination


def _model_and_learner(
    env_cls: type = AutoscaleEnv, **overrides: object
) -> tuple[WorldModel, ActorCritic, ActionSpec]:
    env = env_cls(scenario="chain3")
    spec = ActionSpec.from_env(env)
    cfg = tiny_agent(**overrides)
    wcfg = cfg.world_model_config()
    wm = WorldModel(ObsLayout.from_encoder(env.encoder), spec.feature_size, wcfg)
    return wm, ActorCritic(wcfg.feat_size, spec, cfg), spec


def _start(wm: WorldModel, n: int) -> Carry:
    c = wm.cfg
    idx = torch.randint(0, c.classes, (n, c.stoch))
    return Carry(torch.randn(n, c.deter), torch.nn.functional.one_hot(idx, c.classes).float())


def test_imagination_shapes_and_weights() -> None:
    torch.manual_seed(0)
    wm, ac, spec = _model_and_learner()
    traj = imagine(wm, ac.actor, _start(wm, 6), horizon=5, discount=0.9)
    f = wm.cfg.feat_size
    assert traj.feat.shape == (6, 6, f) and traj.action.shape == (5, 6, spec.dims)
    assert traj.reward.shape == traj.cont.shape == traj.weight.shape == (6, 6)
    assert torch.all(traj.reward[0] == 0) and torch.all(traj.cont[0] == 1)
    assert torch.all(traj.weight[0] == 1)
    torch.testing.assert_close(traj.weight[1], 0.9 * traj.cont[1])
    assert not traj.feat.requires_grad


def test_update_trains_actor_and_critic_only() -> None:
    torch.manual_seed(0)
    wm, ac, _ = _model_and_learner(RemediateEnv)
    before = {k: v.clone() for k, v in wm.state_dict().items()}
    actor0 = [p.clone() for p in ac.actor.parameters()]
    slow0 = [p.clone() for p in ac.slow_critic.parameters()]
    mask = torch.ones(8, ac.spec.size, dtype=torch.bool)
    mask[:, 2] = False
    metrics = ac.update(wm, _start(wm, 8), mask=mask)
    assert all(math.isfinite(v) for v in metrics.values())
    assert {"actor/loss", "critic/loss", "critic/return_scale", "imag/reward"} <= set(metrics)
    assert all(torch.equal(before[k], v) for k, v in wm.state_dict().items())
    assert all(p.grad is None for p in wm.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(actor0, ac.actor.parameters(), strict=True))
    # the slow critic moved 2% of the way toward the critic
    for s0, s1, c in zip(slow0, ac.slow_critic.parameters(), ac.critic.parameters(), strict=True):
        torch.testing.assert_close(s1, s0 + 0.02 * (c - s0))
    assert ac.updates == 1


# --------------------------------------------------------------------------- config


@pytest.fixture(scope="module")
def composer() -> Iterator[Callable[..., DictConfig]]:
    train_mod.register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield lambda *o: compose(config_name="train", overrides=list(o))
    GlobalHydra.instance().clear()


def test_dreamer_yaml_matches_the_schema_and_overlays_compose(composer: Any) -> None:
    agent = OmegaConf.to_container(composer("agent=dreamer").agent)
    assert agent == DreamerAgentConfig().model_dump()
    for env in ("autoscale", "remediate", "ops", "hpa_tune"):
        conf = dreamer_config(composer("agent=dreamer", f"env={env}", "debug=default"))
        assert conf.env.name == env and conf.agent.seq_len == 16 and conf.total_timesteps == 256
    conf = dreamer_config(composer("agent=dreamer", "experiment=demo", "agent=dreamer"))
    assert conf.scenario == "chain3" and conf.agent.algo == "dreamer"
    wm = dreamer_config(composer("agent=dreamer", "++agent.world_model.deter=128"))
    assert wm.agent.world_model_config().deter == 128


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (("+agent.horizn=3",), r"agent.horizn: unknown key"),
        (("agent.size=huge",), r"agent.size"),
        (("++agent.world_model.detr=3",), r"world_model.detr"),
        (("++agent.world_model.lr=3",), r"world_model.lr: set agent.model_lr"),
        (("env.obs=dict",), r"env.obs=box"),
        (("agent.seq_len=64",), r"agent.seq_len=64 is longer than the shortest episode"),
        (("scenario=nope",), r"scenario=nope"),
        (("resume=/no/such/run",), r"resume=/no/such/run"),
        (("env=hpa_tune", "agent.prefill_policy=tuned_hpa"), r"agent.prefill_policy=tuned_hpa"),
        (("agent.noop_prob=0.9",), r"agent.noop_prob=0.9: env=autoscale"),
        (("env=ops", "agent.noop_prob=1.0"), r"noop_prob=1.0: must be in \(0, 1\)"),
    ],
)
def test_bad_dreamer_configs_fail_at_start_naming_the_field(
    composer: Any, tmp_path: Path, overrides: tuple[str, ...], match: str
) -> None:
    out = tmp_path / "run"
    cfg = composer("agent=dreamer", "debug=default", f"out={out}", *overrides)
    with pytest.raises(ConfigError, match=match):
        train_mod.train(cfg)
    assert not out.exists()


# --------------------------------------------------------------------------- runs

FAST = ("agent=dreamer", "debug=default", "logger=none", "eval.episodes=1")


def _weights(run: Path) -> dict[str, Any]:
    return torch.load(run / "agent.pt", weights_only=True)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return bool(a == b)


def test_same_seed_same_losses() -> None:
    env = AutoscaleEnv(scenario="chain3")
    spec = ActionSpec.from_env(env)
    layout = ObsLayout.from_encoder(env.encoder)
    rng = np.random.default_rng(0)
    batches = [
        {
            "obs": rng.normal(size=(2, 8, env.encoder.size)).astype(np.float32) * 0.3,
            "action": rng.normal(size=(2, 8, spec.feature_size)).astype(np.float32),
            "reward": -rng.random((2, 8)).astype(np.float32),
            "cont": np.ones((2, 8), np.float32),
            "is_first": np.eye(1, 8, dtype=np.float32).repeat(2, 0),
            "violation": (rng.random((2, 8)) < 0.3).astype(np.float32),
        }
        for _ in range(3)
    ]
    runs = []
    for _ in range(2):
        agent = DreamerAgent(layout, spec, tiny_agent(imag_starts=8), seed=3)
        runs.append([agent.update(b) for b in batches])
    assert runs[0] == runs[1]
    assert runs[0][0]["wm/loss"] != runs[0][2]["wm/loss"]
    other = DreamerAgent(layout, spec, tiny_agent(imag_starts=8), seed=4).update(batches[0])
    assert other != runs[0][0]


def test_debug_run_end_to_end_writes_the_run_dir(composer: Any, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = train_mod.train(composer(*FAST[:2], "agent.pretrain=4", f"out={out}"))
    assert metrics["pretrain_updates"] == 4
    for f in ("config.yaml", "agent.pt", "best/agent.pt", "metrics.json", "eval/curve.csv"):
        assert (out / f).is_file(), f
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_128", "step_256"]
    assert metrics["timesteps"] == 256 and metrics["updates"] > 100
    assert metrics["updates_per_s"] > 0 and metrics["env_steps_per_s"] > 0
    assert json.loads((out / "metrics.json").read_text())["agent"] == "dreamer"
    with np.load(out / "eval" / "evaluations.npz") as ev:
        assert list(ev["timesteps"]) == [128, 256] and ev["results"].shape == (2, 2)
    rows = (out / "logs" / "progress.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"wm/loss", "actor/entropy", "critic/loss", "time/updates_per_s"} <= set(header)
    assert {"env/ep_reward", "eval/mean_reward", "time/env_steps_per_s"} <= set(header)
    saved = dreamer_config(yaml.safe_load((out / "config.yaml").read_text()))
    assert saved.agent.seq_len == 16 and saved.debug == "default"


def test_resume_equals_an_uninterrupted_run(composer: Any, tmp_path: Path) -> None:
    common = (*FAST, "total_timesteps=100", "eval.freq=0")
    train_mod.train(composer(*common, "checkpoint_freq=70", f"out={tmp_path / 'a'}"))
    train_mod.train(composer(*common, "checkpoint_freq=0", f"out={tmp_path / 'b'}"))
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))  # same seed, same run
    ckpt = tmp_path / "a" / "checkpoints" / "step_70"
    assert (ckpt / "state.pt").is_file()  # mid-episode (episodes are 20 steps)
    resumed = train_mod.train(
        composer(*common, "checkpoint_freq=0", f"resume={ckpt}", f"out={tmp_path / 'c'}")
    )
    assert resumed["resumed_from"] == str(ckpt) and resumed["timesteps"] == 100
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "c"))
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert (
        resumed["updates"] == a["updates"] and resumed["eval_mean_reward"] == a["eval_mean_reward"]
    )


def test_max_minutes_stops_early_and_still_saves(composer: Any, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = train_mod.train(composer(*FAST, "agent.max_minutes=0.0001", f"out={out}"))
    assert metrics["timesteps"] < 256 and (out / "agent.pt").is_file()
    assert (out / "eval" / "curve.csv").read_text().count("\n") == 2  # header + final


def _runs_an_incident_validly_and_repeatably(run_dir: Path) -> None:
    """A DreamerPolicy of ``run_dir`` through a chain3 incident: valid actions, and the same
    ones again from a fresh policy (the mode is deterministic)."""
    scenario = load_scenario("chain3", INCIDENT)
    result = Simulator(scenario, seed=5).run(DreamerPolicy(run_dir))
    assert len(result.frames) > 10
    for _, action in result.actions:
        validate_action(action, scenario)
    again = Simulator(scenario, seed=5).run(DreamerPolicy(run_dir))
    assert again.actions == result.actions


@pytest.mark.parametrize("env", ["autoscale", "remediate"])
def test_dreamer_policy_acts_on_a_simulator_episode(
    composer: Any, tmp_path: Path, env: str
) -> None:
    out = tmp_path / env
    train_mod.train(
        composer(*FAST, f"env={env}", "total_timesteps=60", "eval.freq=0", f"out={out}")
    )
    policy = DreamerPolicy(out)
    assert isinstance(policy, Policy) and policy.name == "dreamer"
    _runs_an_incident_validly_and_repeatably(out)
    scenario = load_scenario("chain3", INCIDENT)
    sampled = [
        Simulator(scenario, seed=5).run(DreamerPolicy(out, deterministic=False, seed=1)).actions
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]  # a sampling policy draws from its stream's seeded state
    states = policy.reset(3)
    assert isinstance(states, list) and len(states) == 3
    spec = resolve_policy(str(out))
    assert spec.kind == "dreamer" and spec.label.startswith("dreamer-")
    assert isinstance(build_policy(spec, scenario), DreamerPolicy)


# --------------------------------------------------------------------------- planner


@pytest.mark.parametrize("env_cls", [AutoscaleEnv, RemediateEnv, ClusterOpsEnv])
def test_what_if_planner_compares_every_candidate(env_cls: type) -> None:
    torch.manual_seed(0)
    env = env_cls(scenario="chain3")
    env.reset(seed=0)
    wm, ac, _ = _model_and_learner(env_cls)
    planner = WhatIfPlanner(wm, env, critic=ac.critic, horizon=4, samples=5, seed=1)
    cands = planner.candidates()
    labels = [c.label for c in cands]
    assert labels[0] == "noop" and not cands[0].actions and len(set(labels)) == len(labels)
    if env_cls is not RemediateEnv:
        assert "api +1" in labels and "db -1" in labels
    if env_cls is not AutoscaleEnv:
        assert "restart api" in labels and "shed 25%" in labels
        assert "rollback api" not in labels  # masked: no previous version yet
        assert not any(lb.startswith("drain") for lb in labels)
    carry = wm.initial(1)
    plan = planner.plan(carry)
    s = len(env.services)
    assert len(plan.outcomes) == len(cands)
    for o in plan.outcomes:
        assert o.p99.shape == (s, 3) and o.error_rate.shape == (s,)
        assert np.all(np.diff(o.p99, axis=1) >= 0)  # quantiles ordered
        assert 0.0 <= o.p_violation <= 1.0 and o.cost >= 0.0
    assert plan.best == int(np.argmax(plan.scores))
    md = plan.to_markdown()
    assert all(f"| {label} |" in md for label in labels) and "**best**" in md
    assert plan.as_dict()["chosen"] == plan.chosen.candidate.label
    assert planner.plan(carry).scores.tolist() == plan.scores.tolist()  # seeded
    follow = WhatIfPlanner(wm, env, actor=ac.actor, follow="actor", horizon=3, samples=2)
    explicit = follow.candidate("scale api to 5", [Scale("api", 5)])
    assert explicit.features[3] == pytest.approx(math.log(1 + 3))  # from 2 replicas to 5
    assert len(follow.plan(carry, [explicit]).outcomes) == 1


def test_planner_policy_explains_each_decision(composer: Any, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_mod.train(composer(*FAST, "total_timesteps=60", "eval.freq=0", f"out={out}"))
    policy = PlannerPolicy(out, horizon=3, samples=4)
    assert isinstance(policy, Policy)
    scenario = load_scenario("chain3", {"horizon_s": 90})
    sim = Simulator(scenario, seed=2)
    frame, state = sim.reset(), policy.reset(1)
    while not sim.done:
        actions, state, info = policy.act(frame, state)
        plan = info["plan"]
        assert plan["chosen"] == plan["candidates"][plan["best"]]["label"]
        assert [repr(a) for a in actions] == plan["candidates"][plan["best"]]["actions"]
        assert info["explanation"].count("\n| ") == len(plan["candidates"]) + 1
        frame = sim.step(actions)[-1]


# --------------------------------------------------------------------------- hpa_tune


def test_hpa_tune_replay_features_are_the_imagined_ones() -> None:
    """What the Stream records for an HPATune step is ``onehot(choice) @ M`` (imagination)."""
    from agents.dreamer.envs import Stream
    from envs.gym.envs import HPATuneEnv

    env = HPATuneEnv(scenario="chain3", scenario_overrides=INCIDENT)
    spec = ActionSpec.from_env(env)
    stream = Stream(env, seed=3, limit=20)
    rng = np.random.default_rng(0)
    for _ in range(8):
        mask = stream.mask()[-env.n_remediations :]
        idx = np.concatenate([rng.integers(0, 5, 3), [rng.choice(np.flatnonzero(mask))]])
        features, _, _ = stream.step(idx)
        imagined = spec.features(torch.as_tensor(idx)[None])[0].numpy()
        np.testing.assert_allclose(features, imagined, atol=1e-6)
        np.testing.assert_allclose(stream.rows["action"][-1], imagined, atol=1e-6)


class _AlwaysTuned(DreamerPolicy):
    """A DreamerPolicy whose actor always picks 50 % everywhere and no remediation."""

    def step(self, obs: Any, state: Any) -> tuple[np.ndarray, Carry, np.ndarray]:
        idx, carry, mask = super().step(obs, state)
        return np.array([2] * (len(idx) - 1) + [0]), carry, mask


def test_hpa_tune_dreamer_policy_end_to_end(composer: Any, tmp_path: Path) -> None:
    """A tiny hpa_tune run trains, acts as a Policy, evaluates through ``opsworld evaluate``,
    and with the tuned choice everywhere reproduces the tuned HPA exactly."""
    from agents.baselines.tuned import load_settings, make_hpa
    from envs.scenarios.suites import load_suite
    from experiments import evaluate as ev

    out = tmp_path / "hpa_tune"
    metrics = train_mod.train(
        composer(*FAST, "env=hpa_tune", "total_timesteps=60", "eval.freq=0", f"out={out}")
    )
    assert metrics["env"] == "hpa_tune" and metrics["env_id"] == "opsworld/HPATune-v0"
    _runs_an_incident_validly_and_repeatably(out)

    entry = next(e for e in load_suite("train").on_topology("chain3") if "memory-leak" in e.id)
    sc = load_scenario(entry.scenario)
    tuned = Simulator(sc, seed=7).run(make_hpa(load_settings(), sc))
    mine = Simulator(sc, seed=7).run(_AlwaysTuned(out))
    assert len(tuned.actions) > 10 and mine.actions == tuned.actions
    assert mine.summary == tuned.summary

    ret = ev.evaluate(
        {
            "policies": [str(out), "tuned_hpa"],
            "suite": "train",
            "topology": "chain3",
            "limit": 1,
            "seeds": 1,
            "workers": 1,
            "timelines": 0,
            "out": str(tmp_path / "eval"),
        },
        log=None,
    )
    assert len(ret["results"]) == 2


def test_noop_prob_sets_the_initial_remediation_prior() -> None:
    from agents.dreamer.actor_critic import Actor, prior_logits

    env = ClusterOpsEnv(scenario="chain3")
    spec = ActionSpec.from_env(env)
    n = spec.nvec[-1]
    logits = prior_logits(spec, 0.97)
    probs = torch.softmax(logits[-n:], -1)
    assert float(probs[0]) == pytest.approx(0.97) and torch.all(logits[:-n] == 0)
    assert torch.equal(prior_logits(spec, None), torch.zeros(spec.size))
    torch.manual_seed(0)
    actor = Actor(8, spec, [16], unimix=0.0, noop_prob=0.97)
    p_noop = actor(torch.randn(256, 8)).probs[-1][:, 0]
    assert float(p_noop.mean()) > 0.9  # the bias dominates the random initial logits
    with pytest.raises(ValueError, match="no remediation dimension"):
        prior_logits(ActionSpec.from_env(AutoscaleEnv(scenario="chain3")), 0.5)
