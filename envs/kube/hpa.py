"""The Kubernetes Horizontal Pod Autoscaler controller (``autoscaling/v2``), reproduced exactly.

Three layers, none of which imports the simulator:

* **The algorithm**, as pure functions over explicit inputs, following
  ``pkg/controller/podautoscaler`` of kubernetes/kubernetes function by function:
  :func:`group_pods` (``groupPods``), :func:`utilization_ratio`
  (``metrics.GetResourceUtilizationRatio``), :func:`resource_replicas`
  (``ReplicaCalculator.GetResourceReplicas``), :func:`stabilize_recommendation`
  (``stabilizeRecommendationWithBehaviors``), :func:`scale_up_limit` /
  :func:`scale_down_limit` (``calculateScaleUpLimitWithScalingRules`` /
  ``calculateScaleDownLimitWithBehaviors``), :func:`convert_desired_replicas_with_behavior_rate`
  (``convertDesiredReplicasWithBehaviorRate``), :func:`store_scale_event`
  (``storeScaleEvent``), the path of an HPA without ``spec.behavior``
  (:func:`stabilize_recommendation_legacy`, :func:`convert_desired_replicas_with_rules`,
  :func:`calculate_scale_up_limit`: ``stabilizeRecommendation``,
  ``convertDesiredReplicasWithRules``, ``calculateScaleUpLimit``), :class:`Tolerances`
  (``Tolerances.isWithin``, by Kubernetes release) and :func:`reconcile`
  (``reconcileAutoscaler`` with ``computeReplicasForMetrics`` and
  ``normalizeDesiredReplicas[WithBehaviors]``). Times are
  simulated seconds; every history the controller keeps (recommendations, scale events) is
  an argument and a return value, never hidden.
* **The telemetry mapping**, :func:`pods_from_telemetry`: the per-pod view the algorithm
  needs, built from a :class:`~envs.core.telemetry.Telemetry` frame.
* **The controller**, :class:`HPAController`: one HPA object per scaled service, synced
  once per sync period, with its history in an explicit :class:`HPAState`. The simulated
  control plane runs it (``autoscaling.hpa`` in a scenario) and so does the telemetry-only
  policy :class:`agents.baselines.hpa.HPAPolicy`; both get the same decisions from the same
  frames.

The simulator reports service-level sums, not per-pod samples. The mapping (documented in
``docs/baselines.md``): ready pods have metrics and share the service's usage and request
sums; ``starting`` pods are not ready (set aside, 0% on a CPU scale-up); ``pending`` pods
are in phase Pending (also set aside); pods the deployment wants that are none of these
(crash-looping containers in back-off) have no metrics; a gauge that was not observed (NaN,
mask False) means no pod has metrics, so the HPA does not scale that service, as Kubernetes
does when the metrics API fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from envs.core.telemetry import Telemetry
from envs.kube.config import (
    TOLERANCE_RANGE_SINCE,
    HPABehavior,
    HPAConfig,
    ResourceMetric,
    _ScalingRules,
)

_EPS = 1e-9

# --------------------------------------------------------------------------------------------
# the replica calculator (replica_calculator.go, metrics/utilization.go)


@dataclass(frozen=True, slots=True)
class Tolerances:
    """How far the usage ratio may stray from 1 before the HPA scales.

    Attributes:
        scale_down: Below 1.
        scale_up: Above 1.
        symmetric: The rule of Kubernetes <= 1.32, ``|1 - ratio| <= tolerance`` (one
            tolerance, ``scale_up`` = ``scale_down``); False: the rule since 1.33
            (KEP-4951, ``Tolerances.isWithin``), ``1 - down <= ratio <= 1 + up``.
    """

    scale_down: float = 0.1
    scale_up: float = 0.1
    symmetric: bool = False

    def is_within(self, ratio: float) -> bool:
        """Whether ``ratio`` asks for no change (in float64, as Go computes it).

        The two rules differ at the edges: ``abs(1 - 1.1) = 0.10000000000000009 > 0.1``,
        so up to 1.32 a ratio of exactly 1.1 scaled up, and since 1.33 it does not.
        """
        if self.symmetric:
            return abs(1.0 - ratio) <= self.scale_up
        return (1.0 - self.scale_down) <= ratio <= (1.0 + self.scale_up)

    @classmethod
    def for_config(cls, config: HPAConfig) -> Tolerances:
        """The tolerances of an HPA (``tolerancesForHpa``).

        The controller's flag, or since 1.33 a direction's own
        ``behavior.<direction>.tolerance`` when it is set.
        """
        if config.version < TOLERANCE_RANGE_SINCE:
            return cls(config.tolerance, config.tolerance, symmetric=True)
        down = up = config.tolerance
        if config.behavior is not None:
            if config.behavior.scale_down.tolerance is not None:
                down = config.behavior.scale_down.tolerance
            if config.behavior.scale_up.tolerance is not None:
                up = config.behavior.scale_up.tolerance
        return cls(down, up)


class MetricsUnavailableError(ValueError):
    """The replica calculator cannot propose a count (Kubernetes returns an error)."""


@dataclass(frozen=True, slots=True)
class PodSample:
    """One pod as ``groupPods`` sees it. Times are seconds before now.

    Attributes:
        request: The pod's request of the resource, in milli-units (``MilliValue``).
        usage: Its metric in milli-units; None when the metrics API returned none.
        phase: ``Pending`` (not started), ``Running`` or ``Failed``.
        ready: Status of the ``Ready`` condition; None when the pod has no such condition.
        deleting: The pod has a deletion timestamp.
        started_ago_s: Since ``status.startTime``; None when it has none.
        ready_changed_ago_s: Since the ``Ready`` condition's last transition; None: it has
            not changed since the pod started (a pod with ``ready=False`` and the default
            times has never been ready, as Kubernetes reads a condition whose transition
            time equals the start time).
        metric_ago_s: Since the metric sample's timestamp.
        metric_window_s: The sample's window.
    """

    request: int
    usage: int | None
    phase: Literal["Pending", "Running", "Failed"] = "Running"
    ready: bool | None = True
    deleting: bool = False
    started_ago_s: float | None = math.inf
    ready_changed_ago_s: float | None = None
    metric_ago_s: float = 0.0
    metric_window_s: float = 30.0


@dataclass(frozen=True, slots=True)
class PodGroups:
    """What ``groupPods`` returns: indices into the pod list."""

    ready_count: int
    unready: tuple[int, ...]
    missing: tuple[int, ...]
    ignored: tuple[int, ...]


def group_pods(
    pods: Sequence[PodSample],
    resource: str,
    cpu_initialization_period_s: float,
    initial_readiness_delay_s: float,
) -> PodGroups:
    """Sort pods as ``groupPods`` does.

    Deleted and failed pods are ignored; pending pods are unready; pods without a metric are
    missing; for CPU, a pod is unready when, within the CPU initialisation period after its
    start, it is not ready or its sample window began before it became ready, and, after
    that period, when it is not ready and has never been ready (its readiness changed within
    the initial-readiness delay of its start). The others count as ready.
    """
    unready: list[int] = []
    missing: list[int] = []
    ignored: list[int] = []
    ready_count = 0
    for i, pod in enumerate(pods):
        if pod.deleting or pod.phase == "Failed":
            ignored.append(i)
            continue
        if pod.phase == "Pending":
            unready.append(i)
            continue
        if pod.usage is None:
            missing.append(i)
            continue
        if resource == "cpu":
            if pod.ready is None or pod.started_ago_s is None:
                is_unready = True
            else:
                changed_ago = pod.ready_changed_ago_s
                if changed_ago is None or changed_ago == pod.started_ago_s:
                    changed_ago = pod.started_ago_s
                    changed_after_start = 0.0  # never transitioned since the start
                else:
                    changed_after_start = pod.started_ago_s - changed_ago
                if pod.started_ago_s < cpu_initialization_period_s:
                    # the sample window must begin after the pod became ready
                    is_unready = (not pod.ready) or (
                        changed_ago - pod.metric_ago_s < pod.metric_window_s
                    )
                else:
                    # unready and never ready: readiness last changed within the initial
                    # readiness delay of the start
                    is_unready = (not pod.ready) and (
                        changed_after_start < initial_readiness_delay_s
                    )
            if is_unready:
                unready.append(i)
                continue
        ready_count += 1
    return PodGroups(ready_count, tuple(unready), tuple(missing), tuple(ignored))


def utilization_ratio(
    metrics: Mapping[int, int], requests: Mapping[int, int], target_utilization: int
) -> tuple[float, int, int]:
    """``GetResourceUtilizationRatio``: ``(ratio, utilization %, average usage per pod)``.

    ``utilization = int(sum(usage) * 100 / sum(request))`` over the pods with a metric and a
    request (integer percent, truncated), ``ratio = utilization / target``.

    Raises:
        MetricsUnavailableError: When no metric matches a pod with a request.
    """
    metrics_total = 0
    requests_total = 0
    entries = 0
    for pod, value in metrics.items():
        if pod not in requests:
            continue  # extraneous metric
        metrics_total += value
        requests_total += requests[pod]
        entries += 1
    if requests_total == 0:
        raise MetricsUnavailableError("no metrics returned matched known pods")
    utilization = (metrics_total * 100) // requests_total
    return utilization / target_utilization, utilization, metrics_total // entries


@dataclass(frozen=True, slots=True)
class ReplicaCalculation:
    """What :func:`resource_replicas` proposes for one metric, and why.

    Attributes:
        replicas: The proposed replica count.
        utilization: Utilisation in integer percent over the ready pods with metrics (the
            value Kubernetes reports in the HPA status).
        raw_average: Average usage per such pod, milli-units.
        usage_ratio: ``utilization / target``.
        adjusted_ratio: The ratio recomputed with missing and unready pods filled in (equal
            to ``usage_ratio`` when that step did not run).
        ready_count: Pods counted as ready.
        unready: Pods set aside as not ready.
        missing: Pods without metrics.
        ignored: Deleted or failed pods.
        reason: ``within_tolerance``, ``scale``, ``adjusted_within_tolerance``,
            ``adjusted_reverses_direction`` or ``adjusted``.
    """

    replicas: int
    utilization: int
    raw_average: int
    usage_ratio: float
    adjusted_ratio: float
    ready_count: int
    unready: int
    missing: int
    ignored: int
    reason: str


def resource_replicas(
    current_replicas: int,
    target_utilization: int,
    pods: Sequence[PodSample],
    resource: str = "cpu",
    tolerance: float | Tolerances = 0.1,
    cpu_initialization_period_s: float = 300.0,
    initial_readiness_delay_s: float = 30.0,
) -> ReplicaCalculation:
    """``ReplicaCalculator.GetResourceReplicas``: the replicas one utilisation metric asks for.

    Without unready pods on a scale-up and without missing metrics: ``current_replicas`` if
    the ratio is within tolerance (:meth:`Tolerances.is_within`), else
    ``ceil(ratio * ready_count)``. Otherwise missing pods
    are filled in at 100% of their request (``max(100, target)`` percent) on a scale-down
    and 0% on a scale-up, unready pods at 0% on a scale-up, the ratio is recomputed, and if
    it is within tolerance or points the other way the count stays ``current_replicas``;
    else ``ceil(new_ratio * pods counted)``, unless that too points the other way.

    Args:
        current_replicas: The scale target's ``spec.replicas``.
        target_utilization: Target, percent of request.
        pods: Every pod the selector matches.
        resource: ``cpu`` or ``memory`` (the readiness rules apply to CPU only).
        tolerance: The tolerances; a number is both directions' under the rule since
            Kubernetes 1.33 (``1 - t <= ratio <= 1 + t``).
        cpu_initialization_period_s: See :func:`group_pods`.
        initial_readiness_delay_s: See :func:`group_pods`.

    Raises:
        MetricsUnavailableError: No pods, or no metrics for the pods counted.
    """
    if not pods:
        raise MetricsUnavailableError(
            "no pods returned by selector while calculating replica count"
        )
    groups = group_pods(pods, resource, cpu_initialization_period_s, initial_readiness_delay_s)
    metrics = {i: p.usage for i, p in enumerate(pods) if p.usage is not None}
    for i in (*groups.ignored, *groups.unready):
        metrics.pop(i, None)
    if not metrics:
        raise MetricsUnavailableError(
            "did not receive metrics for targeted pods (pods might be unready)"
        )
    requests = {i: p.request for i, p in enumerate(pods)}
    ratio, utilization, raw = utilization_ratio(metrics, requests, target_utilization)

    def result(replicas: int, reason: str, adjusted: float = ratio) -> ReplicaCalculation:
        return ReplicaCalculation(
            replicas,
            utilization,
            raw,
            ratio,
            adjusted,
            groups.ready_count,
            len(groups.unready),
            len(groups.missing),
            len(groups.ignored),
            reason,
        )

    tol = tolerance if isinstance(tolerance, Tolerances) else Tolerances(tolerance, tolerance)
    scale_up_with_unready = bool(groups.unready) and ratio > 1.0
    if not scale_up_with_unready and not groups.missing:
        if tol.is_within(ratio):
            return result(current_replicas, "within_tolerance")
        return result(math.ceil(ratio * groups.ready_count), "scale")

    if groups.missing:
        if ratio < 1.0:
            fallback = max(100, target_utilization)
            for i in groups.missing:
                metrics[i] = requests[i] * fallback // 100
        elif ratio > 1.0:
            for i in groups.missing:
                metrics[i] = 0
    if scale_up_with_unready:
        for i in groups.unready:
            metrics[i] = 0

    new_ratio, _, _ = utilization_ratio(metrics, requests, target_utilization)
    if tol.is_within(new_ratio):
        return result(current_replicas, "adjusted_within_tolerance", new_ratio)
    if (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return result(current_replicas, "adjusted_reverses_direction", new_ratio)
    new_replicas = math.ceil(new_ratio * len(metrics))
    if (new_ratio < 1.0 and new_replicas > current_replicas) or (
        new_ratio > 1.0 and new_replicas < current_replicas
    ):
        return result(current_replicas, "adjusted_reverses_direction", new_ratio)
    return result(new_replicas, "adjusted", new_ratio)


# --------------------------------------------------------------------------------------------
# behaviors and stabilisation (horizontal.go)


@dataclass(frozen=True, slots=True)
class Recommendation:
    """``timestampedRecommendation``: an unstabilised recommendation and when it was made."""

    t: float
    replicas: int


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    """``timestampedScaleEvent``: a scale change (absolute size) and when it was made."""

    t: float
    change: int
    outdated: bool = False


def replicas_change_per_period(period_s: float, events: Sequence[ScaleEvent], now: float) -> int:
    """``getReplicasChangePerPeriod``: sum of the changes strictly after ``now - period``."""
    cutoff = now - period_s
    return sum(e.change for e in events if e.t > cutoff)


def scale_up_limit(
    current: int,
    up_events: Sequence[ScaleEvent],
    down_events: Sequence[ScaleEvent],
    rules: _ScalingRules,
    now: float,
) -> int:
    """``calculateScaleUpLimitWithScalingRules``: the most replicas allowed now.

    Per policy, from the replicas at the start of its period (current, minus what was added,
    plus what was removed in the period): ``Pods``: start + value; ``Percent``:
    ``ceil(start * (1 + value/100))``. ``Max`` takes the largest, ``Min`` the smallest;
    ``Disabled`` allows no change.
    """
    if rules.select_policy == "Disabled":
        return current
    pick = min if rules.select_policy == "Min" else max
    result: int | None = None
    for policy in rules.policies:
        added = replicas_change_per_period(policy.period_seconds, up_events, now)
        removed = replicas_change_per_period(policy.period_seconds, down_events, now)
        start = current - added + removed
        if policy.type == "Pods":
            proposed = start + policy.value
        else:
            proposed = math.ceil(float(start) * (1 + float(policy.value) / 100))
        result = proposed if result is None else pick(result, proposed)
    assert result is not None
    return result


def scale_down_limit(
    current: int,
    up_events: Sequence[ScaleEvent],
    down_events: Sequence[ScaleEvent],
    rules: _ScalingRules,
    now: float,
) -> int:
    """``calculateScaleDownLimitWithBehaviors``: the fewest replicas allowed now.

    Per policy, from the replicas at the start of its period: ``Pods``: start - value;
    ``Percent``: ``int(start * (1 - value/100))`` (truncated). ``Max`` (the largest change)
    takes the smallest count, ``Min`` the largest; ``Disabled`` allows no change.
    """
    if rules.select_policy == "Disabled":
        return current
    pick = max if rules.select_policy == "Min" else min
    result: int | None = None
    for policy in rules.policies:
        added = replicas_change_per_period(policy.period_seconds, up_events, now)
        removed = replicas_change_per_period(policy.period_seconds, down_events, now)
        start = current - added + removed
        if policy.type == "Pods":
            proposed = start - policy.value
        else:
            proposed = int(float(start) * (1 - float(policy.value) / 100))
        result = proposed if result is None else pick(result, proposed)
    assert result is not None
    return result


def stabilize_recommendation(
    recommendations: Sequence[Recommendation],
    now: float,
    desired: int,
    current: int,
    up_window_s: float,
    down_window_s: float,
) -> tuple[int, tuple[Recommendation, ...], str]:
    """``stabilizeRecommendationWithBehaviors``.

    The scale-up bound is the smallest recommendation made strictly within the scale-up
    window, the scale-down bound the largest within the scale-down window (both include
    ``desired``); the current count is brought within them. ``desired`` is recorded,
    replacing the last sample older than both windows, else appended.

    Returns:
        ``(stabilised recommendation, new history, reason)``; the reason is
        ``ScaleUpStabilized`` or ``ScaleDownStabilized`` as Kubernetes words it.
    """
    up_cutoff = now - up_window_s
    down_cutoff = now - down_window_s
    up_rec = desired
    down_rec = desired
    old_index: int | None = None
    for i, rec in enumerate(recommendations):
        if rec.t > up_cutoff:
            up_rec = min(rec.replicas, up_rec)
        if rec.t > down_cutoff:
            down_rec = max(rec.replicas, down_rec)
        if rec.t < up_cutoff and rec.t < down_cutoff:
            old_index = i
    recommendation = current
    if recommendation < up_rec:
        recommendation = up_rec
    if recommendation > down_rec:
        recommendation = down_rec
    history = list(recommendations)
    if old_index is not None:
        history[old_index] = Recommendation(now, desired)
    else:
        history.append(Recommendation(now, desired))
    reason = "ScaleUpStabilized" if desired >= current else "ScaleDownStabilized"
    return recommendation, tuple(history), reason


def convert_desired_replicas_with_behavior_rate(
    current: int,
    desired: int,
    min_replicas: int,
    max_replicas: int,
    up_events: Sequence[ScaleEvent],
    down_events: Sequence[ScaleEvent],
    behavior: HPABehavior,
    now: float,
) -> tuple[int, str]:
    """``convertDesiredReplicasWithBehaviorRate``: apply the rate limits and min/max.

    Returns:
        ``(replicas, reason)`` with reason ``ScaleUpLimit``, ``TooManyReplicas``,
        ``ScaleDownLimit``, ``TooFewReplicas`` or ``DesiredWithinRange``.
    """
    if desired > current:
        limit = scale_up_limit(current, up_events, down_events, behavior.scale_up, now)
        limit = max(limit, current)  # no further scale-up until old events age out
        if max_replicas > limit:
            allowed, reason = limit, "ScaleUpLimit"
        else:
            allowed, reason = max_replicas, "TooManyReplicas"
        if desired > allowed:
            return allowed, reason
    elif desired < current:
        limit = scale_down_limit(current, up_events, down_events, behavior.scale_down, now)
        limit = min(limit, current)
        if min_replicas < limit:
            allowed, reason = limit, "ScaleDownLimit"
        else:
            allowed, reason = min_replicas, "TooFewReplicas"
        if desired < allowed:
            return allowed, reason
    return desired, "DesiredWithinRange"


SCALE_UP_LIMIT_FACTOR = 2.0
"""``scaleUpLimitFactor``: the legacy path scales up at most to this multiple per sync."""
SCALE_UP_LIMIT_MINIMUM = 4.0
"""``scaleUpLimitMinimum``: ... or to this many replicas, whichever is more."""


def calculate_scale_up_limit(current: int) -> int:
    """``calculateScaleUpLimit``: ``max(2 x current, 4)`` (an HPA without behavior)."""
    return int(max(SCALE_UP_LIMIT_FACTOR * float(current), SCALE_UP_LIMIT_MINIMUM))


def stabilize_recommendation_legacy(
    recommendations: Sequence[Recommendation], now: float, desired: int, window_s: float
) -> tuple[int, tuple[Recommendation, ...]]:
    """``stabilizeRecommendation``: the scale-down stabilisation of an HPA without behavior.

    The result is the largest of ``desired`` and the recommendations made at or after
    ``now - window_s``; ``desired`` is recorded, replacing the last sample older than the
    window, else appended. Scale-up is not stabilised.

    Returns:
        ``(stabilised recommendation, new history)``.
    """
    cutoff = now - window_s
    best = desired
    old_index: int | None = None
    for i, rec in enumerate(recommendations):
        if rec.t < cutoff:
            old_index = i
        elif rec.replicas > best:
            best = rec.replicas
    history = list(recommendations)
    if old_index is not None:
        history[old_index] = Recommendation(now, desired)
    else:
        history.append(Recommendation(now, desired))
    return best, tuple(history)


def convert_desired_replicas_with_rules(
    current: int, desired: int, min_replicas: int, max_replicas: int
) -> tuple[int, str]:
    """``convertDesiredReplicasWithRules``: the bounds of an HPA without behavior.

    At most ``max(2 x current, 4)`` (:func:`calculate_scale_up_limit`) or ``max_replicas``,
    whichever is lower; at least ``min_replicas``.

    Returns:
        ``(replicas, reason)`` with reason ``TooFewReplicas``, ``ScaleUpLimit``,
        ``TooManyReplicas`` or ``DesiredWithinRange``.
    """
    limit = calculate_scale_up_limit(current)
    if max_replicas > limit:
        maximum, reason = limit, "ScaleUpLimit"
    else:
        maximum, reason = max_replicas, "TooManyReplicas"
    if desired < min_replicas:
        return min_replicas, "TooFewReplicas"
    if desired > maximum:
        return maximum, reason
    return desired, "DesiredWithinRange"


def store_scale_event(
    events: Sequence[ScaleEvent], change: int, longest_period_s: float, now: float
) -> tuple[ScaleEvent, ...]:
    """``storeScaleEvent`` for one direction.

    Events older than the direction's longest policy period are marked outdated; the new
    event replaces the last outdated one, else it is appended.
    """
    cutoff = now - longest_period_s
    marked = [replace(e, outdated=True) if e.t < cutoff else e for e in events]
    old_index: int | None = None
    for i, e in enumerate(marked):
        if e.outdated:
            old_index = i
    new = ScaleEvent(now, change)
    if old_index is not None:
        marked[old_index] = new
    else:
        marked.append(new)
    return tuple(marked)


@dataclass(frozen=True)
class ServiceState:
    """What the controller remembers about one HPA (one service) between syncs."""

    recommendations: tuple[Recommendation, ...] = ()
    scale_up_events: tuple[ScaleEvent, ...] = ()
    scale_down_events: tuple[ScaleEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class MetricOutcome:
    """One metric's part in a reconcile: its proposal, or why it has none."""

    resource: str
    target_utilization: int
    calculation: ReplicaCalculation | None
    error: str | None = None


@dataclass(frozen=True)
class Reconciliation:
    """One reconcile of one HPA, with everything needed to see why.

    Attributes:
        current: ``spec.replicas`` of the target when the sync began.
        desired: The count the controller sets (equal to ``current``: no change).
        metric_replicas: The largest metric proposal (None: no proposal).
        stabilized: The recommendation after stabilisation (None when not reached).
        reason: ``ScalingDisabled``, ``TooManyReplicas``/``TooFewReplicas`` (outside
            min/max), ``FailedGetMetrics``, or the rate-limit reason of
            :func:`convert_desired_replicas_with_behavior_rate`.
        stabilization: ``ScaleUpStabilized``/``ScaleDownStabilized`` when stabilisation
            changed the recommendation, else ``ReadyForNewScale``.
        metrics: Every metric's outcome.
    """

    current: int
    desired: int
    metric_replicas: int | None
    stabilized: int | None
    reason: str
    stabilization: str | None
    metrics: tuple[MetricOutcome, ...]

    def as_dict(self) -> dict[str, Any]:
        """Plain-data view for ``info`` and logs."""
        out: dict[str, Any] = {
            "current": self.current,
            "desired": self.desired,
            "raw_recommendation": self.metric_replicas,
            "stabilized_recommendation": self.stabilized,
            "reason": self.reason,
            "stabilization": self.stabilization,
        }
        for m in self.metrics:
            c = m.calculation
            out[m.resource] = {
                "target_utilization": m.target_utilization,
                "utilization": None if c is None else c.utilization,
                "ratio": None if c is None else c.usage_ratio,
                "adjusted_ratio": None if c is None else c.adjusted_ratio,
                "proposal": None if c is None else c.replicas,
                "ready": None if c is None else c.ready_count,
                "unready": None if c is None else c.unready,
                "missing": None if c is None else c.missing,
                "calculation": None if c is None else c.reason,
                "error": m.error,
            }
        return out


def reconcile(
    state: ServiceState,
    now: float,
    current: int,
    pods_by_metric: Sequence[tuple[ResourceMetric, Sequence[PodSample] | None]],
    min_replicas: int,
    max_replicas: int,
    config: HPAConfig,
) -> tuple[int, ServiceState, Reconciliation]:
    """``reconcileAutoscaler`` for one HPA: the replica count to set now.

    1. Record ``current`` as the first recommendation if there is none yet.
    2. ``current == 0`` with ``min_replicas > 0``: autoscaling is disabled (no change).
       ``current`` above ``max_replicas`` / below ``min_replicas``: go straight there.
    3. Otherwise every metric proposes a count (:func:`resource_replicas`); the largest wins.
       If every metric failed, or some failed and the rest would scale down, nothing
       changes (and nothing is recorded).
    4. With ``spec.behavior``: stabilise (:func:`stabilize_recommendation`), then apply the
       rate limits and bounds (:func:`convert_desired_replicas_with_behavior_rate`), and
       store a change as a scale event of its direction. Without (``behavior`` None, the
       legacy ``normalizeDesiredReplicas``): stabilise scale-down only
       (:func:`stabilize_recommendation_legacy`), then cap at ``max(2 x current, 4)`` and
       the bounds (:func:`convert_desired_replicas_with_rules`); no scale events.

    Args:
        state: This HPA's history.
        now: Time of this sync, seconds.
        current: The target's ``spec.replicas``.
        pods_by_metric: For each metric, the pods the selector matches with that metric's
            samples (None: the metrics API failed for that metric).
        min_replicas: ``spec.minReplicas``.
        max_replicas: ``spec.maxReplicas``.
        config: The HPA configuration (tolerance, readiness settings, behavior).

    Returns:
        ``(desired, new_state, reconciliation)``.
    """
    behavior = config.behavior
    tolerances = Tolerances.for_config(config)
    if not state.recommendations:
        state = replace(state, recommendations=(Recommendation(now, current),))
    outcomes: list[MetricOutcome] = []
    metric_replicas: int | None = None
    stabilized: int | None = None
    stabilization: str | None = None
    if current == 0 and min_replicas != 0:
        desired, reason = 0, "ScalingDisabled"
    elif current > max_replicas:
        desired, reason = max_replicas, "TooManyReplicas"
    elif current < min_replicas:
        desired, reason = min_replicas, "TooFewReplicas"
    else:
        proposal = 0
        invalid = 0
        for metric, pods in pods_by_metric:
            try:
                if pods is None:
                    raise MetricsUnavailableError(
                        f"unable to get metrics for resource {metric.resource}: not observed"
                    )
                calc = resource_replicas(
                    current,
                    metric.target_utilization,
                    pods,
                    metric.resource,
                    tolerances,
                    config.cpu_initialization_period_s,
                    config.initial_readiness_delay_s,
                )
            except MetricsUnavailableError as err:
                invalid += 1
                outcomes.append(
                    MetricOutcome(metric.resource, metric.target_utilization, None, str(err))
                )
                continue
            outcomes.append(MetricOutcome(metric.resource, metric.target_utilization, calc))
            if proposal == 0 or calc.replicas > proposal:
                proposal = calc.replicas
        if invalid >= len(pods_by_metric) or (invalid > 0 and proposal < current):
            failed = Reconciliation(
                current, current, None, None, "FailedGetMetrics", None, tuple(outcomes)
            )
            return current, state, failed
        metric_replicas = proposal
        if behavior is None:
            # no spec.behavior: normalizeDesiredReplicas (the legacy path)
            stabilized, history = stabilize_recommendation_legacy(
                state.recommendations, now, proposal, config.downscale_stabilization_s
            )
            state = replace(state, recommendations=history)
            stabilization = "ScaleDownStabilized" if stabilized != proposal else "ReadyForNewScale"
            desired, reason = convert_desired_replicas_with_rules(
                current, stabilized, min_replicas, max_replicas
            )
        else:
            stabilized, history, stab_reason = stabilize_recommendation(
                state.recommendations,
                now,
                proposal,
                current,
                behavior.scale_up.stabilization_window_seconds,
                behavior.scale_down.stabilization_window_seconds,
            )
            state = replace(state, recommendations=history)
            stabilization = stab_reason if stabilized != proposal else "ReadyForNewScale"
            desired, reason = convert_desired_replicas_with_behavior_rate(
                current,
                stabilized,
                min_replicas,
                max_replicas,
                state.scale_up_events,
                state.scale_down_events,
                behavior,
                now,
            )
    if desired != current and behavior is not None:  # storeScaleEvent: behavior only
        if desired > current:
            state = replace(
                state,
                scale_up_events=store_scale_event(
                    state.scale_up_events,
                    desired - current,
                    behavior.scale_up.longest_period_s,
                    now,
                ),
            )
        else:
            state = replace(
                state,
                scale_down_events=store_scale_event(
                    state.scale_down_events,
                    current - desired,
                    behavior.scale_down.longest_period_s,
                    now,
                ),
            )
    rec = Reconciliation(
        current, desired, metric_replicas, stabilized, reason, stabilization, tuple(outcomes)
    )
    return desired, state, rec


# --------------------------------------------------------------------------------------------
# from telemetry to pods


def _milli(x: float) -> int:
    """``Quantity.MilliValue()``: milli-units, rounded up (after removing float noise)."""
    return math.ceil(round(x * 1000.0, 6))


def _split(total: int, n: int) -> list[int]:
    """``total`` split into ``n`` integer parts that differ by at most one."""
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


_RESOURCE_FIELDS: dict[str, tuple[str, str]] = {
    "cpu": ("cpu_usage", "cpu_request"),
    "memory": ("memory_usage_mb", "memory_request_mb"),
}


def _value(frame: Telemetry, field_name: str, s: int) -> float | None:
    """One gauge, or None when it was not observed."""
    if not frame.observed(field_name)[s]:
        return None
    v = float(frame[field_name][s])
    return v if math.isfinite(v) else None


def pods_from_telemetry(frame: Telemetry, service: str, resource: str) -> list[PodSample] | None:
    """The per-pod view of one service that :func:`resource_replicas` needs.

    * ``replicas_ready`` pods are ready and have metrics; the service's usage and request
      sums are split evenly among them (utilisation depends on the sums only).
    * ``replicas_starting`` pods are running but not ready, started just now: unready for
      CPU. The simulator does not report their memory, so for memory they have no metric.
    * ``replicas_pending`` pods are in phase ``Pending``: unready.
    * Pods the deployment wants beyond those (``replicas_desired`` minus the three; in the
      simulator, containers waiting in CrashLoopBackOff) have no metrics: missing.

    Non-ready pods get the per-pod request of the ready ones.

    Returns:
        The pods, or None when a gauge it needs was not observed (no pod has metrics).
    """
    s = frame.services.index(service)
    usage_field, request_field = _RESOURCE_FIELDS[resource]
    counts = [
        _value(frame, f, s)
        for f in ("replicas_ready", "replicas_starting", "replicas_pending", "replicas_desired")
    ]
    usage = _value(frame, usage_field, s)
    request = _value(frame, request_field, s)
    if any(c is None for c in counts) or usage is None or request is None:
        return None
    ready, starting, pending, desired = (round(c) for c in counts if c is not None)
    if ready <= 0:
        return None
    per_pod_request = _milli(request / ready)
    usages = _split(_milli(usage), ready)
    pods = [PodSample(per_pod_request, u) for u in usages]
    starting_usage = 0 if resource == "cpu" else None
    pods += [
        PodSample(
            per_pod_request, starting_usage, ready=False, started_ago_s=0.0, ready_changed_ago_s=0.0
        )
        for _ in range(starting)
    ]
    pods += [PodSample(per_pod_request, None, phase="Pending", ready=None) for _ in range(pending)]
    missing = max(0, desired - ready - starting - pending)
    pods += [
        PodSample(per_pod_request, None, ready=False, started_ago_s=math.inf)
        for _ in range(missing)
    ]
    return pods


# --------------------------------------------------------------------------------------------
# the controller


@dataclass(frozen=True)
class HPAState:
    """The controller's state for one stream: each HPA's history and the next sync.

    Attributes:
        services: Per scaled service, the controller's history.
        next_sync_t: Simulated time of the next sync (None: sync at the first frame).
    """

    services: Mapping[str, ServiceState] = field(default_factory=dict)
    next_sync_t: float | None = None


@dataclass(frozen=True)
class HPASync:
    """What one call of :meth:`HPAController.sync` did.

    Attributes:
        synced: Whether the sync was due (False: nothing was reconciled).
        scales: ``(service, replicas)`` for every HPA that changes its target's count.
        state: The controller's state afterwards.
        report: Per service, :meth:`Reconciliation.as_dict` (or ``FailedGetScale``).
    """

    synced: bool
    scales: tuple[tuple[str, int], ...]
    state: HPAState
    report: dict[str, Any]


class HPAController:
    """The HPA controller over one HPA object per scaled service; see the module docstring.

    It syncs at the first frame and then at the first frame at least ``sync_period_s``
    after the previous sync.

    Args:
        config: The HPA configuration (None: ``HPAConfig()``).
        services: Every service of the workload, in telemetry order.
        replica_bounds: Per service, the ``[min, max]`` replicas its workload allows (the
            scenario's ``replicas``): the HPAs' defaults, and their bounds must lie within.
            None: ``config.max_replicas`` is required.

    Raises:
        ValueError: Unknown services, or bounds missing or outside ``replica_bounds``.
    """

    def __init__(
        self,
        config: HPAConfig | None,
        services: Sequence[str],
        replica_bounds: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        self.config = config if config is not None else HPAConfig()
        names = [str(n) for n in services]
        if not names:
            raise ValueError("the HPA controller needs the service names")
        scaled: list[str] = (
            list(self.config.services) if self.config.services is not None else names
        )
        unknown = [s for s in scaled if s not in names]
        if unknown:
            raise ValueError(f"HPAConfig.services: unknown services {unknown}; one of {names}")
        self.services: tuple[str, ...] = tuple(scaled)
        self.bounds: dict[str, tuple[int, int]] = {}
        for name in scaled:
            spec_lo: int | None = None
            spec_hi: int | None = None
            if replica_bounds is not None:
                spec_lo, spec_hi = replica_bounds[name]
            lo = _bound(self.config.min_replicas, name, max(1, spec_lo or 1), "min_replicas")
            hi = _bound(self.config.max_replicas, name, spec_hi, "max_replicas")
            if lo > hi:
                raise ValueError(f"{name}: min_replicas ({lo}) > max_replicas ({hi})")
            if spec_lo is not None and spec_hi is not None and not spec_lo <= lo <= hi <= spec_hi:
                raise ValueError(
                    f"{name}: HPA bounds [{lo}, {hi}] must lie within the scenario's replicas "
                    f"[min, max] = [{spec_lo}, {spec_hi}] (Scale outside them is invalid)"
                )
            self.bounds[name] = (lo, hi)

    def fresh_state(self) -> HPAState:
        """The state of HPAs that have not synced yet."""
        return HPAState({s: ServiceState() for s in self.services}, None)

    def due(self, state: HPAState, t: float) -> bool:
        """Whether a sync is due at time ``t``."""
        return state.next_sync_t is None or t + _EPS >= state.next_sync_t

    def sync(
        self, frame: Telemetry, state: HPAState, targets: Mapping[str, int] | None = None
    ) -> HPASync:
        """One sync on ``frame`` when due: the replica count each HPA sets.

        ``targets`` (optional) sets the CPU utilisation target of some services' HPAs for
        this sync, as editing ``spec.metrics`` between syncs would: the histories
        (recommendations, scale events) carry over unchanged.
        """
        if not self.due(state, frame.t):
            return HPASync(False, (), state, {})
        services = dict(state.services)
        report: dict[str, Any] = {}
        scales: list[tuple[str, int]] = []
        for name in self.services:
            target = None if targets is None else targets.get(name)
            rec, services[name] = self.reconcile_service(
                frame, name, services.get(name, ServiceState()), target
            )
            if rec is None:
                report[name] = {"reason": "FailedGetScale", "desired": None}
                continue
            report[name] = rec.as_dict()
            if rec.desired != rec.current:
                scales.append((name, rec.desired))
        new_state = HPAState(services, frame.t + self.config.sync_period_s)
        return HPASync(True, tuple(scales), new_state, report)

    def reconcile_service(
        self, frame: Telemetry, name: str, state: ServiceState, cpu_target: int | None = None
    ) -> tuple[Reconciliation | None, ServiceState]:
        """Reconcile one service's HPA on ``frame`` (None when its replica count is unknown).

        ``cpu_target`` replaces the CPU metric's ``target_utilization`` for this sync
        (None: the configured one).

        Raises:
            ValueError: ``cpu_target`` for an HPA without a CPU metric, or not positive.
        """
        s = frame.services.index(name)
        current_v = _value(frame, "replicas_desired", s)
        if current_v is None:
            return None, state  # the scale subresource could not be read
        current = round(current_v)
        lo, hi = self.bounds[name]
        metrics = self.config.metrics
        if cpu_target is not None:
            if cpu_target <= 0 or not any(m.resource == "cpu" for m in metrics):
                raise ValueError(
                    f"cpu_target={cpu_target} for {name!r}: needs a positive target and an "
                    f"HPA with a cpu metric (metrics: {[m.resource for m in metrics]})"
                )
            metrics = tuple(
                m.model_copy(update={"target_utilization": int(cpu_target)})
                if m.resource == "cpu"
                else m
                for m in metrics
            )
        pods = [(m, pods_from_telemetry(frame, name, m.resource)) for m in metrics]
        _, state, rec = reconcile(state, frame.t, current, pods, lo, hi, self.config)
        return rec, state


def _bound(value: int | dict[str, int] | None, name: str, default: int | None, what: str) -> int:
    if isinstance(value, dict):
        if name in value:
            return value[name]
    elif value is not None:
        return value
    if default is None:
        raise ValueError(
            f"HPAConfig.{what}: no value for service {name!r}; give it (or build the "
            "policy from the scenario, whose replicas bounds are the defaults)"
        )
    return default
