r"""Oracle headroom: the oracle planner (``agents.oracle``) against ``tuned_runbook``, paired.

THE ORACLE IS AN UPPER BOUND, NOT A DEPLOYABLE POLICY: it reads the hidden fault list and
plans on cloned simulator state. The question it answers: how much better than
``tuned_runbook`` can any policy in the residual action space be on these incidents?

::

    nice -n 10 .venv/bin/python -m experiments.oracle_headroom \\
        --suite train:validation --seeds 3 --workers 2 \\
        --out experiments/results/control/oracle/validation

Every (entry, replicate) runs one oracle episode; its ``tuned_runbook`` reference is the
no-op's projection at the first planning point, which is exactly ``tuned_runbook``'s run with
the same seed (``tests/test_oracle.py``), so the two are paired run by run. Writes to ``--out``:

* ``<label>/results.json`` and ``tuned_runbook/results.json``: every run's score in the
  format of ``opsworld evaluate``'s ``<policy>/results.json``
  (:meth:`agents.evaluation.suite.SuiteResult.to_json`);
* ``<label>/choices.json``: per run, the oracle's plan switches and clone counts;
* ``<label>/headroom.json`` and ``<label>/headroom.md``: the paired comparison (per entry,
  means with stratified bootstrap 95 % CIs, the SLO-minutes ratio, with and without the
  entry that carries most of the oracle's lead), the command, commit and machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluation.suite import RunScore, SuiteResult
from agents.oracle import OracleConfig, oracle_summary, run_oracle
from agents.parallel import parallel_map
from envs.scenarios.schema import Scenario
from envs.scenarios.scoring import aggregate
from envs.scenarios.suites import load_suite

HEADLINE = ("slo_violation_min", "allocated_cost", "disruptive_actions")
"""The metrics compared (the episode's own reward terms)."""


def _task(
    job: tuple[str, Scenario, int, int, str, OracleConfig],
) -> tuple[RunScore, RunScore, dict[str, Any]]:
    """One oracle episode: (oracle run, tuned_runbook run, the oracle's choices)."""
    entry_id, scenario, k, seed, fidelity, config = job
    start = time.perf_counter()
    run = run_oracle(scenario, seed, fidelity, config)
    wall = time.perf_counter() - start
    info = {"entry": entry_id, "replicate": k, "seed": seed, "wall_s": wall}
    info.update(oracle_summary(run))
    return (
        RunScore(entry_id, k, seed, run.score, wall),
        RunScore(entry_id, k, seed, run.reference, 0.0),
        info,
    )


def paired(
    oracle: Sequence[RunScore],
    reference: Sequence[RunScore],
    metric: str,
    seed: int = 0,
    n_resamples: int = 2000,
) -> dict[str, Any]:
    """Paired comparison of one metric: per-entry means, overall means and their ratio.

    CIs: stratified bootstrap (entries are the strata, runs resampled within each entry,
    the same resample for both methods, so the pairing is kept).
    """
    entries = list(dict.fromkeys(r.entry_id for r in reference))
    a: dict[str, list[float]] = {e: [] for e in entries}  # oracle
    b: dict[str, list[float]] = {e: [] for e in entries}  # reference
    ref_by_key = {(r.entry_id, r.replicate): r for r in reference}
    for r in oracle:
        ref = ref_by_key[(r.entry_id, r.replicate)]
        a[r.entry_id].append(float(getattr(r.score, metric)))
        b[r.entry_id].append(float(getattr(ref.score, metric)))
    rng = np.random.default_rng(seed)

    def stats(keep: list[str]) -> dict[str, Any]:
        xa = np.concatenate([a[e] for e in keep])
        xb = np.concatenate([b[e] for e in keep])
        boots = np.empty((n_resamples, 2))
        for i in range(n_resamples):
            ia, ib = [], []
            for e in keep:
                idx = rng.integers(0, len(a[e]), len(a[e]))
                ia.append(np.asarray(a[e])[idx])
                ib.append(np.asarray(b[e])[idx])
            boots[i] = (np.concatenate(ia).mean(), np.concatenate(ib).mean())
        diff = boots[:, 0] - boots[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = boots[:, 0] / boots[:, 1]
        ratio = ratio[np.isfinite(ratio)]
        wins = int(np.sum(xa < xb))
        ties = int(np.sum(xa == xb))
        return {
            "entries": len(keep),
            "runs": int(xa.size),
            "oracle_mean": float(xa.mean()),
            "oracle_ci": _ci(boots[:, 0]),
            "reference_mean": float(xb.mean()),
            "reference_ci": _ci(boots[:, 1]),
            "diff_mean": float(xa.mean() - xb.mean()),
            "diff_ci": _ci(diff),
            "ratio": float(xa.mean() / xb.mean()) if xb.mean() > 0 else None,
            "ratio_ci": _ci(ratio) if ratio.size else None,
            "oracle_better": wins,
            "ties": ties,
            "oracle_worse": int(xa.size - wins - ties),
        }

    per_entry = {
        e: {"oracle": float(np.mean(a[e])), "reference": float(np.mean(b[e]))} for e in entries
    }
    out = {"per_entry": per_entry, "all": stats(entries)}
    lead = {e: per_entry[e]["reference"] - per_entry[e]["oracle"] for e in entries}
    carrier = max(entries, key=lambda e: lead[e])
    if len(entries) > 1:
        out["without_top_entry"] = {
            "dropped": carrier,
            **stats([e for e in entries if e != carrier]),
        }
    return out


def _ci(x: np.ndarray) -> list[float]:
    lo, hi = np.percentile(x, [2.5, 97.5])
    return [float(lo), float(hi)]


def machine() -> dict[str, Any]:
    """Where it ran: host, CPUs, load average, Python."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "node": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg_1_5_15": load,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_commit() -> str | None:
    """The repository's HEAD commit (None outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _fmt(x: float | None, d: int = 2) -> str:
    return "" if x is None else f"{x:.{d}f}"


def _fmt_ci(ci: Sequence[float] | None, d: int = 2) -> str:
    return "" if ci is None else f"[{ci[0]:.{d}f}, {ci[1]:.{d}f}]"


def markdown(report: dict[str, Any]) -> str:
    """The headroom page (``headroom.md``)."""
    label = report["label"]
    lines = [
        f"# Oracle headroom on `{report['suite']}` ({report['fidelity']})",
        "",
        f"**`{label}` is an upper bound, not a deployable policy**: it reads the hidden fault "
        "list and plans on cloned simulator state (`agents/oracle.py`).",
        "",
        f"Command: `{report['command']}`  ",
        f"Commit: `{report['commit']}`; {report['date']}; machine: {report['machine']['cpus']} "
        f"CPUs, load average at the end {report['machine']['load_avg_1_5_15']}; "
        f"wall {report['wall_s']:.0f} s with {report['workers']} worker(s).",
        "",
        f"{report['entries']} entries x {report['seeds']} seeds, paired run by run with "
        "`tuned_runbook` (same scenario and seed). Means with stratified bootstrap 95% CIs "
        "(entries are the strata).",
        "",
        "| metric | tuned_runbook | oracle | oracle - tuned_runbook | ratio | "
        "oracle better / tie / worse |",
        "|---|---|---|---|---|---|",
    ]
    for m in HEADLINE:
        s = report["metrics"][m]["all"]
        lines.append(
            f"| `{m}` | {_fmt(s['reference_mean'], 3)} {_fmt_ci(s['reference_ci'], 3)} "
            f"| {_fmt(s['oracle_mean'], 3)} {_fmt_ci(s['oracle_ci'], 3)} "
            f"| {_fmt(s['diff_mean'], 3)} {_fmt_ci(s['diff_ci'], 3)} "
            f"| {_fmt(s['ratio'])} {_fmt_ci(s['ratio_ci'])} "
            f"| {s['oracle_better']} / {s['ties']} / {s['oracle_worse']} |"
        )
    slo = report["metrics"]["slo_violation_min"]
    w = slo.get("without_top_entry")
    if w:
        lines += [
            "",
            f"Without `{w['dropped']}` (the entry carrying most of the oracle's lead): SLO "
            f"minutes {_fmt(w['reference_mean'])} -> {_fmt(w['oracle_mean'])}, ratio "
            f"{_fmt(w['ratio'])} {_fmt_ci(w['ratio_ci'])}.",
        ]
    lines += [
        "",
        "Per entry (mean over seeds): SLO-violation minutes, allocated cost, disruptive actions.",
        "",
        "| entry | SLO min tuned_runbook | SLO min oracle | cost tuned_runbook | cost oracle "
        "| disruptive tuned_runbook | disruptive oracle | oracle plan switches |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e in report["metrics"]["slo_violation_min"]["per_entry"]:
        row = [report["metrics"][m]["per_entry"][e] for m in HEADLINE]
        macros = report["macros_per_entry"].get(e, [])
        lines.append(
            f"| `{e}` | {row[0]['reference']:.2f} | {row[0]['oracle']:.2f} "
            f"| {row[1]['reference']:.3f} | {row[1]['oracle']:.3f} "
            f"| {row[2]['reference']:.1f} | {row[2]['oracle']:.1f} | {'; '.join(macros)} |"
        )
    lines += ["", f"Oracle settings: `{json.dumps(report['config'])}`", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Run the study and write its files; returns the headroom report."""
    suite = load_suite(args.suite)
    if args.limit is not None:
        suite = suite.subset(first=args.limit)
    config = OracleConfig(
        every=args.every,
        lead_s=args.lead_s,
        hold=args.hold,
        extra_holds=tuple(args.extra_holds),
        scale_steps=tuple(args.scale_steps),
        hpa_targets=tuple(args.hpa_targets),
        shed_fractions=tuple(args.shed_fractions),
        max_services=args.max_services,
        margin_min=args.margin,
    )
    jobs = [
        (e.id, e.scenario, k, e.run_seed(k), args.fidelity, config)
        for e in suite.entries
        for k in range(args.seeds)
    ]
    done = [0]
    out = Path(args.out)
    (out / args.label).mkdir(parents=True, exist_ok=True)
    partial = out / args.label / "runs.partial.jsonl"
    partial.write_text("")

    def progress(i: int, res: tuple[RunScore, RunScore, dict[str, Any]]) -> None:
        done[0] += 1
        o, r, info = res
        with partial.open("a") as f:  # survives an interrupted study; removed at the end
            f.write(json.dumps({"oracle": o.as_dict(), "tuned_runbook": r.as_dict()}) + "\n")
        print(
            f"[{done[0]}/{len(jobs)}] {o.entry_id} k={o.replicate}: SLO min "
            f"{r.score.slo_violation_min:.2f} -> {o.score.slo_violation_min:.2f}, "
            f"{info['switches']} switches, {info['clones']} clones, {info['wall_s']:.1f} s",
            flush=True,
        )

    start = time.perf_counter()
    outs = parallel_map(_task, jobs, args.workers, on_result=progress)
    wall = time.perf_counter() - start
    oracle_runs = [o[0] for o in outs]
    ref_runs = [o[1] for o in outs]
    infos = [o[2] for o in outs]
    results = {}
    for label, runs, w in ((args.label, oracle_runs, wall), ("tuned_runbook", ref_runs, 0.0)):
        res = SuiteResult(
            suite=suite.name,
            policy=label,
            fidelity=args.fidelity,
            replicates=list(range(args.seeds)),
            runs=runs,
            summary=aggregate([r.score for r in runs]),
            wall_s=w,
            workers=args.workers,
            entries=suite.ids,
        )
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(res.to_json())
        results[label] = res
    (out / args.label / "choices.json").write_text(json.dumps(infos, indent=1))
    macros: dict[str, list[str]] = {}
    for info in infos:
        for c in info["choices"]:
            m = f"k{info['replicate']}@{c['t']:g}s {c['macro']}"
            macros.setdefault(info["entry"], []).append(m)
    report = {
        "label": args.label,
        "upper_bound": True,
        "note": "oracle: sees the hidden fault and plans on cloned simulator state; "
        "an upper bound, not a deployable policy",
        "suite": args.suite,
        "fidelity": args.fidelity,
        "entries": len(suite),
        "seeds": args.seeds,
        "workers": args.workers,
        "wall_s": wall,
        "command": "nice -n 10 .venv/bin/python -m experiments.oracle_headroom " + " ".join(argv),
        "commit": git_commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
        "metrics": {m: paired(oracle_runs, ref_runs, m) for m in HEADLINE},
        "macros_per_entry": macros,
        "clones": int(sum(i["clones"] for i in infos)),
        "planning_points": int(sum(i["planning_points"] for i in infos)),
    }
    (out / args.label / "headroom.json").write_text(json.dumps(report, indent=1))
    (out / args.label / "headroom.md").write_text(markdown(report))
    partial.unlink()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.oracle_headroom``; see the module docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m experiments.oracle_headroom", description=__doc__)
    p.add_argument("--suite", default="train:validation")
    p.add_argument("--seeds", type=int, default=3, help="replicates per entry")
    p.add_argument("--workers", type=int, default=2, help="episodes in parallel")
    p.add_argument("--fidelity", default="fluid", choices=["fluid", "request"])
    p.add_argument("--limit", type=int, default=None, help="first N entries only")
    p.add_argument("--every", type=int, default=OracleConfig.every)
    p.add_argument("--lead-s", type=float, default=OracleConfig.lead_s)
    p.add_argument("--hold", type=int, default=OracleConfig.hold)
    p.add_argument("--margin", type=float, default=OracleConfig.margin_min)
    p.add_argument("--extra-holds", type=int, nargs="*", default=list(OracleConfig.extra_holds))
    p.add_argument("--scale-steps", type=int, nargs="*", default=list(OracleConfig.scale_steps))
    p.add_argument("--hpa-targets", type=int, nargs="*", default=list(OracleConfig.hpa_targets))
    p.add_argument(
        "--shed-fractions", type=float, nargs="*", default=list(OracleConfig.shed_fractions)
    )
    p.add_argument("--max-services", type=int, default=OracleConfig.max_services)
    p.add_argument("--label", default="oracle", help="folder and policy name of the oracle")
    p.add_argument("--out", default="experiments/results/control/oracle/validation")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.workers < 1:
        p.error("--seeds and --workers must be >= 1")
    report = run(args, argv)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
