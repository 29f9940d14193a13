"""What ``opsworld fidelity`` does: run one scenario at both fidelities and judge the agreement.

The fluid engine is what training and evaluation run on; the request-level engine is the
ground truth. :func:`check_fidelity` runs a scenario under a policy at both fidelities, for
``seeds`` seeds each (the request-level runs in parallel through
:func:`agents.parallel.parallel_map`), measures each run (:func:`measure`) and compares the
fluid mean with the request-level mean and seed spread, metric by metric
(:func:`compare_metrics`), so a user knows whether results from the fast engine hold for
their cluster.

Metrics of one run (all at the scenario's entry service unless said otherwise):

* ``slo_violation_s``: seconds in SLO violation, summed over the services with an SLO (the
  engine's own ``slo_violation_s`` counter at the horizon);
* ``failed_requests``: failed + dropped attempts at the entry; ``dropped_requests``: the
  dropped part alone (reported, no verdict);
* ``peak_error_rate``: the highest error rate of a window (``window_s``, default 60 s,
  aligned to t = 0): ``(failed + dropped) / (completed + failed + dropped)`` over the window;
* ``peak_p99_s``: the highest per-window p99 (PromQL's ``histogram_quantile`` over the
  window's histogram increase; reported, no verdict); the per-window series go to the plot;
* ``recovery_s``: seconds from the reference time to the first scrape from which the
  entry's SLO (p99 and error rate; a missing value counts as broken) holds in every later
  scrape. The reference is the latest end of a fault's cause (a flash crowd's end, a node
  loss once its pods are rescheduled), or the latest onset when a cause is still there at
  the horizon (a fault no policy undid). With overlapping faults the latest end counts, so
  an SLO break that heals before it is not counted here (the other metrics see it). 0 when
  the SLO holds throughout after the reference; the time left to the horizon when it never
  recovers (``recovered`` False); None without faults.

Tolerances (:func:`tolerances`, from issue 16): SLO-violation seconds within 10 % (at least
one scrape interval), failed requests within 20 % (at least 0.1 % of the entry's requests),
peak-window error rate within 5 percentage points, recovery time within 30 s, each against
the request-level mean. A metric **passes** when the fluid mean is within tolerance or
inside the request level's own seed spread ``[min, max]`` (then the difference cannot be told
apart from the request level's run-to-run noise); the overall verdict passes when every
judged metric passes.

``experiments/fidelity.py`` is the command; ``opsworld evaluate ... spot_check=N`` reuses
:func:`check_fidelity` on N suite entries.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from agents.evaluation.evaluate import PolicySpec, build_policy, resolve_policy
from agents.parallel import parallel_map
from agents.rollout import rollout
from agents.run_config import RunConfigError
from envs.core.telemetry import LATENCY_BUCKETS_S, Telemetry, histogram_quantile
from envs.scenarios.schema import Scenario
from envs.scenarios.suites import Suite, SuiteEntry, load_suite
from envs.sim.faults import FaultRecord
from envs.sim.simulator import Simulator

DEFAULT_WINDOW_S = 60.0
"""Width of the windows of the peak error rate and the per-window p99."""


@dataclass(frozen=True)
class Tolerance:
    """How far the fluid mean may be from the request-level mean.

    Attributes:
        relative: Allowed ``|fluid - request| / |request|`` (None: absolute only).
        absolute: Allowed ``|fluid - request|`` in the metric's unit; with ``relative`` it is
            a floor (the larger of the two applies).
        label: How the tolerance reads in tables.
    """

    relative: float | None
    absolute: float
    label: str

    def allowed(self, request_mean: float) -> float:
        """The allowed absolute difference at this request-level mean."""
        rel = 0.0 if self.relative is None else self.relative * abs(request_mean)
        return max(rel, self.absolute)


METRICS: tuple[str, ...] = (
    "slo_violation_s",
    "failed_requests",
    "dropped_requests",
    "peak_error_rate",
    "peak_p99_s",
    "recovery_s",
)
"""The metrics of one run, in table order."""

JUDGED: tuple[str, ...] = ("slo_violation_s", "failed_requests", "peak_error_rate", "recovery_s")
"""The metrics with a tolerance (issue 16); the others are reported only."""


def tolerances(scrape_interval_s: float, entry_requests: float) -> dict[str, Tolerance]:
    """The tolerances of :data:`JUDGED` for a scenario (floors scale with the scenario).

    Args:
        scrape_interval_s: The scenario's scrape interval (floor of the SLO-violation time:
            the engines count violation per scrape).
        entry_requests: Mean request-level attempts at the entry (floor of the failed
            requests: 0.1 % of them).
    """
    return {
        "slo_violation_s": Tolerance(0.10, scrape_interval_s, "10%"),
        "failed_requests": Tolerance(0.20, 1e-3 * entry_requests, "20%"),
        "peak_error_rate": Tolerance(None, 0.05, "5 pp"),
        "recovery_s": Tolerance(None, 30.0, "30 s"),
    }


# --------------------------------------------------------------------------------------------
# one run


@dataclass(frozen=True)
class RunMetrics:
    """The metrics of one run (see the module docstring).

    Attributes:
        fidelity: ``fluid`` or ``request``.
        seed: The run's seed.
        values: Metric name -> value (None where undefined, e.g. recovery without faults).
        recovered: Whether the entry SLO held from some scrape to the horizon.
        entry_requests: Attempts that arrived at the entry.
        window_t: End time of each window (s).
        window_error_rate: Entry error rate per window (NaN where nothing finished).
        window_p99_s: Entry p99 per window (NaN where nothing finished).
        wall_s: Wall time of the run.
    """

    fidelity: str
    seed: int
    values: dict[str, float | None]
    recovered: bool
    entry_requests: float
    window_t: list[float]
    window_error_rate: list[float]
    window_p99_s: list[float]
    wall_s: float = 0.0


def window_edges(times: np.ndarray, window_s: float) -> np.ndarray:
    """Indices of the frames that bound windows of ``window_s`` aligned to t = 0.

    For each multiple of ``window_s`` up to the last frame, the last frame at or before it;
    repeated indices are dropped, so consecutive edges bound one window each.

    Raises:
        ValueError: If ``window_s`` is not positive.
    """
    if not window_s > 0:
        raise ValueError(f"window_s={window_s!r}: must be > 0 seconds (e.g. 60)")
    bounds = np.arange(0.0, float(times[-1]) + 1e-9, window_s)
    idx = np.searchsorted(times, bounds + 1e-9, side="right") - 1
    idx = idx[idx >= 0]
    if idx.size == 0 or idx[-1] != len(times) - 1:  # the tail window up to the last frame
        idx = np.append(idx, len(times) - 1)
    return np.unique(idx)


def recovery_time(
    times: np.ndarray, ok: np.ndarray, faults: Sequence[FaultRecord], horizon_s: float
) -> tuple[float | None, bool]:
    """Seconds from the faults' reference time until the SLO holds for good (module docstring).

    Args:
        times: Frame times.
        ok: Per frame, the entry met its SLO.
        faults: The run's fault records.
        horizon_s: The run's horizon.

    Returns:
        ``(recovery_s, recovered)``; ``(None, True)`` when no fault started.
    """
    started = [f for f in faults if f.started]
    if not started:
        return None, True
    ends = [f.end for f in started if f.end is not None]
    ref = max(ends) if len(ends) == len(started) else max(f.onset for f in started)
    after = times >= ref - 1e-9
    bad = np.flatnonzero(after & ~ok)
    if bad.size == 0:
        return 0.0, True
    last_bad = int(bad[-1])
    if last_bad == len(times) - 1:
        return float(horizon_s - ref), False
    return float(times[last_bad + 1] - ref), True


def measure(
    frames: Sequence[Telemetry],
    scenario: Scenario,
    faults: Sequence[FaultRecord] = (),
    window_s: float = DEFAULT_WINDOW_S,
    wall_s: float = 0.0,
) -> RunMetrics:
    """The metrics of one finished run (module docstring).

    Args:
        frames: Every frame of the run, the reset frame first.
        scenario: The scenario it ran (entry, SLOs, horizon).
        faults: The run's fault records (for the recovery time).
        window_s: Window width of the peak error rate and the per-window p99.
        wall_s: Wall time to record.

    Raises:
        ValueError: Fewer than two frames, or a non-positive ``window_s``.
    """
    if len(frames) < 2:
        raise ValueError(f"measure: a run needs at least 2 frames, got {len(frames)}")
    last = frames[-1]
    entry = last.services.index(scenario.topology.entry)
    times = np.array([f.t for f in frames])
    counters = np.array([f.counters[entry] for f in frames])  # (T, 4)
    hist = np.array([f.histogram[entry] for f in frames])  # (T, B)
    edges = window_edges(times, window_s)
    d = np.diff(counters[edges], axis=0)
    finished = d[:, 1:].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.where(finished > 0, (d[:, 2] + d[:, 3]) / finished, np.nan)
    p99 = histogram_quantile(0.99, np.array(LATENCY_BUCKETS_S), np.diff(hist[edges], axis=0))
    slo = scenario.effective_slos()[scenario.topology.entry]
    with np.errstate(invalid="ignore"):
        ok = np.array(
            [
                bool(
                    f["p99"][entry] <= slo.p99_latency_s
                    and f["error_rate"][entry] <= slo.error_rate
                )
                for f in frames
            ]
        )
    recovery, recovered = recovery_time(times, ok, faults, scenario.horizon_s)
    slos = scenario.effective_slos()
    violation = float(sum(last["slo_violation_s"][last.services.index(s)] for s in slos))
    failed = float(last.counter("failed")[entry] + last.counter("dropped")[entry])

    def peak(x: np.ndarray) -> float:
        return float(np.nanmax(x)) if np.isfinite(x).any() else 0.0

    return RunMetrics(
        fidelity=scenario.fidelity,
        seed=scenario.seed,
        values={
            "slo_violation_s": violation,
            "failed_requests": failed,
            "dropped_requests": float(last.counter("dropped")[entry]),
            "peak_error_rate": peak(err),
            "peak_p99_s": peak(p99),
            "recovery_s": recovery,
        },
        recovered=recovered,
        entry_requests=float(last.counter("arrived")[entry]),
        window_t=[float(t) for t in times[edges[1:]]],
        window_error_rate=[float(x) for x in err],
        window_p99_s=[float(x) for x in p99],
        wall_s=wall_s,
    )


@dataclass(frozen=True)
class RunTask:
    """One run of :func:`check_fidelity` (picklable, for worker processes)."""

    scenario: Scenario
    policy: PolicySpec
    window_s: float = DEFAULT_WINDOW_S


def run_task(task: RunTask) -> RunMetrics:
    """Run ``task.scenario`` under a fresh policy and measure it."""
    start = time.perf_counter()
    sim = Simulator(task.scenario)
    result = rollout(sim, build_policy(task.policy, task.scenario))
    return measure(
        result.frames,
        task.scenario,
        result.faults,
        task.window_s,
        wall_s=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------------------------
# comparison


@dataclass(frozen=True)
class MetricAgreement:
    """One metric, fluid vs request level.

    Attributes:
        metric: The metric's name (:data:`METRICS`).
        fluid: Mean over the fluid runs (None where undefined).
        request_mean: Mean over the request-level runs.
        request_min: Smallest request-level value (the seed spread's low end).
        request_max: Largest request-level value.
        diff: ``fluid - request_mean``.
        tolerance: The tolerance's label ("" for a metric that is reported only).
        allowed: The allowed ``|diff|`` (None: reported only).
        within_tolerance: ``|diff| <= allowed`` (None: not judged).
        in_spread: ``request_min <= fluid <= request_max`` (None: undefined).
        verdict: ``pass``, ``fail`` or ``n/a``.
    """

    metric: str
    fluid: float | None
    request_mean: float | None
    request_min: float | None
    request_max: float | None
    diff: float | None
    tolerance: str
    allowed: float | None
    within_tolerance: bool | None
    in_spread: bool | None
    verdict: str


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return float(np.mean(vals)) if vals and len(vals) == len(xs) else None


def compare_metrics(
    fluid: Sequence[RunMetrics], request: Sequence[RunMetrics], scrape_interval_s: float
) -> list[MetricAgreement]:
    """Per metric: fluid mean vs request-level mean and spread, with a verdict.

    Raises:
        ValueError: If either list is empty.
    """
    if not fluid or not request:
        raise ValueError("compare_metrics: needs at least one fluid and one request-level run")
    entry_requests = float(np.mean([r.entry_requests for r in request]))
    tol = tolerances(scrape_interval_s, entry_requests)
    out = []
    for m in METRICS:
        f = _mean([r.values[m] for r in fluid])
        rq = [r.values[m] for r in request]
        rm = _mean(rq)
        if f is None or rm is None:
            out.append(
                MetricAgreement(
                    m,
                    f,
                    rm,
                    None,
                    None,
                    None,
                    tol[m].label if m in tol else "",
                    None,
                    None,
                    None,
                    "n/a",
                )
            )
            continue
        lo, hi = (
            float(min(x for x in rq if x is not None)),
            float(max(x for x in rq if x is not None)),
        )
        diff = f - rm
        spread = lo - 1e-12 <= f <= hi + 1e-12
        if m in tol:
            allowed = tol[m].allowed(rm)
            within: bool | None = abs(diff) <= allowed + 1e-12
            verdict = "pass" if within or (spread and len(request) > 1) else "fail"
            label = tol[m].label
        else:
            allowed, within, verdict, label = None, None, "n/a", ""
        out.append(MetricAgreement(m, f, rm, lo, hi, diff, label, allowed, within, spread, verdict))
    return out


def overall_verdict(rows: Sequence[MetricAgreement]) -> str:
    """``pass`` when every judged metric passes, ``fail`` when one fails, else ``n/a``."""
    judged = [r.verdict for r in rows if r.verdict != "n/a"]
    if not judged:
        return "n/a"
    return "pass" if all(v == "pass" for v in judged) else "fail"


@dataclass
class FidelityReport:
    """Everything :func:`check_fidelity` found for one scenario.

    Attributes:
        scenario: The scenario's name.
        policy: The policy's label.
        seeds: The seeds run at each fidelity.
        window_s: Window width of the per-window metrics.
        rows: One :class:`MetricAgreement` per metric.
        verdict: :func:`overall_verdict` of ``rows``.
        fluid: Every fluid run's metrics.
        request: Every request-level run's metrics.
    """

    scenario: str
    policy: str
    seeds: list[int]
    window_s: float
    rows: list[MetricAgreement]
    verdict: str
    fluid: list[RunMetrics] = field(default_factory=list)
    request: list[RunMetrics] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN becomes None)."""
        return _clean(asdict(self))


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def check_fidelity(
    scenario: Scenario,
    policy: PolicySpec,
    seeds: int = 3,
    workers: int = 1,
    window_s: float = DEFAULT_WINDOW_S,
    on_result: Callable[[int, RunMetrics], None] | None = None,
) -> FidelityReport:
    """Run ``scenario`` at both fidelities for ``seeds`` seeds each and compare.

    Seeds are ``scenario.seed + k`` for ``k < seeds``, the same at both fidelities (so both
    see the same traffic curve per seed; for a suite entry these are its replicates' run
    seeds). All runs go through one :func:`~agents.parallel.parallel_map` (results do not
    depend on ``workers``).

    Args:
        scenario: The validated scenario (its fidelity is ignored).
        policy: The policy to run (a fresh one per run).
        seeds: Seeds per fidelity (>= 1; 2 or more give a seed spread).
        workers: Worker processes.
        window_s: Window width of the peak error rate and per-window p99.
        on_result: Progress callback, as :func:`~agents.parallel.parallel_map` calls it.

    Raises:
        ValueError: ``seeds < 1`` or a non-positive ``window_s``, naming the field.
    """
    return check_many([(scenario, policy)], seeds, workers, window_s, on_result)[0]


def check_many(
    cases: Sequence[tuple[Scenario, PolicySpec]],
    seeds: int = 3,
    workers: int = 1,
    window_s: float = DEFAULT_WINDOW_S,
    on_result: Callable[[int, RunMetrics], None] | None = None,
) -> list[FidelityReport]:
    """:func:`check_fidelity` for several (scenario, policy) cases, all runs in one pool.

    Raises:
        ValueError: ``seeds < 1`` or a non-positive ``window_s``, naming the field.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds={seeds!r}: must be an integer >= 1 (3 or more give a spread)")
    if not window_s > 0:
        raise ValueError(f"window_s={window_s!r}: must be > 0 seconds (e.g. 60)")
    tasks = [
        RunTask(sc.model_copy(update={"fidelity": fid, "seed": sc.seed + k}), spec, window_s)
        for sc, spec in cases
        for fid in ("fluid", "request")
        for k in range(seeds)
    ]
    runs = parallel_map(run_task, tasks, workers, on_result=on_result)
    reports = []
    for c, (sc, spec) in enumerate(cases):
        mine = runs[2 * seeds * c : 2 * seeds * (c + 1)]
        fluid, request = mine[:seeds], mine[seeds:]
        rows = compare_metrics(fluid, request, sc.scrape_interval_s)
        reports.append(
            FidelityReport(
                sc.name,
                spec.label,
                [sc.seed + k for k in range(seeds)],
                window_s,
                rows,
                overall_verdict(rows),
                fluid,
                request,
            )
        )
    return reports


def spot_entries(suite: Suite, n: int) -> list[SuiteEntry]:
    """``n`` entries spread evenly over ``suite`` (first and last included; all if fewer).

    Raises:
        ValueError: ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"spot_check={n}: must be >= 1 (0 turns the spot check off)")
    if n >= len(suite):
        return list(suite.entries)
    picks = sorted({round(k * (len(suite) - 1) / max(n - 1, 1)) for k in range(n)})
    return [suite.entries[i] for i in picks]


def spot_check(
    suite: Suite,
    policies: Sequence[PolicySpec],
    n: int,
    seeds: int,
    workers: int,
    out: str | Path,
    console: Console | None = None,
) -> list[FidelityReport]:
    """Re-run ``n`` entries of ``suite`` at both fidelities and judge them (evaluate's check).

    Writes ``<out>/<policy>/<entry>/fidelity.{json,md,png}`` and ``<out>/summary.md`` (one
    row per policy and entry: the verdict of each judged metric), and prints each table.

    Returns:
        One report per (policy, entry), policies outer.
    """
    entries = spot_entries(suite, n)
    reports = check_many([(e.scenario, p) for p in policies for e in entries], seeds, workers)
    out = Path(out)
    console = console if console is not None else Console()
    for r in reports:
        write_report(r, out / r.policy / r.scenario)
        print_report(r, console)
    lines = [
        f"# Spot check: {len(entries)} entries of suite `{suite.name}` at request level",
        "",
        f"{seeds} seed(s) per fidelity; tolerances and verdicts: docs/fidelity.md.",
        "",
        "| policy | entry | " + " | ".join(JUDGED) + " | verdict |",
        "|---|---|" + "---|" * (len(JUDGED) + 1),
    ]
    for r in reports:
        verdicts = {row.metric: row.verdict for row in r.rows}
        lines.append(
            f"| {r.policy} | {r.scenario} | "
            + " | ".join(verdicts[m] for m in JUDGED)
            + f" | **{r.verdict}** |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    passed = sum(r.verdict == "pass" for r in reports)
    console.print(f"spot check: {passed}/{len(reports)} pass; wrote {out}")
    return reports


def spot_check_evaluation(conf: Any, console: Console | None = None) -> list[FidelityReport]:
    """``opsworld evaluate ... spot_check=N``: :func:`spot_check` on the evaluated entries.

    Uses the evaluation's suite, ``topology`` and ``limit`` filters, policies, ``seeds`` and
    ``workers``; writes to ``<out>/spot_check/``.

    Raises:
        RunConfigError: ``spot_check`` below 0, naming the field.
    """
    n = conf.spot_check
    if n < 0:
        raise RunConfigError(f"spot_check={n}: must be >= 0 (0: no spot check)")
    suite = load_suite(conf.suite)
    if conf.topology is not None:
        suite = suite.on_topology(conf.topology)
    if conf.limit is not None:
        suite = suite.subset(first=conf.limit)
    names = list(conf.policies) or [conf.policy]
    specs = [resolve_policy(x, "policies", conf.weights, conf.deterministic) for x in names]
    out = Path(conf.out) / "spot_check"
    return spot_check(suite, specs, n, conf.seeds, conf.workers, out, console)


# --------------------------------------------------------------------------------------------
# rendering


UNITS: dict[str, str] = {
    "slo_violation_s": "s",
    "failed_requests": "",
    "dropped_requests": "",
    "peak_error_rate": "",
    "peak_p99_s": "s",
    "recovery_s": "s",
}


def fmt_value(v: float | None, metric: str = "") -> str:
    """A metric value for tables: rates as percentages, counts with separators."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if metric == "peak_error_rate":
        return f"{100 * v:.1f}%"
    if metric in ("failed_requests", "dropped_requests"):
        return f"{v:,.0f}"
    return f"{v:.3g} s" if metric.endswith("_s") else f"{v:.4g}"


def agreement_table(report: FidelityReport, title: str | None = None) -> Table:
    """The per-metric agreement as a rich table."""
    table = Table(
        title=title
        or f"opsworld fidelity: {report.scenario} / {report.policy} ({len(report.seeds)} seeds): "
        f"{report.verdict.upper()}"
    )
    for col in ("metric", "fluid", "request mean", "request min..max", "tolerance", "verdict"):
        table.add_column(col, justify="left" if col == "metric" else "right", no_wrap=True)
    for r in report.rows:
        colour = {"pass": "green", "fail": "red"}.get(r.verdict, "dim")
        spread = (
            f"{fmt_value(r.request_min, r.metric)}..{fmt_value(r.request_max, r.metric)}"
            if r.request_min is not None
            else "n/a"
        )
        table.add_row(
            r.metric,
            fmt_value(r.fluid, r.metric),
            fmt_value(r.request_mean, r.metric),
            spread,
            r.tolerance or "-",
            f"[{colour}]{r.verdict}[/]",
        )
    return table


def report_markdown(report: FidelityReport) -> str:
    """The agreement as a Markdown table (``fidelity.md``)."""
    lines = [
        f"# Fidelity: {report.scenario} / {report.policy}",
        "",
        f"Seeds {report.seeds} at each fidelity, windows of {report.window_s:g} s. "
        f"Overall verdict: **{report.verdict}**.",
        "",
        "| metric | fluid | request mean | request min..max | tolerance | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        spread = (
            f"{fmt_value(r.request_min, r.metric)}..{fmt_value(r.request_max, r.metric)}"
            if r.request_min is not None
            else "n/a"
        )
        lines.append(
            f"| {r.metric} | {fmt_value(r.fluid, r.metric)} | "
            f"{fmt_value(r.request_mean, r.metric)} | {spread} | {r.tolerance or '-'} | "
            f"{r.verdict} |"
        )
    return "\n".join(lines) + "\n"


def plot_windows(report: FidelityReport, path: Path) -> Path:
    """Entry error rate and p99 per window: every fluid run and the request level's band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, attr, name in (
        (axes[0], "window_error_rate", "entry error rate per window"),
        (axes[1], "window_p99_s", "entry p99 per window (s)"),
    ):
        for runs, colour, label in (
            (report.fluid, "C0", "fluid"),
            (report.request, "C1", "request"),
        ):
            t = np.array(runs[0].window_t)
            ys = np.array([getattr(r, attr) for r in runs], dtype=float)
            with np.errstate(all="ignore"):
                mean = np.nanmean(ys, axis=0) if len(runs) > 1 else ys[0]
            ax.plot(t, mean, color=colour, label=f"{label} (mean of {len(runs)})")
            if len(runs) > 1:
                ax.fill_between(
                    t, np.nanmin(ys, axis=0), np.nanmax(ys, axis=0), color=colour, alpha=0.25
                )
        ax.set_title(name)
        ax.set_xlabel("t (s)")
    axes[0].legend()
    fig.suptitle(f"{report.scenario} / {report.policy}: verdict {report.verdict}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(report: FidelityReport, out: str | Path) -> list[Path]:
    """Write ``fidelity.json``, ``fidelity.md`` and ``fidelity.png`` to ``out`` (created)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "fidelity.json", out / "fidelity.md", out / "fidelity.png"]
    paths[0].write_text(json.dumps(report.to_dict(), indent=2))
    paths[1].write_text(report_markdown(report))
    plot_windows(report, paths[2])
    return paths


def print_report(report: FidelityReport, console: Console | None = None) -> None:
    """Print the agreement table."""
    (console or Console()).print(agreement_table(report))


__all__ = [
    "DEFAULT_WINDOW_S",
    "JUDGED",
    "METRICS",
    "FidelityReport",
    "MetricAgreement",
    "RunMetrics",
    "RunTask",
    "Tolerance",
    "agreement_table",
    "check_fidelity",
    "check_many",
    "compare_metrics",
    "measure",
    "overall_verdict",
    "plot_windows",
    "print_report",
    "recovery_time",
    "report_markdown",
    "run_task",
    "spot_check",
    "spot_check_evaluation",
    "spot_entries",
    "tolerances",
    "window_edges",
    "write_report",
]
