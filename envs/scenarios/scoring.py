"""Scoring: the one function that judges a simulated incident, and the one that aggregates.

:func:`score_episode` turns a :class:`~envs.sim.simulator.SimResult` into an
:class:`EpisodeScore`; :func:`aggregate` summarises many of them (seeds, scenarios) with
means, interquartile means and seeded bootstrap confidence intervals. Every evaluation,
suite and benchmark in opsworld scores through these two functions; ``docs/scoring.md``
gives each metric's exact definition.

Ground truth, not the observation. Telemetry faults degrade the gauges of a frame (values
and mask: gaps, delays, noise, a vanished service) but never its cumulative counters or
latency histograms. So the scorer reads, per scrape interval ``(t_{i-1}, t_i]`` and per
SLO'd service:

* the error rate from counter deltas: ``(dfailed + ddropped) / (dcompleted + dfailed +
  ddropped)``, exactly as the engine computes it;
* the p99 latency from the frame's ``p99`` gauge when that frame is *trustworthy* (observed,
  and no telemetry fault was active at the scrape), which is the engine's exact p99 and so
  reproduces the engine's own ``slo_violation_s`` accounting to the second; otherwise from
  the delta of the cumulative latency histogram with
  :func:`~envs.core.telemetry.histogram_quantile` (exact for an SLO threshold that is a
  bucket bound, interpolated otherwise).

An interval violates a service's SLO when ``p99 > slo.p99_latency_s`` or ``error_rate >
slo.error_rate`` (a missing value, e.g. no finished request, violates nothing); it violates
"the SLOs" when any SLO'd service violates.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from envs.core.actions import Action, Noop, Scale, is_disruptive
from envs.core.telemetry import (
    CLUSTER_INDEX,
    COUNTER_FIELDS,
    FIELD_INDEX,
    LATENCY_BUCKETS_S,
    Telemetry,
    histogram_quantile,
)
from envs.scenarios.schema import Scenario, TelemetryFault

if TYPE_CHECKING:
    from envs.sim.simulator import SimResult

HOLD_S = 300.0
"""How long the SLOs must hold, with no violating scrape, for an incident to count as mitigated."""

ALWAYS_OBSERVED: tuple[str, ...] = (
    "cpu_request",
    "memory_request_mb",
    "replicas_desired",
    "replicas_ready",
    "replicas_pending",
    "replicas_starting",
    "restarts",
    "oom_kills",
    "backlog",
    "in_flight",
    "deploy_version",
)
"""Per-service gauges that every healthy scrape defines (t = 0 included). A frame missing
one of them, or any cluster gauge, lost telemetry; the others may be NaN by construction
(rates at t = 0, latency with no finished request, the SLO gauges of a service without an
SLO), so :attr:`Decision.missing_fraction <envs.sim.simulator.Decision.missing_fraction>`
is above 0 on every frame and cannot tell a degraded frame by itself."""

_ALWAYS_IDX = [FIELD_INDEX[f] for f in ALWAYS_OBSERVED]
_BOUNDS = np.asarray(LATENCY_BUCKETS_S, dtype=np.float64)
_C = {f: i for i, f in enumerate(COUNTER_FIELDS)}
_EPS = 1e-9


# --------------------------------------------------------------------------------------------
# per-episode score


@dataclass(frozen=True)
class EpisodeScore:
    """How one run of one scenario went; see ``docs/scoring.md`` for every definition.

    Attributes:
        scenario: Scenario name.
        seed: Seed of the run.
        horizon_s: Simulated duration, s.
        n_faults: Faults injected (0: a fault-free run; the mitigation metrics are then None).
        slo_violation_min: Minutes of scrape intervals in which any SLO'd service violated
            its SLO (true p99 or error rate), each interval counted once.
        error_budget_burn: Failed + dropped attempts at the SLO'd services over the episode
            divided by what their error budgets allowed (``sum(slo.error_rate x finished
            attempts)``); 1.0 used exactly the budget.
        p99_mean_s: Mean of the entry service's true p99 over the scrape intervals that had
            finished requests, s (None: none had).
        p99_max_s: Largest such p99, s.
        cost: Spend over the episode (``cost_total`` of the last frame; see
            :func:`episode_cost` for telemetry gaps).
        time_to_mitigate_s: From the first fault onset to the start of the first
            ``HOLD_S`` window with no violating scrape that begins after the SLOs first
            broke (and after the last onset); None when never mitigated or no fault.
        mitigated: Whether such a window exists inside the episode (False without a fault).
        impacted: Whether any scrape interval ending after the first onset violated the SLOs.
        relapsed: Whether the SLOs were violated again after the hold window that counted as
            mitigation (None when not mitigated).
        n_actions: Actions the policy issued (``Noop`` excluded).
        disruptive_actions: Restarts, rollbacks, node drains, load shedding with ``fraction >
            0``, and scale-downs below the service's ready replicas.
        actions_without_fault: Actions issued while no fault's cause was active.
        unknown_state_rate: Share of decisions taken on a frame that had lost telemetry.
    """

    scenario: str
    seed: int
    horizon_s: float
    n_faults: int
    slo_violation_min: float
    error_budget_burn: float
    p99_mean_s: float | None
    p99_max_s: float | None
    cost: float
    time_to_mitigate_s: float | None
    mitigated: bool
    impacted: bool
    relapsed: bool | None
    n_actions: int
    disruptive_actions: int
    actions_without_fault: int
    unknown_state_rate: float
    allocated_cost: float = math.nan
    """Spend attributed to the pods by their CPU requests (``allocated_cost_total``): moves
    with scaling even when the node count (and so ``cost``, the node bill) does not."""

    def as_dict(self) -> dict[str, Any]:
        """All fields as a JSON-ready dict."""
        return asdict(self)

    def metrics(self) -> dict[str, float | None]:
        """The numeric metrics that :func:`aggregate` summarises (None: not applicable).

        Booleans become 0/1, so their mean is a rate: ``mitigated`` over runs with a fault,
        ``relapsed`` over mitigated runs.
        """
        has_fault = self.n_faults > 0
        return {
            "slo_violation_min": self.slo_violation_min,
            "error_budget_burn": self.error_budget_burn,
            "p99_mean_s": self.p99_mean_s,
            "p99_max_s": self.p99_max_s,
            "cost": self.cost if math.isfinite(self.cost) else None,
            "allocated_cost": (self.allocated_cost if math.isfinite(self.allocated_cost) else None),
            "time_to_mitigate_s": self.time_to_mitigate_s,
            "mitigated": float(self.mitigated) if has_fault else None,
            "relapsed": None if self.relapsed is None else float(self.relapsed),
            "n_actions": float(self.n_actions),
            "disruptive_actions": float(self.disruptive_actions),
            "actions_without_fault": float(self.actions_without_fault),
            "unknown_state_rate": self.unknown_state_rate,
        }


METRICS: tuple[str, ...] = (
    "slo_violation_min",
    "error_budget_burn",
    "p99_mean_s",
    "p99_max_s",
    "cost",
    "allocated_cost",
    "time_to_mitigate_s",
    "mitigated",
    "relapsed",
    "n_actions",
    "disruptive_actions",
    "actions_without_fault",
    "unknown_state_rate",
)
"""Names of :meth:`EpisodeScore.metrics`, in report order."""


@dataclass(frozen=True)
class SloTimeline:
    """Per-scrape-interval SLO truth of a run (interval ``i`` is ``(t_start[i], t_end[i]]``).

    Attributes:
        services: The SLO'd services, column order of the ``(I, K)`` arrays.
        t_start: ``(I,)`` interval starts, s.
        t_end: ``(I,)`` interval ends (scrape times), s.
        p99: ``(I, K)`` true p99 latency, s (NaN: no finished attempt).
        error_rate: ``(I, K)`` error rate from counter deltas (NaN: no finished attempt).
        from_histogram: ``(I,)`` True where the p99 came from the histogram (the frame's
            gauges were untrustworthy).
        service_violating: ``(I, K)`` the service broke its SLO in the interval.
        violating: ``(I,)`` any SLO'd service did.
    """

    services: tuple[str, ...]
    t_start: np.ndarray
    t_end: np.ndarray
    p99: np.ndarray
    error_rate: np.ndarray
    from_histogram: np.ndarray
    service_violating: np.ndarray
    violating: np.ndarray


def score_episode(result: SimResult) -> EpisodeScore:
    """Score one run; see :class:`EpisodeScore` and ``docs/scoring.md``.

    Args:
        result: What :func:`agents.rollout.rollout` returned (or a
            hand-built result with at least two frames).

    Returns:
        The episode's score.

    Raises:
        ValueError: With fewer than two frames (no interval to judge).
    """
    sc = result.scenario
    frames = result.frames
    if len(frames) < 2:
        raise ValueError(f"score_episode: need at least two frames, got {len(frames)}")
    tl = slo_timeline(result)
    dt = tl.t_end - tl.t_start
    viol_min = float(np.sum(dt[tl.violating])) / 60.0

    p99_entry = entry_p99(result, tl)
    finite = p99_entry[np.isfinite(p99_entry)]

    windows = fault_windows(result)
    ttm, mitigated, impacted, relapsed = time_to_mitigate(tl, windows)

    acts = [(t, a) for t, a in result.actions if not isinstance(a, Noop)]
    return EpisodeScore(
        scenario=sc.name,
        seed=sc.seed,
        horizon_s=float(sc.horizon_s),
        n_faults=len(windows),
        slo_violation_min=viol_min,
        error_budget_burn=error_budget_burn(sc, frames),
        p99_mean_s=float(finite.mean()) if finite.size else None,
        p99_max_s=float(finite.max()) if finite.size else None,
        cost=episode_cost(frames, sc.horizon_s),
        allocated_cost=episode_allocated_cost(frames, sc.horizon_s),
        time_to_mitigate_s=ttm,
        mitigated=mitigated,
        impacted=impacted,
        relapsed=relapsed,
        n_actions=len(acts),
        disruptive_actions=count_disruptive(result),
        actions_without_fault=sum(
            1 for t, _ in acts if not any(lo - _EPS <= t < hi - _EPS for lo, hi in windows)
        ),
        unknown_state_rate=unknown_state_rate(result),
    )


# --------------------------------------------------------------------------------------------
# the pieces (public: tests, plots and reports use them)


def degraded_times(scenario: Scenario) -> list[tuple[float, float]]:
    """Windows ``[start, end)`` in which a telemetry fault degrades the scraped gauges.

    The same rule as :meth:`FaultInjector.observe <envs.sim.faults.FaultInjector.observe>`:
    a scrape at ``t`` is degraded when ``at_s <= t < at_s + duration_s`` (no duration: to
    the end).
    """
    out = []
    for f in scenario.faults:
        if isinstance(f, TelemetryFault):
            end = f.at_s + f.duration_s if f.duration_s is not None else math.inf
            out.append((float(f.at_s), float(end)))
    return out


def _trusted(frame: Telemetry, degraded: Sequence[tuple[float, float]]) -> bool:
    return not any(lo <= frame.t < hi for lo, hi in degraded)


def slo_timeline(result: SimResult) -> SloTimeline:
    """Per-interval SLO truth from counters, histograms and trustworthy gauges.

    Args:
        result: A run (frames in time order).

    Returns:
        The timeline; see the module docstring for the sources.
    """
    sc = result.scenario
    frames = result.frames
    slos = sc.effective_slos()
    services = tuple(s for s in frames[0].services if s in slos)
    rows = [frames[0].services.index(s) for s in services]
    p99_slo = np.array([slos[s].p99_latency_s for s in services])
    err_slo = np.array([slos[s].error_rate for s in services])
    degraded = degraded_times(sc)

    n_int = len(frames) - 1
    k = len(services)
    p99 = np.full((n_int, k), np.nan)
    err = np.full((n_int, k), np.nan)
    from_hist = np.zeros(n_int, dtype=bool)
    p99_col = FIELD_INDEX["p99"]
    for i in range(n_int):
        prev, cur = frames[i], frames[i + 1]
        d = cur.counters[rows] - prev.counters[rows]
        bad = d[:, _C["failed"]] + d[:, _C["dropped"]]
        finished = d[:, _C["completed"]] + bad
        with np.errstate(invalid="ignore", divide="ignore"):
            err[i] = np.where(finished > 0, bad / finished, np.nan)
        if _trusted(cur, degraded):
            # the engine's exact p99; NaN where nothing finished (the histogram delta is
            # empty there too)
            p99[i] = cur.values[rows, p99_col]
        else:
            from_hist[i] = True
            hist = np.clip(cur.histogram[rows] - prev.histogram[rows], 0.0, None)
            p99[i] = histogram_quantile(0.99, _BOUNDS, hist)
    with np.errstate(invalid="ignore"):
        svc_bad = (p99 > p99_slo) | (err > err_slo)
    return SloTimeline(
        services=services,
        t_start=np.array([f.t for f in frames[:-1]]),
        t_end=np.array([f.t for f in frames[1:]]),
        p99=p99,
        error_rate=err,
        from_histogram=from_hist,
        service_violating=svc_bad,
        violating=np.asarray(svc_bad.any(axis=1), dtype=bool),
    )


def entry_p99(result: SimResult, timeline: SloTimeline | None = None) -> np.ndarray:
    """True per-interval p99 of the entry service, s (NaN where nothing finished).

    The gauge of trustworthy frames, the histogram delta otherwise (as for the SLOs).

    Args:
        result: A run.
        timeline: Its :func:`slo_timeline`, if already computed (reused when the entry
            service has an SLO).
    """
    entry = result.scenario.topology.entry
    if timeline is not None and entry in timeline.services:
        return timeline.p99[:, timeline.services.index(entry)].copy()
    frames = result.frames
    degraded = degraded_times(result.scenario)
    row = frames[0].services.index(entry)
    col = FIELD_INDEX["p99"]
    out = np.full(len(frames) - 1, np.nan)
    for i in range(len(frames) - 1):
        prev, cur = frames[i], frames[i + 1]
        if _trusted(cur, degraded):
            out[i] = cur.values[row, col]
        else:
            hist = np.clip(cur.histogram[row] - prev.histogram[row], 0.0, None)
            out[i] = histogram_quantile(0.99, _BOUNDS, hist)[0]
    return out


def error_budget_burn(scenario: Scenario, frames: Sequence[Telemetry]) -> float:
    """Failed + dropped attempts at the SLO'd services over what their budgets allowed.

    ``sum_s (failed_s + dropped_s) / sum_s (slo_s.error_rate * finished_s)`` with counts
    from the counters (last frame minus first), finished = completed + failed + dropped.
    0 when nothing finished.

    Args:
        scenario: The scenario (its effective SLOs).
        frames: The run's frames, first to last.
    """
    slos = scenario.effective_slos()
    first, last = frames[0], frames[-1]
    bad = allowed = 0.0
    for name, slo in slos.items():
        r = last.services.index(name)
        d = last.counters[r] - first.counters[r]
        failed = float(d[_C["failed"]] + d[_C["dropped"]])
        bad += failed
        allowed += slo.error_rate * (float(d[_C["completed"]]) + failed)
    return bad / allowed if allowed > 0 else 0.0  # failures are finished: bad > 0 => allowed > 0


def episode_cost(frames: Sequence[Telemetry], horizon_s: float | None = None) -> float:
    """Spend over the episode from the cumulative ``cost_total`` gauge.

    The last frame's value when observed (telemetry faults other than ``gap`` leave the
    cluster gauges alone). When a gap hides the end, the last observed ``cost_total`` plus
    the last observed ``cost_rate_per_hour`` times the hours from that frame to the end (to
    ``horizon_s`` when given, else to the last frame): an estimate, exact when the node
    count did not change inside the gap. NaN when no frame observed it.

    Args:
        frames: The run's frames, first to last.
        horizon_s: End of the episode, s (default: the last frame's time).
    """
    end = frames[-1].t if horizon_s is None else float(horizon_s)
    ci_total = CLUSTER_INDEX["cost_total"]
    ci_rate = CLUSTER_INDEX["cost_rate_per_hour"]
    for f in reversed(frames):
        if f.cluster_mask[ci_total]:
            total = float(f.cluster[ci_total])
            if f.t >= end - _EPS:
                return total
            rate = float(f.cluster[ci_rate]) if f.cluster_mask[ci_rate] else 0.0
            return total + rate * (end - f.t) / 3600.0
    return math.nan


def episode_allocated_cost(frames: Sequence[Telemetry], horizon_s: float | None = None) -> float:
    """Spend attributed to pods over the episode (``allocated_cost_total`` of the last frame).

    When a telemetry gap hides the end, the last observed value scaled by ``end / t`` (its
    average rate carried to the end). NaN when no frame observed it.
    """
    end = frames[-1].t if horizon_s is None else float(horizon_s)
    ci = CLUSTER_INDEX["allocated_cost_total"]
    for f in reversed(frames):
        if f.cluster_mask[ci]:
            total = float(f.cluster[ci])
            return total if f.t >= end - _EPS or f.t <= 0 else total * end / f.t
    return math.nan


def fault_windows(result: SimResult) -> list[tuple[float, float]]:
    """``[onset, end)`` of each fault's cause; ``end = None`` runs to the horizon.

    From the run's fault records (the simulator closes a record when a mitigation removes
    the cause); for a hand-built result without records, from the scenario's specs
    (``[at_s, at_s + duration_s)``).
    """
    horizon = float(result.scenario.horizon_s)
    if result.faults:
        return [
            (float(r.onset), float(r.end) if r.end is not None else horizon) for r in result.faults
        ]
    out = []
    for f in result.scenario.faults:
        end = f.at_s + f.duration_s if f.duration_s is not None else horizon
        out.append((float(f.at_s), float(min(end, horizon))))
    return out


def time_to_mitigate(
    timeline: SloTimeline,
    windows: Sequence[tuple[float, float]],
    hold_s: float = HOLD_S,
) -> tuple[float | None, bool, bool, bool | None]:
    """Time from the first fault onset until the SLOs are back and hold for ``hold_s``.

    Let ``T0`` be the first onset and ``T1`` the last. The hold may start at ``s0`` = the
    later of (a) the end of the first violating interval that ends after ``T0`` (or, if
    none violates, the first scrape at or after ``T0``) and (b) the first scrape at or
    after ``T1``. The incident is mitigated at the first scrape time ``tau >= s0`` such that
    no interval ending in ``(tau, tau + hold_s]`` violates and ``tau + hold_s`` is within
    the episode; a violation inside the window (a relapse) moves ``tau`` to its end.

    Args:
        timeline: The run's :func:`slo_timeline`.
        windows: The faults' ``[onset, end)`` windows (only the onsets are used).
        hold_s: Length of the clean window, s.

    Returns:
        ``(time_to_mitigate_s, mitigated, impacted, relapsed)``; ``(None, False, False,
        None)`` without a fault, ``(None, False, impacted, None)`` when never mitigated.
    """
    if not windows:
        return None, False, False, None
    t0 = min(lo for lo, _ in windows)
    t1 = max(lo for lo, _ in windows)
    ends = timeline.t_end
    bad = timeline.violating
    after = np.nonzero((ends > t0 + _EPS) & bad)[0]
    impacted = bool(after.size)
    scrapes = np.concatenate((timeline.t_start[:1], ends))
    if impacted:
        s0 = float(ends[after[0]])
    else:
        at_or_after = scrapes[scrapes >= t0 - _EPS]
        if not at_or_after.size:
            return None, False, False, None
        s0 = float(at_or_after[0])
    last_onset = scrapes[scrapes >= t1 - _EPS]
    if not last_onset.size:
        return None, False, impacted, None
    s0 = max(s0, float(last_onset[0]))
    t_last = float(ends[-1])
    bad_ends = ends[bad]
    tau = s0
    while tau + hold_s <= t_last + _EPS:
        inside = bad_ends[(bad_ends > tau + _EPS) & (bad_ends <= tau + hold_s + _EPS)]
        if not inside.size:
            relapsed = bool(np.any(bad_ends > tau + hold_s + _EPS))
            return tau - t0, True, impacted, relapsed
        tau = float(inside[-1])
    return None, False, impacted, None


class TrustedReady:
    """Ready replicas per service as the latest trustworthy frame shows them.

    Frames inside a telemetry-fault window (:func:`degraded_times`) are skipped, and so is a
    service whose ``replicas_ready`` is missing; before any such frame, the initial
    replicas. Feed frames in time order with :meth:`observe`; :meth:`disruptive` applies
    :func:`envs.core.actions.is_disruptive` with them. The env reward and
    :func:`count_disruptive` both count through this class.
    """

    def __init__(self, scenario: Scenario) -> None:
        self.services = tuple(scenario.service_names)
        self._degraded = degraded_times(scenario)
        self.ready = np.array([s.replicas.initial for s in scenario.topology.services], float)

    def observe(self, frame: Telemetry) -> None:
        """Take ``frame``'s ready replicas where it is trustworthy and observed."""
        if not _trusted(frame, self._degraded):
            return
        col = FIELD_INDEX["replicas_ready"]
        seen = frame.mask[:, col]
        self.ready[seen] = frame.values[seen, col]

    def disruptive(self, action: Action) -> bool:
        """:func:`~envs.core.actions.is_disruptive` with the ready replicas known now."""
        ready = 0.0
        if isinstance(action, Scale):
            ready = float(self.ready[self.services.index(action.service)])
        return is_disruptive(action, ready)


def count_disruptive(result: SimResult) -> int:
    """Disruptive actions of a run (:func:`envs.core.actions.is_disruptive`), repeats included.

    A ``Scale``'s ready replicas are read from the latest trustworthy frame at or before the
    action (:class:`TrustedReady`).
    """
    tracker = TrustedReady(result.scenario)
    frames = result.frames
    j = 0
    n = 0
    for t, a in result.actions:
        while j < len(frames) and frames[j].t <= t + _EPS:
            tracker.observe(frames[j])
            j += 1
        n += int(tracker.disruptive(a))
    return n


def lost_telemetry(frame: Telemetry) -> bool:
    """Whether a frame lost telemetry.

    True when a gauge of :data:`ALWAYS_OBSERVED` or a cluster gauge is missing: a gap, a
    vanished service, a delay with no history yet.
    """
    return bool((~frame.mask[:, _ALWAYS_IDX]).any() or (~frame.cluster_mask).any())


def unknown_state_rate(result: SimResult) -> float:
    """Share of decisions taken on a frame that had lost telemetry (:func:`lost_telemetry`).

    A decision at ``t`` saw the frame scraped at ``t``; one with ``missing_fraction == 0``
    saw everything. Without decisions (a hand-built result), 0.
    """
    if not result.decisions:
        return 0.0
    by_t = {round(f.t, 6): f for f in result.frames}
    unknown = 0
    for d in result.decisions:
        if d.missing_fraction <= 0:
            continue
        frame = by_t.get(round(d.t, 6))
        unknown += int(lost_telemetry(frame)) if frame is not None else 1
    return unknown / len(result.decisions)


# --------------------------------------------------------------------------------------------
# aggregation


@dataclass(frozen=True)
class MetricSummary:
    """One metric over many episodes.

    Attributes:
        n: Episodes with a value.
        n_missing: Episodes where the metric did not apply (None), e.g. never mitigated.
        mean: Mean of the values (None when ``n == 0``).
        mean_ci: Bootstrap 95% CI of the mean ``(low, high)``.
        iqm: Interquartile mean: the mean of the middle 50% (``trim_mean(x, 0.25)``).
        iqm_ci: Bootstrap 95% CI of the IQM.
        method: How the CIs were made: ``BCa``, ``percentile`` (BCa was degenerate),
            ``degenerate`` (one value, or all equal: the CI is the value itself), or
            ``none`` (no value).
    """

    n: int
    n_missing: int
    mean: float | None
    mean_ci: tuple[float, float] | None
    iqm: float | None
    iqm_ci: tuple[float, float] | None
    method: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (CIs as two-element lists)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for k in ("mean_ci", "iqm_ci"):
            if out[k] is not None:
                out[k] = list(out[k])
        return out


def iqm(values: Iterable[float]) -> float:
    """Interquartile mean: ``scipy.stats.trim_mean(x, 0.25)`` (drops ``floor(n/4)`` a side)."""
    x = np.asarray(list(values), dtype=np.float64)
    return float(stats.trim_mean(x, 0.25))


def _iqm_axis(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.asarray(stats.trim_mean(x, 0.25, axis=axis))


def _mean_axis(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.asarray(np.mean(x, axis=axis))


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[..., np.ndarray],
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
) -> tuple[tuple[float, float], str]:
    """Seeded bootstrap CI of ``statistic`` with ``scipy.stats.bootstrap``.

    BCa first; when it is not finite (degenerate jackknife, e.g. a trimmed mean that
    does not move) the percentile method; one value or all values equal give ``(v, v)``.

    Args:
        values: The sample.
        statistic: Vectorised ``f(x, axis)``.
        seed: Seed of the resampling generator (same seed, same CI).
        n_resamples: Bootstrap resamples.
        confidence: Confidence level.

    Returns:
        ``((low, high), method)``.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan), "none"
    if x.size == 1 or np.ptp(x) == 0:
        v = float(statistic(x, axis=-1))
        return (v, v), "degenerate"
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap(
                (x,),
                statistic,
                n_resamples=n_resamples,
                confidence_level=confidence,
                method=method,
                vectorized=True,
                rng=np.random.default_rng(seed),
            )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return (lo, hi), method
    # unreachable: the percentile interval of finite values that are not all equal is finite
    v = float(statistic(x, axis=-1))  # pragma: no cover, no mutate
    return (v, v), "degenerate"  # pragma: no mutate


def summarize_metric(
    values: Sequence[float | None],
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
) -> MetricSummary:
    """Mean, IQM and their bootstrap CIs of one metric; None values are skipped and counted.

    Args:
        values: One value per episode (None: not applicable).
        seed: Bootstrap seed.
        n_resamples: Bootstrap resamples.
        confidence: Confidence level.
    """
    present = [float(v) for v in values if v is not None]
    missing = len(values) - len(present)
    finite = [v for v in present if math.isfinite(v)]
    if len(finite) != len(present):
        raise ValueError(
            f"summarize_metric: non-finite values {sorted(set(present) - set(finite))}; "
            "a metric must be a finite number or None (not applicable)"
        )
    if not present:
        return MetricSummary(0, missing, None, None, None, None, "none")
    mean_ci, m1 = bootstrap_ci(present, _mean_axis, seed, n_resamples, confidence)
    iqm_ci, m2 = bootstrap_ci(present, _iqm_axis, seed, n_resamples, confidence)
    method = m1 if m1 == m2 else f"{m1}/{m2}"
    return MetricSummary(
        n=len(present),
        n_missing=missing,
        mean=float(np.mean(present)),
        mean_ci=mean_ci,
        iqm=iqm(present),
        iqm_ci=iqm_ci,
        method=method,
    )


def aggregate(
    scores: Sequence[EpisodeScore],
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
) -> dict[str, MetricSummary]:
    """Summarise every metric of :data:`METRICS` over episodes (seeds, scenarios).

    Args:
        scores: Episode scores.
        seed: Bootstrap seed (the same for every metric: deterministic output).
        n_resamples: Bootstrap resamples.
        confidence: Confidence level of the CIs.

    Returns:
        Metric name -> summary, in :data:`METRICS` order.
    """
    per = [s.metrics() for s in scores]
    return {
        m: summarize_metric([p[m] for p in per], seed, n_resamples, confidence) for m in METRICS
    }
