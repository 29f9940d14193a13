"""Behaviour of actions: validation, actuation timing, scale, rollouts, shedding, draining.

Scenarios are built inline and tiny. Pod start-up is deterministic (``cv: 0``) so event times
are checked exactly: :func:`settle` runs the environment to ``t`` *and* processes every event
due at ``t``, so ``settle(env, t - 1e-6)`` is "just before" and ``settle(env, t)`` is "just
after" an event at ``t``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import simpy

from envs.core.actions import (
    DrainNode,
    InvalidActionError,
    Noop,
    Restart,
    Rollback,
    Scale,
    ShedLoad,
)
from envs.core.telemetry import Telemetry
from envs.scenarios.schema import Scenario
from envs.scenarios.validate import validate_action
from envs.sim.control import ControlPlane, NodeState, PodState
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


def steps(sim: Simulator, n: int, actions: list[Any] | None = None) -> list[Telemetry]:
    """``n`` decision steps (``actions`` on the first); all frames scraped."""
    frames = sim.step(actions or [])
    for _ in range(n - 1):
        frames += sim.step()
    return frames


def uids(cp: ControlPlane, s: int = 0) -> list[int]:
    """Uids of the live (not terminating) pods of service ``s``."""
    return [p.uid for p in cp.live_pods(s)]


# ------------------------------------------------------------------------------ validation

SC = scenario(service("a", initial=2, lo=1, hi=10), service("b"))


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (Scale("nope", 2), "scale: unknown service 'nope'; one of ['a', 'b']"),
        (Restart("nope"), "restart: unknown service 'nope'"),
        (Rollback("nope"), "rollback: unknown service 'nope'"),
        (Scale("a", 11), "scale a to 11: outside replicas [min, max] = [1, 10]"),
        (Scale("a", 0), "scale a to 0: outside replicas [min, max] = [1, 10]"),
        (Scale("a", 2.0), "scale.replicas must be an int, got 2.0"),  # type: ignore[arg-type]
        (Scale("a", True), "scale.replicas must be an int, got True"),
        (Scale("a", "3"), "scale.replicas must be an int, got '3'"),  # type: ignore[arg-type]
        (ShedLoad(1.5), "shed_load.fraction must be in [0, 1], got 1.5"),
        (ShedLoad(-0.1), "shed_load.fraction must be in [0, 1], got -0.1"),
        (DrainNode(-1), "drain_node.node must be a node index >= 0, got -1"),
        (DrainNode(1.5), "drain_node.node must be a node index >= 0, got 1.5"),  # type: ignore[arg-type]
        ({"kind": "scale", "service": "a"}, "not an action: {'kind': 'scale'"),
        ("noop", "not an action: 'noop'"),
        (None, "not an action: None"),
    ],
)
def test_invalid_action_names_the_field(action: Any, message: str) -> None:
    with pytest.raises(InvalidActionError) as err:
        validate_action(action, SC)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    "action",
    [
        Noop(),
        Scale("a", 1),
        Scale("a", 10),
        Restart("b"),
        ShedLoad(0.0),
        ShedLoad(1.0),
        DrainNode(0),
    ],
)
def test_valid_action_is_returned(action: Any) -> None:
    assert validate_action(action, SC) is action


def test_step_rejects_an_invalid_action_before_time_moves() -> None:
    sim = Simulator(SC)
    sim.reset()
    with pytest.raises(InvalidActionError, match=r"outside replicas \[min, max\]"):
        sim.step([Scale("a", 50)])
    assert sim.now == 0.0
    assert list(sim.engine.cp.desired) == [2, 2]


def test_step_with_an_invalid_action_applies_none_of_the_batch() -> None:
    sim = Simulator(SC)
    sim.reset()
    with pytest.raises(InvalidActionError):
        sim.step([Scale("a", 5), Scale("nope", 1)])
    (f15,) = sim.step()
    assert f15.service("a")["replicas_desired"] == 2.0


def test_drain_node_rejects_a_bool_index() -> None:
    with pytest.raises(InvalidActionError, match=r"drain_node\.node"):
        validate_action(DrainNode(True), SC)


def test_noop_changes_nothing() -> None:
    sim, cp, _ = start(SC)
    before = sorted(cp.pods)
    (f15,) = sim.step([Noop()])
    assert list(cp.desired) == [2, 2] and list(cp.ready) == [2, 2]
    assert sorted(cp.pods) == before
    assert f15.cluster_value("shed_fraction") == 0.0


# ------------------------------------------------------------------------------ scale


@pytest.mark.parametrize("delay", [0.0, 2.0, 7.5])
def test_scale_up_takes_effect_after_actuation_delay_and_pods_after_startup(
    delay: float,
) -> None:
    _, cp, env = start(scenario(actuation_delay_s=delay))
    cp.apply([Scale("a", 4)])
    assert cp.desired[0] == 2  # validated now, carried out later
    if delay > 0:
        settle(env, delay - EPS)
        assert cp.desired[0] == 2 and len(cp.pods) == 2
    settle(env, delay)
    assert cp.desired[0] == 4
    assert int(cp.starting[0]) == 2 and int(cp.ready[0]) == 2
    settle(env, delay + STARTUP_S - EPS)
    assert int(cp.ready[0]) == 2
    settle(env, delay + STARTUP_S)
    assert int(cp.ready[0]) == 4 and int(cp.starting[0]) == 0


def test_scale_shows_in_telemetry() -> None:
    sim = Simulator(scenario())
    f0 = sim.reset()
    assert f0.service("a")["replicas_desired"] == 2.0
    f15, f30 = steps(sim, 2, [Scale("a", 5)])
    assert f15.service("a")["replicas_desired"] == 5.0
    assert f15.service("a")["replicas_ready"] == 2.0
    assert f15.service("a")["replicas_starting"] == 3.0
    assert f15.service("a")["cpu_request"] == 1.0  # ready pods only
    assert f30.service("a")["replicas_ready"] == 5.0  # ready at t = 22
    assert f30.service("a")["replicas_starting"] == 0.0
    assert f30.service("a")["cpu_request"] == 2.5


def test_scale_down_terminates_not_ready_pods_first() -> None:
    _, cp, env = start(scenario())
    original = uids(cp)
    cp.apply([Scale("a", 4)])  # two pods starting from t = 2 until t = 22
    settle(env, 10.0)
    starting = [p.uid for p in cp.live_pods(0) if p.state == PodState.STARTING]
    assert len(starting) == 2
    cp.apply([Scale("a", 2)])  # carried out at t = 12
    settle(env, 12.0)
    assert uids(cp) == original
    assert int(cp.ready[0]) == 2 and int(cp.starting[0]) == 0
    assert all(cp.pods[u].state == PodState.TERMINATING for u in starting)
    settle(env, 17.0)  # after the 5 s grace they are gone
    assert not set(starting) & set(cp.pods)
    settle(env, 30.0)
    assert int(cp.ready[0]) == 2


def test_scale_down_of_ready_pods_removes_newest_and_frees_node_after_grace() -> None:
    _, cp, env = start(scenario(service("a", initial=4), cluster={"nodes": 1}))
    cp.apply([Scale("a", 1)])
    settle(env, 2.0)
    assert uids(cp) == [0]
    assert int(cp.ready[0]) == 1
    assert cp.nodes[0].cpu_used == pytest.approx(2.0)  # terminating pods still hold the node
    settle(env, 7.0 - EPS)
    assert len(cp.nodes[0].pods) == 4
    settle(env, 7.0)
    assert cp.nodes[0].pods == {0} and cp.nodes[0].cpu_used == pytest.approx(0.5)


# ------------------------------------------------------------------------------ restart


@pytest.mark.parametrize("desired", [1, 2, 4, 8])
def test_rolling_restart_replaces_every_pod_within_surge_and_unavailability(
    desired: int,
) -> None:
    _, cp, env = start(scenario(service("a", initial=desired)))
    old = set(uids(cp))
    cp.apply([Restart("a")])
    max_surge = max(1, math.ceil(0.25 * desired))
    min_ready = desired - math.floor(0.25 * desired)
    settle(env, 2.0 - EPS)
    assert not cp.rolling[0]
    while env.now < 2.0 or cp.rolling[0]:
        env.step()
        assert int(cp.ready[0]) >= min_ready, env.now
        assert len(cp.live_pods(0)) <= desired + max_surge, env.now
        assert env.now < 600.0, "the rollout did not finish"
    live = cp.live_pods(0)
    assert len(live) == desired
    assert not old & {p.uid for p in live}
    assert all(p.template == (0, 1) and p.state == PodState.READY for p in live)
    assert cp.restart_gen[0] == 1 and cp.current_version[0] == 0


def test_rolling_restart_timeline_of_four_pods() -> None:
    # surge 1, max unavailable 1; polls every second; new pods take 20 s
    _, cp, env = start(scenario(service("a", initial=4)))
    cp.apply([Restart("a")])
    settle(env, 2.0)  # 1 new pod created, 1 old ready pod terminated
    assert int(cp.ready[0]) == 3 and len(cp.live_pods(0)) == 4
    settle(env, 3.0)  # the surge pod
    assert int(cp.starting[0]) == 2 and len(cp.live_pods(0)) == 5
    settle(env, 44.0 - EPS)
    assert cp.rolling[0]
    settle(env, 44.0)
    assert not cp.rolling[0]
    assert int(cp.ready[0]) == 4 and uids(cp) == [4, 5, 6, 7]


def test_restart_shows_no_drop_below_min_ready_in_frames_and_serves_throughout() -> None:
    sim = Simulator(scenario(service("a", initial=4)))
    sim.reset()
    frames = steps(sim, 5, [Restart("a")])
    assert min(f.service("a")["replicas_ready"] for f in frames) >= 3.0
    assert frames[-1].service("a")["replicas_ready"] == 4.0
    assert all(f.counter("failed")[0] == 0.0 for f in frames)
    assert all(f.counter("dropped")[0] == 0.0 for f in frames)


# ------------------------------------------------------------------------------ deploy, rollback


@pytest.mark.parametrize("fidelity", ["fluid", "request"])
def test_deploy_slower_version_then_rollback_restores_latency(fidelity: str) -> None:
    sc = scenario(
        service("a", service_time={"mean": 0.05, "cv": 0.5}),
        fidelity=fidelity,
    )
    sim, cp, _ = start(sc)
    before = steps(sim, 2)
    base = np.mean([f.service("a")["mean_latency"] for f in before])
    assert cp.deploy(0, latency_factor=3.0) == 1
    rolling = steps(sim, 4)  # t = 30..90: the rollout finishes at t = 72
    assert all(f.service("a")["deploy_version"] == 1.0 for f in rolling)
    assert not cp.rolling[0]
    assert all(p.template == (1, 0) for p in cp.live_pods(0))
    slow = steps(sim, 2)
    slow_lat = np.mean([f.service("a")["mean_latency"] for f in slow])
    assert slow_lat > 2.5 * base
    assert all(f.service("a")["deploy_version"] == 1.0 for f in slow)
    sim.step([Rollback("a")])
    steps(sim, 4)
    assert not cp.rolling[0] and cp.current_version[0] == 0
    assert all(p.template == (0, 0) for p in cp.live_pods(0))
    back = steps(sim, 2)
    back_lat = np.mean([f.service("a")["mean_latency"] for f in back])
    assert back_lat == pytest.approx(base, rel=0.25)
    assert all(f.service("a")["deploy_version"] == 0.0 for f in back)
    assert all(f.counter("failed")[0] == 0.0 for f in back)


def test_deploy_error_rate_raises_error_rate_until_rollback() -> None:
    sim, cp, _ = start(scenario())
    cp.deploy(0, error_rate=0.3)
    steps(sim, 5)
    (f,) = sim.step()
    assert f.service("a")["error_rate"] == pytest.approx(0.3)
    assert cp.app_error[0] == pytest.approx(0.3)
    steps(sim, 5, [Rollback("a")])
    (f,) = sim.step()
    assert f.service("a")["error_rate"] == pytest.approx(0.0, abs=1e-12)


def test_rollback_without_history_is_invalid() -> None:
    sim, cp, _ = start(scenario())
    with pytest.raises(InvalidActionError, match="no previous revision"):
        sim.step([Rollback("a")])
    with pytest.raises(InvalidActionError, match="rollback a: no previous revision"):
        cp.apply([Rollback("a")])


def test_rollback_pops_the_deploy_history() -> None:
    sim, cp, _ = start(scenario())
    cp.deploy(0, latency_factor=2.0)
    cp.deploy(0, latency_factor=4.0)
    assert cp.current_version[0] == 2 and cp.history[0] == [0, 1]
    sim.step([Rollback("a")])
    assert cp.current_version[0] == 1
    sim.step([Rollback("a")])
    assert cp.current_version[0] == 0
    with pytest.raises(InvalidActionError, match="no previous revision"):
        sim.step([Rollback("a")])
    steps(sim, 6)
    assert all(p.template == (0, 0) for p in cp.live_pods(0))
    assert cp.latency_factor[0] == 1.0


# ------------------------------------------------------------------------------ shed load


def test_fluid_shed_load_halves_entry_throughput_and_counts_the_shed_as_dropped() -> None:
    sim = Simulator(scenario(rps=10.0))
    sim.reset()
    f15, f30, f45 = steps(sim, 3, [ShedLoad(0.5)])
    ready = f15.service("a")["replicas_ready"]
    idle = ready * sim.scenario.topology.services[0].pod.cpu_idle

    def served(f: Telemetry) -> float:  # CPU follows the work served, not the shed counts
        return f.service("a")["cpu_usage"] - idle

    # shedding starts at t = 2: 2 s at 10 rps served, then 13 s at 5 rps served
    assert served(f15) / served(f30) == pytest.approx((2 * 10.0 + 13 * 5.0) / 15.0 / 5.0, 1e-3)
    assert f15.service("a")["rps"] == pytest.approx(10.0, rel=1e-12)  # offered, shed included
    assert f30.cluster_value("shed_fraction") == 0.5
    # which requests are shed is a coin flip per request (docs/queueing.md, "Shedding
    # noise"): of N offered, Binomial(N, 1/2) are shed, so counts are within 4 sd of N / 2
    assert abs(f30.service("a")["throughput"] - 5.0) <= 4 * math.sqrt(150 * 0.25) / 15
    assert abs(f30.service("a")["error_rate"] - 0.5) <= 4 * math.sqrt(0.25 / 150)
    assert abs(f45.counter("dropped")[0] - (13 * 5.0 + 30 * 5.0)) <= 4 * math.sqrt(430 * 0.25)
    (f60,) = sim.step([ShedLoad(0.0)])
    assert served(f60) / served(f30) == pytest.approx((2 * 5.0 + 13 * 10.0) / 15.0 / 5.0, 1e-3)
    assert f60.cluster_value("shed_fraction") == 0.0
    (f75,) = sim.step()
    assert f75.service("a")["error_rate"] == pytest.approx(0.0, abs=1e-9)  # no shed, no noise


def test_request_level_shed_load_halves_entry_throughput_within_sampling_error() -> None:
    sc = scenario(rps=20.0, fidelity="request", actuation_delay_s=0.0)
    sim = Simulator(sc)
    sim.reset()
    frames = steps(sim, 4, [ShedLoad(0.5)])  # 60 s at 10 rps served expected
    completed = frames[-1].counter("completed")[0]
    dropped = frames[-1].counter("dropped")[0]
    # Poisson(1200) thinned by 1/2: mean 600, sd sqrt(600) ~ 24.5, for each part
    assert abs(completed - 600.0) < 4 * math.sqrt(600.0)
    assert abs(dropped - 600.0) < 4 * math.sqrt(600.0)
    assert frames[-1].cluster_value("shed_fraction") == 0.5


def test_shed_all_traffic_leaves_entry_idle() -> None:
    sim = Simulator(scenario(actuation_delay_s=0.0))
    sim.reset()
    f15, f30 = steps(sim, 2, [ShedLoad(1.0)])
    assert f30.service("a")["throughput"] == 0.0
    assert f30.service("a")["error_rate"] == 1.0
    assert math.isnan(f30.service("a")["p99"])  # nothing was served
    assert f30.counter("completed")[0] == f15.counter("completed")[0]


# ------------------------------------------------------------------------------ drain node


def test_drain_node_moves_its_pods_to_other_nodes() -> None:
    _, cp, env = start(scenario())  # pods 0 and 1 spread over nodes 0 and 1
    assert [cp.pods[u].node for u in (0, 1)] == [0, 1]
    cp.apply([DrainNode(0)])
    settle(env, 2.0)
    assert cp.nodes[0].state == NodeState.CORDONED
    assert cp.pods[0].state == PodState.TERMINATING
    assert int(cp.ready[0]) == 1
    (new,) = (p for p in cp.live_pods(0) if p.uid not in (0, 1))
    assert new.node == 1 and new.state == PodState.STARTING
    settle(env, 7.0)  # grace over: node 0 is empty
    assert not cp.nodes[0].pods and 0 not in cp.pods
    settle(env, 22.0)
    assert int(cp.ready[0]) == 2
    assert {p.node for p in cp.live_pods(0)} == {1}
    assert cp.node_counts() == (2, 0)  # a cordoned node still counts as up (and is billed)


def test_drained_node_takes_no_new_pods() -> None:
    _, cp, env = start(scenario())
    cp.apply([DrainNode(1)])
    settle(env, 2.0)
    cp.apply([Scale("a", 6)])
    settle(env, 30.0)
    assert int(cp.ready[0]) == 6
    assert {p.node for p in cp.live_pods(0)} == {0}


def test_drain_without_room_leaves_replacements_pending() -> None:
    # 1-core nodes hold two 0.5-core pods: both nodes full
    sc = scenario(service("a", initial=4, cpu_request=0.5), cluster={"nodes": 2, "node_cpu": 1.0})
    sim = Simulator(sc)
    sim.reset()
    f15, f30 = steps(sim, 2, [DrainNode(0)])
    for f in (f15, f30):
        assert f.service("a")["replicas_ready"] == 2.0
        assert f.service("a")["replicas_pending"] == 2.0
        assert f.cluster_value("pods_unschedulable") == 2.0
        assert f.service("a")["replicas_desired"] == 4.0


def test_drain_unknown_node_lists_ready_nodes() -> None:
    sim, cp, _ = start(scenario(cluster={"nodes": 3}))
    with pytest.raises(InvalidActionError, match=r"drain_node 5: .*ready nodes are \[0, 1, 2\]"):
        sim.step([DrainNode(5)])
    sim.step([DrainNode(1)])
    with pytest.raises(InvalidActionError, match=r"ready nodes are \[0, 2\]"):
        cp.apply([DrainNode(7)])


def test_drain_provisioning_node_is_invalid() -> None:
    sc = scenario(
        service("a", initial=6, cpu_request=0.5),
        cluster={
            "nodes": 1,
            "node_cpu": 2.0,
            "autoscaler": {"enabled": True, "max_nodes": 2, "scale_up_delay_s": 10.0},
        },
    )
    sim, cp, _ = start(sc)
    sim.step()  # node 1 requested at t = 10, ready at t = 100
    assert cp.nodes[1].state == NodeState.PROVISIONING
    with pytest.raises(InvalidActionError, match=r"drain_node 1: .*ready nodes are \[0\]"):
        cp.apply([DrainNode(1)])


def test_drain_of_a_node_removed_before_actuation_is_harmless() -> None:
    sc = scenario(
        service("a", initial=1),
        cluster={
            "nodes": 2,
            "cost_per_node_hour": 1.0,
            "autoscaler": {"enabled": True, "min_nodes": 1, "scale_down_unneeded_s": 10.0},
        },
    )
    _, cp, env = start(sc)
    settle(env, 9.0)
    cp.apply([DrainNode(1)])  # valid now; node 1 is empty and is removed at t = 10
    settle(env, 10.0)
    assert cp.nodes[1].state == NodeState.GONE
    settle(env, 15.0)  # drain carried out at t = 11
    assert cp.nodes[1].state == NodeState.GONE
    assert cp.node_counts() == (1, 0)
    settle(env, 30.0)  # autoscaler polls at 20 and 30
    assert cp.nodes[1].state == NodeState.GONE
    assert cp.node_counts() == (1, 0)
    assert cp.cost_rate == 1.0
