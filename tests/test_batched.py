"""The batched fluid core and its Gymnasium vector env (issue 18, item 5).

Agreement with the scalar fluid engine and env on the same scenario, seeds and actions;
determinism; auto-reset; the vector-env contract; unsupported scenarios refused by name;
SB3 training through :class:`agents.sb3.batched.GymVectorToSB3`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from agents.sb3.config import config_from_mapping
from agents.sb3.envs import env_seeds, make_vec_env
from envs.core.actions import Scale
from envs.core.telemetry import FIELD_INDEX
from envs.gym.batched import BatchedAutoscaleEnv, row_seeds
from envs.gym.envs import AutoscaleEnv
from envs.scenarios.loader import load_scenario
from envs.scenarios.schema import Scenario
from envs.sim.batched import BatchedFluid, UnsupportedScenarioError
from envs.sim.simulator import Simulator
from experiments import train as train_mod
from experiments.cli import CONFIG_DIR, ConfigError

COMPARED = (
    "rps",
    "throughput",
    "error_rate",
    "p50",
    "p99",
    "cpu_usage",
    "cpu_util",
    "memory_usage_mb",
    "replicas_desired",
    "replicas_ready",
    "replicas_starting",
    "replicas_pending",
    "backlog",
    "in_flight",
    "slo_violation_s",
)
"""The gauges the batched core computes (p95, mean latency and the histogram it skips)."""


def varying(name: str, horizon_s: float = 600.0, **extra: object) -> Scenario:
    """``name`` with diurnal and noisy traffic (the benchmark's varying traffic)."""
    return load_scenario(
        name,
        {
            "horizon_s": horizon_s,
            "traffic.diurnal": {"amplitude": 0.5},
            "traffic.noise": {"cv": 0.1, "tau_s": 60.0},
            **extra,
        },
    )


def run_both(
    sc: Scenario, seeds: list[int], steps: int, cap: int, act: float = 0.4, floor: int = 1
) -> tuple[list[np.ndarray], list[np.ndarray], list[float], list[float]]:
    """Random scale actions (``floor`` to ``cap`` replicas, a share ``act`` of the services
    each step) in the batched core and in scalar simulators; per step, the compared gauges
    of both and the allocated costs."""
    n = len(seeds)
    core = BatchedFluid([sc], n)
    core.reset(seeds)
    sims = [Simulator(sc, seed=s) for s in seeds]
    for s in sims:
        s.reset()
    rng = np.random.default_rng(0)
    names = sc.service_names
    cols = [FIELD_INDEX[f] for f in COMPARED]
    got, want, cost_got, cost_want = [], [], [], []
    for _ in range(steps):
        desired = core.desired.copy()
        acts: list[list[Scale]] = []
        for i in range(n):
            move = rng.integers(-2, 3, size=len(names)) * (rng.random(len(names)) < act)
            d = np.clip(
                desired[i] + move, np.maximum(core.r_min, floor), np.minimum(core.r_max, cap)
            )
            acts.append(
                [Scale(names[j], int(d[j])) for j in range(len(names)) if d[j] != desired[i, j]]
            )
            desired[i] = d
        frame = core.advance(desired)
        for i in range(n):
            scalar = sims[i].step(acts[i])[-1]
            got.append(frame.values[i][:, cols])
            want.append(scalar.values[:, cols])
            cost_got.append(float(frame.cluster[i, -1]))
            cost_want.append(sims[i].engine.cp.allocated_cost())
    return got, want, cost_got, cost_want


def test_core_is_the_scalar_fluid_engine_on_chain3_bit_for_bit() -> None:
    """Same scenario, seeds and scale actions: every compared gauge is identical, step by step
    (scale-ups and scale-downs, random start-up times, diurnal + noisy traffic)."""
    got, want, cost_got, cost_want = run_both(varying("chain3"), [3, 4, 5], steps=40, cap=8)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(g, w, err_msg=f"frame {k}")
    np.testing.assert_allclose(cost_got, cost_want, rtol=1e-12)


def test_core_matches_the_scalar_fluid_engine_on_boutique() -> None:
    """Boutique's call graph sums over callees in another order (a batched matrix product):
    agreement to 1e-9 relative while the cluster has room for every pod."""
    got, want, cost_got, cost_want = run_both(varying("boutique"), [8, 9], steps=40, cap=5)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"frame {k}")
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12, err_msg=f"frame {k}")
    np.testing.assert_allclose(cost_got, cost_want, rtol=1e-12)


def test_full_cluster_schedules_pod_by_pod_as_the_scalar_scheduler() -> None:
    """Random scaling fills boutique's three (half-size) nodes: pods wait pending, bind node
    by node (least allocated first) as terminations free room, and the gauges still agree
    with the scalar engine's step by step."""
    sc = varying("boutique", **{"cluster.node_cpu": 4.0})
    got, want, cost_got, cost_want = run_both(sc, [21, 22], steps=36, cap=20, act=0.8)
    pending = COMPARED.index("replicas_pending")
    assert max(g[:, pending].sum() for g in got) >= 10  # the cluster was full
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"frame {k}")
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12, err_msg=f"frame {k}")
    np.testing.assert_allclose(cost_got, cost_want, rtol=1e-12)


def test_mixed_start_up_distributions_draw_as_the_scalar_engine() -> None:
    """Services with different start-up laws (gamma, lognormal, deterministic) draw one by
    one from the control-plane stream, in bind order, as the scalar control plane does."""
    sc = varying(
        "chain3",
        **{
            "topology.services.1.pod.startup": {"mean": 12.0, "cv": 0.4, "kind": "lognormal"},
            "topology.services.2.pod.startup": {"mean": 25.0, "cv": 0.0},
        },
    )
    got, want, _, _ = run_both(sc, [61, 62], steps=30, cap=8)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(g, w, err_msg=f"frame {k}")


def test_flash_crowd_is_supported_and_matches() -> None:
    """A flash crowd is a traffic change; without actions (no retry-sustained overload, whose
    escape the batched core leaves out) the two engines agree bit for bit."""
    sc = varying(
        "chain3",
        faults=[{"kind": "flash_crowd", "at_s": 120.0, "factor": 1.6, "duration_s": 120.0}],
    )
    got, want, _, _ = run_both(sc, [1, 2], steps=20, cap=6, act=0.0)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    rps = np.array([g[0, COMPARED.index("rps")] for g in got[::2]])
    assert rps[10] > 1.5 * rps[5]  # the crowd arrived (t = 165 s vs 90 s)


def test_slow_dependency_matches_bit_for_bit() -> None:
    """A slow dependency changes a service time from its onset to its end, also inside a
    decision interval (a segment boundary there, as in the scalar engine); two overlap."""
    sc = varying(
        "chain3",
        faults=[
            {
                "kind": "slow_dependency",
                "service": "db",
                "at_s": 150.0,
                "latency_factor": 1.3,
                "duration_s": 97.5,
            },
            {
                "kind": "slow_dependency",
                "service": "db",
                "at_s": 202.5,
                "latency_factor": 1.2,
                "duration_s": 60.0,
            },
            {"kind": "slow_dependency", "service": "api", "at_s": 301.0, "latency_factor": 1.2},
        ],
    )
    # at least two pods each: one slowed db pod would be held in overload by retries, which
    # the scalar engine escapes and the batched core does not (docs/batched.md)
    got, want, cost_got, cost_want = run_both(sc, [6, 7], steps=30, cap=6, floor=2)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(g, w, err_msg=f"frame {k}")
    np.testing.assert_allclose(cost_got, cost_want, rtol=1e-12)
    p50 = COMPARED.index("p50")
    db_p50 = np.array([g[2, p50] for g in got[::2]])
    assert db_p50[11] > 1.15 * db_p50[8]  # db slower at 180 s than at 135 s
    assert db_p50[19] < 1.1 * db_p50[8]  # and back after 262.5 s (t = 300 s)


@pytest.mark.parametrize(("name", "node", "at_s"), [("chain3", 1, 157.5), ("boutique", 0, 150.0)])
def test_node_failure_matches(name: str, node: int, at_s: float) -> None:
    """A node dies: its pods are lost (the requests in service on them fail), replacements
    are scheduled on the other nodes, the node bill drops; as in the scalar engine."""
    sc = varying(name, faults=[{"kind": "node_failure", "node": node, "at_s": at_s}])
    got, want, cost_got, cost_want = run_both(sc, [31, 32], steps=24, cap=8, floor=2)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"frame {k}")
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12, err_msg=f"frame {k}")
    np.testing.assert_allclose(cost_got, cost_want, rtol=1e-12)
    core = BatchedFluid([sc], 1)
    core.reset([31])
    before = core.advance(None).cluster[0]
    for _ in range(int(at_s // 15)):
        after = core.advance(None).cluster[0]
    assert before[0] == 3 and after[0] == 2  # nodes_ready
    assert after[3] < before[3]  # the node bill


def test_pod_crash_matches() -> None:
    """Pods crash (their in-service requests fail), wait in CrashLoopBackOff and restart at
    half the start-up time; a second crash of a restarted pod doubles its backoff. (Both db
    pods at once would hold db in a retry-sustained overload, which the batched core does
    not escape.)"""
    sc = varying(
        "chain3",
        faults=[
            {"kind": "pod_crash", "service": "db", "at_s": 97.5, "pods": 1},
            {"kind": "pod_crash", "service": "db", "at_s": 120.0, "pods": 1},
            {"kind": "pod_crash", "service": "db", "at_s": 150.0, "pods": 1},
            {"kind": "pod_crash", "service": "api", "at_s": 181.0, "pods": 1},
        ],
    )
    got, want, cost_got, cost_want = run_both(sc, [41, 42], steps=24, cap=8, floor=2)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(g, w, err_msg=f"frame {k}")
    np.testing.assert_allclose(cost_got, cost_want, rtol=1e-12)
    core = BatchedFluid([sc], 1)
    core.reset([41])
    frames = [core.advance(None) for _ in range(14)]
    restarts = [f.values[0, 2, FIELD_INDEX["restarts"]] for f in frames]
    ready = [f.values[0, 2, FIELD_INDEX["replicas_ready"]] for f in frames]
    # the same db pod (the first ready by uid) crashes at 97.5, 120 and 150 s, each time
    # within 600 s of its restart: backoff 10, 20, 40 s; down from 150 s to about 200 s
    assert restarts == [0] * 6 + [1, 1, 2, 2, 3, 3, 3, 3]
    assert ready[6] == 1 and ready[7] == 2 and ready[10:13] == [1, 1, 1] and ready[13] == 2


def test_cpu_hog_matches() -> None:
    """A noisy neighbour slows the pods on its node: each service's service time is the mean
    slowdown of its ready pods' nodes, which moves as pods start and stop elsewhere."""
    sc = varying(
        "boutique",
        faults=[
            {"kind": "cpu_hog", "node": 1, "at_s": 97.5, "slowdown": 3.0, "duration_s": 150.0},
            {"kind": "cpu_hog", "node": 2, "at_s": 150.0, "slowdown": 2.0},
        ],
    )
    got, want, cost_got, cost_want = run_both(sc, [51, 52], steps=24, cap=8, floor=2)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"frame {k}")
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12, err_msg=f"frame {k}")
    np.testing.assert_allclose(cost_got, cost_want, rtol=1e-12)
    p50 = COMPARED.index("p50")
    before = max(g[:, p50].max() for g in got[:12])  # up to 90 s
    after = max(g[:, p50].max() for g in got[12:])
    assert after > 1.2 * before


def test_env_rows_are_the_scalar_autoscale_env() -> None:
    """Sub-env ``i`` reset with vector seed ``s`` is ``AutoscaleEnv.reset(seed=row_seeds(s)[i])``:
    the same observations and rewards, across the auto-reset at the horizon."""
    sc = varying("chain3", horizon_s=150.0)  # 10 steps
    n = 3
    venv = BatchedAutoscaleEnv(n, sc, autoreset_mode=AutoresetMode.SAME_STEP)
    obs, info = venv.reset(seed=7)
    envs = [AutoscaleEnv(scenario=sc) for _ in range(n)]
    for i, (env, s) in enumerate(zip(envs, row_seeds(7, n), strict=True)):
        o, inf = env.reset(seed=s)
        np.testing.assert_array_equal(o, obs[i])
        assert inf["sim_seed"] == info["sim_seed"][i]
    venv.action_space.seed(1)
    resets = 0
    for _ in range(24):
        a = venv.action_space.sample()
        obs, rew, term, trunc, info = venv.step(a)
        assert not term.any()
        for i, env in enumerate(envs):
            o, r, _, tr, parts = env.step(a[i])
            assert tr == trunc[i]
            assert r == pytest.approx(rew[i], rel=1e-12, abs=1e-12)
            assert parts["reward_components"]["disruption"] == info["disruption"][i]
            if tr:
                np.testing.assert_array_equal(o, info["final_obs"][i])
                o, _ = env.reset()
                resets += 1
            np.testing.assert_array_equal(o, obs[i])
    assert resets == 2 * n


def test_same_seed_same_run_and_another_seed_another() -> None:
    sc = varying("chain3", horizon_s=300.0)

    def run(seed: int) -> tuple[np.ndarray, np.ndarray]:
        venv = BatchedAutoscaleEnv(4, sc)
        obs, _ = venv.reset(seed=seed)
        rng = np.random.default_rng(0)
        all_obs, all_rew = [obs], []
        for _ in range(12):
            obs, rew, *_ = venv.step(rng.integers(0, 5, size=venv.action_space.shape))
            all_obs.append(obs)
            all_rew.append(rew)
        return np.stack(all_obs), np.stack(all_rew)

    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # the rows of one batch are different episodes
    assert not np.array_equal(a[0][5, 0], a[0][5, 1])


def test_same_step_auto_reset_at_the_horizon() -> None:
    sc = varying("chain3", horizon_s=60.0)  # 4 steps
    venv = BatchedAutoscaleEnv(3, sc, autoreset_mode="SameStep")
    assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    first, info0 = venv.reset(seed=0)
    keep = np.full(venv.action_space.shape, 2)
    for k in range(4):
        obs, _, term, trunc, info = venv.step(keep)
        assert not term.any()
        assert trunc.all() == (k == 3)
    assert info["_final_obs"].all()
    last = np.stack(info["final_obs"])
    assert not np.array_equal(last, obs)
    # the new episode starts at t = 0 (time features of midnight, rates masked) ...
    time_at = venv.encoder.size // 2 - 2
    np.testing.assert_array_equal(obs[:, time_at : time_at + 4], first[:, time_at : time_at + 4])
    rps_mask = venv.encoder.size - (len(venv.services) * 14 + 5)
    assert (obs[:, rps_mask] == 0).all() and (last[:, rps_mask] == 1).all()
    # ... with new simulator seeds, and the next step runs it
    assert not np.array_equal(info["sim_seed"], info0["sim_seed"])
    _, _, _, trunc2, _ = venv.step(keep)
    assert not trunc2.any()


def test_next_step_auto_reset_works_with_gymnasium_vector_wrappers() -> None:
    """The default NEXT_STEP mode: the step after the last one starts the next episodes (its
    actions ignored, rewards 0); Gymnasium's vector wrappers accept the env and count the
    episodes."""
    from gymnasium.wrappers.vector import NormalizeObservation, RecordEpisodeStatistics

    sc = varying("chain3", horizon_s=60.0)  # 4 steps
    raw = BatchedAutoscaleEnv(3, sc)
    assert raw.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    venv = NormalizeObservation(RecordEpisodeStatistics(raw))
    venv.reset(seed=0)
    keep = np.full((3, 3), 2)
    for k in range(4):
        _, rew, _, trunc, info = venv.step(keep)
        assert trunc.all() == (k == 3) and (rew < 0).all()
    assert info["_episode"].all() and (info["episode"]["l"] == 4).all()
    _, rew, term, trunc, info = venv.step(np.full((3, 3), 4))  # ignored: a reset step
    assert (rew == 0).all() and not term.any() and not trunc.any()
    assert (raw.core.desired == raw.core.r_init).all() and raw.core.t == 0.0
    _, rew, _, trunc, _ = venv.step(keep)
    assert (rew < 0).all() and not trunc.any() and raw.core.t == 15.0
    with pytest.raises(ValueError, match="autoreset_mode"):
        BatchedAutoscaleEnv(2, sc, autoreset_mode="Disabled")


def test_vector_env_contract() -> None:
    venv = BatchedAutoscaleEnv(5, varying("chain3", horizon_s=300.0))
    assert venv.observation_space == batch_space(venv.single_observation_space, 5)
    assert venv.action_space == batch_space(venv.single_action_space, 5)
    scalar = AutoscaleEnv(scenario=varying("chain3", horizon_s=300.0))
    assert venv.single_observation_space == scalar.observation_space
    assert venv.single_action_space == scalar.action_space
    obs, _ = venv.reset(seed=1)
    assert obs.dtype == np.float32 and venv.observation_space.contains(obs)
    venv.action_space.seed(2)
    prev = obs
    for _ in range(6):
        obs, rew, term, trunc, _ = venv.step(venv.action_space.sample())
        assert venv.observation_space.contains(obs)
        assert rew.shape == term.shape == trunc.shape == (5,)
        assert rew.dtype == np.float64 and term.dtype == trunc.dtype == np.bool_
        assert obs is not prev and not np.shares_memory(obs, prev)  # returned data not reused
        prev = obs
    again, _ = venv.reset(seed=1)
    first, _ = BatchedAutoscaleEnv(5, varying("chain3", horizon_s=300.0)).reset(seed=1)
    np.testing.assert_array_equal(again, first)


def test_bad_actions_are_refused_with_the_fix() -> None:
    venv = BatchedAutoscaleEnv(2, "chain3")
    with pytest.raises(RuntimeError, match="reset"):
        venv.step(np.zeros((2, 3), dtype=np.int64))
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        venv.step(np.zeros((3,), dtype=np.int64))
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        venv.step(np.full((2, 3), 5))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            {"faults": [{"kind": "pod_crash", "service": "db", "at_s": 60, "crash_loop": True}]},
            "crash_loop",
        ),
        ({"faults": [{"kind": "memory_leak", "service": "api", "at_s": 60}]}, "memory_leak"),
        (
            {"faults": [{"kind": "bad_deploy", "service": "api", "at_s": 60, "error_rate": 0.2}]},
            "bad_deploy",
        ),
        ({"scrape_interval_s": 5.0}, "scrape_interval_s"),
        ({"fidelity": "request"}, "fluid only"),
    ],
)
def test_unsupported_scenarios_are_refused_by_name(overrides: dict, match: str) -> None:
    sc = load_scenario("chain3", overrides)
    with pytest.raises(UnsupportedScenarioError, match=match):
        BatchedAutoscaleEnv(2, sc)


def test_family_must_share_topology() -> None:
    with pytest.raises(UnsupportedScenarioError, match="topology"):
        BatchedAutoscaleEnv(2, ["chain3", "boutique"])


def test_sb3_ppo_trains_through_the_adapter() -> None:
    from stable_baselines3 import PPO

    from agents.sb3.batched import GymVectorToSB3

    venv = GymVectorToSB3(
        BatchedAutoscaleEnv(4, varying("chain3", horizon_s=60.0), autoreset_mode="SameStep")
    )
    venv.seed(5)
    obs = venv.reset()
    assert obs.shape == (4, venv.observation_space.shape[0])
    for _ in range(4):
        _, _, dones, infos = venv.step(np.full((4, 3), 2))
    assert dones.all() and all("terminal_observation" in i for i in infos)
    assert all(i["TimeLimit.truncated"] for i in infos)
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=16, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=64)
    assert model.num_timesteps == 64
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (4, 3)


# --------------------------------------------------------------------------- opsworld train


@pytest.fixture(scope="module")
def compose_train() -> Iterator[Callable[..., DictConfig]]:
    """``compose(overrides)`` of configs/train.yaml (as tests/test_train.py does)."""
    train_mod.register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield lambda *overrides: compose(config_name="train", overrides=list(overrides))
    GlobalHydra.instance().clear()


def test_opsworld_train_on_the_batched_env(
    compose_train: Callable[..., DictConfig], tmp_path: Path
) -> None:
    """``vec_env=batched``: PPO trains on N batched sub-envs (episodes cut at 20 decisions as
    the scalar env's TimeLimit would), evaluates on the scalar env, saves a usable model."""
    out = tmp_path / "run"
    cfg = compose_train(
        "debug=default", f"out={out}", "vec_env=batched", "n_envs=8", "total_timesteps=1024"
    )
    train_mod.train(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["timesteps"] >= 1024
    conf = config_from_mapping(OmegaConf.to_container(cfg))
    venv = make_vec_env(conf, env_seeds(0, 8), training=True)
    assert venv.num_envs == 8 and venv.observation_space.shape == (2 * (3 * 14 + 5) + 4,)
    venv.reset()
    for k in range(20):
        _, _, dones, infos = venv.step(np.full((8, 3), 2))
        assert dones.all() == (k == 19)
    assert all("episode" in i and i["episode"]["l"] == 20 for i in infos)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (("env=ops",), r"vec_env=batched runs env=autoscale"),
        (("env.fidelity=request",), r"vec_env=batched runs env=autoscale at env.fidelity=fluid"),
        (
            ("++scenario_overrides.faults=[{kind: memory_leak, service: api, at_s: 60}]",),
            r"vec_env=batched: .*memory_leak",
        ),
    ],
)
def test_opsworld_train_refuses_what_the_batched_env_cannot_run(
    compose_train: Callable[..., DictConfig],
    tmp_path: Path,
    overrides: tuple[str, ...],
    match: str,
) -> None:
    out = tmp_path / "run"
    cfg = compose_train("debug=default", f"out={out}", "vec_env=batched", *overrides)
    with pytest.raises(ConfigError, match=match):
        train_mod.train(cfg)
    assert not out.exists()
