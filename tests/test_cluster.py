"""Behaviour of the control plane: pod lifecycle, scheduling, cluster autoscaler, cost, telemetry.

Scenarios are built inline and tiny (one or two services, 10-40 rps, minutes of simulated
time). Pod start-up is deterministic (``cv: 0``) wherever timing matters, so event times are
checked exactly, SimPy style: :func:`settle` runs the environment to ``t`` *and* processes
every event due at ``t``, so ``settle(env, t - 1e-6)`` is "just before" and
``settle(env, t)`` is "just after" an event at ``t``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import simpy

from envs.core.actions import Restart, Scale
from envs.core.telemetry import Telemetry
from envs.scenarios.schema import Scenario
from envs.sim.cluster import (
    BACKOFF_RESET_S,
    ControlPlane,
    NodeState,
    Pod,
    PodState,
)
from envs.sim.simulator import Simulator

STARTUP_S = 20.0
"""Deterministic pod start-up time of :func:`service`."""
EPS = 1e-6


# ------------------------------------------------------------------------------ helpers


def service(
    name: str = "a", initial: int = 2, lo: int = 0, hi: int = 20, **pod: Any
) -> dict[str, Any]:
    """A service dict with deterministic start-up (``STARTUP_S``)."""
    pod = {"startup": {"mean": STARTUP_S, "cv": 0.0}, **pod}
    return {"name": name, "pod": pod, "replicas": {"initial": initial, "min": lo, "max": hi}}


def scenario(
    *services: dict[str, Any],
    cluster: dict[str, Any] | None = None,
    rps: float = 10.0,
    **top: Any,
) -> Scenario:
    """A validated scenario; the first service is the entry; 2 nodes unless ``cluster`` says."""
    svcs = list(services) or [service()]
    data: dict[str, Any] = {
        "topology": {"entry": svcs[0]["name"], "services": svcs},
        "cluster": {"nodes": 2, **(cluster or {})},
        "traffic": {"base_rps": rps},
        "horizon_s": 3600.0,
        **top,
    }
    return Scenario.model_validate(data)


def start(sc: Scenario) -> tuple[Simulator, ControlPlane, simpy.Environment]:
    """Reset a simulator on ``sc``; return it, its control plane and its environment."""
    sim = Simulator(sc)
    sim.reset()
    return sim, sim.engine.cp, sim.engine.env


def settle(env: simpy.Environment, t: float) -> None:
    """Run to ``t`` and process every event due at ``t`` (``run(until=t)`` stops before them)."""
    if t > env.now:
        env.run(until=t)
    while env.peek() <= t:
        env.step()


def step_until(env: simpy.Environment, cond: Any, limit: float = 1e5) -> float:
    """Process events one by one until ``cond()`` holds; return the time it first held."""
    while not cond():
        assert env.peek() < limit, "condition never became true"
        env.step()
    return float(env.now)


def steps(sim: Simulator, n: int, actions: list[Any] | None = None) -> list[Telemetry]:
    """``n`` decision steps (``actions`` on the first); all frames scraped."""
    frames = sim.step(actions or [])
    for _ in range(n - 1):
        frames += sim.step()
    return frames


def live_nodes(cp: ControlPlane) -> list[int]:
    """Indices of nodes that are not gone."""
    return [n.index for n in cp.nodes if n.state != NodeState.GONE]


# ------------------------------------------------------------------------------ CrashLoopBackOff


def crash_when_ready(cp: ControlPlane, env: simpy.Environment, pod: Pod) -> tuple[float, float]:
    """Crash ``pod`` now; return (backoff delay, container restart time) of its next start."""
    t_crash = env.now
    cp.crash(pod)
    assert pod.state == PodState.BACKOFF
    t_start = step_until(env, lambda: pod.state == PodState.STARTING)
    t_ready = step_until(env, lambda: pod.state == PodState.READY)
    return t_start - t_crash, t_ready - t_start


def test_crashloop_backoff_doubles_to_300s_and_restart_takes_half_startup() -> None:
    _, cp, env = start(scenario())
    pod = cp.ready_pods(0)[0]
    settle(env, 5.0)
    backoffs, restarts = [], []
    for k in range(7):
        backoff, restart = crash_when_ready(cp, env, pod)
        backoffs.append(backoff)
        restarts.append(restart)
        assert pod.restarts == k + 1
    assert backoffs == [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    assert restarts == [STARTUP_S / 2] * 7
    assert int(cp.restarts[0]) == 7
    assert env.now == 5.0 + sum(backoffs) + sum(restarts)
    # the pod was never rescheduled: same uid, same node, still bound
    assert pod.node >= 0 and pod.uid in cp.nodes[pod.node].pods


def test_crash_drops_ready_during_backoff_and_is_idempotent_there() -> None:
    _, cp, env = start(scenario())
    pod = cp.ready_pods(0)[0]
    settle(env, 5.0)
    cp.crash(pod)
    assert int(cp.ready[0]) == 1 and int(cp.starting[0]) == 0
    cp.crash(pod)  # a container in backoff cannot crash again
    assert pod.restarts == 1 and pod.backoff_s == 10.0
    settle(env, 15.0 - EPS)
    assert pod.state == PodState.BACKOFF
    settle(env, 15.0)
    assert pod.state == PodState.STARTING and int(cp.starting[0]) == 1
    settle(env, 25.0 - EPS)
    assert int(cp.ready[0]) == 1
    settle(env, 25.0)
    assert int(cp.ready[0]) == 2 and pod.started_t == 25.0


def test_backoff_resets_only_after_600s_of_running() -> None:
    _, cp, env = start(scenario(horizon_s=7200.0))
    pod = cp.ready_pods(0)[0]
    settle(env, 1.0)
    assert crash_when_ready(cp, env, pod)[0] == 10.0
    assert crash_when_ready(cp, env, pod)[0] == 20.0
    # ran 600 s minus a hair: the backoff keeps doubling
    settle(env, pod.started_t + BACKOFF_RESET_S - 0.5)
    assert crash_when_ready(cp, env, pod)[0] == 40.0
    # ran exactly 600 s: back to the initial 10 s
    settle(env, pod.started_t + BACKOFF_RESET_S)
    assert crash_when_ready(cp, env, pod)[0] == 10.0
    assert crash_when_ready(cp, env, pod)[0] == 20.0


def test_restarts_and_ready_replicas_in_telemetry() -> None:
    sim, cp, _ = start(scenario())
    steps(sim, 1)  # t = 15
    cp.crash(cp.ready_pods(0)[0])  # backoff 15..25, restart 25..35
    f30, f45 = steps(sim, 2)
    assert f30.t == 30.0 and f45.t == 45.0
    assert f30.service("a")["restarts"] == 1.0
    assert f30.service("a")["replicas_ready"] == 1.0
    assert f30.service("a")["replicas_starting"] == 1.0
    assert f30.service("a")["replicas_desired"] == 2.0
    assert f45.service("a")["replicas_ready"] == 2.0
    assert f45.service("a")["restarts"] == 1.0


# ------------------------------------------------------------------------------ scheduling


def test_pod_without_cpu_room_stays_pending_until_capacity_frees() -> None:
    # one 2-core node holds four 0.5-core pods: all of a's; b's pod does not fit
    sc = scenario(
        service("a", initial=4, cpu_request=0.5),
        service("b", initial=1, cpu_request=0.5),
        cluster={"nodes": 1, "node_cpu": 2.0},
    )
    sim = Simulator(sc)
    f0 = sim.reset()
    cp, env = sim.engine.cp, sim.engine.env
    assert list(f0["replicas_ready"]) == [4.0, 0.0]
    assert list(f0["replicas_pending"]) == [0.0, 1.0]
    assert f0.cluster_value("pods_unschedulable") == 1.0
    (pending,) = (cp.pods[u] for u in cp.pending)
    # nothing frees room: still pending a while later
    settle(env, 100.0)
    assert pending.state == PodState.PENDING and pending.node == -1
    # scale a to 3 at t=100: terminating at 102, unbound after the 5 s grace (107)
    cp.apply([Scale("a", 3)])
    settle(env, 102.0)
    assert int(cp.ready[0]) == 3 and pending.state == PodState.PENDING
    settle(env, 107.0 - EPS)
    assert pending.state == PodState.PENDING
    settle(env, 107.0)
    assert pending.state == PodState.STARTING and pending.node == 0
    assert cp.nodes[0].cpu_used == pytest.approx(2.0)
    settle(env, 107.0 + STARTUP_S - EPS)
    assert int(cp.ready[1]) == 0
    settle(env, 107.0 + STARTUP_S)
    assert int(cp.ready[1]) == 1 and not cp.pending


def test_memory_request_limits_scheduling_and_pending_pods_are_deleted_first() -> None:
    # cpu is plentiful, memory fits three 300 MB pods per 1000 MB node: 7 pods -> 1 pending
    sc = scenario(
        service("a", initial=7, memory_request_mb=300.0, memory_limit_mb=400.0),
        cluster={"nodes": 2, "node_memory_mb": 1000.0},
    )
    sim = Simulator(sc)
    f0 = sim.reset()
    cp = sim.engine.cp
    assert f0.service("a")["replicas_ready"] == 6.0
    assert f0.service("a")["replicas_pending"] == 1.0
    assert [len(n.pods) for n in cp.nodes] == [3, 3]
    assert [n.mem_used for n in cp.nodes] == [900.0, 900.0]
    assert [n.cpu_used for n in cp.nodes] == [1.5, 1.5]  # 0.5-core default request
    # scaling to 6 deletes the pending pod, not a ready one
    (f15,) = sim.step([Scale("a", 6)])
    assert f15.service("a")["replicas_pending"] == 0.0
    assert f15.service("a")["replicas_ready"] == 6.0
    assert f15.cluster_value("pods_unschedulable") == 0.0
    assert f15.counter("failed")[0] == 0.0


def test_scheduler_spreads_onto_least_allocated_node() -> None:
    _, cp, _ = start(scenario(service("a", initial=4), cluster={"nodes": 3}))
    assert sorted(len(n.pods) for n in cp.nodes) == [1, 1, 2]
    assert [cp.pods[u].node for u in sorted(cp.pods)] == [0, 1, 2, 0]


# ------------------------------------------------------------------------------ cluster autoscaler


def autoscaled(initial: int = 4, nodes: int = 1, node_cpu: float = 2.0, **au: Any) -> Scenario:
    autoscaler = {"enabled": True, "min_nodes": 1, "max_nodes": 3, "scale_up_delay_s": 10.0}
    return scenario(
        service("a", initial=initial, cpu_request=0.5),
        cluster={
            "nodes": nodes,
            "node_cpu": node_cpu,
            "node_startup_s": 30.0,
            "cost_per_node_hour": 1.0,
            "autoscaler": {**autoscaler, **au},
        },
    )


def test_autoscaler_adds_a_node_at_first_poll_after_scale_up_delay() -> None:
    _, cp, env = start(autoscaled())
    cp.apply([Scale("a", 6)])  # two pods pending from t = 2
    settle(env, 2.0)
    assert int(cp.n_pending[0]) == 2
    # poll at t=10: pending 8 s < 10 s, nothing; poll at t=20: one 2-core node is enough
    settle(env, 20.0 - EPS)
    assert live_nodes(cp) == [0]
    settle(env, 20.0)
    assert live_nodes(cp) == [0, 1] and cp.nodes[1].state == NodeState.PROVISIONING
    assert cp.node_counts() == (1, 1)
    settle(env, 50.0 - EPS)  # node_startup_s = 30
    assert cp.nodes[1].state == NodeState.PROVISIONING and int(cp.n_pending[0]) == 2
    settle(env, 50.0)
    assert cp.nodes[1].state == NodeState.READY and cp.node_counts() == (2, 0)
    assert int(cp.n_pending[0]) == 0 and int(cp.starting[0]) == 2
    assert len(cp.nodes[1].pods) == 2
    settle(env, 70.0 - EPS)
    assert int(cp.ready[0]) == 4
    settle(env, 70.0)
    assert int(cp.ready[0]) == 6
    # a provisioning node is billed: 1 node for 75 s, plus 1 from t=20
    settle(env, 75.0)
    pod_s, node_h, cost = cp.accounting()
    assert node_h == pytest.approx((75.0 + 55.0) / 3600.0, rel=1e-12)
    assert cost == pytest.approx((75.0 + 55.0) / 3600.0, rel=1e-12)  # 1.0 per node-hour
    assert cp.cost_rate == 2.0
    assert pod_s == pytest.approx(4 * 75.0 + 2 * 25.0, rel=1e-12)  # the 2 bound at t=50


def test_autoscaler_reports_provisioning_nodes_in_telemetry() -> None:
    sim = Simulator(autoscaled(initial=6))  # 2 pods pending from t=0 -> node at t=10
    sim.reset()
    f15, f30, f45 = steps(sim, 3)
    assert f15.cluster_value("nodes_provisioning") == 1.0
    assert f15.cluster_value("nodes_ready") == 1.0
    assert f15.cluster_value("pods_unschedulable") == 2.0
    assert f30.cluster_value("nodes_provisioning") == 1.0
    assert f45.cluster_value("nodes_provisioning") == 0.0  # ready at t=40
    assert f45.cluster_value("nodes_ready") == 2.0
    assert f45.service("a")["replicas_starting"] == 2.0  # ready at t=60


def test_autoscaler_never_exceeds_max_nodes() -> None:
    # 1-core nodes hold two 0.5-core pods; 10 pods want 5 nodes, max_nodes is 3
    sim, cp, env = start(autoscaled(initial=2, node_cpu=1.0, max_nodes=3))
    frames = steps(sim, 20, [Scale("a", 10)])
    for f in frames:
        assert f.cluster_value("nodes_ready") + f.cluster_value("nodes_provisioning") <= 3.0
    # both extra nodes were asked for in one go, at the poll at t=20
    assert [n.index for n in cp.nodes] == [0, 1, 2]
    last = frames[-1]
    assert last.cluster_value("nodes_ready") == 3.0
    assert last.service("a")["replicas_ready"] == 6.0
    assert last.service("a")["replicas_pending"] == 4.0
    assert last.cluster_value("cost_rate_per_hour") == 3.0
    assert env.now == 300.0


@pytest.mark.parametrize(
    ("initial", "min_nodes", "kept"),
    [
        (0, 1, [0]),  # all empty: down to min_nodes, highest index first
        (0, 2, [0, 1]),
        (1, 0, [0]),  # node 0 holds the pod: never removed, even below min_nodes' floor
    ],
)
def test_autoscaler_removes_empty_nodes_after_unneeded_time(
    initial: int, min_nodes: int, kept: list[int]
) -> None:
    sc = autoscaled(initial=initial, nodes=3, min_nodes=min_nodes, scale_down_unneeded_s=60.0)
    _, cp, env = start(sc)
    settle(env, 60.0 - EPS)
    assert live_nodes(cp) == [0, 1, 2]
    settle(env, 60.0)  # empty since t=0, removed at the poll at t=60
    assert live_nodes(cp) == kept
    settle(env, 90.0)
    assert cp.node_counts() == (len(kept), 0)
    expected_h = (3 * 60.0 + len(kept) * 30.0) / 3600.0
    assert cp.accounting()[1] == pytest.approx(expected_h, rel=1e-12)
    settle(env, 600.0)
    assert live_nodes(cp) == kept


def test_autoscaler_removes_node_emptied_by_scale_down() -> None:
    # two pods spread over two nodes; scaling to 1 empties node 1 at t = 2 + 5 (grace)
    sc = autoscaled(initial=2, nodes=2, min_nodes=1, scale_down_unneeded_s=60.0)
    _, cp, env = start(sc)
    assert [cp.pods[u].node for u in sorted(cp.pods)] == [0, 1]
    cp.apply([Scale("a", 1)])
    settle(env, 7.0)
    assert not cp.nodes[1].pods and cp.nodes[1].empty_since == 7.0
    settle(env, 70.0 - EPS)  # polls every 10 s: first with 60 s empty is t = 70
    assert live_nodes(cp) == [0, 1]
    settle(env, 70.0)
    assert live_nodes(cp) == [0]


# ------------------------------------------------------------------------------ cost


def test_cost_of_a_static_cluster_is_nodes_times_price_times_time() -> None:
    sc = scenario(
        service("a", initial=4),
        service("b", initial=1),
        cluster={"nodes": 3, "cost_per_node_hour": 0.5},
        scrape_interval_s=60.0,
        decision_interval_s=60.0,
    )
    sim = Simulator(sc)
    f0 = sim.reset()
    assert f0.cluster_value("cost_total") == 0.0
    assert f0.cluster_value("node_hours") == 0.0
    assert f0.cluster_value("pod_seconds") == 0.0
    frames = steps(sim, 10)
    for f in frames:
        assert f.cluster_value("cost_rate_per_hour") == 1.5
        assert f.cluster_value("cost_total") == pytest.approx(3 * 0.5 * f.t / 3600, rel=1e-12)
        assert f.cluster_value("node_hours") == pytest.approx(3 * f.t / 3600, rel=1e-12)
        assert f.cluster_value("pod_seconds") == pytest.approx(5 * f.t, rel=1e-12)
    assert frames[-1].t == 600.0


def test_cost_includes_per_pod_surcharge() -> None:
    a = {**service("a", initial=4), "cost_per_pod_hour": 0.1}
    sc = scenario(a, cluster={"nodes": 2, "cost_per_node_hour": 0.25})
    sim = Simulator(sc)
    sim.reset()
    (f,) = sim.step()
    rate = 2 * 0.25 + 4 * 0.1
    assert f.cluster_value("cost_rate_per_hour") == pytest.approx(rate, rel=1e-12)
    assert f.cluster_value("cost_total") == pytest.approx(rate * 15.0 / 3600.0, rel=1e-12)


def test_pod_seconds_count_bound_pods_including_termination_grace_not_pending() -> None:
    # 4 pods fill the one node, a 5th stays pending (unbilled); scale to 3 at t=0:
    # the two deleted pods are the pending one (at once) and one ready pod (bound until t=7)
    sc = scenario(service("a", initial=5, cpu_request=0.5), cluster={"nodes": 1, "node_cpu": 2.0})
    sim = Simulator(sc)
    sim.reset()
    f15, f30 = steps(sim, 2, [Scale("a", 3)])
    assert f15.cluster_value("pod_seconds") == pytest.approx(4 * 7.0 + 3 * 8.0, rel=1e-12)
    assert f30.cluster_value("pod_seconds") == pytest.approx(4 * 7.0 + 3 * 23.0, rel=1e-12)
    assert f30.cluster_value("node_hours") == pytest.approx(30.0 / 3600.0, rel=1e-12)


# ------------------------------------------------------------------------------ telemetry

NAN_WHEN_NO_POD = ("p50", "p95", "p99", "mean_latency", "cpu_util")


@pytest.mark.parametrize("fidelity", ["fluid", "request"])
def test_service_at_zero_replicas_reports_nan_latency_never_zero(fidelity: str) -> None:
    sc = scenario(service("a", initial=2, service_time={"mean": 0.05, "cv": 0.5}))
    sim = Simulator(sc, fidelity=fidelity)
    sim.reset()
    frames = steps(sim, 3, [Scale("a", 0)])
    for f in frames[1:]:  # t = 30, 45: the whole interval without a ready pod
        for name in NAN_WHEN_NO_POD:
            assert math.isnan(f.service("a")[name]), name
            assert not f.observed(name)[0], name
        assert f.service("a")["replicas_ready"] == 0.0
        assert f.service("a")["cpu_request"] == 0.0
        assert f.service("a")["error_rate"] == 1.0  # everything arriving is dropped
        assert f.service("a")["throughput"] == 0.0
        assert f.service("a")["rps"] > 0.0
        assert np.all(np.isfinite(f.counters)) and np.all(np.isfinite(f.cluster))
        assert f.observed("replicas_ready")[0] and f.observed("restarts")[0]
    dropped = [f.counter("dropped")[0] for f in frames]
    assert dropped[0] < dropped[1] < dropped[2]


def test_first_frame_has_nan_rates_and_observed_gauges() -> None:
    sim = Simulator(scenario())
    f0 = sim.reset()
    assert f0.t == 0.0
    for name in ("rps", "throughput", "cpu_usage", "cpu_util", "error_rate", "p99"):
        assert math.isnan(f0.service("a")[name]) and not f0.observed(name)[0], name
    for name in ("replicas_ready", "replicas_desired", "cpu_request", "restarts"):
        assert f0.observed(name)[0], name
    assert f0.service("a")["replicas_ready"] == 2.0
    assert np.all(f0.counters == 0.0)
    assert f0.cluster_value("nodes_ready") == 2.0
    assert np.all(f0.cluster_mask)


@pytest.mark.parametrize("fidelity", ["fluid", "request"])
def test_slo_violation_seconds_accumulate_scrape_intervals(fidelity: str) -> None:
    sc = scenario(
        service("a", service_time={"mean": 0.05, "cv": 0.5}),
        service("b"),
        rps=10.0,
        slos={"a": {"p99_latency_s": 0.01}},  # below the service time: always breached
        fidelity=fidelity,
    )
    sim = Simulator(sc)
    f0 = sim.reset()
    assert f0.service("a")["slo_violation_s"] == 0.0
    frames = steps(sim, 4)
    assert [f.service("a")["slo_violation_s"] for f in frames] == [15.0, 30.0, 45.0, 60.0]
    # b has no SLO: NaN and masked, not 0
    assert all(math.isnan(f.service("b")["slo_violation_s"]) for f in frames)
    assert not frames[-1].observed("slo_violation_s")[1]


@pytest.mark.parametrize("fidelity", ["fluid", "request"])
def test_slo_violation_stays_zero_when_comfortably_met(fidelity: str) -> None:
    sc = scenario(
        service("a", service_time={"mean": 0.05, "cv": 0.5}),
        slos={"a": {"p99_latency_s": 5.0, "error_rate": 0.5}},
        fidelity=fidelity,
    )
    sim = Simulator(sc)
    sim.reset()
    frames = steps(sim, 4)
    assert [f.service("a")["slo_violation_s"] for f in frames] == [0.0] * 4


def test_slo_violation_counts_error_budget_breach() -> None:
    sc = scenario(
        service("a", error_rate=0.2),
        slos={"a": {"p99_latency_s": 5.0, "error_rate": 0.01}},
    )
    sim = Simulator(sc)
    sim.reset()
    frames = steps(sim, 2)
    assert [f.service("a")["slo_violation_s"] for f in frames] == [15.0, 30.0]
    assert frames[-1].service("a")["error_rate"] == pytest.approx(0.2)
    assert frames[-1].service("a")["error_budget_burn"] == pytest.approx(20.0)


def test_same_seed_same_trajectory_with_crashes_and_rollouts() -> None:
    sc = scenario(
        service("a", initial=3, service_time={"mean": 0.1, "cv": 1.0}, startup={"mean": 20}),
        rps=20.0,
        fidelity="request",
        seed=7,
    )

    def run() -> list[Telemetry]:
        sim, cp, _ = start(sc)
        frames = steps(sim, 1)
        cp.crash(cp.ready_pods(0)[1])
        frames += steps(sim, 4, [Restart("a")])
        return frames

    first, second = run(), run()
    for f, g in zip(first, second, strict=True):
        np.testing.assert_array_equal(f.values, g.values)
        np.testing.assert_array_equal(f.counters, g.counters)
        np.testing.assert_array_equal(f.cluster, g.cluster)


# ------------------------------------------------------------------------------ lost work


def test_fluid_crash_fails_the_crashed_pods_share_of_work_in_service() -> None:
    # 20 rps x 0.1 s = 2 attempts in service over 2 pods: a crash loses exactly 1
    sc = scenario(service("a", service_time={"mean": 0.1, "cv": 0.5}), rps=20.0)
    sim, cp, _ = start(sc)
    (f15,) = sim.step()
    assert f15.counter("failed")[0] == 0.0
    assert sim.engine.in_service[0] == pytest.approx(2.0)
    cp.crash(cp.ready_pods(0)[0])
    (f30,) = sim.step()
    assert f30.counter("failed")[0] == pytest.approx(1.0, rel=1e-9)
    assert f30.counter("dropped")[0] == 0.0


def test_request_level_crash_fails_requests_in_service() -> None:
    # 40 rps x 0.25 s = 10 attempts in service over 3 pods (24 slots)
    sc = scenario(
        service("a", initial=3, service_time={"mean": 0.25, "cv": 0.5}, concurrency=8),
        rps=40.0,
        fidelity="request",
    )
    baseline = Simulator(sc)
    baseline.reset()
    base = steps(baseline, 2)[-1]
    sim, cp, _ = start(sc)
    steps(sim, 1)
    in_service = len(sim.engine.pools[0].users)
    assert in_service >= 3
    cp.crash(cp.ready_pods(0)[0])
    (f30,) = sim.step()
    assert base.counter("failed")[0] == 0.0
    # one pod in three died: a third of the attempts in service, rounded either way
    assert f30.counter("failed")[0] in (in_service // 3, -(-in_service // 3))
    assert f30.service("a")["restarts"] == 1.0


def test_request_level_crash_loses_a_lone_attempt_half_the_time_over_two_pods() -> None:
    lost = 0.0
    for seed in range(20):
        sc = scenario(
            service("a", service_time={"mean": 1.0, "cv": 0.0}),
            rps=0.0,
            fidelity="request",
            seed=seed,
        )
        sim, cp, env = start(sc)
        env.process(sim.engine._client(0))  # one request, in service over [0, 1)
        settle(env, 0.5)
        assert len(sim.engine.pools[0].users) == 1
        cp.crash(cp.ready_pods(0)[0])
        settle(env, 2.0)
        lost += sim.engine._failed[0]
    # each run loses it with probability 1/2: all 20 alike has probability 2e-6
    assert 0 < lost < 20


def backlogged_then_scaled_to_zero(fidelity: str) -> list[Telemetry]:
    """10 rps against one 1-slot pod of 0.5 s builds a queue; the pod is then scaled away."""
    sc = scenario(
        service("a", initial=1, concurrency=1, service_time={"mean": 0.5, "cv": 0.5}),
        fidelity=fidelity,
    )
    sim = Simulator(sc)
    sim.reset()
    (f15,) = sim.step()
    assert f15.service("a")["backlog"] > 10.0
    frames = [f15, *steps(sim, 3, [Scale("a", 0)])]
    assert frames[-1].service("a")["replicas_ready"] == 0.0
    return frames


@pytest.mark.parametrize(
    "fidelity",
    [
        pytest.param("fluid"),
        "request",
    ],
)
def test_counters_conserve_attempts_when_a_backlogged_service_loses_all_pods(
    fidelity: str,
) -> None:
    for f in backlogged_then_scaled_to_zero(fidelity):
        arrived, completed, failed, dropped = f.counters[0]
        assert completed + failed + dropped + f.in_flight[0] == pytest.approx(arrived), f.t


@pytest.mark.parametrize(
    "fidelity",
    [
        "fluid",
        pytest.param("request"),
    ],
)
def test_queued_attempts_fail_when_a_service_loses_all_pods(fidelity: str) -> None:
    last = backlogged_then_scaled_to_zero(fidelity)[-1]
    assert last.in_flight[0] == 0.0
    assert last.service("a")["backlog"] == 0.0
    assert last.counter("failed")[0] > 10.0
