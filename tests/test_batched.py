"""The batched fluid core and its Gymnasium vector env (issue 18, item 5).

Agreement with the scalar fluid engine and env on the same scenario, seeds and actions;
determinism; auto-reset; the vector-env contract; unsupported scenarios refused by name;
SB3 training through :class:`agents.sb3.batched.GymVectorToSB3`.
"""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from envs.core.actions import Scale
from envs.core.telemetry import FIELD_INDEX
from envs.gym.batched import BatchedAutoscaleEnv, row_seeds
from envs.gym.envs import AutoscaleEnv
from envs.scenarios.loader import load_scenario
from envs.scenarios.schema import Scenario
from envs.sim.batched import BatchedFluid, UnsupportedScenarioError
from envs.sim.simulator import Simulator

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


def test_env_rows_are_the_scalar_autoscale_env() -> None:
    """Sub-env ``i`` reset with vector seed ``s`` is ``AutoscaleEnv.reset(seed=row_seeds(s)[i])``:
    the same observations and rewards, across the auto-reset at the horizon."""
    sc = varying("chain3", horizon_s=150.0)  # 10 steps
    n = 3
    venv = BatchedAutoscaleEnv(n, sc)
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


def test_auto_reset_at_the_horizon() -> None:
    sc = varying("chain3", horizon_s=60.0)  # 4 steps
    venv = BatchedAutoscaleEnv(3, sc)
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
    np.testing.assert_array_equal(
        obs[:, venv.encoder.size // 2 - 2 : venv.encoder.size // 2 + 2],
        first[:, venv.encoder.size // 2 - 2 : venv.encoder.size // 2 + 2],
    )
    rps_mask = venv.encoder.size - (len(venv.services) * 14 + 5)
    assert (obs[:, rps_mask] == 0).all() and (last[:, rps_mask] == 1).all()
    # ... with new simulator seeds, and the next step runs it
    assert not np.array_equal(info["sim_seed"], info0["sim_seed"])
    _, _, _, trunc2, _ = venv.step(keep)
    assert not trunc2.any()


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
        ({"faults": [{"kind": "pod_crash", "service": "db", "at_s": 60}]}, "pod_crash"),
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

    venv = GymVectorToSB3(BatchedAutoscaleEnv(4, varying("chain3", horizon_s=60.0)))
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
