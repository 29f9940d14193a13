"""Collect the training episodes of the ``wm.arch=graph`` fits once, for every seed.

The train:fit entries of chain3 and boutique except ``fit-world-model``'s calibration
hold-out (``calib_split=entries calib_every=4``: entries 3, 7, 11, ... of each topology), under
all five behaviours, replicates 0 and 1 (``perturb=1.0``), in two processes; written as one
:class:`~agents.world_model.data.Collection` ``.npz`` that ``fit-world-model episodes=...``
reads.

Usage: ``python -m experiments.wm_graph_collect runs/train_fit_episodes.npz``
"""

from __future__ import annotations

import sys
import time

from agents.world_model.data import BEHAVIOURS, Collection, collect
from envs.scenarios.suites import load_suite


def main(argv: list[str] | None = None) -> int:
    """Collect and save; prints the counts and wall seconds."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    start = time.time()
    entries = list(load_suite("train:fit").entries)
    parts = []
    for topo in ("chain3", "boutique"):
        mine = [e for e in entries if e.scenario.topology.name == topo]
        train = [e for i, e in enumerate(mine) if i % 4 != 3]
        parts.append(collect(train, BEHAVIOURS, range(2), 2, "fluid", progress=False, perturb=1.0))
        print(topo, len(parts[-1]), f"{time.time() - start:.0f} s", flush=True)
    data = Collection([e for p in parts for e in p.episodes], [m for p in parts for m in p.meta])
    data.save(args[0])
    print(f"saved {len(data)} episodes, {data.steps} steps ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
