"""The Kubernetes HPA reproduction: the documentation's worked examples, the replica
calculator's rules on small hand-made cases, behaviors and stabilisation, the telemetry
mapping, and a closed-loop run on chain3 with a flash crowd."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from agents.baselines.hpa import (
    HPABehavior,
    HPAConfig,
    HPAPolicy,
    HPAState,
    MetricsUnavailableError,
    PodSample,
    Recommendation,
    ResourceMetric,
    ScaleEvent,
    ScalingPolicy,
    ServiceState,
    group_pods,
    pods_from_telemetry,
    reconcile,
    resource_replicas,
    scale_down_limit,
    scale_up_limit,
    stabilize_recommendation,
    utilization_ratio,
)
from agents.policy import StaticPolicy
from agents.rollout import rollout
from envs.core.actions import Scale
from envs.core.policy import Policy
from envs.core.telemetry import (
    CLUSTER_FIELDS,
    COUNTER_FIELDS,
    FIELD_INDEX,
    LATENCY_BUCKETS_S,
    SERVICE_FIELDS,
    Telemetry,
    make_frame,
)
from envs.scenarios.loader import load_scenario
from envs.sim.simulator import Simulator


def pods(n: int, usage: int | None, request: int = 1000, **kw: object) -> list[PodSample]:
    return [PodSample(request, usage, **kw) for _ in range(n)]  # type: ignore[arg-type]


def replicas(current: int, target: int, pod_list: list[PodSample], **kw: object) -> int:
    return resource_replicas(current, target, pod_list, **kw).replicas  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- algorithm details
# docs: "if the current metric value is 200m, and the desired value is 100m, the number of
# replicas will be doubled ... If the current value is instead 50m, you'll halve"


def test_docs_current_200m_desired_100m_doubles() -> None:
    # a utilisation target of 100% of a 100m request is a desired value of 100m per pod
    calc = resource_replicas(3, 100, pods(3, 200, request=100))
    assert (calc.utilization, calc.usage_ratio, calc.replicas) == (200, 2.0, 6)


def test_docs_current_50m_desired_100m_halves() -> None:
    calc = resource_replicas(4, 100, pods(4, 50, request=100))
    assert (calc.utilization, calc.usage_ratio, calc.replicas) == (50, 0.5, 2)


def test_docs_ratio_within_tolerance_no_change() -> None:
    # ratio 1.06 (and 0.95) lies within the default tolerance 0.1: keep the current count
    assert replicas(7, 100, pods(4, 106, request=100)) == 7
    calc = resource_replicas(7, 100, pods(4, 95, request=100))
    assert (calc.replicas, calc.reason) == (7, "within_tolerance")


def test_tolerance_boundary_is_float64_like_go() -> None:
    # Go: math.Abs(1.0-1.1) = 0.10000000000000009 > 0.1, so ratio 1.1 scales (to 11);
    # math.Abs(1.0-0.9) = 0.09999999999999998 <= 0.1, so 0.9 does not
    assert replicas(10, 100, pods(10, 110, request=100)) == 11
    assert replicas(10, 100, pods(10, 90, request=100)) == 10
    # and 25 pods at 14% with target 50: math.Ceil(0.28*25) = 8, as 0.28*25 is
    # 7.000000000000001 in float64 (exact arithmetic would give 7)
    assert replicas(25, 50, pods(25, 140)) == 8


def test_utilization_is_truncated_integer_percent() -> None:
    # 3316m over 4000m is 82.9%, truncated to 82: 82/75 = 1.093 is within tolerance,
    # although 82.9/75 = 1.105 is not
    four = [PodSample(1000, u) for u in (829, 829, 829, 829)]
    calc = resource_replicas(4, 75, four)
    assert calc.utilization == 82
    assert calc.replicas == 4
    _, util, raw = utilization_ratio({0: 1, 1: 2}, {0: 1000, 1: 1000}, 50)
    assert (util, raw) == (0, 1)  # 3m of 2000m is 0%; the average usage 3 // 2 = 1m


def test_desired_is_ceil_of_ratio_times_ready_pods() -> None:
    # 120% of target on 3 ready pods: ceil(3.6) = 4
    assert replicas(3, 50, pods(3, 600)) == 4


def test_no_metrics_is_an_error() -> None:
    with pytest.raises(MetricsUnavailableError, match="did not receive metrics"):
        resource_replicas(2, 50, pods(2, None))
    with pytest.raises(MetricsUnavailableError, match="no pods"):
        resource_replicas(2, 50, [])


# ---------------------------------------------------------------------------- missing / unready


def test_missing_metrics_count_as_100_percent_on_scale_down() -> None:
    # 3 pods at 10% + 1 missing, target 50: raw ratio 0.2 would give ceil(0.2*3) = 1;
    # with the missing pod at 100%: (300+1000)/4000 = 32% -> 0.64 -> ceil(0.64*4) = 3
    calc = resource_replicas(4, 50, pods(3, 100) + pods(1, None))
    assert (calc.usage_ratio, calc.utilization) == (0.2, 10)
    assert calc.adjusted_ratio == pytest.approx(0.64)
    assert (calc.replicas, calc.missing, calc.reason) == (3, 1, "adjusted")


def test_missing_metrics_count_as_0_percent_on_scale_up() -> None:
    # 2 pods at 100% + 2 missing, target 50: ratio 2.0, but with the missing at 0%:
    # 2000/4000 = 50% -> ratio 1.0, within tolerance: no change
    calc = resource_replicas(4, 50, pods(2, 1000) + pods(2, None))
    assert calc.usage_ratio == 2.0
    assert (calc.replicas, calc.reason) == (4, "adjusted_within_tolerance")


def test_recomputed_ratio_reversing_direction_keeps_current() -> None:
    # 3 pods at 40% (ratio 0.8, a scale-down) + 1 missing counted at 100%:
    # (1200+1000)/4000 = 55% -> 1.1, a scale-up: keep the current count
    calc = resource_replicas(4, 50, pods(3, 400) + pods(1, None))
    assert calc.usage_ratio == 0.8
    assert (calc.replicas, calc.reason) == (4, "adjusted_reverses_direction")


def test_not_ready_pods_count_as_0_percent_on_cpu_scale_up() -> None:
    # 2 ready at 100% + 2 starting, target 50: ratio 2.0; unready at 0%: 50% -> no change
    starting = pods(2, 0, ready=False, started_ago_s=5.0, ready_changed_ago_s=5.0)
    calc = resource_replicas(4, 50, pods(2, 1000) + starting)
    assert (calc.unready, calc.ready_count) == (2, 2)
    assert (calc.replicas, calc.reason) == (4, "adjusted_within_tolerance")
    # 3 ready at 100% + 1 starting: 3000/4000 = 75% -> 1.5 -> ceil(1.5 * 4) = 6
    calc = resource_replicas(4, 50, pods(3, 1000) + starting[:1])
    assert (calc.replicas, calc.reason) == (6, "adjusted")


def test_not_ready_pods_are_set_aside_on_scale_down() -> None:
    # 2 ready at 10% + 2 unready, target 50: ratio 0.2, no unready rebalancing on a
    # scale-down, so ceil(0.2 * 2 ready) = 1
    starting = pods(2, 900, ready=False, started_ago_s=5.0, ready_changed_ago_s=5.0)
    calc = resource_replicas(4, 50, pods(2, 100) + starting)
    assert (calc.replicas, calc.reason) == (1, "scale")


def test_group_pods_rules() -> None:
    init, delay = 300.0, 30.0
    pod_list = [
        PodSample(1000, 500),  # ready long ago: ready
        PodSample(1000, 500, deleting=True),  # ignored
        PodSample(1000, 500, phase="Failed"),  # ignored
        PodSample(1000, None, phase="Pending", ready=None),  # unready
        PodSample(1000, None),  # missing
        # within the CPU initialisation period, ready, but the sample window (30 s) began
        # before it became ready (10 s ago): unready
        PodSample(1000, 500, started_ago_s=60, ready_changed_ago_s=10, metric_ago_s=0),
        # within the period, ready 50 s ago, fresh sample: ready
        PodSample(1000, 500, started_ago_s=60, ready_changed_ago_s=50, metric_ago_s=0),
        # started 10 min ago, became unready later (a crash): counted as ready
        PodSample(1000, 500, ready=False, started_ago_s=600, ready_changed_ago_s=100),
        # started 10 min ago and never ready (unready since 5 s after start): unready
        PodSample(1000, 500, ready=False, started_ago_s=600, ready_changed_ago_s=595),
        PodSample(1000, 500, ready=None),  # no Ready condition: unready
    ]
    g = group_pods(pod_list, "cpu", init, delay)
    assert g.ignored == (1, 2)
    assert g.unready == (3, 5, 8, 9)
    assert g.missing == (4,)
    assert g.ready_count == 3
    # for memory only the phase rules apply
    g = group_pods(pod_list, "memory", init, delay)
    assert (g.unready, g.ready_count) == ((3,), 6)


# ---------------------------------------------------------------------------- behaviors


def _scale_down_docs_behavior(window: int = 0) -> HPABehavior:
    return HPABehavior.model_validate(
        {
            "scale_down": {
                "stabilization_window_seconds": window,
                "policies": [
                    {"type": "Pods", "value": 4, "period_seconds": 60},
                    {"type": "Percent", "value": 10, "period_seconds": 60},
                ],
            }
        }
    )


def _run(
    config: HPAConfig,
    start: int,
    proposal: int,
    times: list[float],
    lo: int = 1,
    hi: int = 1000,
) -> list[int]:
    """Reconcile at ``times`` with pods whose utilisation asks for ``proposal`` replicas."""
    state = ServiceState()
    current = start
    out = []
    for t in times:
        # one pod with usage = proposal x target: ratio = proposal, ceil(ratio * 1) = proposal
        target = config.metrics[0].target_utilization
        single = [PodSample(1000, proposal * target * 10)]
        desired, state, rec = reconcile(
            state, t, current, [(config.metrics[0], single)], lo, hi, config
        )
        assert rec.metric_replicas == proposal
        current = desired
        out.append(current)
    return out


def test_docs_scale_down_policy_example() -> None:
    # docs: Pods 4/60s and Percent 10/60s; from 80 replicas toward 10, the first step removes
    # 8; at 72, 10% is 7.2 "rounded up to 8"; below 40 replicas the Pods policy removes 4
    config = HPAConfig(behavior=_scale_down_docs_behavior())
    seq = _run(config, 80, 10, [15.0 * k for k in range(57)])
    assert seq[:4] == [72, 72, 72, 72]  # the 60 s period holds after the first step
    every_minute = seq[::4]
    assert every_minute == [72, 64, 57, 51, 45, 40, 36, 32, 28, 24, 20, 16, 12, 10, 10]


def test_scale_down_limit_values() -> None:
    rules = _scale_down_docs_behavior().scale_down
    assert scale_down_limit(80, (), (), rules, 0.0) == 72
    assert scale_down_limit(72, (), (), rules, 60.0) == 64
    assert scale_down_limit(30, (), (), rules, 0.0) == 26
    # within the period, the replicas removed count against it
    assert scale_down_limit(72, (), (ScaleEvent(0.0, 8),), rules, 15.0) == 72
    assert scale_down_limit(72, (), (ScaleEvent(0.0, 8),), rules, 60.0) == 64  # strictly after


def test_default_scale_up_limit_max_of_100_percent_and_4_pods() -> None:
    # default scaleUp: max(100%, 4 pods) per 15 s: 1 -> 5 -> 10 -> 20 -> 40, then maxReplicas
    config = HPAConfig()
    seq = _run(config, 1, 100, [15.0 * k for k in range(6)], hi=60)
    assert seq == [5, 10, 20, 40, 60, 60]
    rules = config.behavior.scale_up
    assert scale_up_limit(1, (), (), rules, 0.0) == 5
    assert scale_up_limit(5, (ScaleEvent(0.0, 4),), (), rules, 10.0) == 5  # same period
    assert scale_up_limit(5, (ScaleEvent(0.0, 4),), (), rules, 15.0) == 10


def test_select_policy_min_and_disabled() -> None:
    up_min = HPABehavior.model_validate({"scale_up": {"select_policy": "Min"}})
    assert scale_up_limit(10, (), (), up_min.scale_up, 0.0) == 14  # min(20, 14)
    disabled = HPABehavior.model_validate({"scale_down": {"select_policy": "Disabled"}})
    assert scale_down_limit(10, (), (), disabled.scale_down, 0.0) == 10
    config = HPAConfig(behavior=disabled)
    assert _run(config, 10, 2, [0.0, 15.0, 400.0]) == [10, 10, 10]


def test_scale_down_stabilization_uses_max_recommendation_in_window() -> None:
    # default 300 s window; the first sync records the current count (10) as a recommendation
    config = HPAConfig()
    state = ServiceState()
    current = 10
    got = []
    for t, proposal in [(0.0, 8), (15.0, 6), (30.0, 4), (285.0, 4), (300.0, 4), (315.0, 4)]:
        target = config.metrics[0].target_utilization
        single = [PodSample(1000, proposal * target * 10)]
        current, state, rec = reconcile(
            state, t, current, [(config.metrics[0], single)], 1, 20, config
        )
        got.append((current, rec.stabilized, rec.stabilization))
    assert got[0] == (10, 10, "ScaleDownStabilized")
    assert got[3][0] == 10  # 10 and 8 recorded at t=0 are still in the window
    assert got[4][0] == 6  # at 300 s the t=0 samples left the window (cutoff is strict)
    assert got[5][0] == 4
    assert [r.replicas for r in state.recommendations][:2] != []


def test_stabilize_recommendation_replaces_old_samples() -> None:
    history = (Recommendation(0.0, 9), Recommendation(100.0, 7))
    # at 350 s, 7 @ 100 is within the 300 s scale-down window, 9 @ 0 is not: from 8
    # replicas toward 3 the recommendation is held at 7
    rec, new, reason = stabilize_recommendation(history, 350.0, 3, 8, 0, 300)
    assert rec == 7
    assert new == (Recommendation(350.0, 3), Recommendation(100.0, 7))  # 9 @ 0 replaced
    assert reason == "ScaleDownStabilized"
    rec, _, reason = stabilize_recommendation(history, 110.0, 12, 5, 60, 300)
    assert rec == 7 and reason == "ScaleUpStabilized"  # up window: min(7, 12)


def test_min_max_clamps_and_out_of_range_current() -> None:
    config = HPAConfig()
    assert _run(config, 4, 50, [0.0], lo=2, hi=6) == [6]
    # 4 pods at 1% ask for 1 replica; after the 300 s window the HPA stops at min = 2
    state = ServiceState()
    got = []
    for t in (0.0, 400.0):
        desired, state, rec = reconcile(
            state, t, 4, [(config.metrics[0], pods(4, 10))], 2, 6, config
        )
        got.append((desired, rec.metric_replicas, rec.reason))
    assert got == [(4, 1, "DesiredWithinRange"), (2, 1, "TooFewReplicas")]
    # current above max / below min: straight to the bound, whatever the metric says
    state = ServiceState()
    desired, state, rec = reconcile(state, 0.0, 9, [(config.metrics[0], None)], 2, 6, config)
    assert (desired, rec.reason) == (6, "TooManyReplicas")
    desired, _, rec = reconcile(state, 15.0, 1, [(config.metrics[0], None)], 2, 6, config)
    assert (desired, rec.reason) == (2, "TooFewReplicas")


def test_zero_replicas_disables_autoscaling() -> None:
    config = HPAConfig()
    desired, _, rec = reconcile(ServiceState(), 0.0, 0, [(config.metrics[0], None)], 1, 5, config)
    assert (desired, rec.reason) == (0, "ScalingDisabled")


def test_failed_metrics_no_change_and_nothing_recorded() -> None:
    config = HPAConfig()
    state = ServiceState()
    desired, state, rec = reconcile(state, 0.0, 3, [(config.metrics[0], None)], 1, 5, config)
    assert (desired, rec.reason, rec.metric_replicas) == (3, "FailedGetMetrics", None)
    assert state.recommendations == (Recommendation(0.0, 3),)  # the initial one only


def test_several_metrics_largest_proposal_wins() -> None:
    config = HPAConfig(
        metrics=(
            ResourceMetric(resource="cpu", target_utilization=50),
            ResourceMetric(resource="memory", target_utilization=50),
        )
    )
    cpu_m, mem_m = config.metrics
    cpu = pods(2, 1000)  # 100% -> 4
    mem = pods(2, 1500)  # 150% -> 6
    desired, _, rec = reconcile(ServiceState(), 0.0, 2, [(cpu_m, cpu), (mem_m, mem)], 1, 10, config)
    assert desired == 6 and rec.metric_replicas == 6
    # one metric failing while the other would scale down: no change
    low = pods(2, 100)
    desired, _, rec = reconcile(
        ServiceState(), 0.0, 2, [(cpu_m, low), (mem_m, None)], 1, 10, config
    )
    assert (desired, rec.reason) == (2, "FailedGetMetrics")
    # one failing while the other scales up: it scales
    desired, _, _ = reconcile(ServiceState(), 0.0, 2, [(cpu_m, cpu), (mem_m, None)], 1, 10, config)
    assert desired == 4


# ---------------------------------------------------------------------------- configuration


def test_config_defaults_are_kubernetes() -> None:
    c = HPAConfig()
    assert c.tolerance == 0.1 and c.sync_period_s == 15.0
    assert (c.cpu_initialization_period_s, c.initial_readiness_delay_s) == (300.0, 30.0)
    assert c.behavior.scale_down.stabilization_window_seconds == 300
    assert c.behavior.scale_down.policies == (
        ScalingPolicy(type="Percent", value=100, period_seconds=15),
    )
    assert c.behavior.scale_up.stabilization_window_seconds == 0
    assert c.behavior.scale_up.select_policy == "Max"
    assert {(p.type, p.value, p.period_seconds) for p in c.behavior.scale_up.policies} == {
        ("Percent", 100, 15),
        ("Pods", 4, 15),
    }
    # a direction given partly keeps that direction's default policies
    b = HPABehavior.model_validate({"scale_down": {"stabilization_window_seconds": 60}})
    assert b.scale_down.policies == c.behavior.scale_down.policies
    assert HPAConfig.cpu(50).metrics[0].target_utilization == 50


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tolerance": 1.5}, "tolerance"),
        ({"min_replicas": 5, "max_replicas": 2}, "min_replicas"),
        ({"metrics": [{"resource": "cpu"}, {"resource": "cpu"}]}, "at most once"),
        ({"behavior": {"scale_up": {"policies": []}}}, "policies"),
        (
            {
                "behavior": {
                    "scale_up": {"policies": [{"type": "Pods", "value": 0, "period_seconds": 15}]}
                }
            },
            "value",
        ),
        (
            {
                "behavior": {
                    "scale_down": {
                        "policies": [{"type": "Pods", "value": 1, "period_seconds": 1801}]
                    }
                }
            },
            "period_seconds",
        ),
        ({"behavior": {"scale_down": {"select_policy": "Fastest"}}}, "select_policy"),
        ({"target": 70}, "target"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        HPAConfig(**kwargs)  # type: ignore[arg-type]


def test_policy_bounds_from_scenario_and_checks() -> None:
    sc = load_scenario("chain3")
    pol = HPAPolicy(HPAConfig(), sc)
    assert isinstance(pol, Policy)
    assert pol.bounds == {"frontend": (1, 20), "api": (1, 20), "db": (1, 20)}
    pol = HPAPolicy(HPAConfig(min_replicas={"db": 2}, max_replicas=8, services=("api", "db")), sc)
    assert pol.services == ("api", "db") and pol.bounds == {"api": (1, 8), "db": (2, 8)}
    with pytest.raises(ValueError, match="unknown services"):
        HPAPolicy(HPAConfig(services=("web",)), sc)
    with pytest.raises(ValueError, match="must lie within"):
        HPAPolicy(HPAConfig(max_replicas=50), sc)
    with pytest.raises(ValueError, match="max_replicas"):
        HPAPolicy(HPAConfig(), ["web"])
    assert HPAPolicy(HPAConfig(max_replicas=4), ["web"]).bounds == {"web": (1, 4)}


# ---------------------------------------------------------------------------- telemetry mapping


def frame(t: float, services: tuple[str, ...] = ("web",), **fields: float) -> Telemetry:
    values = np.full((len(services), len(SERVICE_FIELDS)), np.nan)
    for name, v in fields.items():
        values[:, FIELD_INDEX[name]] = v
    cluster = np.zeros(len(CLUSTER_FIELDS))
    return make_frame(
        t,
        services,
        values,
        np.zeros((len(services), len(COUNTER_FIELDS))),
        np.zeros(len(services)),
        np.zeros((len(services), len(LATENCY_BUCKETS_S))),
        cluster,
    )


def web(t: float, usage: float, ready: int = 2, desired: int = 2, **kw: float) -> Telemetry:
    base: dict[str, float] = {
        "cpu_usage": usage,
        "cpu_request": 0.5 * ready,
        "replicas_ready": ready,
        "replicas_starting": 0,
        "replicas_pending": 0,
        "replicas_desired": desired,
        "memory_usage_mb": 100.0 * ready,
        "memory_request_mb": 256.0 * ready,
    }
    base.update(kw)
    return frame(t, ("web",), **base)


def test_pods_from_telemetry_mapping() -> None:
    f = web(0.0, 0.7, ready=2, desired=6, replicas_starting=1, replicas_pending=2)
    pod_list = pods_from_telemetry(f, "web", "cpu")
    assert pod_list is not None and len(pod_list) == 6
    assert sum(p.usage or 0 for p in pod_list[:2]) == 700
    assert all(p.request == 500 for p in pod_list)
    g = group_pods(pod_list, "cpu", 300.0, 30.0)
    assert (g.ready_count, len(g.unready), len(g.missing)) == (2, 3, 1)
    # memory: starting pods have no observed memory, so they are missing, not unready
    g = group_pods(pods_from_telemetry(f, "web", "memory") or [], "memory", 300.0, 30.0)
    assert (g.ready_count, len(g.unready), len(g.missing)) == (2, 2, 2)
    # an unobserved gauge: no pod has metrics
    assert pods_from_telemetry(web(0.0, np.nan), "web", "cpu") is None
    assert pods_from_telemetry(web(0.0, 0.0, ready=0, cpu_request=0.0), "web", "cpu") is None


def test_policy_emits_scale_only_on_change_and_explains() -> None:
    pol = HPAPolicy(HPAConfig.cpu(50, max_replicas=10), ["web"])
    state = pol.reset()
    assert isinstance(state, HPAState)
    acts, state, info = pol.act(web(0.0, 1.0), state)  # 100% of 2 x 0.5 cores, target 50
    assert acts == [Scale("web", 4)]
    rep = info["hpa"]["web"]
    assert (rep["cpu"]["utilization"], rep["cpu"]["ratio"]) == (100, 2.0)
    assert (rep["raw_recommendation"], rep["stabilized_recommendation"]) == (4, 4)
    assert rep["reason"] == "DesiredWithinRange"
    # 4 desired, 2 ready and 2 starting at 100%: the starting pods count as 0% -> 50%, no change
    acts, state, info = pol.act(web(15.0, 1.0, desired=4, replicas_starting=2), state)
    assert acts == [] and info["hpa"]["web"]["cpu"]["calculation"] == "adjusted_within_tolerance"
    # an unobserved frame: no scale, reason recorded
    acts, state, info = pol.act(frame(30.0), state)
    assert acts == [] and info["hpa"]["web"]["reason"] == "FailedGetScale"


def test_policy_sync_period_longer_than_decision_interval() -> None:
    pol = HPAPolicy(HPAConfig.cpu(50, max_replicas=10, sync_period_s=30.0), ["web"])
    state = pol.reset()
    synced = []
    for k in range(4):
        _, state, info = pol.act(web(15.0 * k, 0.5), state)
        synced.append(info["hpa_synced"])
    assert synced == [True, False, True, False]
    many = pol.reset(3)
    assert isinstance(many, tuple) and len(many) == 3


# ---------------------------------------------------------------------------- closed loop


def _flash_crowd() -> object:
    return load_scenario(
        "chain3",
        {"faults": [{"kind": "flash_crowd", "at_s": 300, "factor": 3.0}], "horizon_s": 1800},
    )


def test_closed_loop_flash_crowd_scales_up_and_beats_static() -> None:
    sc = _flash_crowd()
    static = rollout(Simulator(sc), StaticPolicy())  # type: ignore[arg-type]
    hpa = rollout(Simulator(sc), HPAPolicy(HPAConfig(), sc))  # type: ignore[arg-type]
    ups = [(t, a) for t, a in hpa.actions if isinstance(a, Scale) and a.replicas > 2]
    assert ups and min(t for t, _ in ups) <= 345.0  # reacts within two syncs of the onset
    assert all(t >= 300.0 for t, _ in hpa.actions)  # nothing to do before the crowd
    violation = hpa.summary["slo_violation_s"]["frontend"]
    assert violation < static.summary["slo_violation_s"]["frontend"]
    # and it scales back down once the crowd is gone (after the 300 s stabilisation)
    last = hpa.frames[-1]
    assert last["replicas_desired"].max() <= 3


def test_closed_loop_is_deterministic() -> None:
    sc = _flash_crowd()
    a = rollout(Simulator(sc), HPAPolicy(HPAConfig(), sc))  # type: ignore[arg-type]
    b = rollout(Simulator(sc), HPAPolicy(HPAConfig(), sc))  # type: ignore[arg-type]
    assert a.actions == b.actions
    assert a.summary == b.summary
    assert all(
        np.array_equal(x.values, y.values, equal_nan=True)
        for x, y in zip(a.frames, b.frames, strict=True)
    )
    assert not math.isnan(a.summary["cost_total"])


def test_act_with_targets_keeps_the_history_and_swaps_the_cpu_target() -> None:
    """``act(..., targets)``: the configured target is a no-op; another target reconciles as
    an HPA configured with it would, on the same (carried-over) history."""
    sc = _flash_crowd()
    sim = Simulator(sc)
    frames = [sim.reset()]
    base = HPAPolicy(HPAConfig(), sc)  # 70 %
    low = HPAPolicy(HPAConfig.cpu(40), sc)
    state = base.reset(1)
    while sim.now < 600.0:  # into the flash crowd
        acts, state, _ = base.act(frames[-1], state)
        frames.extend(sim.step(acts))
    same = base.act(frames[-1], state, {n: 70 for n in sc.service_names})
    assert same[:2] == base.act(frames[-1], state)[:2]
    swapped = base.act(frames[-1], state, {n: 40 for n in sc.service_names})
    assert swapped[:2] == low.act(frames[-1], state)[:2]
    assert swapped[0] != same[0]  # 40 % asks for more replicas than 70 %
    with pytest.raises(ValueError, match="cpu_target"):
        base.act(frames[-1], state, {sc.service_names[0]: 0})
