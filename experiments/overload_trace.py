"""Per-scrape traces of one overload-suite entry at both fidelities, side by side.

``.venv/bin/python -m experiments.overload_trace chain3-slow-db runbook --seed 0`` runs the
entry (``configs/suites/overload.yaml``) under the policy at the fluid engine and at the
request level with the same run seed (so the same traffic curve), prints every action each
policy took with its time, then one line per scrape and fidelity with the shed fraction and,
per service, the gauges asked for (``--fields``; default: rps, error rate, backlog, ready
replicas). This is how the causes in ``docs/fidelity.md`` ("Reading the overload results")
were found. ``--fluid-only`` skips the request level (a chain3 entry takes 0.2 s fluid and
0.5-3 minutes at the request level; mesh40 5-10 minutes).
"""

from __future__ import annotations

import argparse
import math

from agents.evaluation.evaluate import build_policy, resolve_policy
from agents.rollout import rollout
from envs.scenarios.suites import load_suite
from envs.sim.simulator import SimResult, Simulator


def run(entry: str, policy: str, fidelity: str, seed: int) -> SimResult:
    """One run of ``entry`` (replicate ``seed``: run seed ``entry seed + seed``)."""
    entries = {e.id: e for e in load_suite("overload")}
    if entry not in entries:
        raise SystemExit(f"entry={entry!r}: not in the overload suite; one of {sorted(entries)}")
    sc = entries[entry].scenario
    sc = sc.model_copy(update={"fidelity": fidelity, "seed": sc.seed + seed})
    return rollout(Simulator(sc), build_policy(resolve_policy(policy), sc))


def _fmt(x: float) -> str:
    return "      -" if math.isnan(x) else f"{x:7.3g}"


def main() -> None:
    """Parse the arguments, run both fidelities, print the traces."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("entry", help="overload suite entry id, e.g. chain3-slow-db")
    ap.add_argument("policy", help="policy name, e.g. hpa or runbook")
    ap.add_argument("--seed", type=int, default=0, help="replicate (0 = the entry's seed)")
    ap.add_argument("--fields", default="rps,error_rate,backlog,replicas_ready")
    ap.add_argument("--fluid-only", action="store_true")
    args = ap.parse_args()
    fields = args.fields.split(",")
    fids = ["fluid"] if args.fluid_only else ["fluid", "request"]
    runs = {f: run(args.entry, args.policy, f, args.seed) for f in fids}
    names = runs["fluid"].frames[0].services
    for f, res in runs.items():
        print(f"{f} actions:")
        for t, a in res.actions:
            print(f"  {t:6.0f} s  {a}")
    print("t (s)  fid     shed | " + " | ".join(f"{x}: {', '.join(names)}" for x in fields))
    for i, frame in enumerate(runs["fluid"].frames):
        for f, res in runs.items():
            fr = res.frames[i]
            cells = " | ".join(" ".join(_fmt(float(v)) for v in fr[x]) for x in fields)
            shed = fr.cluster_value("shed_fraction")
            print(f"{frame.t:5.0f}  {f:7s} {shed:4.2f} | {cells}")


if __name__ == "__main__":
    main()
