"""What the safety guard costs: each policy on a suite with and without the guard.

``python -m agents.bench.serve_guard POLICY... [--suite holdout] [--topology chain3]
[--seeds 2] [--workers 2] [--out experiments/results]`` runs ``opsworld evaluate`` twice
(:func:`agents.evaluation.evaluate.evaluate_policies`, ``guard=false`` then ``guard=true``:
every policy behind ``guard_policy(policy, control_spec(scenario))`` with the default
limits) on the same entries and seeds, and writes ``guard_cost.json`` and
``guard_cost.md``: per policy the mean SLO-violation minutes and allocated cost (with their
95 % CIs), the change the guard makes, and the paired per-run differences.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluation.evaluate import evaluate as evaluate_policies
from agents.run_config import Fidelity

METRICS: tuple[str, ...] = ("slo_violation_min", "cost")


@dataclass
class _Conf:
    """The fields :func:`evaluate_policies` reads (``experiments.evaluate.EvaluateConfig``)."""

    policies: list[str]
    suite: str
    seeds: int
    workers: int
    topology: str | None
    out: str
    guard: bool
    policy: str = "static"
    fidelity: Fidelity = Fidelity.fluid
    limit: int | None = None
    timelines: int = 0
    weights: str = "final"
    deterministic: bool | None = None
    backend: str = "local"


def guard_cost(
    policies: list[str],
    *,
    suite: str = "holdout",
    topology: str | None = "chain3",
    seeds: int = 2,
    workers: int = 2,
    work: Path,
) -> dict[str, Any]:
    """Evaluate ``policies`` with and without the guard; the comparison as a dict."""
    results: dict[bool, dict[str, Any]] = {}
    for guard in (False, True):
        conf = _Conf(
            list(policies), suite, seeds, workers, topology, str(work / f"guard-{guard}"), guard
        )
        results[guard] = evaluate_policies(conf, "", None)["results"]
    rows: dict[str, Any] = {}
    for label, plain in results[False].items():
        guarded = results[True][f"{label}-guard"]
        row: dict[str, Any] = {"runs": plain["runs"]}
        pairs = list(zip(plain["per_run"], guarded["per_run"], strict=True))
        assert all(a["entry"] == b["entry"] and a["seed"] == b["seed"] for a, b in pairs)
        for m in METRICS:
            diff = np.array([b[m] - a[m] for a, b in pairs], dtype=float)
            row[m] = {
                "without": plain["summary"][m]["mean"],
                "without_ci": plain["summary"][m]["mean_ci"],
                "with": guarded["summary"][m]["mean"],
                "with_ci": guarded["summary"][m]["mean_ci"],
                "change": float(np.nanmean(diff)),
                "runs_worse": int((diff > 1e-9).sum()),
                "runs_better": int((diff < -1e-9).sum()),
            }
        rows[label] = row
    return {"suite": suite, "topology": topology, "seeds": seeds, "policies": rows}


def markdown(report: dict[str, Any]) -> str:
    """The comparison as a page."""
    lines = [
        "# What the safety guard costs",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Date {report['date']}; suite `{report['suite']}`, topology `{report['topology']}`, "
        f"{report['seeds']} seed(s) per entry; the guard with its default limits "
        "(`configs/export.yaml`'s `guard`, `agents/guard.py`); load average "
        f"{report['load_average'][0]:.2f} (the figures are simulated, not timed).",
        "",
        "| policy | runs | SLO-violation min without | with | change | cost without | with "
        "| change | runs worse / better (SLO) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, r in report["policies"].items():
        s, c = r["slo_violation_min"], r["cost"]
        lines.append(
            f"| {label} | {r['runs']} | {s['without']:.2f} | {s['with']:.2f} | "
            f"{s['change']:+.2f} | {c['without']:.2f} | {c['with']:.2f} | {c['change']:+.2f} | "
            f"{s['runs_worse']} / {s['runs_better']} |"
        )
    lines += [
        "",
        "Change: the mean over paired runs (same entry, same seed) of guarded minus unguarded. "
        "Cost is the allocated cost of `docs/scoring.md`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m agents.bench.serve_guard")
    parser.add_argument("policies", nargs="+")
    parser.add_argument("--suite", default="holdout")
    parser.add_argument("--topology", default="chain3")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="guard-cost-") as tmp:
        report = guard_cost(
            args.policies,
            suite=args.suite,
            topology=args.topology or None,
            seeds=args.seeds,
            workers=args.workers,
            work=Path(tmp),
        )
    argv_used = sys.argv[1:] if argv is None else argv
    report["command"] = "python -m agents.bench.serve_guard " + shlex.join(argv_used)
    report["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["load_average"] = list(os.getloadavg())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "guard_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "guard_cost.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
