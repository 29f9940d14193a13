"""Scoring: exact values on hand-built timelines and frames, real runs, aggregation."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from scipy import stats

from agents.policy import StaticPolicy
from agents.rollout import rollout
from envs.core.actions import DrainNode, Noop, Restart, Rollback, Scale, ShedLoad
from envs.core.telemetry import (
    CLUSTER_FIELDS,
    CLUSTER_INDEX,
    COUNTER_FIELDS,
    FIELD_INDEX,
    LATENCY_BUCKETS_S,
    SERVICE_FIELDS,
    Telemetry,
    histogram_quantile,
    make_frame,
)
from envs.scenarios.loader import load_scenario
from envs.scenarios.schema import Scenario
from envs.scenarios.scoring import (
    ALWAYS_OBSERVED,
    HOLD_S,
    METRICS,
    EpisodeScore,
    SloTimeline,
    aggregate,
    bootstrap_ci,
    count_disruptive,
    degraded_times,
    entry_p99,
    episode_allocated_cost,
    episode_cost,
    error_budget_burn,
    fault_windows,
    iqm,
    lost_telemetry,
    score_episode,
    slo_timeline,
    summarize_metric,
    time_to_mitigate,
    unknown_state_rate,
)
from envs.sim.faults import FaultRecord
from envs.sim.simulator import Decision, SimResult, Simulator

DT = 15.0
SERVICES = ("frontend", "api", "db")
NODE_RATE = 3 * 0.384  # chain3: three nodes per hour
# Two SLOs so that the union over services is exercised; 0.25 and 0.5 are histogram bounds.
SLOS = {
    "frontend": {"p99_latency_s": 0.25, "error_rate": 0.01},
    "api": {"p99_latency_s": 0.5, "error_rate": 0.05},
}


# --------------------------------------------------------------------------- builders


def scenario(horizon: float = 600.0, faults: Sequence[dict] = (), slos: Any = SLOS) -> Scenario:
    return load_scenario("chain3", {"horizon_s": horizon, "faults": list(faults), "slos": slos})


Interval = Mapping[str, tuple[float, float, float, float | None]]
"""Per service: (completed, failed, dropped, p99 gauge or None for nothing finished)."""

GOOD: Interval = {
    "frontend": (1000, 0, 0, 0.08),
    "api": (1000, 0, 0, 0.08),
    "db": (1000, 0, 0, 0.05),
}


def frames_for(
    sc: Scenario,
    intervals: Sequence[Interval],
    ready: Sequence[Mapping[str, float]] | None = None,
    hidden: Sequence[int] = (),
    stale: Mapping[int, float] | None = None,
) -> list[Telemetry]:
    """Frames at t = 0, 15, ... with cumulative counters and histograms.

    Each interval's finished (not dropped) attempts go into the histogram bucket whose upper
    bound is the first >= the p99 gauge. ``hidden`` frame indices have every gauge NaN (a
    gap), ``stale`` ones show the given p99 gauge instead of the truth (a delay).
    """
    n = len(SERVICES)
    bounds = np.asarray(LATENCY_BUCKETS_S)
    counters = np.zeros((n, len(COUNTER_FIELDS)))
    hist = np.zeros((n, len(bounds)))
    frames = []
    stale = stale or {}
    for k in range(len(intervals) + 1):
        values = np.full((n, len(SERVICE_FIELDS)), np.nan)
        if k > 0:
            for s, name in enumerate(SERVICES):
                completed, failed, dropped, p99 = intervals[k - 1][name]
                counters[s] += (completed + failed + dropped, completed, failed, dropped)
                if p99 is not None:
                    hist[s, int(np.searchsorted(bounds, p99))] += completed + failed
                    values[s, FIELD_INDEX["p99"]] = stale.get(k, p99)
        rows = ready[k] if ready is not None else {}
        for s, name in enumerate(SERVICES):
            for f in ALWAYS_OBSERVED:  # defined in every healthy scrape
                values[s, FIELD_INDEX[f]] = 1.0
            values[s, FIELD_INDEX["replicas_ready"]] = rows.get(name, 2)
        t = k * DT
        cluster = np.zeros(len(CLUSTER_FIELDS))
        cluster[CLUSTER_INDEX["cost_rate_per_hour"]] = NODE_RATE
        cluster[CLUSTER_INDEX["cost_total"]] = NODE_RATE * t / 3600
        if k in hidden:
            values[:] = np.nan
            cluster[:] = np.nan
        frames.append(
            make_frame(
                t,
                SERVICES,
                values,
                counters.copy(),
                np.zeros(n),
                np.cumsum(hist, axis=1),
                cluster,
            )
        )
    return frames


def result_for(sc: Scenario, frames: list[Telemetry], **kw: Any) -> SimResult:
    return SimResult(sc, frames, kw.pop("actions", []), {}, **kw)


def bad(**services: tuple[float, float, float, float | None]) -> Interval:
    return {**GOOD, **services}


def timeline(pattern: str, dt: float = DT) -> SloTimeline:
    """A one-service timeline from a pattern: ``X`` violates, ``.`` does not."""
    v = np.array([c == "X" for c in pattern])
    n = len(v)
    t_end = dt * np.arange(1, n + 1)
    z = np.zeros((n, 1))
    return SloTimeline(("frontend",), t_end - dt, t_end, z, z, np.zeros(n, bool), v[:, None], v)


# --------------------------------------------------------------------------- violation minutes


def test_violation_minutes_union_of_services_and_strict_thresholds() -> None:
    sc = scenario()
    intervals = [GOOD] * 20
    intervals[3] = bad(frontend=(1000, 0, 0, 0.3))  # p99 over 0.25
    intervals[4] = bad(frontend=(1000, 0, 0, 0.3), api=(900, 60, 40, 0.1))  # both: once
    intervals[5] = bad(api=(900, 100, 0, 0.1))  # api error rate 0.1 > 0.05
    intervals[6] = bad(api=(950, 50, 0, 0.1))  # exactly 0.05: not a violation
    intervals[7] = bad(frontend=(990, 10, 0, 0.25))  # exactly at both limits: none
    intervals[8] = bad(frontend=(0, 0, 0, None))  # nothing finished: unknown, not violating
    intervals[9] = bad(db=(0, 1000, 0, 9.0))  # db has no SLO
    intervals[10] = bad(frontend=(980, 0, 20, 0.1))  # dropped count as errors: 0.02
    r = result_for(sc, frames_for(sc, intervals))
    tl = slo_timeline(r)
    assert tl.services == ("frontend", "api")
    assert np.flatnonzero(tl.violating).tolist() == [3, 4, 5, 10]
    assert tl.service_violating[4].tolist() == [True, True]
    assert tl.error_rate[4].tolist() == [0.0, 0.1]
    assert not tl.from_histogram.any()
    s = score_episode(r)
    assert s.slo_violation_min == 4 * DT / 60  # exactly 1.0
    assert s.p99_max_s == 0.3 and s.n_faults == 0


def test_gauges_hidden_or_stale_under_telemetry_faults_fall_back_to_histograms() -> None:
    # A gap over frames at t in [60, 120) (frames 4..7) and a delay over [150, 210) (10..13).
    faults = [
        {"kind": "telemetry", "at_s": 60, "mode": "gap", "duration_s": 60},
        {"kind": "telemetry", "at_s": 150, "mode": "delay", "duration_s": 60},
    ]
    sc = scenario(faults=faults)
    intervals = [GOOD] * 20
    intervals[4] = bad(frontend=(1000, 0, 0, 0.4))  # frame 5: hidden, histogram says 0.4
    intervals[5] = bad(api=(800, 200, 0, 0.1))  # frame 6: hidden, counters say errors
    intervals[10] = bad(frontend=(1000, 0, 0, 0.4))  # frame 11: gauge stale at 0.08
    r = result_for(sc, frames_for(sc, intervals, hidden=[4, 5, 6, 7], stale={11: 0.08}))
    tl = slo_timeline(r)
    assert np.flatnonzero(tl.violating).tolist() == [4, 5, 10]
    assert np.flatnonzero(tl.from_histogram).tolist() == [3, 4, 5, 6, 9, 10, 11, 12]
    assert 0.25 < tl.p99[4, 0] <= 0.5  # interpolated inside the (0.25, 0.5] bucket
    assert score_episode(r).slo_violation_min == 3 * DT / 60


def test_error_budget_burn_exact() -> None:
    sc = scenario()
    intervals = [GOOD] * 10
    intervals[2] = bad(frontend=(970, 20, 10, 0.1), api=(900, 100, 0, 0.1))
    intervals[3] = bad(db=(0, 500, 500, 0.1))  # no SLO: not counted
    r = result_for(sc, frames_for(sc, intervals))
    # frontend: 30 bad of 10_000 finished, budget 1%; api: 100 bad of 10_000, budget 5%
    expected = (30 + 100) / (0.01 * 10_000 + 0.05 * 10_000)
    assert score_episode(r).error_budget_burn == pytest.approx(expected, rel=1e-12)


def test_cost_from_last_frame_or_extrapolated_over_a_final_gap() -> None:
    sc = scenario(horizon=150.0)
    frames = frames_for(sc, [GOOD] * 10)
    assert episode_cost(frames) == pytest.approx(NODE_RATE * 150 / 3600)
    hidden = frames_for(sc, [GOOD] * 10, hidden=[9, 10])
    assert np.isnan(hidden[-1].cluster_value("cost_total"))
    # last observed at t = 120, plus the rate over the 30 s hidden
    assert episode_cost(hidden, 150.0) == pytest.approx(NODE_RATE * 150 / 3600)
    assert math.isnan(episode_cost(frames_for(sc, [GOOD], hidden=[0, 1])))


# --------------------------------------------------------------------------- time to mitigate


def test_time_to_mitigate_relapse_inside_the_hold_resets_it() -> None:
    # onset 60; violations end at 75..120; a relapse ending at 240 is inside (120, 420]:
    # the hold restarts at 240 and (240, 540] is clean.
    pattern = "...." + "XXXX" + "......." + "X" + "." * 44  # 60 intervals: t up to 900
    tl = timeline(pattern)
    assert tl.t_end[7] == 120 and tl.t_end[15] == 240
    ttm, mitigated, impacted, relapsed = time_to_mitigate(tl, [(60.0, 900.0)])
    assert (ttm, mitigated, impacted, relapsed) == (180.0, True, True, False)
    # a violation after the hold is a relapse; the time to mitigate stays
    late = pattern[:39] + "X" + pattern[40:]  # ends at 600
    assert time_to_mitigate(timeline(late), [(60.0, 900.0)]) == (180.0, True, True, True)
    # a hold that does not fit in the episode is no mitigation
    short = timeline(pattern[:35])  # ends at 525 < 240 + 300
    assert time_to_mitigate(short, [(60.0, 525.0)]) == (None, False, True, None)
    # a violation exactly HOLD_S after the start of the window is inside it
    edge = "...." + "X" + "." * 19 + "X" + "." * 30  # ends 75 and 375 = 75 + 300
    assert time_to_mitigate(timeline(edge), [(60.0, 900.0)])[0] == 375.0 - 60.0
    assert HOLD_S == 300.0


def test_time_to_mitigate_without_impact_without_faults_and_with_two_onsets() -> None:
    clean = timeline("." * 60)
    assert time_to_mitigate(clean, [(60.0, 900.0)]) == (0.0, True, False, False)
    assert time_to_mitigate(clean, [(50.0, 900.0)])[0] == 10.0  # first scrape after onset
    assert time_to_mitigate(clean, []) == (None, False, False, None)
    never = timeline("...." + "X" * 56)
    assert time_to_mitigate(never, [(60.0, 900.0)]) == (None, False, True, None)
    # the hold cannot start before the last onset, even after the first fault is handled
    two = timeline("...." + "XXXX" + "." * 52)
    assert time_to_mitigate(two, [(60.0, 900.0), (300.0, 900.0)])[0] == 240.0
    # violations that started before the onset and go on count from the first one after
    early = timeline("XXXXXX" + "." * 54)
    assert time_to_mitigate(early, [(60.0, 900.0)])[0] == 90.0 - 60.0


def test_time_to_mitigate_through_score_episode() -> None:
    faults = [{"kind": "bad_deploy", "service": "api", "at_s": 60}]
    sc = scenario(horizon=600.0, faults=faults)
    intervals = [GOOD] * 40
    for i in (4, 5, 6, 7, 15):  # intervals ending 75..120 and 240
        intervals[i] = bad(api=(800, 200, 0, 0.1))
    records = [FaultRecord(0, "bad_deploy", "api", 60.0, 250.0, True)]
    s = score_episode(result_for(sc, frames_for(sc, intervals), faults=records))
    assert s.time_to_mitigate_s == 180.0 and s.mitigated and s.impacted and s.relapsed is False
    assert s.slo_violation_min == 5 * DT / 60
    assert s.metrics()["mitigated"] == 1.0


# --------------------------------------------------------------------------- actions


def test_disruptive_actions_and_actions_without_fault() -> None:
    faults = [
        {"kind": "bad_deploy", "service": "api", "at_s": 60},
        {"kind": "telemetry", "at_s": 150, "mode": "gap", "duration_s": 30},
    ]
    sc = scenario(horizon=300.0, faults=faults)
    ready = [{"api": 2}] * 21
    ready[8] = {"api": 4}  # t = 120: api has 4 ready
    ready[10] = {"api": 6}  # t = 150 and 165 are inside the gap: not trusted
    ready[11] = {"api": 6}
    frames = frames_for(sc, [GOOD] * 20, ready=ready)
    actions = [
        (30.0, Restart("api")),  # disruptive, no fault yet
        (60.0, Rollback("api")),  # disruptive, fault 0 active
        (75.0, ShedLoad(0.0)),  # stopping shedding: not disruptive
        (90.0, ShedLoad(0.2)),  # disruptive
        (105.0, DrainNode(1)),  # disruptive
        (120.0, Scale("api", 3)),  # 3 < 4 ready: disruptive
        (135.0, Scale("api", 5)),  # 5 > 2 ready (frame at 135): not
        (165.0, Scale("api", 3)),  # gap: last trusted frame (135) had 2 ready: not
        (180.0, Scale("api", 2)),  # 2 == 2 ready: not; fault 0 ended at 180
        (195.0, Noop()),  # ignored everywhere
        (210.0, Scale("api", 1)),  # 1 < 2: disruptive; no fault active
    ]
    records = [
        FaultRecord(0, "bad_deploy", "api", 60.0, 180.0, True),
        FaultRecord(1, "telemetry", "cluster", 150.0, 180.0, True),
    ]
    r = result_for(sc, frames, actions=actions, faults=records)
    assert count_disruptive(r) == 6
    s = score_episode(r)
    assert s.disruptive_actions == 6 and s.n_actions == 10
    # outside [60, 180) and [150, 180): at 30, 180 and 210
    assert s.actions_without_fault == 3


def test_actions_until_the_horizon_when_a_cause_never_ends() -> None:
    sc = scenario(horizon=300.0, faults=[{"kind": "memory_leak", "service": "api", "at_s": 60}])
    frames = frames_for(sc, [GOOD] * 20)
    actions = [(45.0, Restart("api")), (60.0, Rollback("api")), (285.0, Restart("api"))]
    records = [FaultRecord(0, "memory_leak", "api", 60.0, None, True)]
    s = score_episode(result_for(sc, frames, actions=actions, faults=records))
    assert s.actions_without_fault == 1 and s.disruptive_actions == 3
    # without records (a hand-built result), the spec's window is used: same answer
    assert score_episode(result_for(sc, frames, actions=actions)).actions_without_fault == 1


def test_unknown_state_rate_ignores_structural_nans() -> None:
    sc = scenario(horizon=120.0, faults=[{"kind": "telemetry", "at_s": 30, "duration_s": 30}])
    frames = frames_for(sc, [GOOD] * 8, hidden=[2, 3])
    # every frame misses something by construction (rates, SLO gauges of db, ...)
    assert all(not f.mask.all() for f in frames)
    assert [lost_telemetry(f) for f in frames[:5]] == [False, False, True, True, False]
    decisions = [Decision(f.t, 1.0 - float(f.mask.mean()), 0) for f in frames[:-1]]
    s = score_episode(result_for(sc, frames, decisions=decisions))
    assert s.unknown_state_rate == 2 / 8


# --------------------------------------------------------------------------- real runs


def test_real_run_agrees_with_the_engine_accounting() -> None:
    sc = load_scenario("chain3", {"horizon_s": 1200, "faults": [_crash_db()]})
    r = rollout(Simulator(sc, seed=3), StaticPolicy())
    s = score_episode(r)
    assert s.slo_violation_min * 60 == pytest.approx(r.summary["slo_violation_s"]["frontend"])
    assert s.p99_max_s == pytest.approx(r.summary["entry_p99_max_s"])
    assert s.p99_mean_s == pytest.approx(r.summary["entry_p99_mean_s"])
    assert s.cost == pytest.approx(r.summary["cost_total"])
    err = r.summary["entry_error_rate"]
    assert s.error_budget_burn == pytest.approx(err / 0.01, rel=1e-3)  # in flight at the end
    assert s.n_actions == 0 and s.unknown_state_rate == 0.0 and s.impacted
    json.dumps(s.as_dict())  # JSON-ready
    assert list(s.metrics()) == list(METRICS)


def _crash_db() -> dict[str, Any]:
    return {"kind": "pod_crash", "service": "db", "at_s": 420, "pods": 2}


@pytest.mark.parametrize("mode", ["gap", "delay", "missing_service", "noise"])
def test_telemetry_faults_do_not_change_the_score_of_the_same_trajectory(mode: str) -> None:
    """Telemetry faults change only what is observed: the truth-based score is the same."""
    tele = {"kind": "telemetry", "at_s": 360, "mode": mode, "duration_s": 300}
    if mode == "missing_service":
        tele["service"] = "frontend"
    base = load_scenario("chain3", {"horizon_s": 1200, "faults": [_crash_db()]})
    blind = load_scenario("chain3", {"horizon_s": 1200, "faults": [_crash_db(), tele]})
    clean = score_episode(rollout(Simulator(base, seed=5), StaticPolicy()))
    r = rollout(Simulator(blind, seed=5), StaticPolicy())
    hidden = score_episode(r)
    assert slo_timeline(r).from_histogram.sum() == 20  # frames at 375 .. 660
    assert hidden.slo_violation_min == clean.slo_violation_min > 0
    assert hidden.error_budget_burn == pytest.approx(clean.error_budget_burn)
    assert hidden.cost == pytest.approx(clean.cost)
    expected_unknown = 20 / 80 if mode in ("gap", "missing_service") else 0.0
    assert hidden.unknown_state_rate == expected_unknown


@pytest.mark.parametrize("mode", ["gap", "noise"])
@pytest.mark.parametrize(("at_s", "shift_s"), [(360.0, 60.0), (435.0, 0.0)])
def test_telemetry_faults_move_the_time_to_mitigate_only_by_their_onset(
    mode: str, at_s: float, shift_s: float
) -> None:
    """An observation-only fault leaves the run as it was (counters bit-identical) and counts
    as a fault: ``T0`` is the first onset of any fault (``docs/scoring.md``). So a gap that
    starts 60 s before the crash adds those 60 s to the time to mitigate; one that starts
    during the incident changes nothing (120 s from the crash at 420 s either way: the db
    leaves its retry-sustained overload at 530.8 s, the first scrape after it is 540 s)."""
    tele = {"kind": "telemetry", "at_s": at_s, "mode": mode, "duration_s": 300}
    base = load_scenario("chain3", {"horizon_s": 1200, "faults": [_crash_db()]})
    blind = load_scenario("chain3", {"horizon_s": 1200, "faults": [_crash_db(), tele]})
    clean_run = rollout(Simulator(base, seed=5), StaticPolicy())
    hidden_run = rollout(Simulator(blind, seed=5), StaticPolicy())
    np.testing.assert_array_equal(
        np.array([f.counters for f in hidden_run.frames]),
        np.array([f.counters for f in clean_run.frames]),
    )
    clean = score_episode(clean_run)
    hidden = score_episode(hidden_run)
    assert clean.time_to_mitigate_s == 120.0
    assert hidden.time_to_mitigate_s == clean.time_to_mitigate_s + shift_s


def test_fault_free_run_and_too_short_result() -> None:
    sc = load_scenario("chain3", {"horizon_s": 300})
    r = rollout(Simulator(sc, seed=1), StaticPolicy())
    s = score_episode(r)
    assert s.n_faults == 0 and s.time_to_mitigate_s is None and not s.mitigated
    assert s.slo_violation_min == 0.0 and s.metrics()["mitigated"] is None
    with pytest.raises(ValueError, match="two frames"):
        score_episode(SimResult(sc, r.frames[:1]))


# --------------------------------------------------------------------------- aggregation


def test_iqm_by_hand() -> None:
    x = [7, 1, 100, 3, 2, 6, 5, 4]  # sorted 1..7, 100: drop 2 each side -> 3, 4, 5, 6
    assert iqm(x) == 4.5
    assert iqm([1, 2, 3, 4, 5]) == pytest.approx(np.mean([2, 3, 4]))  # floor(5/4) = 1 a side
    assert iqm([3.0]) == 3.0


def test_summary_ci_contains_estimates_and_is_deterministic() -> None:
    rng = np.random.default_rng(7)
    x = list(rng.lognormal(0.0, 1.0, size=60))
    a = summarize_metric(x, seed=0)
    b = summarize_metric(x, seed=0)
    assert a == b  # same seed, same CIs
    assert a.mean == pytest.approx(np.mean(x)) and a.iqm == pytest.approx(stats.trim_mean(x, 0.25))
    assert a.mean is not None and a.iqm is not None
    assert a.mean_ci is not None and a.iqm_ci is not None
    assert a.mean_ci[0] < a.mean < a.mean_ci[1]
    assert a.iqm_ci[0] < a.iqm < a.iqm_ci[1]
    assert a.method == "BCa" and a.n == 60 and a.n_missing == 0
    c = summarize_metric(x, seed=1)
    assert c.mean_ci != a.mean_ci  # the seed is what makes it reproducible
    json.dumps(a.as_dict())


def test_summary_degenerate_inputs() -> None:
    one = summarize_metric([2.5])
    assert (one.mean, one.mean_ci, one.iqm, one.iqm_ci) == (2.5, (2.5, 2.5), 2.5, (2.5, 2.5))
    assert one.method == "degenerate"
    same = summarize_metric([0.0] * 12 + [None, None])
    assert same.mean_ci == (0.0, 0.0) and same.n == 12 and same.n_missing == 2
    none = summarize_metric([None, None])
    assert none.n == 0 and none.n_missing == 2 and none.mean is None and none.method == "none"
    two = summarize_metric([1.0, 3.0])
    assert two.mean_ci is not None and 1.0 <= two.mean_ci[0] <= 2.0 <= two.mean_ci[1] <= 3.0
    # mostly equal with one outlier: BCa's jackknife is degenerate for the IQM
    lumpy = summarize_metric([1.0] * 9 + [5.0])
    assert lumpy.iqm_ci is not None and all(math.isfinite(v) for v in lumpy.iqm_ci)
    ci, method = bootstrap_ci([], np.mean)
    assert method == "none" and all(math.isnan(v) for v in ci)
    with pytest.raises(ValueError, match="non-finite") as err:
        summarize_metric([1.0, math.inf])
    assert str(err.value).endswith("a metric must be a finite number or None (not applicable)")


def test_aggregate_skips_not_applicable_values() -> None:
    def score(ttm: float | None, mitigated: bool, n_faults: int = 1) -> EpisodeScore:
        return EpisodeScore(
            scenario="x",
            seed=0,
            horizon_s=600.0,
            n_faults=n_faults,
            slo_violation_min=1.0,
            error_budget_burn=2.0,
            p99_mean_s=0.1,
            p99_max_s=0.2,
            cost=0.3,
            time_to_mitigate_s=ttm,
            mitigated=mitigated,
            impacted=True,
            relapsed=False if mitigated else None,
            n_actions=1,
            disruptive_actions=0,
            actions_without_fault=0,
            unknown_state_rate=0.0,
        )

    scores = [score(60.0, True), score(None, False), score(120.0, True), score(None, False, 0)]
    agg = aggregate(scores)
    assert list(agg) == list(METRICS)
    assert agg["time_to_mitigate_s"].n == 2 and agg["time_to_mitigate_s"].n_missing == 2
    assert agg["time_to_mitigate_s"].mean == 90.0
    assert agg["mitigated"].n == 3 and agg["mitigated"].mean == pytest.approx(2 / 3)
    assert agg["relapsed"].n == 2 and agg["relapsed"].mean == 0.0
    assert agg["slo_violation_min"].mean_ci == (1.0, 1.0)
    assert aggregate(scores) == agg


# --------------------------------------------------------------------------- exact values
# (written against the survivors of `make mutation MODULES=scoring`; each asserts a value)


def _with_allocated(frames: list[Telemetry], per_hour: float) -> list[Telemetry]:
    """``frames`` with ``allocated_cost_total = per_hour * t / 3600`` where observed."""
    ci = CLUSTER_INDEX["allocated_cost_total"]
    for f in frames:
        if f.cluster_mask[ci]:
            f.cluster[ci] = per_hour * f.t / 3600.0
    return frames


def test_score_fields_by_value_on_two_frames() -> None:
    sc = load_scenario("chain3", {"horizon_s": 300.0, "seed": 11, "slos": SLOS})
    frames = _with_allocated(frames_for(sc, [GOOD]), per_hour=2.0)  # t = 0 and 15: the least
    s = score_episode(result_for(sc, frames))
    assert (s.scenario, s.seed, s.horizon_s) == ("chain3", 11, 300.0)
    # both costs run to the scenario's horizon, not to the last frame (t = 15)
    assert s.cost == pytest.approx(NODE_RATE * 300.0 / 3600.0, rel=1e-12)
    assert s.allocated_cost == pytest.approx(2.0 * 300.0 / 3600.0, rel=1e-12)
    assert (s.p99_mean_s, s.p99_max_s) == (0.08, 0.08)
    m = s.metrics()
    assert m["cost"] == s.cost and m["allocated_cost"] == s.allocated_cost
    assert (s.n_faults, s.mitigated, s.relapsed, m["mitigated"]) == (0, False, None, None)


def test_metrics_turn_non_finite_costs_into_not_applicable() -> None:
    s = EpisodeScore(
        "x", 0, 60.0, 0, 0.0, 0.0, None, None, math.nan, None, False, False, None, 0, 0, 0, 0.0
    )
    assert math.isnan(s.allocated_cost)  # the default: an old result without it
    m = s.metrics()
    assert m["cost"] is None and m["allocated_cost"] is None
    assert (m["p99_mean_s"], m["relapsed"], m["n_actions"]) == (None, None, 0.0)


def _p99_of_one_bucket(latency: float, n: float = 1000.0) -> float:
    """The histogram p99 of ``n`` attempts all in the bucket of ``latency`` (frames_for's)."""
    row = np.zeros(len(LATENCY_BUCKETS_S))
    row[int(np.searchsorted(LATENCY_BUCKETS_S, latency)) :] = n
    return float(histogram_quantile(0.99, np.asarray(LATENCY_BUCKETS_S), row[None])[0])


def test_entry_p99_without_an_slo_on_the_entry_reads_gauges_and_histograms() -> None:
    # only api has an SLO, so the entry (frontend) p99 is not in the timeline: its own path
    faults = [{"kind": "telemetry", "at_s": 60, "mode": "gap", "duration_s": 30}]
    sc = scenario(faults=faults, slos={"api": SLOS["api"]})
    intervals = [GOOD] * 8
    intervals[1] = bad(frontend=(1000, 0, 0, 0.2))  # trusted frame 2: the gauge, 0.2
    intervals[3] = bad(frontend=(1000, 0, 0, 0.4))  # frames 4, 5 (t = 60, 75) hidden
    intervals[5] = bad(frontend=(0, 0, 0, None))  # nothing finished: NaN
    frames = frames_for(sc, intervals, hidden=[4, 5])
    r = result_for(sc, frames)
    tl = slo_timeline(r)
    assert tl.services == ("api",)
    got = entry_p99(r, tl)
    assert got.shape == (8,)
    by_hist = _p99_of_one_bucket(0.4)
    assert by_hist == pytest.approx(0.25 + 0.99 * 0.25)  # 1000 attempts in (0.25, 0.5]
    good_hist = _p99_of_one_bucket(0.08)  # frame 5 (t = 75) is hidden too
    want = [0.08, 0.2, 0.08, by_hist, good_hist, math.nan, 0.08, 0.08]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(entry_p99(r), want)  # without a timeline: the same
    s = score_episode(r)
    assert s.p99_max_s == by_hist
    assert s.p99_mean_s == pytest.approx(np.nanmean(want), rel=1e-12)


def test_entry_p99_with_nothing_finished_anywhere_is_not_applicable() -> None:
    sc = scenario()
    quiet = {name: (0.0, 0.0, 0.0, None) for name in SERVICES}
    s = score_episode(result_for(sc, frames_for(sc, [quiet] * 3)))
    assert s.p99_mean_s is None and s.p99_max_s is None
    assert s.slo_violation_min == 0.0 and s.error_budget_burn == 0.0


def test_timeline_error_rates_and_types_by_value() -> None:
    sc = scenario()
    intervals = [GOOD] * 3
    intervals[0] = bad(frontend=(0, 1, 0, None))  # one finished attempt, failed: rate 1
    intervals[1] = bad(api=(0, 0, 0, None))  # nothing finished at api: NaN
    intervals[2] = bad(frontend=(3, 0, 1, 0.1))  # 1 of 4 dropped
    tl = slo_timeline(result_for(sc, frames_for(sc, intervals)))
    assert tl.error_rate.dtype == np.float64 and tl.p99.dtype == np.float64
    assert tl.from_histogram.dtype == np.bool_ and tl.violating.dtype == np.bool_
    np.testing.assert_array_equal(tl.error_rate, [[1.0, 0.0], [0.0, math.nan], [0.25, 0.0]])
    assert tl.violating.tolist() == [True, False, True]
    np.testing.assert_array_equal(tl.t_start, [0.0, 15.0, 30.0])
    np.testing.assert_array_equal(tl.t_end, [15.0, 30.0, 45.0])


def test_timeline_histogram_p99_by_value() -> None:
    faults = [{"kind": "telemetry", "at_s": 15, "mode": "delay", "duration_s": 15}]
    sc = scenario(faults=faults)
    intervals = [GOOD, bad(api=(1000, 0, 0, 0.4)), GOOD]
    tl = slo_timeline(result_for(sc, frames_for(sc, intervals, stale={1: 0.08})))
    assert tl.from_histogram.tolist() == [True, False, False]
    # frame 1 is degraded: interval 0 from the histogram of 1000 attempts at 0.08
    assert tl.p99[0, 0] == _p99_of_one_bucket(0.08) == pytest.approx(0.075 + 0.99 * 0.025)
    assert tl.p99[1, 1] == 0.4 and tl.violating.tolist() == [False, False, False]


def test_degraded_times_without_a_duration_run_to_the_end() -> None:
    faults = [
        {"kind": "telemetry", "at_s": 30, "duration_s": 60},
        {"kind": "telemetry", "at_s": 200, "duration_s": None},
        {"kind": "bad_deploy", "service": "api", "at_s": 60},  # not a telemetry fault
    ]
    assert degraded_times(scenario(faults=faults)) == [(30.0, 90.0), (200.0, math.inf)]


def test_error_budget_burn_from_a_later_first_frame_and_small_budgets() -> None:
    sc = scenario()
    intervals = [bad(frontend=(900, 100, 0, 0.1))] + [bad(frontend=(95, 5, 0, 0.1))] * 2
    frames = frames_for(sc, intervals)
    # counted from frames[1]: frontend 10 bad of 200 (budget 2), api 0 of 2000 (budget 100)
    assert error_budget_burn(sc, frames[1:]) == pytest.approx(10 / (2 + 100), rel=1e-12)
    # a budget below one attempt still divides: 1 bad of 10 at 1% allows 0.1
    tiny = scenario(slos={"frontend": SLOS["frontend"]})
    small = frames_for(tiny, [bad(frontend=(9, 1, 0, 0.1))])
    assert error_budget_burn(tiny, small) == pytest.approx(1 / 0.1, rel=1e-12)
    quiet = {name: (0.0, 0.0, 0.0, None) for name in SERVICES}
    assert error_budget_burn(sc, frames_for(sc, [quiet])) == 0.0  # nothing finished


def test_allocated_cost_at_the_end_or_carried_over_a_final_gap() -> None:
    sc = scenario(horizon=150.0)
    frames = _with_allocated(frames_for(sc, [GOOD] * 10), per_hour=3.6)  # 0.001 per s
    assert episode_allocated_cost(frames) == pytest.approx(0.15, rel=1e-12)
    assert episode_allocated_cost(frames, 150.0) == pytest.approx(0.15, rel=1e-12)
    # to a later horizon: the average rate carried on
    assert episode_allocated_cost(frames, 300.0) == pytest.approx(0.30, rel=1e-12)
    # a gap hides the last two frames: the value at t = 120 scaled by 150 / 120
    hidden = _with_allocated(frames_for(sc, [GOOD] * 10, hidden=[9, 10]), per_hour=3.6)
    assert episode_allocated_cost(hidden) == pytest.approx(0.12 * 150 / 120, rel=1e-12)
    # only the first frame (t = 0) observed: its value, not a division by zero
    first_only = _with_allocated(frames_for(sc, [GOOD] * 2, hidden=[1, 2]), per_hour=3.6)
    first_only[0].cluster[CLUSTER_INDEX["allocated_cost_total"]] = 0.5
    assert episode_allocated_cost(first_only, 150.0) == 0.5
    assert math.isnan(episode_allocated_cost(frames_for(sc, [GOOD], hidden=[0, 1])))


def test_actions_without_fault_at_the_window_edges() -> None:
    sc = scenario(horizon=300.0, faults=[{"kind": "bad_deploy", "service": "api", "at_s": 60}])
    records = [FaultRecord(0, "bad_deploy", "api", 60.0, 120.0, True)]
    frames = frames_for(sc, [GOOD] * 20)

    def without(t: float) -> int:
        r = result_for(sc, frames, actions=[(t, Restart("api"))], faults=records)
        return score_episode(r).actions_without_fault

    # the window is [60, 120) with a 1e-9 s tolerance on both ends
    assert [without(t) for t in (59.0, 60.0 - 1e-9, 60.0, 119.0, 120.0 - 1e-9, 120.0)] == [
        1,
        0,
        0,
        0,
        1,
        1,
    ]


def test_fault_windows_from_specs_without_records() -> None:
    faults = [
        {"kind": "bad_deploy", "service": "api", "at_s": 60},  # no end: to the horizon
        {"kind": "telemetry", "at_s": 100, "duration_s": 50},
        {"kind": "telemetry", "at_s": 250, "duration_s": 500},  # clipped at the horizon
    ]
    sc = scenario(horizon=300.0, faults=faults)
    r = result_for(sc, frames_for(sc, [GOOD] * 20))
    assert fault_windows(r) == [(60.0, 300.0), (100.0, 150.0), (250.0, 300.0)]


def test_time_to_mitigate_edges_by_value() -> None:
    # one violating interval after the onset: the hold starts at its end
    one = timeline("...." + "X" + "." * 40)
    assert time_to_mitigate(one, [(60.0, 900.0)]) == (15.0, True, True, False)
    # a violation ending exactly at the onset is before the fault
    before = timeline("...X" + "." * 40)
    assert time_to_mitigate(before, [(60.0, 900.0)]) == (0.0, True, False, False)
    # the hold fits exactly: (60, 360] ends at the last scrape
    exact = timeline("." * 24)
    assert exact.t_end[-1] == 360.0
    assert time_to_mitigate(exact, [(60.0, 360.0)]) == (0.0, True, False, False)
    assert time_to_mitigate(timeline("." * 23), [(60.0, 345.0)]) == (None, False, False, None)
    # onsets after the last scrape: nothing to judge (first) or no scrape after the last
    assert time_to_mitigate(exact, [(400.0, 900.0)]) == (None, False, False, None)
    hit = timeline("....X" + "." * 19)
    assert time_to_mitigate(hit, [(60.0, 900.0), (400.0, 900.0)]) == (None, False, True, None)


def test_time_to_mitigate_tolerates_float_noise_of_a_nanosecond() -> None:
    """Onsets, scrapes and hold ends 1e-9 s apart count as the same instant (_EPS)."""
    clean = timeline("." * 40)
    # an onset a nanosecond after a scrape still starts the hold at that scrape
    ttm, ok, _, _ = time_to_mitigate(clean, [(60.0 + 1e-9, 900.0)])
    assert ok and ttm == pytest.approx(0.0, abs=1e-6)
    ttm, ok, _, _ = time_to_mitigate(clean, [(30.0, 900.0), (60.0 + 1e-9, 900.0)])
    assert ok and ttm == pytest.approx(30.0, abs=1e-6)
    # a violation ending a nanosecond before the onset is before it
    before = timeline("...X" + "." * 40)
    assert time_to_mitigate(before, [(60.0 - 1e-9, 900.0)])[2] is False
    # a hold a nanosecond longer than what is left still fits
    exact = timeline("." * 24)
    assert time_to_mitigate(exact, [(60.0, 360.0)], hold_s=300.0 + 1e-9)[1] is True
    # a violation ending a nanosecond after the hold starts is inside it
    relapse = timeline("...." + "X" + "." * 40)
    shifted = SloTimeline(
        relapse.services,
        relapse.t_start,
        np.where(relapse.violating, 75.0 + 1e-9, relapse.t_end),
        relapse.p99,
        relapse.error_rate,
        relapse.from_histogram,
        relapse.service_violating,
        relapse.violating,
    )
    assert time_to_mitigate(shifted, [(60.0, 900.0)])[0] == pytest.approx(15.0, abs=1e-6)


def test_unknown_state_rate_by_value() -> None:
    sc = scenario(horizon=120.0, faults=[{"kind": "telemetry", "at_s": 30, "duration_s": 30}])
    frames = frames_for(sc, [GOOD] * 8, hidden=[2, 3])
    assert unknown_state_rate(result_for(sc, frames)) == 0.0  # no decisions
    decisions = [
        Decision(0.0, 0.0, 0),  # saw everything: not unknown, and the next ones still count
        Decision(30.0, 0.5, 0),  # frame 2: lost
        Decision(45.0, 0.5, 0),  # frame 3: lost
        Decision(60.0 + 4e-7, 0.5, 0),  # frame 4 (structural NaNs only) despite float noise
        Decision(75.4, 0.5, 0),  # no frame at that time: unknown (not frame 5's 75.0)
        Decision(82.6, 0.0, 0),  # no frame, but it saw everything: not unknown
    ]
    r = result_for(sc, frames, decisions=decisions)
    assert unknown_state_rate(r) == 3 / 6


def test_summary_as_dict_and_bootstrap_ci_against_scipy() -> None:
    x = [0.3, 1.2, 0.7, 2.5, 0.1, 0.9, 1.7, 0.4, 3.1, 0.8]
    s = summarize_metric(x)

    def ref(stat: Any, seed: int = 0, n: int = 2000, cl: float = 0.95) -> tuple[float, float]:
        res = stats.bootstrap(
            (np.asarray(x),),
            stat,
            n_resamples=n,
            confidence_level=cl,
            method="BCa",
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
        return (float(res.confidence_interval.low), float(res.confidence_interval.high))

    def trim(a: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.asarray(stats.trim_mean(a, 0.25, axis=axis))

    assert s.mean_ci == ref(np.mean) and s.iqm_ci == ref(trim) and s.method == "BCa"
    assert bootstrap_ci(x, np.mean) == (ref(np.mean), "BCa")  # the defaults: 0, 2000, 0.95
    assert bootstrap_ci(x, np.mean, seed=3, n_resamples=500, confidence=0.8) == (
        ref(np.mean, 3, 500, 0.8),
        "BCa",
    )
    other = summarize_metric(x, seed=3, n_resamples=500, confidence=0.8)
    assert other.mean_ci == ref(np.mean, 3, 500, 0.8) and other.iqm_ci == ref(trim, 3, 500, 0.8)
    d = s.as_dict()
    assert d["mean_ci"] == list(s.mean_ci) and d["iqm_ci"] == list(s.iqm_ci)
    assert d["n"] == 10 and d["n_missing"] == 0 and d["method"] == "BCa"
    assert summarize_metric([None]).as_dict()["mean_ci"] is None
    # equal values or one value: degenerate; two values or a range of exactly 1: not
    assert bootstrap_ci([2.0] * 5, np.mean) == ((2.0, 2.0), "degenerate")
    assert bootstrap_ci([4.0], np.mean) == ((4.0, 4.0), "degenerate")
    assert bootstrap_ci([1.0, 2.0, 2.0, 1.0], np.mean)[1] != "degenerate"
    assert bootstrap_ci([1.0, 3.0], np.mean)[1] != "degenerate"
    # BCa's jackknife is degenerate for this IQM: the percentile method, named as such
    lumpy = summarize_metric([1.0] * 9 + [5.0])
    assert lumpy.method == "BCa/percentile"
    pct = stats.bootstrap(
        (np.asarray([1.0] * 9 + [5.0]),),
        trim,
        n_resamples=2000,
        confidence_level=0.95,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert lumpy.iqm_ci == (float(pct.low), float(pct.high))


def test_aggregate_passes_its_bootstrap_settings_on() -> None:
    def score(v: float) -> EpisodeScore:
        return EpisodeScore(
            "x", 0, 60.0, 0, v, 0.0, None, None, 1.0, None, False, False, None, 0, 0, 0, 0.0
        )

    scores = [score(v) for v in (0.3, 1.2, 0.7, 2.5, 0.1, 0.9, 1.7, 0.4)]
    values = [s.slo_violation_min for s in scores]
    assert aggregate(scores)["slo_violation_min"] == summarize_metric(values, 0, 2000, 0.95)
    got = aggregate(scores, seed=2, n_resamples=300, confidence=0.7)["slo_violation_min"]
    assert got == summarize_metric(values, 2, 300, 0.7)
    assert got != summarize_metric(values)


def test_cost_ends_and_a_missing_rate_by_value() -> None:
    sc = scenario(horizon=150.0)
    frames = frames_for(sc, [GOOD] * 10)
    last = frames[-1].cluster_value("cost_total")
    # within the 1e-9 s tolerance of the end: the last value itself, not an extrapolation
    assert episode_cost(frames, 150.0 + 1e-9) == last
    # a final gap without a horizon: carried to the last frame's time (150), not an earlier one
    hidden = frames_for(sc, [GOOD] * 10, hidden=[9, 10])
    assert episode_cost(hidden) == pytest.approx(NODE_RATE * 150 / 3600, rel=1e-12)
    # the rate is unknown where the total is known: nothing is added for the gap
    ci = CLUSTER_INDEX["cost_rate_per_hour"]
    hidden[8].cluster[ci] = math.nan
    hidden[8].cluster_mask[ci] = False
    assert episode_cost(hidden, 150.0) == hidden[8].cluster_value("cost_total")


def test_allocated_cost_ends_and_an_early_last_value_by_value() -> None:
    sc = scenario(horizon=150.0)
    frames = _with_allocated(frames_for(sc, [GOOD] * 10), per_hour=3.6)
    last = frames[-1].cluster[CLUSTER_INDEX["allocated_cost_total"]]
    assert episode_allocated_cost(frames, 150.0 + 1e-9) == last
    # the last observed value at t = 1 s is carried to the end x 150 (no shortcut below 1 s)
    early = _with_allocated(frames_for(sc, [GOOD], hidden=[1]), per_hour=3.6)
    one = dataclasses.replace(early[0], t=1.0)
    one.cluster[CLUSTER_INDEX["allocated_cost_total"]] = 0.001
    assert episode_allocated_cost([one, early[1]], 150.0) == pytest.approx(0.15, rel=1e-12)


def test_count_disruptive_reads_frame_zero_and_frames_at_the_action_time() -> None:
    sc = scenario(horizon=300.0)
    ready = [{"api": 2}] * 21
    ready[0] = {"api": 4}  # t = 0 shows 4 ready (the scenario starts api at 2)
    ready[8] = {"api": 5}  # t = 120
    frames = frames_for(sc, [GOOD] * 20, ready=ready)
    acts = [
        (0.0, Scale("api", 3)),  # 3 < 4 ready at t = 0: disruptive
        (120.0 - 1e-9, Scale("api", 4)),  # the frame at 120 counts (1e-9 s tolerance): 4 < 5
        (400.0, Scale("api", 1)),  # after the last frame (300: 2 ready): disruptive
    ]
    assert count_disruptive(result_for(sc, frames, actions=acts)) == 3
