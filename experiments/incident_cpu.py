"""CPU seconds of the incident path in one process: the holdout suite, static policy, fluid.

``opsworld bench incidents`` times the same runs by wall clock with two workers, which on a
shared machine mostly measures the other jobs; this counts the CPU time of this process
only (``time.process_time``), so an old and a new engine can be compared under load, one
after the other::

    .venv/bin/python -m experiments.incident_cpu [--replicate 0]
    PYTHONPATH=<old checkout> .venv/bin/python <this file> [--replicate 0]
"""

from __future__ import annotations

import argparse
import os
import time

from agents.policy import StaticPolicy
from agents.rollout import rollout
from envs.scenarios.suites import load_suite
from envs.sim.simulator import Simulator


def main() -> None:
    """Run every holdout entry once (one replicate) and print the CPU and wall seconds."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicate", type=int, default=0)
    args = ap.parse_args()
    suite = load_suite("holdout")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for e in suite.entries:
        rollout(Simulator(e.scenario, seed=e.run_seed(args.replicate)), StaticPolicy())
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(
        f"holdout x replicate {args.replicate} ({len(suite.entries)} runs, static, fluid): "
        f"cpu {cpu:.2f} s, wall {wall:.2f} s, load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
