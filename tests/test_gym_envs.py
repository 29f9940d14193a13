"""Gymnasium environments: contracts (check_env), determinism, vector envs, actions, reward."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import SubprocVecEnv

import envs.gym as og
from agents.rollout import rollout
from envs.core.actions import Restart, Rollback, Scale, SetHPATarget, ShedLoad
from envs.gym.codec import HPA_TARGETS
from envs.gym.encoder import SERVICE_FEATURES, ObsEncoder, symexp, symlog
from envs.scenarios.loader import load_scenario
from envs.sim.simulator import Simulator

IDS = sorted(og.ENV_IDS)
SHORT = {"scenario": "chain3", "scenario_overrides": {"horizon_s": 300}}


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("obs", ["box", "dict"])
def test_registered_envs_pass_both_checkers(env_id: str, obs: str) -> None:
    env = gym.make(env_id, obs=obs, **SHORT)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=False)


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_trajectory(env_id: str) -> None:
    def rollout(seed: int) -> tuple[np.ndarray, list[float]]:
        env = gym.make(env_id, **SHORT)
        env.action_space.seed(seed)
        obs, _ = env.reset(seed=seed)
        seen, rewards = [obs], []
        for _ in range(12):
            obs, r, *_ = env.step(env.action_space.sample())
            seen.append(obs)
            rewards.append(r)
        return np.stack(seen), rewards

    a, ra = rollout(3)
    b, rb = rollout(3)
    c, _ = rollout(4)
    np.testing.assert_array_equal(a, b)
    assert ra == rb
    assert not np.array_equal(a, c)


def test_episode_truncates_at_the_horizon_and_never_terminates() -> None:
    env = gym.make("opsworld/Autoscale-v0", **SHORT)
    env.reset(seed=0)
    keep = np.full(3, 2)
    steps = 0
    truncated = False
    while not truncated:
        _, _, terminated, truncated, _ = env.step(keep)
        assert not terminated
        steps += 1
        assert steps <= 300 // 15
    assert steps == 300 // 15


def test_registration_sets_max_episode_steps() -> None:
    env = gym.make("opsworld/Remediate-v0", **SHORT)
    assert env.spec is not None and env.spec.max_episode_steps == og.MAX_EPISODE_STEPS


@pytest.mark.parametrize("vector", ["sync", "async"])
def test_gymnasium_vector_envs(vector: str) -> None:
    cls = gym.vector.SyncVectorEnv if vector == "sync" else gym.vector.AsyncVectorEnv
    venv = cls([lambda: gym.make("opsworld/Autoscale-v0", **SHORT) for _ in range(2)])
    obs, _ = venv.reset(seed=[1, 2])
    assert obs.shape == (2, og.AutoscaleEnv(**SHORT).encoder.size)
    obs, rew, term, trunc, _ = venv.step(venv.action_space.sample())
    assert rew.shape == (2,) and not term.any() and not trunc.any()
    venv.close()


def _make_remediate():  # type: ignore[no-untyped-def]
    return og.RemediateEnv(**SHORT)


def test_sb3_subproc_vec_env_reads_masks() -> None:
    venv = SubprocVecEnv([_make_remediate, _make_remediate])
    venv.reset()
    masks = np.stack(venv.env_method("action_masks"))
    assert masks.shape == (2, og.RemediateEnv(**SHORT).n_remediations)
    venv.step(np.array([0, 0]))
    venv.close()


# ---------------------------------------------------------------- actions
def test_autoscale_deltas_are_clamped_scale_actions() -> None:
    env = og.AutoscaleEnv(**SHORT)
    env.reset(seed=0)
    sc = env.scenarios[0]
    desired = [s.replicas.initial for s in sc.topology.services]
    acts = env.decode(np.array([4, 2, 0]))
    assert acts[0] == Scale("frontend", min(desired[0] + 2, sc.topology.services[0].replicas.max))
    assert acts[1] == Scale("db", max(desired[2] - 2, sc.topology.services[2].replicas.min))
    assert len(acts) == 2  # api kept


def test_remediation_indices_and_masks() -> None:
    env = og.RemediateEnv(**SHORT)
    env.reset(seed=0)
    n_svc = 3
    assert env.action_space.n == 1 + 3 * n_svc + 3 + env.n_nodes
    mask = env.action_masks()
    assert mask[0]
    assert mask[1] and env.decode(1) == [Restart("frontend")]
    assert not mask[2] and env.decode(2) == []  # rollback without history is masked: no-op
    assert env.decode(3) == [
        Scale("frontend", env.scenarios[0].topology.services[0].replicas.initial + 1)
    ]
    shed = 1 + 3 * n_svc
    assert not mask[shed]  # shedding 0 is what is in force
    assert env.decode(shed + 2) == [ShedLoad(0.5)]
    # after a deploy, rollback becomes valid once a frame shows the new version
    env.sim.engine.cp.deploy(1, error_rate=0.5)  # type: ignore[union-attr]
    assert not env.action_masks()[1 + 3 * 1 + 1]  # the env decodes from telemetry only
    env.step(0)
    assert env.frame["deploy_version"][1] == 1
    assert env.action_masks()[1 + 3 * 1 + 1]
    assert env.decode(1 + 3 * 1 + 1) == [Rollback("api")]


def test_clusterops_masks_concatenate_the_dimensions() -> None:
    env = og.ClusterOpsEnv(**SHORT)
    env.reset(seed=0)
    mask = env.action_masks()
    assert mask.shape == (5 * 3 + env.n_remediations,)
    assert mask[: 5 * 3].all()


# ---------------------------------------------------------------- reward
def test_reward_is_minus_weighted_cost_when_slos_hold() -> None:
    env = og.AutoscaleEnv(**SHORT)
    env.reset(seed=0)
    _, r, _, _, info = env.step(np.full(3, 2))
    parts = info["reward_components"]
    assert parts["slo_violation"] == 0.0 and parts["disruption"] == 0.0
    assert parts["cost"] == pytest.approx(1.0)  # the initial cluster, unchanged
    assert r == pytest.approx(-0.2 * parts["cost"])


def test_reward_counts_slo_violation_fraction() -> None:
    env = og.AutoscaleEnv(
        scenario="chain3",
        scenario_overrides={
            "horizon_s": 300,
            "faults": [
                {"kind": "misconfiguration", "service": "api", "at_s": 0, "mode": "scale_to_zero"}
            ],
        },
    )
    env.reset(seed=0)
    for _ in range(3):
        _, r, _, _, info = env.step(np.full(3, 2))
    assert info["reward_components"]["slo_violation"] == 1.0  # every second of the step
    assert r < -1.0


# ---------------------------------------------------------------- encoder
def test_encoder_masks_missing_values_and_never_writes_nan() -> None:
    sc = load_scenario("chain3", {"horizon_s": 60})
    sim = Simulator(sc)
    first = sim.reset()
    enc = ObsEncoder(tuple(sc.service_names))
    d = enc.encode_dict(first)
    rps = SERVICE_FEATURES.index("rps")
    assert (d["mask"][:, rps] == 0).all() and (d["service_values"][:, rps] == 0).all()
    ready = SERVICE_FEATURES.index("replicas_ready")
    assert (d["mask"][:, ready] == 1).all()
    np.testing.assert_allclose(
        d["service_values"][:, ready], symlog(first["replicas_ready"]), rtol=1e-6
    )
    flat = enc.encode(sim.step([])[-1])
    assert np.isfinite(flat).all() and flat.dtype == np.float32 and flat.shape == (enc.size,)


def test_encoder_spec_round_trip_and_version_check() -> None:
    enc = ObsEncoder(("a", "b"))
    assert ObsEncoder.from_spec(enc.spec()) == enc
    with pytest.raises(ValueError, match="version"):
        ObsEncoder.from_spec({**enc.spec(), "version": 99})
    with pytest.raises(ValueError, match="unknown telemetry fields"):
        ObsEncoder(("a",), service_features=("nope",))


def test_symlog_round_trip() -> None:
    x = np.array([-1e6, -3.5, 0.0, 0.2, 1e9])
    np.testing.assert_allclose(symexp(symlog(x)), x, rtol=1e-12)


def test_env_rejects_bad_arguments_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="fidelity"):
        og.AutoscaleEnv(scenario="chain3", fidelity="warp")
    with pytest.raises(ValueError, match="obs"):
        og.AutoscaleEnv(scenario="chain3", obs="pixels")
    with pytest.raises(ValueError, match="one topology"):
        og.AutoscaleEnv(scenario=["chain3", "boutique"])


def test_docs_envs_page_matches_the_docstrings() -> None:
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "envs.md").read_text()
    for cls in (og.AutoscaleEnv, og.RemediateEnv, og.ClusterOpsEnv, og.HPATuneEnv):
        doc = "\n".join(line.strip() for line in (cls.__doc__ or "").splitlines())
        text = "\n".join(line.strip() for line in page.splitlines())
        assert doc.strip() in text, f"docs/envs.md is out of date for {cls.__name__}"


def test_action_feature_matrix_matches_the_encoded_actions() -> None:
    """``onehot(a) @ M`` equals the features of the actions ``a`` decodes to (unclamped)."""
    auto = og.envs.AutoscaleEnv(scenario="boutique")
    auto.reset(seed=3)
    m = auto.action_feature_matrix()
    s = len(auto.services)
    assert m.shape == (5 * s, 3 * s + 3)
    up = np.full(s, 3)  # +1 everywhere: no service starts at its max
    onehot = np.concatenate([np.eye(5)[k] for k in up])
    desired = auto.sim.engine.cp.desired.copy()
    feats = auto.action_encoder.encode(auto.decode(up), desired)
    np.testing.assert_allclose(onehot @ m, feats, atol=1e-6)
    _, _, _, _, info = auto.step(up)
    np.testing.assert_array_equal(info["action_features"], feats)

    rem = og.envs.RemediateEnv(scenario="boutique")
    rem.reset(seed=3)
    m = rem.action_feature_matrix()
    mask = rem.action_masks()
    for k in range(rem.action_space.n):
        if not mask[k]:
            continue
        feats = rem.action_encoder.encode(rem.decode(k), rem.sim.engine.cp.desired)
        np.testing.assert_allclose(np.eye(rem.action_space.n)[k] @ m, feats, atol=1e-6)

    ops = og.envs.ClusterOpsEnv(scenario="boutique")
    assert ops.action_feature_matrix().shape == (5 * s + rem.action_space.n, 3 * s + 3)


def test_step_actions_takes_simulator_actions() -> None:
    env = og.envs.RemediateEnv(scenario="chain3")
    env.reset(seed=0)
    _, _, _, _, info = env.step_actions([Scale("api", 4), Restart("db"), ShedLoad(0.25)])
    f = info["action_features"].reshape(-1)
    s = len(env.services)
    per = f[: 3 * s].reshape(s, 3)
    api, db = env.services.index("api"), env.services.index("db")
    assert per[db, 1] == 1.0 and per[api, 1] == 0.0
    assert f[-3:].tolist() == [1.0, 0.25, 0.0]
    assert env.frame.t == env.sim.now


# ---------------------------------------------------------------- HPATune
def _train_entry(name: str):  # type: ignore[no-untyped-def]
    from envs.scenarios.suites import load_suite

    entry = next(e for e in load_suite("train").on_topology("chain3") if e.id == name)
    return load_scenario(entry.scenario)


def test_hpa_tune_at_the_tuned_target_without_remediation_is_the_tuned_hpa() -> None:
    """[2]*S + [0] (50 % everywhere, no-op) reproduces policy=tuned_hpa frame for frame.

    The control plane's HPA (enabled by the env) writes the replica counts that the
    tuned HPA policy issues as Scale actions, at the same times.
    """
    from agents.baselines.tuned import load_settings, make_hpa
    from envs.scenarios.scoring import score_episode

    settings = load_settings()
    assert HPA_TARGETS[2] == settings.target_cpu_utilization == 50
    sc = _train_entry("chain3-memory-leak-api")  # the HPA scales a lot here
    env = og.HPATuneEnv(scenario=sc)
    _, info = env.reset(seed=5)
    frames, actions = [env.frame], []
    action = np.array([2] * len(env.services) + [0])
    truncated = False
    while not truncated:
        t = env.sim.now
        _, _, _, truncated, step_info = env.step(action)
        frames.append(env.frame)
        actions += [(t, a) for a in step_info["actions"]]
        assert step_info["hpa_targets"] == [50] * len(env.services)
    # the agent set each target once (the first step), and the HPA did the scaling
    assert actions == [(0.0, repr(SetHPATarget(s, 50))) for s in env.services]
    ref_sim = Simulator(sc, fidelity="fluid", seed=info["sim_seed"])
    ref = rollout(ref_sim, make_hpa(settings, sc))
    assert len(ref.frames) == len(frames) and len(ref.actions) > 10
    for mine, theirs in zip(frames, ref.frames, strict=True):
        np.testing.assert_array_equal(mine.values, theirs.values)
        np.testing.assert_array_equal(mine.mask, theirs.mask)
    hpa = env.sim.engine.cp.hpa
    assert hpa is not None and hpa.writes == ref.actions
    np.testing.assert_array_equal(env.sim.engine.violation_s, ref_sim.engine.violation_s)
    assert env.sim.engine.cp.allocated_cost() == ref_sim.engine.cp.allocated_cost()
    assert score_episode(ref).slo_violation_min > 0


def test_hpa_tune_targets_remediation_and_choice_features() -> None:
    env = og.HPATuneEnv(scenario="chain3", scenario_overrides={"horizon_s": 600})
    env.reset(seed=1)
    s = len(env.services)
    assert env.action_space.nvec.tolist() == [5] * s + [env.n_remediations]
    m = env.action_feature_matrix()
    assert m.shape == (5 * s + env.n_remediations, 3 * s + 3)
    assert [m[k, 0] for k in range(5)] == [1.0, 0.5, 0.0, -0.5, -1.0]  # (50 - target) / 20
    assert env.action_masks().shape == (5 * s + env.n_remediations,)
    # targets become SetHPATarget (all at first), then the remediation
    up_api = 1 + 3 * env.services.index("api") + 2
    acts = env.decode(np.array([0, 0, 0, up_api]))
    assert acts[:s] == [SetHPATarget(name, 30) for name in env.services]
    assert acts[s:] == [Scale("api", env.belief.desired[1] + 1)]
    # only changed targets are set again
    env.step(np.array([0, 0, 0, 0]))
    assert env.decode(np.array([0, 1, 0, 0])) == [SetHPATarget(env.services[1], 40)]
    assert env.sim.engine.cp.hpa is not None
    rng = np.random.default_rng(0)
    for _ in range(10):
        action = np.concatenate([rng.integers(0, 5, s), [rng.integers(env.n_remediations)]])
        onehot = np.concatenate(
            [np.eye(n)[k] for n, k in zip(env.action_space.nvec, action, strict=True)]
        )
        _, _, _, _, info = env.step(action)
        np.testing.assert_allclose(info["action_features"], onehot @ m, atol=1e-6)
        assert info["hpa_targets"] == [HPA_TARGETS[k] for k in action[:s]]
    # the targets in force are the control plane's HPA's (set after the actuation delay)
    assert env.sim.engine.cp.hpa.targets == dict(  # type: ignore[union-attr]
        zip(env.services, info["hpa_targets"], strict=True)
    )


def test_hpa_tune_lower_targets_scale_out_harder() -> None:
    def replicas(k: int) -> int:
        env = og.HPATuneEnv(scenario=_train_entry("chain3-memory-leak-api"))
        env.reset(seed=2)
        for _ in range(60):
            env.step(np.array([k] * len(env.services) + [0]))
        return sum(env.sim.engine.cp.desired)

    assert replicas(0) > replicas(4)


@pytest.mark.parametrize(
    ("env_id", "bad", "valid"),
    [
        ("opsworld/Autoscale-v0", np.array([9, 0, 0]), "entry i in [0, nvec[i] - 1]"),
        ("opsworld/Autoscale-v0", np.array([1, 1]), "shape (3,)"),
        ("opsworld/Remediate-v0", 999, "an integer in [0, "),
        ("opsworld/HPATune-v0", np.zeros(2, dtype=np.int64), "shape (4,)"),
    ],
)
def test_step_rejects_an_action_outside_the_space_with_shape_and_range(
    env_id: str, bad: object, valid: str
) -> None:
    env = gym.make(env_id, scenario="chain3", disable_env_checker=True)
    env.reset(seed=0)
    with pytest.raises(ValueError) as err:
        env.unwrapped.step(bad)
    text = str(err.value)
    assert f"action {bad!r}" in text and f"(shape {np.shape(bad)})" in text
    assert valid in text


def test_render_modes_ansi_table_and_rgb_array_timeline() -> None:
    env = gym.make("envs.gym:opsworld/Autoscale-v0", scenario="chain3", render_mode="ansi")
    env.reset(seed=0)
    env.step(np.array([2, 2, 2]))
    table = env.render()
    assert isinstance(table, str)
    lines = table.splitlines()
    assert lines[0] == "t=15s" and lines[1].split()[:2] == ["service", "ready/desired"]
    assert [ln.split()[0] for ln in lines[3:]] == ["frontend", "api", "db"]
    env = gym.make("opsworld/Remediate-v0", scenario="chain3", render_mode="rgb_array")
    env.reset(seed=0)
    env.step(0)
    image = env.render()
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8
    assert image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) > 100
    assert 0 < image.mean() < 255  # a drawn figure, neither blank nor black
    with pytest.raises(ValueError, match="render_mode='human'"):
        og.AutoscaleEnv(scenario="chain3", render_mode="human")
    assert og.AutoscaleEnv(scenario="chain3").render() is None
