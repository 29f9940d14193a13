"""The Kubernetes HPA reproduction at its boundaries, by exact values.

Written against the surviving mutants of ``make mutation MODULES=hpa`` (issue 15): each test
pins one rule of ``pkg/controller/podautoscaler`` where a neighbouring rule (``<`` for ``<=``,
the other branch, a dropped argument) gives another replica count, another reason or another
report. Grouped by the controller's functions: tolerances, ``groupPods``, the utilisation
ratio, the replica calculator's missing/unready rebalancing, the behaviors' rate limits and
reasons, scale events, ``reconcile``'s metric loop, the telemetry mapping and the controller.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from envs.core.telemetry import (
    CLUSTER_FIELDS,
    COUNTER_FIELDS,
    FIELD_INDEX,
    LATENCY_BUCKETS_S,
    SERVICE_FIELDS,
    Telemetry,
    make_frame,
)
from envs.kube.config import HPABehavior, HPAConfig, ResourceMetric
from envs.kube.hpa import (
    HPAController,
    HPAState,
    MetricOutcome,
    MetricsUnavailableError,
    PodSample,
    ScaleEvent,
    ServiceState,
    Tolerances,
    convert_desired_replicas_with_behavior_rate,
    convert_desired_replicas_with_rules,
    group_pods,
    pods_from_telemetry,
    reconcile,
    resource_replicas,
    scale_down_limit,
    scale_up_limit,
    stabilize_recommendation,
    store_scale_event,
    utilization_ratio,
)

CPU = ResourceMetric(resource="cpu", target_utilization=50)
MEM = ResourceMetric(resource="memory", target_utilization=50)


def pods(n: int, usage: int | None, request: int = 1000, **kw: object) -> list[PodSample]:
    return [PodSample(request, usage, **kw) for _ in range(n)]  # type: ignore[arg-type]


def starting(n: int, usage: int = 0, request: int = 1000) -> list[PodSample]:
    """Pods that started 5 s ago and are not ready yet (unready for CPU)."""
    return pods(n, usage, request, ready=False, started_ago_s=5.0, ready_changed_ago_s=5.0)


def asking_for(proposal: int, target: int) -> list[PodSample]:
    """One pod whose utilisation is ``proposal`` x target: it proposes ``proposal`` replicas."""
    return [PodSample(1000, proposal * target * 10)]


def behavior(**directions: object) -> HPABehavior:
    return HPABehavior.model_validate(directions)


def pods_4_per_minute(window: int = 0) -> dict[str, object]:
    return {
        "stabilization_window_seconds": window,
        "policies": [{"type": "Pods", "value": 4, "period_seconds": 60}],
    }


def run_proposals(
    config: HPAConfig, start: int, steps: list[tuple[float, int]], lo: int = 1, hi: int = 100
) -> list[tuple[int, int | None, str | None, str]]:
    """Reconcile one HPA at each ``(t, proposal)``: ``(desired, stabilized, stabilization,
    reason)`` per step, the target following the controller."""
    state = ServiceState()
    current = start
    out = []
    metric = config.metrics[0]
    for t, proposal in steps:
        current, state, rec = reconcile(
            state,
            t,
            current,
            [(metric, asking_for(proposal, metric.target_utilization))],
            lo,
            hi,
            config,
        )
        assert rec.metric_replicas == proposal
        out.append((current, rec.stabilized, rec.stabilization, rec.reason))
    return out


# ---------------------------------------------------------------------------- tolerances


def test_symmetric_tolerance_includes_its_edge() -> None:
    # Kubernetes <= 1.32: |1 - ratio| <= tolerance. With a tolerance of 0.5 (exact in
    # float64), ratios 0.5 and 1.5 sit on the edge and do not scale; 1.51 does
    edge = Tolerances(0.5, 0.5, symmetric=True)
    assert edge.is_within(1.5) and edge.is_within(0.5) and not edge.is_within(1.51)
    assert resource_replicas(10, 100, pods(10, 150, request=100), tolerance=edge).replicas == 10
    assert resource_replicas(10, 100, pods(10, 151, request=100), tolerance=edge).replicas == 16


def test_tolerance_flag_before_1_33_applies_to_both_directions() -> None:
    config = HPAConfig(kubernetes_version="1.32", tolerance=0.5)
    assert Tolerances.for_config(config) == Tolerances(0.5, 0.5, symmetric=True)
    # 10 pods at 150% of a 100% target: |1 - 1.5| = 0.5 is within the 0.5 tolerance
    m = ResourceMetric(target_utilization=100)
    desired, _, rec = reconcile(
        ServiceState(), 0.0, 10, [(m, pods(10, 150, request=100))], 1, 20, config
    )
    assert (desired, rec.metrics[0].calculation.reason) == (10, "within_tolerance")  # type: ignore[union-attr]


def test_range_rule_starts_at_1_33() -> None:
    # 1.33 is the first release with Tolerances.isWithin's closed range: a ratio of exactly
    # 1.1 does not scale there (under the old rule abs(1 - 1.1) > 0.1 it would, to 11)
    config = HPAConfig(kubernetes_version="1.33")
    assert Tolerances.for_config(config) == Tolerances(0.1, 0.1, symmetric=False)
    m = ResourceMetric(target_utilization=100)
    desired, _, _ = reconcile(
        ServiceState(), 0.0, 10, [(m, pods(10, 110, request=100))], 1, 20, config
    )
    assert desired == 10
    old = HPAConfig(kubernetes_version="1.32")
    desired, _, _ = reconcile(
        ServiceState(), 0.0, 10, [(m, pods(10, 110, request=100))], 1, 20, old
    )
    assert desired == 11


def test_a_number_as_tolerance_is_both_directions() -> None:
    # tolerance=0.2 as a number: 1.15 is within it upward too (not only downward)
    calc = resource_replicas(10, 100, pods(10, 115, request=100), tolerance=0.2)
    assert (calc.replicas, calc.reason) == (10, "within_tolerance")
    calc = resource_replicas(10, 100, pods(10, 85, request=100), tolerance=0.2)
    assert (calc.replicas, calc.reason) == (10, "within_tolerance")


# ---------------------------------------------------------------------------- groupPods


def _group(pod: PodSample, init: float = 300.0, delay: float = 30.0) -> str:
    g = group_pods([pod], "cpu", init, delay)
    groups = {"ready": g.ready_count == 1, "unready": g.unready == (0,)}
    groups.update({"missing": g.missing == (0,), "ignored": g.ignored == (0,)})
    (name,) = [k for k, v in groups.items() if v]
    return name


@pytest.mark.parametrize(
    ("why", "pod", "delay", "expected"),
    [
        # no status.startTime: unready whatever its Ready condition says
        ("no start time", PodSample(1000, 500, started_ago_s=None), 30.0, "unready"),
        # within the initialisation period, ready since the start (no transition): the
        # sample window (30 s) must have begun after the start
        ("ready since start 60 s ago", PodSample(1000, 500, started_ago_s=60.0), 30.0, "ready"),
        ("ready since start 20 s ago", PodSample(1000, 500, started_ago_s=20.0), 30.0, "unready"),
        # a sample taken 25 s ago with a 30 s window began 5 s before the pod became ready
        # (50 s ago): metric.Timestamp.Before(transition + window)
        (
            "sample window began before ready",
            PodSample(1000, 500, started_ago_s=60.0, ready_changed_ago_s=50.0, metric_ago_s=25.0),
            30.0,
            "unready",
        ),
        # a window beginning exactly at the transition is not before it
        (
            "sample window begins at ready",
            PodSample(1000, 500, started_ago_s=60.0, ready_changed_ago_s=30.0),
            30.0,
            "ready",
        ),
        (
            "sample window begins 1 s before ready",
            PodSample(1000, 500, started_ago_s=60.0, ready_changed_ago_s=29.0),
            30.0,
            "unready",
        ),
        # exactly 300 s after the start the initialisation period is over (StartTime +
        # period is not After now): a ready pod that changed 10 s ago counts as ready
        (
            "period over at exactly 300 s",
            PodSample(1000, 500, started_ago_s=300.0, ready_changed_ago_s=10.0),
            30.0,
            "ready",
        ),
        (
            "period not over at 299 s",
            PodSample(1000, 500, started_ago_s=299.0, ready_changed_ago_s=10.0),
            30.0,
            "unready",
        ),
        # after the period: not ready and never ready (readiness last changed less than the
        # initial-readiness delay after the start) is unready; changed exactly at the delay,
        # it was ready once (StartTime + delay is not After the transition): it counts
        (
            "unready since 30 s after start",
            PodSample(1000, 500, ready=False, started_ago_s=600.0, ready_changed_ago_s=570.0),
            30.0,
            "ready",
        ),
        (
            "unready since 29 s after start",
            PodSample(1000, 500, ready=False, started_ago_s=600.0, ready_changed_ago_s=571.0),
            30.0,
            "unready",
        ),
        # never transitioned: the transition is the start, 0 s after it, below a 1 s delay
        (
            "never ready, 1 s delay",
            PodSample(1000, 500, ready=False, started_ago_s=600.0),
            1.0,
            "unready",
        ),
    ],
)
def test_group_pods_cpu_readiness_boundaries(
    why: str, pod: PodSample, delay: float, expected: str
) -> None:
    assert _group(pod, delay=delay) == expected, why


# ---------------------------------------------------------------------------- utilisation ratio


def test_utilization_ratio_values() -> None:
    # (ratio, integer percent, average usage per pod with a metric)
    assert utilization_ratio({0: 300, 1: 500}, {0: 1000, 1: 1000}, 50) == (0.8, 40, 400)
    # a metric of a pod without a request is extraneous: skipped, the rest still counts
    assert utilization_ratio({7: 999, 0: 300}, {0: 1000}, 50) == (0.6, 30, 300)
    # a total request of 1m is a request (only 0 is none)
    assert utilization_ratio({0: 1}, {0: 1}, 100) == (1.0, 100, 1)
    with pytest.raises(MetricsUnavailableError, match=r"^no metrics returned matched known pods$"):
        utilization_ratio({3: 500}, {0: 1000}, 50)


# ---------------------------------------------------------------------------- replica calculator


def test_resource_replicas_default_periods_are_300_s_and_30_s() -> None:
    # started exactly 300 s ago: past the default CPU initialisation period; not ready since
    # exactly 30 s after its start: past the default initial-readiness delay. Both count.
    pod_list = [
        PodSample(1000, 500, started_ago_s=300.0, ready_changed_ago_s=10.0),
        PodSample(1000, 500, ready=False, started_ago_s=600.0, ready_changed_ago_s=570.0),
    ]
    calc = resource_replicas(2, 50, pod_list)
    assert (calc.ready_count, calc.unready, calc.replicas) == (2, 0, 2)


def test_resource_replicas_error_messages_are_kubernetes() -> None:
    with pytest.raises(
        MetricsUnavailableError,
        match="^" + re.escape("no pods returned by selector while calculating replica count") + "$",
    ):
        resource_replicas(2, 50, [])
    with pytest.raises(
        MetricsUnavailableError,
        match="^"
        + re.escape("did not receive metrics for targeted pods (pods might be unready)")
        + "$",
    ):
        resource_replicas(2, 50, pods(2, None))


def test_resource_replicas_reports_average_and_ignored_pods() -> None:
    # a deleted pod is ignored: 2 pods at 300m of 1000m, target 50: ratio 0.6 -> ceil(1.2)
    calc = resource_replicas(3, 50, [*pods(2, 300), PodSample(1000, 900, deleting=True)])
    assert (calc.replicas, calc.raw_average, calc.utilization) == (2, 300, 30)
    assert (calc.ready_count, calc.unready, calc.missing, calc.ignored) == (2, 0, 0, 1)


def test_pods_set_aside_without_a_metric() -> None:
    # a Pending pod and a deleted one, neither with a metric: set aside (unready, ignored);
    # the two ready pods at 50% of a 50% target hold the count
    pod_list = [
        *pods(2, 500),
        PodSample(1000, None, phase="Pending", ready=None),
        PodSample(1000, None, deleting=True),
    ]
    calc = resource_replicas(4, 50, pod_list)
    assert (calc.replicas, calc.reason) == (4, "within_tolerance")
    assert (calc.ready_count, calc.unready, calc.missing, calc.ignored) == (2, 1, 0, 1)


def test_ratio_exactly_one_with_unready_pods_is_within_tolerance() -> None:
    # the unready pods are filled in at 0% on a scale-up only (ratio > 1): at exactly 1.0
    # there is no rebalancing, the ratio is within tolerance
    calc = resource_replicas(4, 50, pods(2, 500) + starting(2))
    assert (calc.replicas, calc.reason, calc.unready) == (4, "within_tolerance", 2)


def test_ratio_exactly_one_with_missing_pods_fills_nothing() -> None:
    # missing pods are filled at 100% below ratio 1 and at 0% above it; at exactly 1.0 they
    # get no value, so the recomputed ratio stays 1.0
    calc = resource_replicas(4, 50, pods(2, 500) + pods(2, None))
    assert (calc.replicas, calc.reason, calc.adjusted_ratio) == (
        4,
        "adjusted_within_tolerance",
        1.0,
    )


def test_missing_pods_at_0_percent_on_a_scale_up_below_2x() -> None:
    # 3 pods at 75% (ratio 1.5) + 1 missing at 0%: 2250m of 4000m is 56% -> 1.12 ->
    # ceil(1.12 * 4) = 5
    calc = resource_replicas(4, 50, pods(3, 750) + pods(1, None))
    assert (calc.usage_ratio, calc.adjusted_ratio) == (1.5, 1.12)
    assert (calc.replicas, calc.reason) == (5, "adjusted")


def test_missing_pods_at_exactly_100_percent_on_a_scale_down() -> None:
    # 3 pods at 9% + 1 missing at 100% (max(100, 50)): 1270m of 4000m is 31% -> 0.62
    calc = resource_replicas(4, 50, pods(3, 90) + pods(1, None))
    assert (calc.adjusted_ratio, calc.replicas, calc.reason) == (0.62, 3, "adjusted")


def test_missing_pods_fallback_above_100_percent_is_integer_milli() -> None:
    # target 150%: a missing pod counts at 150% of its request in int64 milli-units:
    # 3m * 150 / 100 = 4m (not 4.5m); (1m + 4m) * 100 / 6m = 83%
    pod_list = [PodSample(3, 1), PodSample(3, None)]
    calc = resource_replicas(2, 150, pod_list)
    assert calc.utilization == 33
    assert (calc.adjusted_ratio, calc.replicas, calc.reason) == (83 / 150, 2, "adjusted")


@pytest.mark.parametrize(
    ("why", "other"),
    [
        ("missing pod at 0%", PodSample(4, None)),
        (
            "unready pod at 0%",
            PodSample(4, 6, ready=False, started_ago_s=5.0, ready_changed_ago_s=5.0),
        ),
    ],
)
def test_scale_up_fills_in_exactly_zero(why: str, other: PodSample) -> None:
    # one ready pod at 8m of 4m (200% of a 100% target) and one other pod counted at 0m:
    # 8m of 8m is 100% -> within tolerance (1m would make it 112% and scale to 3)
    calc = resource_replicas(2, 100, [PodSample(4, 8), other])
    assert calc.usage_ratio == 2.0, why
    assert (calc.replicas, calc.reason, calc.adjusted_ratio) == (
        2,
        "adjusted_within_tolerance",
        1.0,
    )


def test_reversing_direction_reports_the_recomputed_ratio() -> None:
    old = Tolerances(0.1, 0.1, symmetric=True)
    calc = resource_replicas(4, 50, pods(3, 400) + pods(1, None), tolerance=old)
    assert (calc.replicas, calc.reason) == (4, "adjusted_reverses_direction")
    assert (calc.usage_ratio, calc.adjusted_ratio) == (0.8, 1.1)


@pytest.mark.parametrize(
    ("why", "current", "pod_list", "expected"),
    [
        # scale-down: ceil(0.64 * 4 pods) = 3 would scale 2 replicas up: keep 2
        (
            "down, more pods than replicas",
            2,
            pods(3, 100) + pods(1, None),
            (2, "adjusted_reverses_direction", 0.64),
        ),
        ("down, count equal to current", 3, pods(3, 100) + pods(1, None), (3, "adjusted", 0.64)),
        ("down, count below current", 4, pods(3, 100) + pods(1, None), (3, "adjusted", 0.64)),
        # scale-up: 2 pods at 100% + 1 missing at 0%: 66% -> 1.32 -> ceil(1.32 * 3) = 4,
        # which would scale 6 replicas down: keep 6
        (
            "up, fewer pods than replicas",
            6,
            pods(2, 1000) + pods(1, None),
            (6, "adjusted_reverses_direction", 1.32),
        ),
        ("up, count equal to current", 4, pods(2, 1000) + pods(1, None), (4, "adjusted", 1.32)),
        ("up, count above current", 3, pods(2, 1000) + pods(1, None), (4, "adjusted", 1.32)),
    ],
)
def test_new_count_pointing_the_other_way_keeps_current(
    why: str, current: int, pod_list: list[PodSample], expected: tuple[int, str, float]
) -> None:
    calc = resource_replicas(current, 50, pod_list)
    assert (calc.replicas, calc.reason, calc.adjusted_ratio) == expected, why


# ---------------------------------------------------------------------------- behaviors


def test_disabled_scale_up_allows_no_increase() -> None:
    rules = behavior(scale_up={"select_policy": "Disabled"}).scale_up
    assert scale_up_limit(10, (), (), rules, 0.0) == 10
    config = HPAConfig(behavior=behavior(scale_up={"select_policy": "Disabled"}))
    got = run_proposals(config, 10, [(0.0, 20), (15.0, 20), (400.0, 20)])
    assert [(d, r) for d, _, _, r in got] == [(10, "ScaleUpLimit")] * 3


def test_scale_up_limit_counts_removed_replicas_back() -> None:
    # Pods 4 per 60 s: 10 replicas after removing 4 within the period started from 14
    rules = behavior(scale_up=pods_4_per_minute()).scale_up
    assert scale_up_limit(10, (), (ScaleEvent(0.0, 4),), rules, 30.0) == 18
    assert scale_up_limit(10, (), (ScaleEvent(0.0, 4),), rules, 60.0) == 14  # out of period


def test_scale_down_limit_counts_added_replicas_out() -> None:
    # Pods 4 per 60 s: 10 replicas after adding 4 within the period started from 6
    rules = behavior(scale_down=pods_4_per_minute()).scale_down
    assert scale_down_limit(10, (ScaleEvent(0.0, 4),), (), rules, 30.0) == 2
    assert scale_down_limit(10, (ScaleEvent(0.0, 4),), (), rules, 60.0) == 6


def test_percent_limits_divide_by_100() -> None:
    up = HPABehavior().scale_up  # max(100%, 4 pods)
    assert scale_up_limit(200, (), (), up, 0.0) == 400
    down = behavior(
        scale_down={"policies": [{"type": "Percent", "value": 50, "period_seconds": 15}]}
    ).scale_down
    assert scale_down_limit(1000, (), (), down, 0.0) == 500
    assert scale_down_limit(7, (), (), down, 0.0) == 3  # int(3.5): truncated


def test_scale_down_select_policy_min_takes_the_smallest_change() -> None:
    # Pods 4 and Percent 10 per 60 s from 80: Max (default) allows 72, Min allows 76
    policies = [
        {"type": "Pods", "value": 4, "period_seconds": 60},
        {"type": "Percent", "value": 10, "period_seconds": 60},
    ]
    most = behavior(scale_down={"policies": policies}).scale_down
    least = behavior(scale_down={"policies": policies, "select_policy": "Min"}).scale_down
    assert scale_down_limit(80, (), (), most, 0.0) == 72
    assert scale_down_limit(80, (), (), least, 0.0) == 76


def test_stabilization_reason_when_desired_equals_current() -> None:
    # stabilizeRecommendationWithBehaviors words DesiredReplicas >= CurrentReplicas as a
    # scale-up
    rec, _, reason = stabilize_recommendation((), 0.0, 5, 5, 0, 300)
    assert (rec, reason) == (5, "ScaleUpStabilized")
    rec, _, reason = stabilize_recommendation((), 0.0, 4, 5, 0, 300)
    assert (rec, reason) == (4, "ScaleDownStabilized")


@pytest.mark.parametrize(
    ("why", "current", "desired", "lo", "hi", "expected"),
    [
        ("rate limit below max", 5, 20, 1, 20, (10, "ScaleUpLimit")),
        ("max equal to the rate limit", 5, 20, 1, 10, (10, "TooManyReplicas")),
        ("max below the rate limit", 5, 20, 1, 8, (8, "TooManyReplicas")),
        ("desired equal to the rate limit", 5, 10, 1, 20, (10, "DesiredWithinRange")),
        ("rate limit above min", 10, 1, 1, 20, (5, "ScaleDownLimit")),
        ("min equal to the rate limit", 10, 1, 5, 20, (5, "TooFewReplicas")),
        ("min above the rate limit", 10, 1, 6, 20, (6, "TooFewReplicas")),
        ("desired equal to the down limit", 10, 5, 1, 20, (5, "DesiredWithinRange")),
        ("no change", 7, 7, 1, 20, (7, "DesiredWithinRange")),
    ],
)
def test_behavior_rate_limits_and_reasons(
    why: str, current: int, desired: int, lo: int, hi: int, expected: tuple[int, str]
) -> None:
    # scale-up: the default max(100%, 4 pods) per 15 s (from 5: 10); scale-down: 50% per 15 s
    # (from 10: 5)
    b = behavior(scale_down={"policies": [{"type": "Percent", "value": 50, "period_seconds": 15}]})
    got = convert_desired_replicas_with_behavior_rate(current, desired, lo, hi, (), (), b, 0.0)
    assert got == expected, why


def test_legacy_rules_reasons_at_their_edges() -> None:
    # max(2 x 3, 4) = 6 = maxReplicas: the max is what limits
    assert convert_desired_replicas_with_rules(3, 100, 1, 6) == (6, "TooManyReplicas")
    assert convert_desired_replicas_with_rules(3, 100, 1, 7) == (6, "ScaleUpLimit")
    # desired equal to minReplicas is within range
    assert convert_desired_replicas_with_rules(5, 2, 2, 8) == (2, "DesiredWithinRange")
    assert convert_desired_replicas_with_rules(5, 1, 2, 8) == (2, "TooFewReplicas")


# ---------------------------------------------------------------------------- scale events


def test_scale_events_limit_the_rate_across_syncs() -> None:
    # Pods 4 per 60 s, no stabilisation, syncs every 15 s. Up from 1: +2 at t=0 (to 3),
    # then +2 (to 5, the period's 4 used), held until the first event leaves the period;
    # at 90 s the +2 of 60 s and of 75 s are in the period: held at 9
    up = HPAConfig(behavior=behavior(scale_up=pods_4_per_minute()))
    steps = [(0.0, 3), (15.0, 10), (30.0, 10), (45.0, 10), (60.0, 10), (75.0, 10), (90.0, 10)]
    got = [d for d, _, _, _ in run_proposals(up, 1, steps)]
    assert got == [3, 5, 5, 5, 7, 9, 9]
    # down from 10: -2 at t=0 (to 8), then -2 (to 6), held until t=60
    down = HPAConfig(behavior=behavior(scale_down=pods_4_per_minute()))
    steps = [(0.0, 8), (15.0, 2), (30.0, 2), (60.0, 2), (75.0, 2), (90.0, 2)]
    got = [d for d, _, _, _ in run_proposals(down, 10, steps)]
    assert got == [8, 6, 6, 4, 2, 2]


def test_store_scale_event_keeps_events_within_the_longest_period() -> None:
    # an event 20 s old is within a 60 s period: kept, the new one appended
    assert store_scale_event((ScaleEvent(10.0, 2),), 3, 60.0, 30.0) == (
        ScaleEvent(10.0, 2),
        ScaleEvent(30.0, 3),
    )
    # one older than the period is marked outdated and its slot reused
    assert store_scale_event((ScaleEvent(10.0, 2),), 3, 60.0, 100.0) == (ScaleEvent(100.0, 3),)


def test_scale_event_history_stays_bounded() -> None:
    # a change at every 15 s sync for an hour: outdated slots are reused, so the history
    # holds the events of the last 60 s (and one reusable slot), not 240 events
    events: tuple[ScaleEvent, ...] = ()
    for k in range(240):
        events = store_scale_event(events, 1, 60.0, 15.0 * k)
    assert len(events) == 5
    assert sorted(e.t for e in events if not e.outdated) == [3525.0, 3540.0, 3555.0, 3570.0, 3585.0]


# ---------------------------------------------------------------------------- reconcile


def test_out_of_range_reconciles_report_no_recommendation() -> None:
    config = HPAConfig()
    for current, reason in ((0, "ScalingDisabled"), (9, "TooManyReplicas"), (1, "TooFewReplicas")):
        _, _, rec = reconcile(ServiceState(), 0.0, current, [(CPU, None)], 2, 6, config)
        assert (rec.reason, rec.metric_replicas, rec.stabilized, rec.stabilization) == (
            reason,
            None,
            None,
            None,
        )


def test_a_metric_proposing_zero_replicas_is_its_proposal() -> None:
    # every pod idle: ratio 0 -> ceil(0) = 0 replicas; the legacy stabilisation holds 4
    config = HPAConfig(metrics=(CPU,))
    desired, _, rec = reconcile(ServiceState(), 0.0, 4, [(CPU, pods(4, 0))], 1, 10, config)
    assert (desired, rec.metric_replicas, rec.stabilized) == (4, 0, 4)
    assert rec.stabilization == "ScaleDownStabilized"


def test_largest_proposal_wins_in_any_metric_order() -> None:
    config = HPAConfig(metrics=(CPU, MEM), behavior=HPABehavior())
    # cpu asks for 6, memory for 4
    _, _, rec = reconcile(
        ServiceState(), 0.0, 2, [(CPU, pods(2, 1500)), (MEM, pods(2, 1000))], 1, 10, config
    )
    assert rec.metric_replicas == 6
    # cpu asks for 1 (25%: ceil(0.5 x 2)), memory for 0 (idle): 1, not the last one
    _, _, rec = reconcile(
        ServiceState(), 0.0, 2, [(CPU, pods(2, 250)), (MEM, pods(2, 0))], 1, 10, config
    )
    assert rec.metric_replicas == 1
    assert [m.calculation.replicas for m in rec.metrics] == [1, 0]  # type: ignore[union-attr]


def test_a_failed_metric_before_a_scaling_one() -> None:
    config = HPAConfig(metrics=(MEM, CPU), behavior=HPABehavior())
    desired, _, rec = reconcile(
        ServiceState(), 0.0, 2, [(MEM, None), (CPU, pods(2, 1000))], 1, 10, config
    )
    assert (desired, rec.reason) == (4, "DesiredWithinRange")
    assert rec.metrics[0] == MetricOutcome(
        "memory", 50, None, "unable to get metrics for resource memory: not observed"
    )
    calc = rec.metrics[1].calculation
    assert calc is not None and (rec.metrics[1].resource, rec.metrics[1].target_utilization) == (
        "cpu",
        50,
    )
    assert (calc.replicas, rec.metrics[1].error) == (4, None)


def test_a_failed_metric_with_another_holding_the_count_is_no_failure() -> None:
    # some metrics invalid and the rest propose exactly the current count: not a scale-down,
    # so the reconcile goes on (only replicas < specReplicas fails it)
    config = HPAConfig(metrics=(CPU, MEM))
    desired, state, rec = reconcile(
        ServiceState(), 0.0, 2, [(CPU, pods(2, 500)), (MEM, None)], 1, 10, config
    )
    assert (desired, rec.reason, rec.metric_replicas) == (2, "DesiredWithinRange", 2)
    assert len(state.recommendations) == 2


def test_every_metric_failing_fails_even_at_zero_replicas() -> None:
    # minReplicas 0 (scale to zero) at 0 replicas: both metrics failing is a failed reconcile
    config = HPAConfig(metrics=(CPU, MEM))
    desired, _, rec = reconcile(ServiceState(), 0.0, 0, [(CPU, None), (MEM, None)], 0, 5, config)
    assert (desired, rec.reason, rec.metric_replicas) == (0, "FailedGetMetrics", None)
    assert [m.error for m in rec.metrics] == [
        "unable to get metrics for resource cpu: not observed",
        "unable to get metrics for resource memory: not observed",
    ]


def test_reconcile_passes_the_configured_readiness_periods() -> None:
    # a 60 s CPU initialisation period and a 10 s initial-readiness delay: a pod ready for
    # 5 s that started 100 s ago is past the period; one unready since 20 s after its start
    # was ready once. Both count as ready (with the defaults, 300 s and 30 s, neither would)
    config = HPAConfig(cpu_initialization_period_s=60.0, initial_readiness_delay_s=10.0)
    pod_list = [
        PodSample(1000, 500, started_ago_s=100.0, ready_changed_ago_s=5.0),
        PodSample(1000, 500, ready=False, started_ago_s=600.0, ready_changed_ago_s=580.0),
    ]
    _, _, rec = reconcile(ServiceState(), 0.0, 2, [(CPU, pod_list)], 1, 10, config)
    calc = rec.metrics[0].calculation
    assert calc is not None and (calc.ready_count, calc.unready) == (2, 0)
    default = group_pods(pod_list, "cpu", 300.0, 30.0)
    assert (default.ready_count, default.unready) == (0, (0, 1))


def test_legacy_scale_down_remembers_every_recommendation() -> None:
    # no spec.behavior, 300 s window: from 10, proposals 8, 6, 4 at t = 0, 100, 200. At 350
    # the t=0 samples (10, 8) have left the window and 6 (t=100) holds; at 450 only 4 remain
    config = HPAConfig(metrics=(CPU,))
    steps = [(0.0, 8), (100.0, 6), (200.0, 4), (350.0, 4), (450.0, 4), (465.0, 12)]
    got = run_proposals(config, 10, steps)
    assert got == [
        (10, 10, "ScaleDownStabilized", "DesiredWithinRange"),
        (10, 10, "ScaleDownStabilized", "DesiredWithinRange"),
        (10, 10, "ScaleDownStabilized", "DesiredWithinRange"),
        (6, 6, "ScaleDownStabilized", "DesiredWithinRange"),
        (4, 4, "ReadyForNewScale", "DesiredWithinRange"),
        # scale-up is not stabilised; max(2 x 4, 4) = 8 limits it
        (8, 12, "ReadyForNewScale", "ScaleUpLimit"),
    ]


def test_behavior_stabilization_words() -> None:
    # default behavior: 300 s scale-down window, no scale-up window
    config = HPAConfig(metrics=(CPU,), behavior=HPABehavior())
    got = run_proposals(config, 10, [(0.0, 4), (15.0, 12)], hi=20)
    assert got == [
        (10, 10, "ScaleDownStabilized", "DesiredWithinRange"),
        (12, 12, "ReadyForNewScale", "DesiredWithinRange"),
    ]


def test_reconciliation_report_values() -> None:
    config = HPAConfig(metrics=(CPU, MEM), behavior=HPABehavior())
    _, _, rec = reconcile(
        ServiceState(), 0.0, 2, [(CPU, pods(2, 1000) + starting(1)), (MEM, None)], 1, 10, config
    )
    # cpu: 2 ready at 100% and one starting at 0% on a scale-up: 2000m of 3000m = 66% ->
    # 1.32 -> ceil(1.32 x 3) = 4
    assert rec.as_dict() == {
        "current": 2,
        "desired": 4,
        "raw_recommendation": 4,
        "stabilized_recommendation": 4,
        "reason": "DesiredWithinRange",
        "stabilization": "ReadyForNewScale",
        "cpu": {
            "target_utilization": 50,
            "utilization": 100,
            "ratio": 2.0,
            "adjusted_ratio": 1.32,
            "proposal": 4,
            "ready": 2,
            "unready": 1,
            "missing": 0,
            "calculation": "adjusted",
            "error": None,
        },
        "memory": {
            "target_utilization": 50,
            "utilization": None,
            "ratio": None,
            "adjusted_ratio": None,
            "proposal": None,
            "ready": None,
            "unready": None,
            "missing": None,
            "calculation": None,
            "error": "unable to get metrics for resource memory: not observed",
        },
    }


# ---------------------------------------------------------------------------- telemetry mapping


def frame(t: float, rows: dict[str, dict[str, float]]) -> Telemetry:
    services = tuple(rows)
    values = np.full((len(services), len(SERVICE_FIELDS)), np.nan)
    for s, fields in enumerate(rows.values()):
        for name, v in fields.items():
            values[s, FIELD_INDEX[name]] = v
    return make_frame(
        t,
        services,
        values,
        np.zeros((len(services), len(COUNTER_FIELDS))),
        np.zeros(len(services)),
        np.zeros((len(services), len(LATENCY_BUCKETS_S))),
        np.zeros(len(CLUSTER_FIELDS)),
    )


def gauges(
    usage: float, ready: int = 2, desired: int | None = None, **kw: float
) -> dict[str, float]:
    out = {
        "cpu_usage": usage,
        "cpu_request": 0.5 * ready,
        "replicas_ready": float(ready),
        "replicas_starting": 0.0,
        "replicas_pending": 0.0,
        "replicas_desired": float(ready if desired is None else desired),
        "memory_usage_mb": 100.0 * ready,
        "memory_request_mb": 256.0 * ready,
    }
    out.update(kw)
    return out


def test_usage_is_split_in_milli_units_rounded_up() -> None:
    # 701m over 2 ready pods: 351m + 350m (the sum kept exactly)
    got = pods_from_telemetry(frame(0.0, {"web": gauges(0.701)}), "web", "cpu")
    assert got == [PodSample(500, 351), PodSample(500, 350)]
    # one ready pod: 1.4m is 2m (MilliValue rounds up), 1 pod is enough
    got = pods_from_telemetry(frame(0.0, {"web": gauges(0.0014, ready=1)}), "web", "cpu")
    assert got == [PodSample(500, 2)]
    # float noise below 1e-6 m is removed before rounding up: 2.0000004m is 2m
    got = pods_from_telemetry(frame(0.0, {"web": gauges(0.0020000004, ready=1)}), "web", "cpu")
    assert got == [PodSample(500, 2)]
    # a gauge that is observed but not finite is no metric
    assert pods_from_telemetry(frame(0.0, {"web": gauges(math.inf)}), "web", "cpu") is None


def test_pods_from_telemetry_documented_fields() -> None:
    # docs/baselines.md: starting pods are running, not ready, started just now; pending
    # pods are in phase Pending; the rest of the desired count has no metrics
    f = frame(0.0, {"web": gauges(0.7, desired=6, replicas_starting=1.0, replicas_pending=2.0)})
    got = pods_from_telemetry(f, "web", "cpu")
    assert got is not None and len(got) == 6
    start = got[2]
    assert (start.phase, start.ready, start.started_ago_s) == ("Running", False, 0.0)
    assert [p.phase for p in got[3:5]] == ["Pending", "Pending"]
    assert [p.usage for p in got[3:]] == [None, None, None]


def test_starting_pods_with_no_initialisation_period_are_never_ready() -> None:
    # with cpu_initialization_period_s = 0, a starting pod is judged by the after-period
    # rule: not ready, and never ready since its start, so unready
    f = frame(0.0, {"web": gauges(1.0, desired=4, replicas_starting=2.0)})
    pod_list = pods_from_telemetry(f, "web", "cpu") or []
    g = group_pods(pod_list, "cpu", 0.0, 30.0)
    assert (g.ready_count, g.unready) == (2, (2, 3))
    # with the initial-readiness delay at 0 too, "never ready" no longer applies (StartTime
    # + 0 is not After the start): every pod counts as ready, the starting ones at 0 usage.
    # One ready pod at 4m of 4m and one starting: 4m of 8m is 50%, a 50% target holds 2.
    f = frame(
        0.0,
        {"web": gauges(0.004, ready=1, desired=2, cpu_request=0.004, replicas_starting=1.0)},
    )
    pod_list = pods_from_telemetry(f, "web", "cpu") or []
    assert group_pods(pod_list, "cpu", 0.0, 0.0).ready_count == 2
    config = HPAConfig(
        metrics=(CPU,), cpu_initialization_period_s=0.0, initial_readiness_delay_s=0.0
    )
    _, _, rec = reconcile(ServiceState(), 0.0, 2, [(CPU, pod_list)], 1, 10, config)
    calc = rec.metrics[0].calculation
    assert calc is not None
    assert (calc.utilization, calc.ready_count, calc.replicas) == (50, 2, 2)


# ---------------------------------------------------------------------------- the controller


def test_controller_defaults_and_bounds() -> None:
    assert HPAController(None, ["web"], {"web": (1, 5)}).config == HPAConfig()
    with pytest.raises(ValueError, match=r"^the HPA controller needs the service names$"):
        HPAController(HPAConfig(), [])
    # a per-service max without scenario bounds
    assert HPAController(HPAConfig(max_replicas={"web": 4}), ["web"]).bounds == {"web": (1, 4)}
    with pytest.raises(
        ValueError,
        match="^"
        + re.escape(
            "HPAConfig.max_replicas: no value for service 'web'; give it (or build the "
            "policy from the scenario, whose replicas bounds are the defaults)"
        )
        + "$",
    ):
        HPAController(HPAConfig(), ["web"])
    # min = max is a valid HPA (a fixed count), within the scenario's bounds too
    fixed = HPAConfig(min_replicas=3, max_replicas=3)
    assert HPAController(fixed, ["web"]).bounds == {"web": (3, 3)}
    assert HPAController(fixed, ["web"], {"web": (1, 20)}).bounds == {"web": (3, 3)}
    with pytest.raises(ValueError, match=r"^web: min_replicas \(5\) > max_replicas \(4\)$"):
        HPAController(HPAConfig(min_replicas={"web": 5}, max_replicas=4), ["web"])


def test_sync_due_within_a_nanosecond_of_the_period() -> None:
    ctrl = HPAController(HPAConfig(max_replicas=10), ["web"])
    state = HPAState({"web": ServiceState()}, 15.0)
    assert ctrl.due(state, 15.0 - 1e-9)  # float error in frame times still syncs
    assert not ctrl.due(state, 15.0 - 1e-8)
    sync = ctrl.sync(frame(15.0 - 1e-8, {"web": gauges(1.0)}), state)
    assert (sync.synced, sync.scales, sync.report, sync.state) == (False, (), {}, state)


def test_sync_from_an_empty_state_equals_fresh_state() -> None:
    ctrl = HPAController(HPAConfig.cpu(50, max_replicas=10), ["web"])
    f = frame(0.0, {"web": gauges(1.0)})  # 100% of a 50% target on 2 pods: 4
    a = ctrl.sync(f, HPAState())
    b = ctrl.sync(f, ctrl.fresh_state())
    assert a.scales == b.scales == (("web", 4),)
    assert a.state == b.state and a.report == b.report


def test_sync_reports_a_failed_scale_and_goes_on() -> None:
    ctrl = HPAController(HPAConfig.cpu(50, max_replicas=10), ["a", "b"])
    f = frame(0.0, {"a": gauges(1.0, replicas_desired=math.nan), "b": gauges(1.0)})
    sync = ctrl.sync(f, ctrl.fresh_state())
    assert sync.report["a"] == {"reason": "FailedGetScale", "desired": None}
    assert sync.scales == (("b", 4),)


def test_cpu_target_override_down_to_1_percent_leaves_memory() -> None:
    config = HPAConfig(
        metrics=(CPU, ResourceMetric(resource="memory", target_utilization=60)), max_replicas=10
    )
    ctrl = HPAController(config, ["web"])
    sync = ctrl.sync(frame(0.0, {"web": gauges(0.01)}), ctrl.fresh_state(), {"web": 1})
    rep = sync.report["web"]
    assert (rep["cpu"]["target_utilization"], rep["memory"]["target_utilization"]) == (1, 60)
    # 10m of 1000m is 1% of a 1% target: within tolerance; memory 100/256 = 39% of 60%
    assert rep["cpu"]["proposal"] == 2
