"""Fluid vs request-level agreement tables and plots (``docs/fidelity.md``).

Steady state: ``.venv/bin/python -m experiments.fidelity_report [--horizon 300] [--out docs]``
writes ``<out>/fidelity_table.md`` (paste it into ``docs/fidelity.md``) and
``<out>/img/fidelity.png``.

Overload suite: ``.venv/bin/python -m experiments.fidelity_report --suite overload
--policies hpa runbook --seeds 2`` runs every entry of ``configs/suites/overload.yaml`` under
each policy at both fidelities (:func:`agents.evaluation.fidelity.check_fidelity`), writes one
``<entry>__<policy>.json`` per run to ``--results`` (default
``experiments/results/fidelity_overload/``) as it finishes, then builds the table
(``<results>/table.md``) and the plots (``<out>/img/fidelity_overload*.png``) from every JSON
there, and writes the table into ``<out>/fidelity.md`` between :data:`TABLE_START` and
:data:`TABLE_END`. ``--only chain3`` keeps the entries whose id starts with a prefix;
``--table-only`` rebuilds the table and plots from the JSON files without running anything.
``--fluid-only`` re-runs only the fluid side of every JSON file there (after a change to the
fluid engine alone) and keeps its request-level runs, whose command stays recorded in
``request_command``: the request level is deterministic per seed, so re-running it would
reproduce them. ``--more-seeds N`` (with ``--fluid-only``) first extends those files to ``N``
seeds per fidelity, running only the request-level seeds they lack (the recorded ones are
kept), then re-runs the fluid side of all ``N``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from agents.evaluation.evaluate import resolve_policy
from agents.evaluation.fidelity import (
    JUDGED,
    FidelityReport,
    RunMetrics,
    RunTask,
    check_fidelity,
    compare_metrics,
    fmt_value,
    overall_verdict,
    run_task,
)
from agents.parallel import parallel_map
from envs.scenarios.loader import load_scenario
from envs.scenarios.suites import load_suite
from envs.sim.validation import RunStats, at_utilisation, compare, without_timeouts

UTILS = (0.2, 0.5, 0.7, 0.9)
OVERLOAD_RESULTS = Path("experiments/results/fidelity_overload")
TABLE_START = "<!-- overload-table:start -->"
TABLE_END = "<!-- overload-table:end -->"
"""Markers in ``<out>/fidelity.md`` between which the overload table is written."""
OVERLOAD = 1.3


def _row(name: str, util: float, fl: RunStats, rq: RunStats, e: int, wall: float) -> str:
    thr = np.abs(fl.throughput / rq.throughput - 1).max()
    mean = np.abs(fl.mean_latency / rq.mean_latency - 1).max()
    p99 = np.abs(fl.p99 / rq.p99 - 1).max()
    err = np.abs(fl.error_rate - rq.error_rate).max() * 100
    return (
        f"| {name} | {util:.1f} | {thr:.2%} | {mean:.1%} | {p99:.1%} | {err:.2f} | "
        f"{fl.p99[e] * 1e3:.1f} / {rq.p99[e] * 1e3:.1f} | {wall:.1f} |"
    )


def main() -> None:
    """Build the steady-state table and plot, or run the overload suite (``--suite``)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--horizon", type=float, default=300.0)
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--suite", default=None, help="run this suite at both fidelities instead")
    ap.add_argument("--policies", nargs="+", default=["hpa", "runbook"])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=[], help="entry id prefixes to run")
    ap.add_argument("--results", type=Path, default=OVERLOAD_RESULTS)
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument(
        "--fluid-only",
        action="store_true",
        help="re-run the fluid runs of the JSON files in --results, keep their request runs",
    )
    ap.add_argument(
        "--more-seeds",
        type=int,
        default=0,
        help="with --fluid-only: first extend those files to this many seeds, running only "
        "the request-level seeds they lack",
    )
    args = ap.parse_args()
    if args.suite is not None:
        run_overload(args)
        return
    rows = []
    points: dict[str, list[tuple[float, float, float, float, float]]] = {}
    for name in ("chain3", "boutique"):
        base = load_scenario(name)
        cases = [
            (u, at_utilisation(base, u, horizon_s=args.horizon, seed=args.seed)) for u in UTILS
        ]
        cases.append(
            (
                OVERLOAD,
                at_utilisation(
                    without_timeouts(base), OVERLOAD, horizon_s=args.horizon, seed=args.seed
                ),
            )
        )
        for util, sc in cases:
            t0 = time.perf_counter()
            fl, rq = compare(sc)
            total = time.perf_counter() - t0
            entry = rq.services.index(sc.topology.entry)
            rows.append(_row(name, util, fl, rq, entry, total))
            points.setdefault(name, []).append(
                (
                    util,
                    float(np.abs(fl.throughput / rq.throughput - 1).max()),
                    float(np.abs(fl.mean_latency / rq.mean_latency - 1).max()),
                    float(np.abs(fl.p99 / rq.p99 - 1).max()),
                    float(np.abs(fl.error_rate - rq.error_rate).max()),
                )
            )
            print(rows[-1], flush=True)
    header = (
        "| topology | utilisation of busiest service | throughput, max rel. diff | "
        "mean latency, max rel. diff | p99, max rel. diff | error rate, max diff (pp) | "
        "entry p99 ms fluid / request | wall s (both runs) |\n|---|---|---|---|---|---|---|---|"
    )
    cmd = f"python -m experiments.fidelity_report --horizon {args.horizon:g} --seed {args.seed}"
    text = (
        f"<!-- generated by `{cmd}` on {time.strftime('%Y-%m-%d')}, "
        f"{platform.processor() or platform.machine()}, python {platform.python_version()} -->\n"
        f"Command: `{cmd}` (horizon {args.horizon:g} s per run, first scrape skipped as "
        f"warm-up; maxima over all services). Utilisation {OVERLOAD} is overload with "
        "timeouts and retries removed, so excess load is dropped at the queue limit.\n\n"
        f"{header}\n" + "\n".join(rows) + "\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fidelity_table.md").write_text(text)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    titles = ("throughput", "mean latency", "p99 latency", "error rate (abs.)")
    limits = (0.01, 0.10, 0.20, 0.01)
    for k, ax in enumerate(axes):
        for name, pts in points.items():
            arr = np.array(pts)
            ax.plot(arr[:, 0], arr[:, k + 1], "o-", label=name)
        ax.axhline(limits[k], color="k", ls="--", lw=1, label="tolerance")
        ax.set_title(f"{titles[k]}: max |fluid/request - 1|" if k < 3 else titles[k])
        ax.set_xlabel("utilisation of busiest service")
    axes[0].legend()
    fig.suptitle(f"Fluid vs request-level engine ({cmd})", fontsize=9)
    fig.tight_layout()
    (args.out / "img").mkdir(exist_ok=True)
    fig.savefig(args.out / "img" / "fidelity.png", dpi=110)
    print(f"wrote {args.out / 'fidelity_table.md'} and {args.out / 'img' / 'fidelity.png'}")


# --------------------------------------------------------------------------------------------
# overload suite


def _command(args: argparse.Namespace) -> str:
    parts = [
        f"python -m experiments.fidelity_report --suite {args.suite}",
        f"--policies {' '.join(args.policies)} --seeds {args.seeds} --workers {args.workers}",
    ]
    if args.only:
        parts.append(f"--only {' '.join(args.only)}")
    return " ".join(parts)


def run_overload(args: argparse.Namespace) -> None:
    """Run the suite's entries (unless ``--table-only``), then build the table and plots."""
    results: Path = args.results
    results.mkdir(parents=True, exist_ok=True)
    if args.fluid_only:
        rerun_fluid(results, args.workers, args.only, args.more_seeds)
    elif not args.table_only:
        suite = load_suite(args.suite)
        entries = [e for e in suite if not args.only or e.id.startswith(tuple(args.only))]
        for name in args.policies:
            spec = resolve_policy(name)
            for entry in entries:
                t0 = time.perf_counter()
                report = check_fidelity(entry.scenario, spec, args.seeds, args.workers)
                data = report.to_dict()
                data["entry"] = entry.id
                data["description"] = entry.scenario.description
                data["wall_s"] = time.perf_counter() - t0
                data["command"] = _command(args)
                data["machine"] = f"{platform.machine()}, python {platform.python_version()}"
                path = results / f"{entry.id}__{spec.label}.json"
                path.write_text(json.dumps(data, indent=2))
                print(
                    f"{entry.id} / {spec.label}: {report.verdict} "
                    f"({data['wall_s']:.0f} s wall) -> {path}",
                    flush=True,
                )
    build_overload_outputs(results, args.out)


def rerun_fluid(results: Path, workers: int, only: list[str], more_seeds: int = 0) -> None:
    """Re-run the fluid side of each ``<entry>__<policy>.json`` in ``results`` in place.

    The request-level runs are kept as they are (the request level is deterministic per
    seed; their command moves to ``request_command``); the fluid runs, the agreement rows
    and the verdict are recomputed with the current fluid engine. With ``more_seeds`` above
    a file's seed count, the request-level seeds it lacks are run first and appended (their
    command is added to ``request_command``).
    """
    suite = {e.id: e for e in load_suite("overload")}
    files = [
        f for f in sorted(results.glob("*__*.json")) if not only or f.name.startswith(tuple(only))
    ]
    olds = [json.loads(f.read_text()) for f in files]
    if more_seeds:
        _add_request_seeds(files, olds, suite, more_seeds, workers)
    tasks = []
    for old in olds:
        if old["entry"] not in suite:
            raise SystemExit(f"{old['entry']!r} is not an entry of the overload suite")
        sc = suite[old["entry"]].scenario
        spec = resolve_policy(old["policy"])
        tasks += [
            RunTask(
                sc.model_copy(update={"fidelity": "fluid", "seed": seed}), spec, old["window_s"]
            )
            for seed in old["seeds"]
        ]
    t0 = time.perf_counter()
    runs = parallel_map(run_task, tasks, workers)
    k = 0
    for path, old in zip(files, olds, strict=True):
        sc = suite[old["entry"]].scenario
        fluid = runs[k : k + len(old["seeds"])]
        k += len(old["seeds"])
        request = [RunMetrics(**r) for r in old["request"]]
        rows = compare_metrics(fluid, request, sc.scrape_interval_s)
        report = FidelityReport(
            sc.name,
            old["policy"],
            old["seeds"],
            old["window_s"],
            rows,
            overall_verdict(rows),
            fluid,
            request,
        )
        data = report.to_dict()
        data["request"] = old["request"]  # exactly as recorded
        data["entry"] = old["entry"]
        data["description"] = old.get("description", sc.description)
        data["wall_s"] = old["wall_s"]
        data["request_command"] = old.get("request_command", old["command"])
        data["command"] = (
            f"python -m experiments.fidelity_report --suite overload --fluid-only "
            f"(fluid runs; request-level runs from: {data['request_command']})"
        )
        data["machine"] = f"{platform.machine()}, python {platform.python_version()}"
        path.write_text(json.dumps(data, indent=2))
        print(f"{old['entry']} / {old['policy']}: {old['verdict']} -> {report.verdict}", flush=True)
    print(f"re-ran {len(tasks)} fluid runs in {time.perf_counter() - t0:.0f} s wall")


def _add_request_seeds(
    files: list[Path], olds: list[dict], suite: dict, n: int, workers: int
) -> None:
    """Extend each file's request-level runs to ``n`` seeds (in ``olds``, in place)."""
    tasks, owners = [], []
    for i, old in enumerate(olds):
        sc = suite[old["entry"]].scenario
        spec = resolve_policy(old["policy"])
        first = old["seeds"][0]
        if old["seeds"] != list(range(first, first + len(old["seeds"]))):
            raise SystemExit(f"{files[i]}: seeds {old['seeds']} are not consecutive")
        for seed in range(first + len(old["seeds"]), first + n):
            tasks.append(
                RunTask(
                    sc.model_copy(update={"fidelity": "request", "seed": seed}),
                    spec,
                    old["window_s"],
                )
            )
            owners.append((i, seed))
    t0 = time.perf_counter()
    runs = parallel_map(run_task, tasks, workers, on_result=_progress)
    added = dict.fromkeys(range(len(olds)), 0)
    for (i, seed), run in zip(owners, runs, strict=True):
        olds[i]["seeds"].append(seed)
        # JSON-ready as check_fidelity writes it (NaN as None)
        olds[i]["request"].append(
            FidelityReport("", "", [], 0.0, [], "", [], [run]).to_dict()["request"][0]
        )
        added[i] += 1
    cmd = (
        f"python -m experiments.fidelity_report --suite overload --fluid-only --more-seeds {n} "
        f"--workers {workers}"
    )
    for i, old in enumerate(olds):
        if not added[i]:
            continue
        k = len(old["seeds"]) - added[i]
        base = old.get("request_command", old["command"])
        seeds = old["seeds"]
        old["request_command"] = (
            f"{base} (seeds {seeds[0]}-{seeds[k - 1]}); {cmd} (seeds {seeds[k]}-{seeds[-1]})"
        )
        old["wall_s"] = old["wall_s"] + sum(r["wall_s"] for r in old["request"][k:])
    print(f"ran {len(tasks)} request-level runs in {time.perf_counter() - t0:.0f} s wall")


def _progress(i: int, run: RunMetrics) -> None:
    print(f"  request run {i}: seed {run.seed}, {run.wall_s:.0f} s", flush=True)


def _cell(row: dict) -> str:
    m = row["metric"]
    if row["verdict"] == "fail":
        mark = " ✗"
    elif row["verdict"] == "pass" and row["within_tolerance"] is False:
        mark = " ≈"  # passes only because the request level's own seeds spread as wide
    else:
        mark = ""
    return f"{fmt_value(row['fluid'], m)} / {fmt_value(row['request_mean'], m)}{mark}"


def build_overload_outputs(results: Path, out: Path) -> str:
    """Table and plots of the overload suite from the JSON files in ``results``.

    Writes ``<results>/table.md``, ``<out>/img/fidelity_overload*.png`` and the table into
    ``<out>/fidelity.md`` between the markers, when that file has them.
    """
    files = sorted(results.glob("*__*.json"))
    if not files:
        raise SystemExit(f"no <entry>__<policy>.json files in {results}; run without --table-only")
    runs = [json.loads(f.read_text()) for f in files]
    header = (
        "| entry | policy | seeds | SLO violation s | failed requests | peak-window error rate "
        "| recovery s | peak p99 s | verdict |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = []
    for r in runs:
        rows = {row["metric"]: row for row in r["rows"]}
        lines.append(
            f"| {r['entry']} | {r['policy']} | {len(r['seeds'])} | "
            + " | ".join(
                _cell(rows[m])
                for m in ("slo_violation_s", "failed_requests", "peak_error_rate", "recovery_s")
            )
            + f" | {_cell(rows['peak_p99_s'])} | **{r['verdict']}** |"
        )
    passed = sum(r["verdict"] == "pass" for r in runs)
    per_metric = {
        m: sum(next(x for x in r["rows"] if x["metric"] == m)["verdict"] == "pass" for r in runs)
        for m in JUDGED
    }
    commands = sorted({r["command"] for r in runs})
    seeds = sorted({str(len(r["seeds"])) for r in runs})
    text = (
        f"<!-- generated by `python -m experiments.fidelity_report --suite overload "
        f"--table-only` from {len(runs)} runs in {results} -->\n"
        f"Runs made by {len(commands)} invocation(s) of `python -m experiments.fidelity_report "
        f"--suite ... --seeds {'/'.join(seeds)}` with `--policies`/`--only` subsets (each JSON "
        f"file records its own command), {runs[0]['machine']}. "
        "Each cell is fluid / request-level mean; ✗ marks a metric outside its tolerance and "
        "outside the request level's seed range (fail), ≈ one outside its tolerance but "
        "inside that range (pass: the request level's own seeds differ as much).\n\n"
        f"{header}\n" + "\n".join(lines) + "\n\n"
        f"Overall: {passed}/{len(runs)} runs pass; per metric: "
        + ", ".join(f"{m} {n}/{len(runs)}" for m, n in per_metric.items())
        + ".\n"
    )
    (results / "table.md").write_text(text)
    doc = out / "fidelity.md"
    if doc.is_file() and TABLE_START in doc.read_text():
        body = doc.read_text()
        head, rest = body.split(TABLE_START, 1)
        _, tail = rest.split(TABLE_END, 1)
        doc.write_text(f"{head}{TABLE_START}\n{text}{TABLE_END}{tail}")
    (out / "img").mkdir(parents=True, exist_ok=True)
    _plot_scatter(runs, out / "img" / "fidelity_overload.png")
    _plot_timelines(runs, out / "img" / "fidelity_overload_timelines.png")
    print(text)
    print(f"wrote {results / 'table.md'} and {out / 'img'}/fidelity_overload*.png")
    return text


def _plot_scatter(runs: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    titles = {
        "slo_violation_s": "SLO violation (s)",
        "failed_requests": "failed requests",
        "peak_error_rate": "peak-window error rate",
        "recovery_s": "recovery (s)",
    }
    topo_colour = {"chain3": "C0", "boutique": "C1", "mesh40": "C2"}
    for ax, m in zip(axes, JUDGED, strict=True):
        hi = 0.0
        for r in runs:
            row = next(x for x in r["rows"] if x["metric"] == m)
            if row["fluid"] is None or row["request_mean"] is None:
                continue
            colour = topo_colour.get(r["entry"].split("-")[0], "C3")
            marker = "o" if r["policy"] == "hpa" else "s"
            err = [
                [row["request_mean"] - row["request_min"]],
                [row["request_max"] - row["request_mean"]],
            ]
            ax.errorbar(row["request_mean"], row["fluid"], xerr=err, fmt=marker, color=colour, ms=5)
            hi = max(hi, row["fluid"], row["request_max"])
        ax.plot([0, hi], [0, hi], "k--", lw=1)
        ax.set_title(titles[m])
        ax.set_xlabel("request level (mean, seed range)")
        ax.set_ylabel("fluid")
    handles = [
        plt.Line2D([], [], color=c, marker="o", ls="", label=t) for t, c in topo_colour.items()
    ] + [
        plt.Line2D([], [], color="k", marker="o", ls="", label="hpa"),
        plt.Line2D([], [], color="k", marker="s", ls="", label="runbook"),
    ]
    axes[0].legend(handles=handles, fontsize=8)
    fig.suptitle("Overload suite: fluid vs request level (diagonal = agreement)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_timelines(runs: list[dict], path: Path) -> None:
    n = len(runs)
    cols = 4
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(16, 2.6 * rows), squeeze=False)
    for ax, r in zip(axes.flat, runs, strict=False):
        for key, colour in (("fluid", "C0"), ("request", "C1")):
            ys = np.array([x["window_error_rate"] for x in r[key]], dtype=float)
            t = np.array(r[key][0]["window_t"])
            ax.plot(t, np.nanmean(ys, axis=0), color=colour, label=key)
            if len(ys) > 1:
                ax.fill_between(
                    t, np.nanmin(ys, axis=0), np.nanmax(ys, axis=0), color=colour, alpha=0.25
                )
        ax.set_title(f"{r['entry']} / {r['policy']}: {r['verdict']}", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Entry error rate per 60 s window: fluid vs request level (band: seed range)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
