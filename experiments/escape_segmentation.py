"""How far extra segment boundaries move the fluid engine's escape (``docs/queueing.md``).

The scenario: ``chain3``, constant traffic, two of the db's three pods crash at 420 s; the db
fills its queue when they come back and retries hold it there until it escapes. Each run is
repeated with extra no-op control-plane refreshes (a boundary where nothing changes) at
random times in a window, and the escape times are compared::

    .venv/bin/python -m experiments.escape_segmentation [--seeds 11] [--draws 3]
        [--cuts 2] [--window 436 470]

Prints, over seeds x draws: how many runs changed whether the db escaped at all, and the
largest and mean shift of the escape time. The same script runs against an older engine
(``PYTHONPATH=<old checkout>``): it only wraps ``FluidEngine._escape`` to log the escapes.
"""

from __future__ import annotations

import argparse
from collections.abc import Generator
from typing import Any

import numpy as np

from envs.scenarios.loader import load_scenario
from envs.sim.fluid import FluidEngine
from envs.sim.simulator import Simulator

CRASH = {"kind": "pod_crash", "service": "db", "at_s": 420.0, "pods": 2}


def escape_times(seed: int, cuts: list[float], horizon_s: float = 900.0) -> list[float]:
    """Times at which a service escaped, with no-op refreshes at ``cuts``."""
    sc = load_scenario(
        "chain3", {"horizon_s": horizon_s, "fidelity": "fluid", "seed": seed, "faults": [CRASH]}
    )
    sim = Simulator(sc)
    sim.reset()
    eng = sim.engine
    assert isinstance(eng, FluidEngine)
    times: list[float] = []
    escape = eng._escape

    def logged(j: int) -> None:
        times.append(float(eng._t))  # the data plane stands at the escape time
        escape(j)

    eng._escape = logged  # type: ignore[method-assign]

    def refresh_at() -> Generator[Any, Any, None]:
        for t in sorted(cuts):
            yield eng.env.timeout(t - eng.env.now)
            eng.cp.refresh()

    eng.env.process(refresh_at())
    while not sim.done:
        sim.step([])
    return times


def main() -> None:
    """Run the comparison and print its summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=11)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--cuts", type=int, default=2)
    ap.add_argument("--window", type=float, nargs=2, default=(436.0, 470.0))
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    shifts: list[float] = []
    flips = runs = 0
    for seed in range(args.seeds):
        base = escape_times(seed, [])
        for _ in range(args.draws):
            lo, hi = (float(x) for x in args.window)
            cuts = [float(x) for x in rng.uniform(lo, hi, size=args.cuts)]
            got = escape_times(seed, cuts)
            runs += 1
            if bool(base) != bool(got):
                flips += 1
            elif base:
                shifts.append(abs(got[0] - base[0]))
    print(
        f"{runs} runs ({args.seeds} seeds x {args.draws} draws of {args.cuts} boundaries in "
        f"{args.window[0]:g}-{args.window[1]:g} s): escaped or not changed in {flips}; "
        f"escape time shift max {max(shifts):.3f} s, mean {np.mean(shifts):.3f} s"
    )


if __name__ == "__main__":
    main()
