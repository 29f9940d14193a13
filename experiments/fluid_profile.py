"""Where a scalar fluid step spends its time, and what the batched env does instead.

``python experiments/fluid_profile.py [--steps N]`` profiles (cProfile, CPU time) on varying
traffic (diurnal amplitude 0.5, noise cv 0.1, tau 60 s, as ``opsworld bench sim``):

1. ``Simulator.step([])`` on chain3 and boutique (no actions: one segment per step);
2. ``AutoscaleEnv.step`` with uniformly random actions on boutique (PPO's first rollouts);
3. :class:`envs.gym.batched.BatchedAutoscaleEnv` (N = 256) with no-op and random actions,

and prints, per run, the share of CPU time by part (the fixed point of a segment, its
latency law and histogram, the scrape, the control plane, SimPy, the env layer) and the
steps per CPU second. ``docs/batched.md`` quotes a run.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable

import numpy as np

from envs.gym.batched import BatchedAutoscaleEnv
from envs.gym.envs import AutoscaleEnv
from envs.scenarios.loader import load_scenario
from envs.scenarios.schema import Scenario
from envs.sim.simulator import Simulator

PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("latency law + histogram (fluid._law)", ("fluid.py:_law",)),
    ("scrape", ("engine.py:_scrape", "_read_data_plane", "sim/batched.py:_scrape")),
    (
        "segment fixed point (fluid._segment, queueing)",
        ("fluid.py", "queueing.py", "sim/batched.py:_segment", "sim/batched.py:_erlang_c"),
    ),
    ("batched events, pods, scheduler, billing", ("sim/batched.py",)),
    ("control plane (envs/sim/control)", ("envs/sim/control/",)),
    ("SimPy", ("/simpy/",)),
    ("env layer (envs/gym, codec, scoring)", ("envs/gym/", "envs/scenarios/")),
)


def varying(name: str) -> Scenario:
    """``name`` over one hour with the benchmark's varying traffic."""
    return load_scenario(
        name,
        {
            "horizon_s": 3600.0,
            "traffic.diurnal": {"amplitude": 0.5},
            "traffic.noise": {"cv": 0.1, "tau_s": 60.0},
        },
    )


def _part(key: tuple[str, int, str]) -> str | None:
    """The part a project function belongs to (None: not project code)."""
    path, _line, func = key
    if not any(p in path for p in ("/envs/", "/agents/", "/simpy/")):
        return None
    name = f"{path}:{func}"
    for part, pats in PARTS:
        if any(p in name for p in pats):
            return part
    return "other project code"


def shares(prof: cProfile.Profile) -> dict[str, float]:
    """Own CPU time per part, as shares of the total.

    Time in numpy, scipy and the standard library is charged to the project code calling
    it (split over the callers by their time, up the call graph).
    """
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    out: dict[str, float] = {}

    def charge(key: tuple[str, int, str], amount: float, depth: int = 0) -> None:
        part = _part(key)
        if part is not None or depth > 8:
            out[part or "unattributed"] = out.get(part or "unattributed", 0.0) + amount
            return
        callers = stats[key][4] if key in stats else {}
        total = sum(v[3] for v in callers.values())
        if total <= 0:
            out["unattributed"] = out.get("unattributed", 0.0) + amount
            return
        for ck, v in callers.items():
            charge(ck, amount * v[3] / total, depth + 1)

    grand = 0.0
    for key, (_cc, _nc, tt, _ct, _callers) in stats.items():
        grand += tt
        charge(key, tt)
    return {k: v / grand for k, v in out.items() if v > 0}


def profile(label: str, run: Callable[[], int]) -> None:
    """Profile ``run`` (returns the env steps it made) and print its shares."""
    prof = cProfile.Profile(time.process_time)
    c0 = time.process_time()
    prof.enable()
    steps = run()
    prof.disable()
    cpu = time.process_time() - c0
    print(f"\n{label}: {steps / cpu:,.0f} env steps per CPU second (under the profiler)")
    for name, share in sorted(shares(prof).items(), key=lambda kv: -kv[1]):
        print(f"  {100 * share:5.1f}%  {name}")


def main() -> None:
    """Run the profiles."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=240, help="decision steps per scalar run")
    args = ap.parse_args()
    for name in ("chain3", "boutique"):
        sim = Simulator(varying(name))
        sim.reset()

        def scalar(sim: Simulator = sim) -> int:
            for _ in range(args.steps):
                sim.step([])
            return args.steps

        profile(f"Simulator.step([]) {name}", scalar)
    env = AutoscaleEnv(scenario=varying("boutique"))
    env.reset(seed=0)
    env.action_space.seed(0)
    acts = [env.action_space.sample() for _ in range(args.steps)]

    def scalar_env() -> int:
        for a in acts:
            env.step(a)
        return len(acts)

    profile("AutoscaleEnv.step, random actions, boutique", scalar_env)
    n = 256
    for mode, steps in (("no-op", args.steps // 4), ("random", args.steps // 20)):
        venv = BatchedAutoscaleEnv(n, varying("boutique"))
        venv.reset(seed=0)
        rng = np.random.default_rng(0)
        shape = (n, len(venv.services))
        plan = [
            np.full(shape, 2) if mode == "no-op" else rng.integers(0, 5, size=shape)
            for _ in range(max(1, steps))
        ]

        def batched(venv: BatchedAutoscaleEnv = venv, plan: list[np.ndarray] = plan) -> int:
            for a in plan:
                venv.step(a)
            return len(plan) * n

        profile(f"BatchedAutoscaleEnv N={n}, {mode} actions, boutique", batched)


if __name__ == "__main__":
    main()
