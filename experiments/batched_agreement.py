"""How far the batched env's episodes are from the scalar env's, beyond the tested cases.

``python experiments/batched_agreement.py [--steps 240] [--envs 4]`` runs
:class:`envs.gym.batched.BatchedAutoscaleEnv` and, for each of its sub-envs, the scalar
:class:`envs.gym.envs.AutoscaleEnv` with the same seed (:func:`envs.gym.batched.row_seeds`)
and the same actions, on chain3 and boutique with varying traffic (diurnal amplitude 0.5,
noise cv 0.1), under two action plans: uniformly random (PPO's first rollouts) and "mostly
keep" (each service keeps its replicas with probability 0.8, else a random delta). It prints
the episode returns and SLO-violation sums of both and the first step whose rewards differ
(by more than 1e-9): the batched core's scheduler works on the cluster's total free CPU and
memory and leaves out the escape from retry-sustained overload (``docs/batched.md``), so
episodes part once the cluster is full or a service is stuck in overload.
"""

from __future__ import annotations

import argparse

import numpy as np

from envs.gym.batched import BatchedAutoscaleEnv, row_seeds
from envs.gym.envs import AutoscaleEnv
from envs.scenarios.loader import load_scenario


def compare(name: str, plan: str, steps: int, n: int, seed: int = 11) -> None:
    """Run both envs for ``steps`` steps and print the comparison line."""
    sc = load_scenario(
        name,
        {
            "horizon_s": steps * 15.0,
            "traffic.diurnal": {"amplitude": 0.5},
            "traffic.noise": {"cv": 0.1, "tau_s": 60.0},
        },
    )
    venv = BatchedAutoscaleEnv(n, sc)
    venv.reset(seed=seed)
    envs = [AutoscaleEnv(scenario=sc) for _ in range(n)]
    for env, s in zip(envs, row_seeds(seed, n), strict=True):
        env.reset(seed=s)
    rng = np.random.default_rng(0)
    shape = (n, len(venv.services))
    ret = np.zeros((2, n))
    slo = np.zeros((2, n))
    first: list[int | None] = [None] * n
    for k in range(steps):
        a = rng.integers(0, 5, size=shape)
        if plan == "mostly-keep":
            a = np.where(rng.random(shape) < 0.8, 2, a)
        _, r, _, _, info = venv.step(a)
        for i, env in enumerate(envs):
            _, rr, _, _, parts = env.step(a[i])
            ret[:, i] += (r[i], rr)
            slo[:, i] += (info["slo_violation"][i], parts["reward_components"]["slo_violation"])
            if first[i] is None and abs(rr - r[i]) > 1e-9:
                first[i] = k
    print(
        f"{name:8s} {plan:11s} return batched {np.round(ret[0], 1).tolist()} scalar "
        f"{np.round(ret[1], 1).tolist()}; SLO-violation sum batched "
        f"{np.round(slo[0], 2).tolist()} scalar {np.round(slo[1], 2).tolist()}; first "
        f"differing step {first}"
    )


def main() -> None:
    """Compare on chain3 and boutique under both action plans."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=240, help="decision steps (one episode)")
    ap.add_argument("--envs", type=int, default=4, help="sub-envs (seeds)")
    args = ap.parse_args()
    for name in ("chain3", "boutique"):
        for plan in ("random", "mostly-keep"):
            compare(name, plan, args.steps, args.envs)


if __name__ == "__main__":
    main()
