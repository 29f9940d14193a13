r"""Rebuild the learned-control comparison (``experiments/results/control.md``) from run records.

Reads per-run JSON records in the format ``opsworld evaluate`` writes
(``<out>/<policy>/results.json``: ``per_run`` rows with ``entry``, ``replicate``,
``slo_violation_min``, ``allocated_cost``, ``disruptive_actions``, ``time_to_mitigate_s``,
``mitigated``, ``impacted``, ``horizon_s``), one file per training seed of a method (a rule
baseline or the oracle has one file), and writes, following ``docs/protocol.md``:

* per method, mean and interquartile mean (IQM) of SLO-violation minutes, allocated cost and
  disruptive actions over (training seed x entry x replicate), each with a 95 % stratified
  bootstrap confidence interval (``rliable``; the entries are the strata);
* the probability of improvement over the reference (fewer SLO-violation minutes; ties
  count one half) with its interval (``rliable``);
* paired per-entry differences against the reference (each entry's mean over the method's
  runs minus the reference's), their mean with a bootstrap interval over entries, with all
  entries, without the entry most in the method's favour and without the one most against
  it, and how many entries are better, worse or tied;
* time to mitigate over the impacted runs, the runs that never mitigate censored at the
  horizon: Kaplan-Meier median and the censored fraction;
* performance profiles of SLO-violation minutes (share of runs at or below each threshold,
  with 95 % bands; ``rliable``) and the per-entry differences, as PNG figures.

Usage::

    python -m experiments.control_report \\
        --method tuned_runbook=runs/val/tuned_runbook/results.json \\
        --method residual='runs/val/sb3-seed_*/results.json' \\
        --reference tuned_runbook --notes experiments/results/control/notes.md \\
        --out experiments/results --name control

``--method LABEL=PATTERN[,PATTERN...]`` (glob patterns; each file is one training seed);
``--notes`` is Markdown placed under the title (what was run, what was not). Writes
``<out>/<name>.md``, ``<out>/<name>.json``, ``<out>/<name>_profiles.png`` and
``<out>/<name>_paired.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import math
import platform
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

METRICS: tuple[tuple[str, str], ...] = (
    ("slo_violation_min", "SLO-violation min"),
    ("allocated_cost", "allocated cost"),
    ("disruptive_actions", "disruptive actions"),
)
"""The per-run figures aggregated (all: lower is better)."""


class RecordError(ValueError):
    """Records that cannot be compared; the message names the file and the fix."""


@dataclass(frozen=True)
class Method:
    """One method's runs.

    Attributes:
        label: Its name in the tables.
        files: The record files (one per training seed).
        runs: Every per-run row, each with ``_file`` (index into ``files``).
    """

    label: str
    files: tuple[str, ...]
    runs: tuple[dict[str, Any], ...]

    def entries(self) -> list[str]:
        """The entries it was run on, sorted."""
        return sorted({r["entry"] for r in self.runs})

    def restrict(self, entries: Sequence[str]) -> Method:
        """The runs on ``entries`` only."""
        keep = set(entries)
        return Method(self.label, self.files, tuple(r for r in self.runs if r["entry"] in keep))

    def matrix(self, metric: str, entries: Sequence[str]) -> np.ndarray:
        """``(seeds x replicates, entries)`` scores, rows ordered by (file, replicate).

        Raises:
            RecordError: A file lacks some (entry, replicate) another one has.
        """
        reps = sorted({int(r["replicate"]) for r in self.runs})
        cell: dict[tuple[int, int, str], float] = {}
        for r in self.runs:
            cell[(r["_file"], int(r["replicate"]), r["entry"])] = float(r[metric])
        rows = []
        for f in range(len(self.files)):
            for k in reps:
                row = []
                for e in entries:
                    if (f, k, e) not in cell:
                        raise RecordError(
                            f"{self.files[f]}: no run of entry {e!r} replicate {k} for "
                            f"{self.label}; evaluate every method on the same entries and "
                            "replicates (seeds=...)"
                        )
                    row.append(cell[(f, k, e)])
                rows.append(row)
        return np.asarray(rows, dtype=np.float64)


def load_method(label: str, patterns: Sequence[str]) -> Method:
    """The runs of ``label`` from the record files matching ``patterns``.

    Raises:
        RecordError: No file matches, or a file is not an ``opsworld evaluate`` record.
    """
    files: list[str] = []
    for p in patterns:
        found = sorted(glob.glob(p))
        if not found:
            raise RecordError(f"--method {label}={p}: no file matches")
        files += found
    runs: list[dict[str, Any]] = []
    for i, f in enumerate(files):
        try:
            data = json.loads(Path(f).read_text(encoding="utf-8"))
            rows = data["per_run"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise RecordError(
                f"{f}: not an 'opsworld evaluate' results.json ({type(err).__name__}: {err}); "
                "give <out>/<policy>/results.json files"
            ) from None
        for r in rows:
            missing = [k for k in ("entry", "replicate", *(m for m, _ in METRICS)) if k not in r]
            if missing:
                raise RecordError(f"{f}: a per_run row lacks {missing}")
            runs.append({**r, "_file": i})
    return Method(label, tuple(files), tuple(runs))


# --------------------------------------------------------------------------------------------
# statistics


def _rliable() -> tuple[Any, Any]:
    """``rliable``'s ``library`` and ``metrics`` modules, imported so that absl cannot close stderr.

    rliable imports ``absl.logging``, which creates a log handler bound to whatever
    ``sys.stderr`` is at that moment. When a later ``logging.config.dictConfig`` (Hydra's, in
    any ``opsworld`` command of the same process) shuts the old handlers down, absl's handler
    closes that stream unless it is the *current* ``sys.stderr``. Inside pytest the stream is
    the capture file, so every later write to stderr in the process failed ("I/O operation on
    closed file", "lost sys.stderr"). Pointing the handler at ``sys.__stderr__``, which absl
    never closes, removes the hazard; opsworld never logs through absl.
    """
    import absl.logging
    from rliable import library, metrics

    handler = absl.logging.get_absl_handler().python_handler
    if handler.stream is not sys.__stderr__:
        handler.stream = sys.__stderr__
    return library, metrics


def interval(
    scores: np.ndarray | list[np.ndarray], func: Any, reps: int, seed: int
) -> tuple[float, float, float]:
    """``(point, low, high)`` of ``func`` with a 95 % stratified bootstrap (``rliable``)."""
    rly, _ = _rliable()

    key = "x"
    # rliable's bootstrap (arch) draws from NumPy's global generator despite random_state:
    # seed it too, so that a rebuild from the same records gives the same intervals
    np.random.seed(seed)  # noqa: NPY002 (the library reads the legacy global generator)
    point, ci = rly.get_interval_estimates(
        {key: scores},
        lambda *x: np.array([func(*x)]),
        reps=reps,
        random_state=np.random.RandomState(seed),
    )
    return float(point[key][0]), float(ci[key][0][0]), float(ci[key][1][0])


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean over all runs and entries (``rliable``)."""
    _, metrics = _rliable()

    return float(metrics.aggregate_iqm(scores))


def mean(scores: np.ndarray) -> float:
    """Mean over all runs and entries."""
    return float(np.mean(scores))


def prob_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(a run of X has fewer minutes than a run of Y on the same entry), ties 1/2."""
    _, metrics = _rliable()

    return float(metrics.probability_of_improvement(-x, -y))


def paired(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per entry, X's mean minus Y's mean (both ``(runs, entries)``)."""
    return np.mean(x, axis=0) - np.mean(y, axis=0)


def mean_ci(d: np.ndarray, reps: int, seed: int) -> tuple[float, float, float]:
    """Mean of ``d`` with a 95 % percentile bootstrap over its items."""
    if len(d) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(reps, len(d)))].mean(axis=1)
    return float(d.mean()), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def km_median(times: Sequence[float], observed: Sequence[bool]) -> float | None:
    """Kaplan-Meier median of ``times`` where ``observed[i]`` is False for a censored time.

    The smallest time at which the survival estimate falls to 0.5 or below; None when it
    never does (more than half censored before falling).
    """
    t = np.asarray(times, dtype=np.float64)
    o = np.asarray(observed, dtype=bool)
    surv = 1.0
    for u in np.unique(t[o]):
        at_risk = int(np.sum(t >= u))
        events = int(np.sum((t == u) & o))
        surv *= 1.0 - events / at_risk
        if surv <= 0.5 + 1e-12:
            return float(u)
    return None


def mitigation(method: Method) -> dict[str, Any]:
    """Time to mitigate over impacted runs: KM median (censored at the horizon), shares."""
    times, observed = [], []
    for r in method.runs:
        if not r.get("impacted", True):
            continue
        if r.get("mitigated") and r.get("time_to_mitigate_s") is not None:
            times.append(float(r["time_to_mitigate_s"]))
            observed.append(True)
        else:
            times.append(float(r.get("horizon_s") or math.inf))
            observed.append(False)
    n = len(times)
    return {
        "impacted_runs": n,
        "censored_fraction": (n - sum(observed)) / n if n else None,
        "km_median_s": km_median(times, observed) if n else None,
    }


# --------------------------------------------------------------------------------------------
# the report


def analyse(
    methods: Sequence[Method],
    reference: str,
    reps: int = 2000,
    seed: int = 0,
    common: bool = False,
) -> dict[str, Any]:
    """Every figure of the report, as plain data (what ``<name>.json`` holds).

    With ``common`` the comparison is restricted to the entries every method was run on
    (``dropped`` lists the others); otherwise every method must cover the same entries.

    Raises:
        RecordError: Unknown reference, methods run on different entries (without
            ``common``), or no entry in common.
    """
    labels = [m.label for m in methods]
    if reference not in labels:
        raise RecordError(f"--reference {reference}: not one of the methods {labels}")
    entries = methods[0].entries()
    every = sorted(set().union(*(m.entries() for m in methods)))
    if common:
        entries = sorted(set.intersection(*(set(m.entries()) for m in methods)))
        if not entries:
            raise RecordError("the methods have no entry in common")
    else:
        for m in methods[1:]:
            if m.entries() != entries:
                only = sorted(set(m.entries()) ^ set(entries))
                raise RecordError(
                    f"{m.label} and {methods[0].label} were run on different entries "
                    f"(differing: {only}); evaluate every method on the same suite, or pass "
                    "--common-entries to compare on the entries they share"
                )
    methods = [m.restrict(entries) for m in methods]
    ref = next(m for m in methods if m.label == reference)
    ref_slo = ref.matrix("slo_violation_min", entries)
    out: dict[str, Any] = {
        "entries": entries,
        "dropped": sorted(set(every) - set(entries)),
        "reference": reference,
        "methods": {},
    }
    for m in methods:
        rec: dict[str, Any] = {
            "files": list(m.files),
            "training_seeds": len(m.files),
            "runs": len(m.runs),
        }
        for metric, _ in METRICS:
            x = m.matrix(metric, entries)
            rec[metric] = {
                "mean": interval(x, mean, reps, seed),
                "iqm": interval(x, iqm, reps, seed),
            }
        rec["mitigation"] = mitigation(m)
        if m.label != reference:
            x = m.matrix("slo_violation_min", entries)
            rec["prob_improvement"] = interval([x, ref_slo], prob_improvement, reps, seed)
            d = paired(x, ref_slo)
            best, worst = int(np.argmin(d)), int(np.argmax(d))
            rec["paired"] = {
                "per_entry": dict(zip(entries, d.tolist(), strict=True)),
                "all": mean_ci(d, reps, seed),
                "without_most_favourable": mean_ci(np.delete(d, best), reps, seed),
                "most_favourable_entry": entries[best],
                "without_most_unfavourable": mean_ci(np.delete(d, worst), reps, seed),
                "most_unfavourable_entry": entries[worst],
                "better": int(np.sum(d < -1e-9)),
                "worse": int(np.sum(d > 1e-9)),
                "tied": int(np.sum(np.abs(d) <= 1e-9)),
            }
        out["methods"][m.label] = rec
    return out


def _ci(t: Sequence[float], fmt: str = ".3g") -> str:
    p, lo, hi = t
    if math.isnan(p):
        return "-"
    return f"{p:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def _commit() -> str:
    """The repository's HEAD commit (``unknown`` outside a git checkout)."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def markdown(result: dict[str, Any], command: str, notes: str = "", name: str = "control") -> str:
    """The report page (``name``: the figures' file prefix)."""
    ref = result["reference"]
    lines = [
        "# Learned control against the best rules",
        "",
        f"Built by `{command}` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC at commit "
        f"`{_commit()}` ({platform.node() or 'unknown host'}, {platform.machine()}), from the "
        "per-run records listed at the end; definitions: `docs/protocol.md`, "
        "`docs/scoring.md`.",
        "",
    ]
    if notes.strip():
        lines += [notes.strip(), ""]
    n_entries = len(result["entries"])
    if result.get("dropped"):
        lines += [
            "Compared on the entries every method was run on; left out: "
            + ", ".join(f"`{e}`" for e in result["dropped"])
            + ".",
            "",
        ]
    lines += [
        f"## Aggregates ({n_entries} entries; runs = training seeds x entries x replicates)",
        "",
        "Mean and IQM with 95 % stratified bootstrap CIs (rliable, entries as strata).",
        "",
        "| method | seeds | runs | "
        + " | ".join(f"{name} mean | {name} IQM" for _, name in METRICS)
        + " |",
        "|---|---:|---:|" + "---|---|" * len(METRICS),
    ]
    for label, rec in result["methods"].items():
        cells = []
        for metric, _ in METRICS:
            cells += [_ci(rec[metric]["mean"]), _ci(rec[metric]["iqm"])]
        lines.append(
            f"| `{label}` | {rec['training_seeds']} | {rec['runs']} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        f"## Against `{ref}` (SLO-violation minutes, paired by entry)",
        "",
        "P(improvement): chance that a run of the method has fewer SLO-violation minutes than "
        f"a run of `{ref}` on the same entry (ties 1/2), 95 % CI. Paired difference: the "
        f"method's per-entry mean minus `{ref}`'s (negative = better), mean over entries with "
        "a 95 % bootstrap CI over entries; also without the entry most in the method's favour "
        "(one entry cannot carry the result) and without the one most against it.",
        "",
        "| method | P(improvement) | paired diff. (all) | without most favourable | "
        "without most unfavourable | entries better / worse / tied |",
        "|---|---|---|---|---|---|",
    ]
    for label, rec in result["methods"].items():
        if label == ref:
            continue
        p = rec["paired"]
        lines.append(
            f"| `{label}` | {_ci(rec['prob_improvement'], '.2f')} | {_ci(p['all'])} | "
            f"{_ci(p['without_most_favourable'])} (drops `{p['most_favourable_entry']}`) | "
            f"{_ci(p['without_most_unfavourable'])} (drops `{p['most_unfavourable_entry']}`) | "
            f"{p['better']} / {p['worse']} / {p['tied']} |"
        )
    lines += [
        "",
        "## Time to mitigate",
        "",
        "Over the impacted runs (a method that prevents the impact has fewer); a run that "
        "never mitigates is censored at the horizon (Kaplan-Meier median; '-' when more than "
        "half are censored).",
        "",
        "| method | impacted runs | censored | KM median s |",
        "|---|---:|---:|---:|",
    ]
    for label, rec in result["methods"].items():
        mit = rec["mitigation"]
        cens = mit["censored_fraction"]
        med = mit["km_median_s"]
        lines.append(
            f"| `{label}` | {mit['impacted_runs']} | "
            f"{'-' if cens is None else f'{cens:.0%}'} | {'-' if med is None else f'{med:g}'} |"
        )
    lines += [
        "",
        "## Figures",
        "",
        f"![performance profiles]({name}_profiles.png)",
        "",
        f"![paired differences]({name}_paired.png)",
        "",
        "## Records",
        "",
    ]
    for label, rec in result["methods"].items():
        lines.append(f"- `{label}`: " + ", ".join(f"`{f}`" for f in rec["files"]))
    return "\n".join(lines) + "\n"


def plot(
    methods: Sequence[Method], result: dict[str, Any], out: Path, name: str, reps: int, seed: int
) -> list[Path]:
    """The performance profiles and the paired differences (two PNG files)."""
    from matplotlib.figure import Figure

    rly, _ = _rliable()

    entries = result["entries"]
    scores = {m.label: m.matrix("slo_violation_min", entries) for m in methods}
    top = max(float(np.max(s)) for s in scores.values())
    taus = np.linspace(0.0, 1.05 * max(top, 1e-6), 106)  # past the worst run: every curve ends at 1
    # rliable's profiles count scores above tau; minutes are lower-better: negate both
    np.random.seed(seed)  # noqa: NPY002 (the bands' bootstrap reads the global generator)
    profiles, cis = rly.create_performance_profile(
        {k: -v for k, v in scores.items()}, -taus, reps=reps
    )
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for label in scores:
        ax.plot(taus, profiles[label], label=label)
        ax.fill_between(taus, cis[label][0], cis[label][1], alpha=0.2)
    ax.set_xlabel("SLO-violation minutes per run (tau)")
    ax.set_ylabel("fraction of runs with minutes < tau")
    ax.set_title("performance profiles (95% bootstrap bands)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    p1 = out / f"{name}_profiles.png"
    fig.savefig(p1, dpi=110, bbox_inches="tight")

    others = [k for k in result["methods"] if k != result["reference"]]
    fig = Figure(figsize=(8, 0.35 * len(entries) + 1.5))
    ax = fig.add_subplot()
    height = 0.8 / max(len(others), 1)
    y = np.arange(len(entries))
    for i, label in enumerate(others):
        d = [result["methods"][label]["paired"]["per_entry"][e] for e in entries]
        ax.barh(y + i * height, d, height=height, label=label)
    ax.set_yticks(y + height * (len(others) - 1) / 2, entries, fontsize=7)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_xlabel(f"SLO-violation minutes minus {result['reference']}'s (per-entry means)")
    ax.set_title("paired per-entry differences (negative = better)")
    if others:
        ax.legend(loc="best", fontsize=7)
    p2 = out / f"{name}_paired.png"
    fig.savefig(p2, dpi=110, bbox_inches="tight")
    return [p1, p2]


def parse_method(text: str) -> tuple[str, list[str]]:
    """``LABEL=PATTERN[,PATTERN...]`` -> (label, patterns)."""
    label, sep, rest = text.partition("=")
    if not sep or not label or not rest:
        raise RecordError(f"--method {text!r}: write LABEL=PATTERN[,PATTERN...]")
    return label, rest.split(",")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.control_report``; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.control_report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--method", action="append", required=True, help="LABEL=PATTERN[,...]")
    parser.add_argument("--reference", default="tuned_runbook")
    parser.add_argument("--notes", default=None, help="Markdown file placed under the title")
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--name", default="control")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap replications")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--common-entries",
        action="store_true",
        help="compare on the entries every method was run on (lists the others)",
    )
    args = parser.parse_args(argv)
    try:
        methods = [load_method(*parse_method(m)) for m in args.method]
        result = analyse(methods, args.reference, args.reps, args.seed, args.common_entries)
    except RecordError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m experiments.control_report " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    notes = Path(args.notes).read_text(encoding="utf-8") if args.notes else ""
    result["command"] = command
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    figures = plot(methods, result, out, args.name, args.reps, args.seed)
    page = markdown(result, command, notes, args.name)
    (out / f"{args.name}.md").write_text(page)
    print(
        f"wrote {out / f'{args.name}.md'}, {out / f'{args.name}.json'}, "
        + ", ".join(map(str, figures))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
