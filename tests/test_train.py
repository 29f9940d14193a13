"""``opsworld train``: every valid agent/env pair, outputs, determinism, SB3Policy, CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from agents.rollout import rollout
from agents.sb3.config import (
    AGENT_SCHEMAS,
    EnvConfig,
    EnvName,
    LoggerConfig,
    LoggerKind,
    PPOConfig,
    TrainConfig,
    WandbLoggerConfig,
    check_config,
)
from agents.sb3.envs import ENV_IDS, check_scenario, env_seeds, make_env
from agents.sb3.policy import SB3Policy, load_run_config
from envs.core.actions import DrainNode
from envs.core.policy import Policy
from envs.gym.codec import HPA_TARGETS, ControlBelief
from envs.gym.envs import ClusterEnv
from envs.scenarios.loader import load_scenario
from envs.scenarios.suites import load_suite
from envs.scenarios.validate import validate_action
from envs.sim.simulator import Simulator
from experiments import train as train_mod
from experiments.cli import CONFIG_DIR, ConfigError

OPSWORLD = Path(sys.executable).with_name("opsworld")
REPO = Path(__file__).resolve().parents[1]
RUN_FILES = ("model.zip", "vecnormalize.pkl", "config.yaml", "metrics.json")
VALID = [
    ("ppo", "autoscale"),
    ("ppo", "remediate"),
    ("ppo", "ops"),
    ("maskable_ppo", "remediate"),
    ("maskable_ppo", "ops"),
    ("maskable_ppo", "hpa_tune"),
    ("dqn", "remediate"),
    ("a2c", "autoscale"),
]
# chain3 with a bad deploy of api (rollback becomes valid) and a one-minute telemetry gap
INCIDENT = {
    "horizon_s": 300,
    "faults": [
        {"kind": "bad_deploy", "service": "api", "at_s": 45, "error_rate": 0.3},
        {"kind": "telemetry", "mode": "gap", "at_s": 120, "duration_s": 60},
    ],
}

Composer = Callable[..., DictConfig]


@pytest.fixture(scope="module")
def composer() -> Iterator[Composer]:
    """``compose(overrides)`` of configs/train.yaml, as Hydra's own tests do."""
    train_mod.register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):

        def _compose(*overrides: str) -> DictConfig:
            return compose(config_name="train", overrides=list(overrides))

        yield _compose
    GlobalHydra.instance().clear()


def _metrics(run: Path) -> dict[str, Any]:
    return json.loads((run / "metrics.json").read_text())


# --------------------------------------------------------------------------- configs


def test_every_group_option_and_overlay_composes(composer: Composer) -> None:
    for agent, env in VALID:
        conf = train_mod.to_config(composer(f"agent={agent}", f"env={env}"))
        check_config(conf)
        assert conf.agent.algo == agent and conf.env.name == env
    for logger in ("none", "csv", "tensorboard", "wandb"):
        conf = train_mod.to_config(composer(f"logger={logger}"))
        check_config(conf)
        assert conf.logger.kind == logger
    for experiment in sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml")):
        for debug in ((), ("debug=default",)):
            conf = train_mod.to_config(composer(f"experiment={experiment}", *debug))
            assert conf.experiment == experiment
            check_config(conf)
            check_scenario(conf)
    debug = train_mod.to_config(composer("debug=default", "agent=dqn", "env=remediate"))
    assert debug.debug == "default" and debug.scenario == "chain3"
    assert debug.agent.learning_starts < debug.total_timesteps  # type: ignore[attr-defined]
    # a command-line override beats the debug overlay's per-agent sizes
    ppo = train_mod.to_config(composer("debug=default", "agent.n_steps=32"))
    assert ppo.agent.n_steps == 32 and ppo.agent.n_epochs == 2  # type: ignore[attr-defined]


def test_yaml_defaults_match_the_schemas(composer: Composer) -> None:
    """configs/ and the dataclass defaults agree (no silent drift)."""
    for algo, schema in AGENT_SCHEMAS.items():
        yaml_agent = OmegaConf.to_container(composer(f"agent={algo}").agent)
        assert yaml_agent == OmegaConf.to_container(OmegaConf.structured(schema())), algo
    for name in EnvName:
        yaml_env = OmegaConf.to_container(composer(f"env={name}").env)
        assert yaml_env == OmegaConf.to_container(OmegaConf.structured(EnvConfig(name=name)))
    wandb = OmegaConf.to_container(composer("logger=wandb").logger)
    assert wandb == OmegaConf.to_container(OmegaConf.structured(WandbLoggerConfig()))
    root = OmegaConf.to_container(composer())
    default = OmegaConf.to_container(
        OmegaConf.structured(
            TrainConfig(
                agent=PPOConfig(),
                env=EnvConfig(name=EnvName.autoscale),
                logger=LoggerConfig(kind=LoggerKind.csv),
            )
        )
    )
    assert isinstance(root, dict) and isinstance(default, dict)
    assert str(root.pop("out")).startswith("outputs/train/") and default.pop("out")
    for key in ("seeds", "backend", "workers"):  # a multi-seed request, not a run's keys
        assert root.pop(key) == getattr(train_mod.TrainSchema(), key)
    assert root == default


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (("agent=dqn", "env=autoscale"), r"agent=dqn needs a Discrete action space.*env=remediate"),
        (("agent=dqn", "env=ops"), r"agent=dqn .*env=ops is MultiDiscrete"),
        (("agent=maskable_ppo", "env=autoscale"), r"agent=maskable_ppo needs action masks"),
        (
            ("env=ops", "env.obs=dict", "agent.policy=MlpPolicy"),
            r"env.obs=dict .* need agent.policy=MultiInputPolicy",
        ),
        (("agent.policy=MultiInputPolicy",), r"agent.policy=MultiInputPolicy needs .*env.obs=dict"),
        (("agent.batch_size=1000",), r"agent.batch_size=1000 must be in"),
        (("n_envs=0",), r"n_envs=0: must be >= 1"),
        (("agent.gamma=1.5",), r"agent.gamma=1.5: must be in \(0, 1\]"),
        (("agent.learning_rate=-1",), r"agent.learning_rate=-1.0: must be > 0"),
        (("agent=dqn", "env=remediate", "agent.tau=0"), r"agent.tau=0.0: must be in \(0, 1\]"),
        (("agent.net_arch=[64,0]",), r"agent.net_arch=\[64, 0\]: every item must be >= 1"),
        (("eval.episodes=0",), r"eval.episodes=0: must be >= 1"),
        (("seed=-1",), r"seed=-1: must be >= 0"),
        (("scenario=nope",), r"scenario=nope"),
        (("resume=/no/such/checkpoint.zip",), r"resume=/no/such/checkpoint.zip: no such file"),
        (("suite=train",), r"suite=train needs topology=<name>"),
        (("topology=chain3",), r"topology=chain3 only picks entries of a suite: set suite="),
        (
            ("suite=train", "topology=mesh40"),
            r"suite=train, topology=mesh40: no entry .* topologies are \['boutique', 'chain3'\]",
        ),
        (("suite=nope", "topology=chain3"), r"suite=nope, topology=chain3: unknown suite 'nope'"),
        (
            ("suite=train", "topology=chain3", "++scenario_overrides.horizon_s=300"),
            r"(?s)suite=train entry 'chain3-.*' with scenario_overrides: .*faults.0.at_s",
        ),
    ],
)
def test_invalid_runs_fail_at_start_naming_the_field(
    composer: Composer, tmp_path: Path, overrides: tuple[str, ...], match: str
) -> None:
    out = tmp_path / "run"
    cfg = composer("debug=default", f"out={out}", *overrides)
    with pytest.raises(ConfigError, match=match):
        train_mod.train(cfg)
    assert not out.exists()  # failed before writing anything


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (("agent.n_stepz=3",), "n_stepz"),
        (("agent=dqn", "env=remediate", "agent.n_steps=3"), "n_steps"),
        (("env.obs=boxx",), "env.obs"),
        (("logger.project=x",), "project"),
    ],
)
def test_schema_rejects_unknown_keys_and_bad_values(
    composer: Composer, overrides: tuple[str, ...], field: str
) -> None:
    with pytest.raises(Exception, match=field):
        train_mod.to_config(composer(*overrides))


def test_plain_mapping_needs_a_known_algorithm() -> None:
    with pytest.raises(ConfigError, match=r"agent.algo='sac' is not known"):
        train_mod.to_config({"agent": {"algo": "sac"}})
    with pytest.raises(ConfigError, match="n_stepz"):
        train_mod.to_config({"agent": {"algo": "ppo", "n_stepz": 3}, "env": {"name": "ops"}})


# --------------------------------------------------------------------------- runs


class Recorder:
    """Wraps a Policy and keeps every ``info`` it returns."""

    def __init__(self, policy: SB3Policy) -> None:
        self.policy = policy
        self.name = policy.name
        self.in_cluster_hpa = policy.in_cluster_hpa  # an hpa_tune policy's HPA, for rollout()
        self.infos: list[dict[str, Any]] = []

    def reset(self, n: int = 1) -> Any:
        return self.policy.reset(n)

    def act(self, obs: Any, state: Any) -> tuple[list[Any], Any, dict[str, Any]]:
        actions, state, info = self.policy.act(obs, state)
        self.infos.append(info)
        return actions, state, info


@pytest.mark.parametrize(
    ("agent", "env", "obs"), [(a, e, "box") for a, e in VALID] + [("maskable_ppo", "ops", "dict")]
)
def test_valid_combination_trains_saves_and_serves(
    composer: Composer, tmp_path: Path, agent: str, env: str, obs: str
) -> None:
    run = tmp_path / "run"
    cfg = composer("debug=default", f"agent={agent}", f"env={env}", f"env.obs={obs}", f"out={run}")
    returned = train_mod.train(cfg)
    for name in RUN_FILES:
        assert (run / name).stat().st_size > 0, name
    metrics = _metrics(run)
    assert metrics == json.loads(json.dumps(returned))
    assert metrics["agent"] == agent and metrics["env"] == env
    assert metrics["env_id"] == ENV_IDS[metrics["env"]] and metrics["vec_env"] == "dummy"
    assert metrics["timesteps"] == metrics["trained_timesteps"] == 256
    assert metrics["episodes"] >= 10  # 20-step episodes
    for key in ("eval_mean_reward", "eval_std_reward", "wall_time_s", "steps_per_s"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert metrics["eval_mean_reward"] < 0 <= metrics["eval_std_reward"]  # penalties only
    assert metrics["steps_per_s"] > 0 and metrics["best_eval_mean_reward"] is not None
    # checkpoints with their statistics, best model with its statistics, eval log, csv log
    for steps in (128, 256):
        assert (run / "checkpoints" / f"model_{steps}_steps.zip").is_file()
        assert (run / "checkpoints" / f"model_vecnormalize_{steps}_steps.pkl").is_file()
    assert (run / "best" / "best_model.zip").is_file()
    assert (run / "best" / "vecnormalize.pkl").is_file()
    assert (run / "eval" / "evaluations.npz").is_file()
    header = set((run / "logs" / "progress.csv").read_text().splitlines()[0].split(","))
    assert {"env/ep_reward", "env/ep_slo_violation", "env/ep_cost", "eval/mean_reward"} <= header

    # the resolved config round-trips and names what ran
    conf = load_run_config(run)
    assert conf.agent.algo == agent and conf.env.name == env and conf.env.obs == obs
    assert conf.out == str(run) and conf.debug == "default"

    # VecNormalize statistics reload onto a fresh env and carry what training saw
    stats = VecNormalize.load(str(run / "vecnormalize.pkl"), DummyVecEnv([lambda: make_env(conf)]))
    rms: Any = stats.obs_rms if obs == "box" else stats.obs_rms["service_values"]  # type: ignore[index]
    assert rms.count > 256 and np.isfinite(rms.var).all()
    stats.close()

    # SB3Policy runs the trained agent in the simulator through an incident and a
    # telemetry gap; the simulator itself refuses any invalid action
    policy = Recorder(SB3Policy(run))
    assert isinstance(policy.policy, Policy) and policy.name == f"sb3-{agent}"
    scenario = load_scenario("chain3", INCIDENT)
    result = rollout(Simulator(scenario), policy)
    assert len(result.decisions) == len(policy.infos) == 20
    for _, action in result.actions:
        validate_action(action, scenario)
        assert not isinstance(action, DrainNode)  # allow_drain=False masks draining
    if agent == "maskable_ppo":
        assert all(i["masked_out"] is False and i["n_valid"] >= 1 for i in policy.infos)
    if env == "hpa_tune":  # the HPA scales under the chosen targets (HPATuneEnv.decide)
        assert all(set(i["hpa_targets"]) <= set(HPA_TARGETS) for i in policy.infos)
        assert len(policy.infos[0]["hpa_targets"]) == 3


def test_suite_training_draws_the_topologys_train_entries(
    composer: Composer, tmp_path: Path
) -> None:
    run = tmp_path / "suite"
    cfg = composer("debug=default", "suite=train", "topology=chain3", "logger=none", f"out={run}")
    metrics = train_mod.train(cfg)
    chain3 = load_suite("train").on_topology("chain3")
    assert metrics["suite"] == "train" and metrics["topology"] == "chain3"
    assert metrics["scenario"] is None and metrics["scenarios"] == chain3.ids
    assert metrics["timesteps"] == 256 and metrics["episodes"] >= 10

    conf = load_run_config(run)
    assert (conf.suite, conf.topology) == ("train", "chain3")
    env = cast(ClusterEnv, make_env(conf).unwrapped)
    assert [sc.name for sc in env.scenarios] == chain3.ids
    assert env.scenarios == [e.scenario for e in chain3]  # faults and traffic kept as written
    env.reset(seed=0)
    drawn = set()
    for _ in range(20):  # one entry per episode, from the env's own generator
        env.reset()
        assert env.sim is not None
        drawn.add(env.sim.scenario.name)
    assert len(drawn) > 1 and drawn <= set(chain3.ids)

    # the trained policy runs a holdout chain3 incident (shortened to 10 minutes)
    entry = load_suite("holdout").on_topology("chain3").entries[0]
    scenario = load_scenario(entry.scenario, {"horizon_s": 600})
    result = rollout(Simulator(scenario, seed=entry.run_seed(0)), SB3Policy(run))
    assert len(result.decisions) == 40
    for _, action in result.actions:
        validate_action(action, scenario)


def test_determinism_same_seed_same_run(composer: Composer, tmp_path: Path) -> None:
    def run(seed: int, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        out = tmp_path / name
        cfg = composer(
            "debug=default", "logger=none", "checkpoint_freq=0", f"seed={seed}", f"out={out}"
        )
        metrics = train_mod.train(cfg)
        return metrics, PPO.load(out / "model.zip").policy.state_dict()

    m1, p1 = run(0, "a")
    m2, p2 = run(0, "b")
    _, p3 = run(1, "c")
    keys = ("eval_mean_reward", "eval_std_reward", "best_eval_mean_reward", "episodes")
    assert {k: m1[k] for k in keys} == {k: m2[k] for k in keys}
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    assert not all(torch.equal(p1[k], p3[k]) for k in p1)
    assert not (tmp_path / "a" / "logs").exists()  # logger=none writes no files
    # per-env seeds come from the run seed and never overlap across neighbouring runs
    assert len(set(env_seeds(0, 4)) | set(env_seeds(1, 4)) | set(env_seeds(0, 1, 1))) == 9


def test_resume_best_model_and_many_streams(composer: Composer, tmp_path: Path) -> None:
    first = tmp_path / "first"
    train_mod.train(composer("debug=default", "total_timesteps=128", f"out={first}"))
    ckpt = first / "checkpoints" / "model_128_steps.zip"
    out = tmp_path / "resumed"
    metrics = train_mod.train(composer("debug=default", f"resume={ckpt}", f"out={out}"))
    assert metrics["timesteps"] == 256 and metrics["trained_timesteps"] == 128
    assert metrics["resumed_from"] == str(ckpt)
    with pytest.raises(ConfigError, match="raise total_timesteps"):
        train_mod.train(composer("debug=default", f"resume={out}", f"out={tmp_path / 'x'}"))
    wrong = ("env=remediate", "total_timesteps=512", f"resume={out}", f"out={tmp_path / 'y'}")
    with pytest.raises(ConfigError, match=r"cannot continue it as agent=ppo on env=remediate"):
        train_mod.train(composer("debug=default", *wrong))

    policy = SB3Policy(out, model="best/best_model.zip", vecnormalize="best/vecnormalize.pkl")
    states = policy.reset(2)
    assert isinstance(states, list) and len(states) == 2
    frame = Simulator(load_scenario("chain3", {"horizon_s": 60})).reset()
    _, state, info = policy.act(frame, states[0])
    assert isinstance(state, ControlBelief) and state.desired == (2, 2, 2)
    assert len(info["action"]) == 3 and info["masked_out"] is False


def test_subproc_vec_env_with_two_envs(composer: Composer, tmp_path: Path) -> None:
    cfg = composer("debug=default", "n_envs=2", "logger=none", "eval.freq=0", f"out={tmp_path}")
    metrics = train_mod.train(cfg)
    assert metrics["vec_env"] == "subproc" and metrics["n_envs"] == 2
    assert metrics["timesteps"] == 256


@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
def test_tensorboard_and_wandb_loggers(
    composer: Composer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logger: str
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = composer(
        "debug=default", f"logger={logger}", "eval.freq=0", "checkpoint_freq=0", f"out={tmp_path}"
    )
    metrics = train_mod.train(cfg)
    assert metrics["best_eval_mean_reward"] is None  # no periodic evaluation
    assert list((tmp_path / "logs").glob("**/events.out.tfevents.*"))


# --------------------------------------------------------------------------- console


def _opsworld(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert OPSWORLD.exists(), f"console script missing: {OPSWORLD} (run make venv)"
    env = {**os.environ, "WANDB_MODE": "disabled", "COLUMNS": "200"}
    return subprocess.run(
        [str(OPSWORLD), *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


def test_console_script_debug_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _opsworld("train", "debug=default", f"out={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _metrics(out)["timesteps"] == 256
    assert "opsworld train: ppo on opsworld/Autoscale-v0" in proc.stdout
    bad = _opsworld("train", "agent=dqn", "debug=default", f"out={tmp_path / 'bad'}", cwd=tmp_path)
    assert bad.returncode == 2 and "agent=dqn needs a Discrete action space" in bad.stderr


def test_console_script_multirun_one_dir_per_job(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    proc = _opsworld("train", "-m", "seed=0,1", "debug=default", f"out={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for job, seed in (("0", 0), ("1", 1)):
        run = out / job
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["seed"] == seed and config["out"] == str(run)
        assert _metrics(run)["seed"] == seed
        assert (run / "model.zip").is_file()


def test_evaluate_picks_best_weights_and_sampling(composer: Composer, tmp_path: Path) -> None:
    """``opsworld evaluate weights=best deterministic=false`` on a trained run dir."""
    from experiments import evaluate as ev

    run = tmp_path / "run"
    train_mod.train(composer("debug=default", "logger=none", f"out={run}"))
    spec = ev.resolve_policy(str(run), weights="best", deterministic=False)
    assert spec.label == "sb3-run-best-sample" and spec.weights == "best"
    scenario = load_scenario("chain3", INCIDENT)
    policy = ev.build_policy(spec, scenario)
    assert isinstance(policy, SB3Policy) and policy.deterministic is False
    best = PPO.load(run / "best" / "best_model.zip").policy.state_dict()
    final = PPO.load(run / "model.zip").policy.state_dict()
    loaded = cast(Any, policy.model).policy.state_dict()
    assert all(torch.equal(loaded[k], best[k]) for k in best)
    assert not all(torch.equal(final[k], best[k]) for k in best)  # else the check is void
    assert ev.resolve_policy(str(run)).label == "sb3-run"  # defaults keep the plain label

    ret = ev.evaluate(
        {
            "policies": [str(run)],
            "weights": "best",
            "deterministic": True,
            "suite": "train",
            "topology": "chain3",
            "limit": 1,
            "workers": 1,
            "timelines": 0,
            "out": str(tmp_path / "eval"),
        },
        log=None,
    )
    assert list(ret["results"]) == ["sb3-run-best-mode"]
    with pytest.raises(ConfigError, match=r"weights='nope'.*\['best', 'final'\]"):
        ev.resolve_policy(str(run), weights="nope")
    (run / "best" / "best_model.zip").unlink()
    with pytest.raises(ConfigError, match=r"weights=best: .* has no best/best_model.zip"):
        ev.resolve_policy(str(run), weights="best")
