"""The control plane both engines share: nodes, pods, deployments, actions, cost.

Pods go ``pending -> starting -> ready -> terminating -> gone``; a crashed container waits in
``backoff`` (CrashLoopBackOff: 10 s doubling to 300 s, reset after 10 min of running) and
starts again. The scheduler binds pending pods to the least-allocated ready node with room;
pods stay pending when none has room, and the optional cluster autoscaler then adds nodes.
Deployments reconcile their pod count to the desired replicas and roll out new templates
(deploys, restarts, rollbacks) with maxSurge 25% / maxUnavailable 25%, as Kubernetes does by
default.

The data plane (an engine) is told about every change that affects serving through the
:class:`DataPlaneHooks` it passes in: ``before_change`` (bring the data plane up to now),
``capacity_changed`` (ready pods or their versions changed) and ``pods_lost`` (requests on
a pod that died are lost).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

import numpy as np
import simpy

from envs.core.actions import (
    Action,
    DrainNode,
    InvalidActionError,
    Noop,
    Restart,
    Rollback,
    Scale,
    ShedLoad,
)
from envs.scenarios.schema import Distribution, Scenario
from envs.scenarios.validate import validate_action

BACKOFF_INITIAL_S = 10.0
BACKOFF_MAX_S = 300.0
BACKOFF_RESET_S = 600.0
ROLLOUT_POLL_S = 1.0
AUTOSCALER_POLL_S = 10.0


class PodState(IntEnum):
    """Pod lifecycle states."""

    PENDING = 0
    STARTING = 1
    READY = 2
    BACKOFF = 3
    TERMINATING = 4
    GONE = 5


class NodeState(IntEnum):
    """Node lifecycle states."""

    PROVISIONING = 0
    READY = 1
    CORDONED = 2
    GONE = 3


@dataclass(frozen=True)
class Version:
    """A deployable version of a service: how it differs from the scenario's pod spec."""

    number: int
    latency_factor: float = 1.0
    error_rate: float = 0.0
    leak_mb_per_s: float = 0.0
    """Memory each container of this version leaks per second."""
    memory_limit_mb: float | None = None
    """Memory limit of this version's pods; None: the pod spec's."""


@dataclass(eq=False)
class Pod:
    """One pod. ``template`` is (version number, restart generation)."""

    uid: int
    service: int
    template: tuple[int, int]
    created_t: float
    state: PodState = PodState.PENDING
    node: int = -1
    restarts: int = 0
    backoff_s: float = 0.0
    started_t: float = 0.0
    pending_since: float = 0.0
    crash_loop_s: float | None = None
    """Set by a crash-loop fault: the container crashes this long after every start."""
    bad_path: bool = False
    """Set by a network fault: this pod's calls take the degraded path."""
    epoch: int = 0
    """Bumped on every state change; stale timers compare it and do nothing."""


@dataclass(eq=False)
class Node:
    """One node."""

    index: int
    cpu: float
    memory_mb: float
    state: NodeState = NodeState.PROVISIONING
    cpu_used: float = 0.0
    mem_used: float = 0.0
    pods: set[int] = field(default_factory=set)
    empty_since: float = 0.0
    slowdown: float = 1.0
    """Noisy-neighbour slowdown of the pods on this node (1: none)."""


class DataPlaneHooks(Protocol):
    """What the control plane tells the engine."""

    def before_change(self) -> None:
        """Called before any change that affects serving, at the current time."""

    def capacity_changed(self) -> None:
        """Called after ready pods, versions or shedding changed."""

    def pods_lost(self, service: int, lost_fraction: float) -> None:
        """A ready pod of ``service`` died: ``lost_fraction`` of its in-service work is lost."""


class ControlPlane:
    """Kubernetes-like control plane over SimPy; see the module docstring."""

    def __init__(
        self,
        env: simpy.Environment,
        scenario: Scenario,
        rng: np.random.Generator,
        hooks: DataPlaneHooks,
    ) -> None:
        self.env = env
        self.sc = scenario
        self.rng = rng
        self.hooks = hooks
        self.specs = scenario.topology.services
        n = len(self.specs)
        self.n_services = n
        self.desired = [s.replicas.initial for s in self.specs]
        self.versions: list[list[Version]] = [[Version(0)] for _ in range(n)]
        self.current_version = [0] * n
        self.restart_gen = [0] * n
        self.history: list[list[int]] = [[] for _ in range(n)]
        self.rolling = [False] * n
        self.pods: dict[int, Pod] = {}
        self.by_service: list[set[int]] = [set() for _ in range(n)]
        self.nodes: list[Node] = []
        self.pending: list[int] = []
        self.shed_fraction = 0.0
        self._next_uid = 0
        # per-service live counts, kept up to date on every transition
        self.ready = np.zeros(n, dtype=np.int64)
        self.starting = np.zeros(n, dtype=np.int64)
        self.n_pending = np.zeros(n, dtype=np.int64)
        self.restarts = np.zeros(n, dtype=np.int64)
        self.latency_factor = np.ones(n)
        self.app_error = np.array([s.pod.error_rate for s in self.specs], dtype=np.float64)
        self.service_slowdown = np.ones(n)
        """Slowdown of a service as a whole (a slow dependency behind it)."""
        self.bad_path_fraction = np.zeros(n)
        """Share of a service's ready pods whose outgoing calls take a degraded network path."""
        self.oom_kills = np.zeros(n, dtype=np.int64)
        self.leaking = False
        """True once any version that leaks memory was deployed."""
        # cost accounting (integrated on every change)
        self._acct_t = 0.0
        self.pod_seconds = 0.0
        self.node_seconds = 0.0
        self.cost_total = 0.0
        self._bound_pods = 0
        self._bound_cores = 0.0
        self.core_seconds = 0.0
        """Cumulative CPU cores requested by pods bound to nodes, times seconds."""
        self._pod_cost_rate = 0.0  # per hour, surcharges of bound pods
        self._live_nodes = 0
        for _ in range(scenario.cluster.nodes):
            self._add_node(ready_at_start=True)
        for s in range(n):
            for _ in range(self.desired[s]):
                pod = self._create_pod(s)
                if self._try_bind(pod):
                    self._set_state(pod, PodState.READY)
                    pod.started_t = 0.0
        self._recount()
        au = scenario.cluster.autoscaler
        if au is not None and au.enabled:
            env.process(self._autoscaler())

    # ------------------------------------------------------------------ accounting
    def _account(self) -> None:
        now = self.env.now
        dt = now - self._acct_t
        if dt > 0:
            self.pod_seconds += self._bound_pods * dt
            self.core_seconds += self._bound_cores * dt
            self.node_seconds += self._live_nodes * dt
            self.cost_total += dt / 3600.0 * self.cost_rate
            self._acct_t = now

    @property
    def cost_rate(self) -> float:
        """Current spend per hour: live nodes plus per-pod surcharges."""
        return self._live_nodes * self.sc.cluster.cost_per_node_hour + self._pod_cost_rate

    @property
    def core_price_per_hour(self) -> float:
        """Price of one requested core-hour: the node price over the node's cores."""
        return self.sc.cluster.cost_per_node_hour / self.sc.cluster.node_cpu

    @property
    def allocated_cost_rate(self) -> float:
        """Spend per hour attributed to the pods by their CPU requests (as FinOps tools do)."""
        return self._bound_cores * self.core_price_per_hour + self._pod_cost_rate

    def allocated_cost(self) -> float:
        """Cumulative spend attributed to pods by their CPU requests (plus pod surcharges).

        Unlike the node bill (``cost_total``), it moves with every pod added or removed,
        also while the node count stays fixed.
        """
        self._account()
        surcharge = (
            self.cost_total - self.node_seconds / 3600.0 * self.sc.cluster.cost_per_node_hour
        )
        return self.core_seconds / 3600.0 * self.core_price_per_hour + max(surcharge, 0.0)

    def accounting(self) -> tuple[float, float, float]:
        """``(pod_seconds, node_hours, cost_total)`` up to now."""
        self._account()
        return self.pod_seconds, self.node_seconds / 3600.0, self.cost_total

    # ------------------------------------------------------------------ nodes
    def _add_node(self, ready_at_start: bool = False) -> Node:
        self._account()
        c = self.sc.cluster
        node = Node(len(self.nodes), c.node_cpu, c.node_memory_mb, empty_since=self.env.now)
        self.nodes.append(node)
        self._live_nodes += 1
        if ready_at_start:
            node.state = NodeState.READY
        else:
            self.env.process(self._provision(node))
        return node

    def _provision(self, node: Node) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(self.sc.cluster.node_startup_s)
        if node.state == NodeState.PROVISIONING:
            node.state = NodeState.READY
            node.empty_since = self.env.now
            self._schedule()

    def _remove_node(self, node: Node) -> None:
        if node.state == NodeState.GONE:
            return
        self._account()
        node.state = NodeState.GONE
        self._live_nodes -= 1

    def fail_node(self, index: int) -> None:
        """Node ``index`` dies: its pods are lost at once and replaced elsewhere."""
        node = self.nodes[index]
        if node.state == NodeState.GONE:
            return
        for uid in sorted(node.pods):
            pod = self.pods[uid]
            self._terminate(pod, lost=True)
        self._remove_node(node)
        for s in range(self.n_services):
            self._reconcile(s)

    def drain(self, index: int) -> None:
        """Cordon node ``index`` and evict its pods; replacements are scheduled elsewhere."""
        node = self.nodes[index]
        if node.state in (NodeState.GONE, NodeState.PROVISIONING):
            return  # removed (or not up) since the drain was requested: nothing to drain
        node.state = NodeState.CORDONED
        for uid in sorted(node.pods):
            self._terminate(self.pods[uid], lost=False)
        for s in range(self.n_services):
            self._reconcile(s)

    # ------------------------------------------------------------------ pods
    def _create_pod(self, s: int) -> Pod:
        pod = Pod(
            self._next_uid,
            s,
            (self.current_version[s], self.restart_gen[s]),
            self.env.now,
            pending_since=self.env.now,
        )
        self._next_uid += 1
        self.pods[pod.uid] = pod
        self.by_service[s].add(pod.uid)
        self.pending.append(pod.uid)
        self.n_pending[s] += 1
        return pod

    def _try_bind(self, pod: Pod) -> bool:
        spec = self.specs[pod.service].pod
        best: Node | None = None
        for node in self.nodes:
            if node.state != NodeState.READY:
                continue
            if (
                node.cpu - node.cpu_used >= spec.cpu_request - 1e-9
                and node.memory_mb - node.mem_used >= spec.memory_request_mb - 1e-9
                and (best is None or node.cpu_used / node.cpu < best.cpu_used / best.cpu)
            ):
                best = node
        if best is None:
            return False
        self._account()
        best.cpu_used += spec.cpu_request
        best.mem_used += spec.memory_request_mb
        best.pods.add(pod.uid)
        pod.node = best.index
        self.pending.remove(pod.uid)
        self.n_pending[pod.service] -= 1
        self._bound_pods += 1
        self._bound_cores += spec.cpu_request
        self._pod_cost_rate += self.specs[pod.service].cost_per_pod_hour
        return True

    def _unbind(self, pod: Pod) -> None:
        if pod.node < 0:
            return
        self._account()
        spec = self.specs[pod.service].pod
        node = self.nodes[pod.node]
        node.cpu_used -= spec.cpu_request
        node.mem_used -= spec.memory_request_mb
        node.pods.discard(pod.uid)
        if not node.pods:
            node.empty_since = self.env.now
        pod.node = -1
        self._bound_pods -= 1
        self._bound_cores -= spec.cpu_request
        self._pod_cost_rate -= self.specs[pod.service].cost_per_pod_hour

    def _schedule(self) -> None:
        for uid in list(self.pending):
            pod = self.pods[uid]
            if self._try_bind(pod):
                self._start(pod, self.specs[pod.service].pod.startup)

    def _sample(self, d: Distribution) -> float:
        if d.cv == 0:
            return d.mean
        if d.kind == "lognormal":
            s2 = math.log1p(d.cv * d.cv)
            return float(d.mean * math.exp(self.rng.normal(-s2 / 2, math.sqrt(s2))))
        shape = 1.0 / (d.cv * d.cv)
        return float(self.rng.gamma(shape, d.mean / shape))

    def _start(self, pod: Pod, startup: Distribution) -> None:
        self._set_state(pod, PodState.STARTING)
        self.env.process(self._become_ready(pod, pod.epoch, self._sample(startup)))

    def _become_ready(self, pod: Pod, epoch: int, delay: float) -> Generator[Any, Any, None]:
        yield self.env.timeout(delay)
        if pod.epoch != epoch or pod.state != PodState.STARTING:
            return
        self.hooks.before_change()
        self._set_state(pod, PodState.READY)
        pod.started_t = self.env.now
        self._refresh_effects()
        self.hooks.capacity_changed()
        self._arm_container(pod)

    def _arm_container(self, pod: Pod) -> None:
        """Schedule the death of a freshly started container: OOM kill or crash loop."""
        v = self.versions[pod.service][pod.template[0]]
        spec = self.specs[pod.service].pod
        limit = v.memory_limit_mb if v.memory_limit_mb is not None else spec.memory_limit_mb
        oom_in: float | None = None
        if limit <= spec.memory_base_mb:
            oom_in = 1.0  # cannot even start within its limit
        elif v.leak_mb_per_s > 0:
            oom_in = (limit - spec.memory_base_mb) / v.leak_mb_per_s
        crash_in = pod.crash_loop_s
        if oom_in is not None and (crash_in is None or oom_in <= crash_in):
            self.env.process(self._die_after(pod, pod.epoch, oom_in, oom=True))
        elif crash_in is not None:
            self.env.process(self._die_after(pod, pod.epoch, crash_in, oom=False))

    def _die_after(
        self, pod: Pod, epoch: int, delay: float, oom: bool
    ) -> Generator[Any, Any, None]:
        yield self.env.timeout(delay)
        if pod.epoch != epoch or pod.state != PodState.READY:
            return
        if oom:
            self.oom_kills[pod.service] += 1
        self.crash(pod)

    def memory_mb(self, s: int) -> float:
        """Resident memory of service ``s``'s ready pods now (base plus any leak)."""
        spec = self.specs[s].pod
        now = self.env.now
        total = 0.0
        for u in self.by_service[s]:
            pod = self.pods[u]
            if pod.state == PodState.READY:
                leak = self.versions[s][pod.template[0]].leak_mb_per_s
                total += spec.memory_base_mb + leak * (now - pod.started_t)
        return total

    def _set_state(self, pod: Pod, state: PodState) -> None:
        old = pod.state
        s = pod.service
        if old == PodState.READY:
            self.ready[s] -= 1
        elif old == PodState.STARTING:
            self.starting[s] -= 1
        if state == PodState.READY:
            self.ready[s] += 1
        elif state == PodState.STARTING:
            self.starting[s] += 1
        pod.state = state
        pod.epoch += 1

    def crash(self, pod: Pod) -> None:
        """The pod's container dies (crash or OOM kill); it restarts under backoff."""
        if pod.state not in (PodState.READY, PodState.STARTING):
            return
        self.hooks.before_change()
        was_ready = pod.state == PodState.READY
        if was_ready:
            self.hooks.pods_lost(pod.service, 1.0 / max(int(self.ready[pod.service]), 1))
        if self.env.now - pod.started_t >= BACKOFF_RESET_S:
            pod.backoff_s = 0.0
        pod.backoff_s = (
            BACKOFF_INITIAL_S if pod.backoff_s == 0 else min(2 * pod.backoff_s, BACKOFF_MAX_S)
        )
        pod.restarts += 1
        self.restarts[pod.service] += 1
        self._set_state(pod, PodState.BACKOFF)
        self.env.process(self._restart_after(pod, pod.epoch, pod.backoff_s))
        self._refresh_effects()
        self.hooks.capacity_changed()

    def _restart_after(self, pod: Pod, epoch: int, delay: float) -> Generator[Any, Any, None]:
        yield self.env.timeout(delay)
        if pod.epoch != epoch or pod.state != PodState.BACKOFF:
            return
        spec = self.specs[pod.service].pod.startup
        # a container restart skips scheduling and image pull: half the pod start-up time
        self._start(pod, Distribution(mean=spec.mean * 0.5, cv=spec.cv, kind=spec.kind))

    def _terminate(self, pod: Pod, lost: bool) -> None:
        if pod.state in (PodState.TERMINATING, PodState.GONE):
            return
        self.hooks.before_change()
        if pod.state == PodState.PENDING:
            self.pending.remove(pod.uid)
            self.n_pending[pod.service] -= 1
            self._set_state(pod, PodState.GONE)
            self._forget(pod)
            return
        if lost and pod.state == PodState.READY:
            self.hooks.pods_lost(pod.service, 1.0 / max(int(self.ready[pod.service]), 1))
        self._set_state(pod, PodState.TERMINATING)
        self._refresh_effects()
        self.hooks.capacity_changed()
        grace = 0.0 if lost else self.specs[pod.service].pod.termination_grace_s
        self.env.process(self._finish_termination(pod, grace))

    def _finish_termination(self, pod: Pod, grace: float) -> Generator[Any, Any, None]:
        if grace > 0:
            yield self.env.timeout(grace)
        self._unbind(pod)
        self._set_state(pod, PodState.GONE)
        self._forget(pod)
        self._schedule()

    def _forget(self, pod: Pod) -> None:
        self.by_service[pod.service].discard(pod.uid)
        del self.pods[pod.uid]

    def live_pods(self, s: int) -> list[Pod]:
        """Pods of service ``s`` that are not terminating, in uid order."""
        return self._live(s)

    def reconcile(self, s: int) -> None:
        """Create or delete pods of ``s`` toward its desired count now."""
        self._reconcile(s)

    def running_version(self, s: int, version: int) -> bool:
        """Whether ``version`` of service ``s`` is still deployed or has live pods."""
        return self.current_version[s] == version or any(
            p.template[0] == version for p in self._live(s)
        )

    def _live(self, s: int) -> list[Pod]:
        return [
            self.pods[u]
            for u in sorted(self.by_service[s])
            if self.pods[u].state not in (PodState.TERMINATING, PodState.GONE)
        ]

    def _reconcile(self, s: int) -> None:
        """ReplicaSet controller: create or delete pods toward the desired count."""
        if self.rolling[s]:
            return  # the rollout process owns the pod count while it runs
        live = self._live(s)
        diff = self.desired[s] - len(live)
        if diff > 0:
            for _ in range(diff):
                self._create_pod(s)
            self._schedule()
        elif diff < 0:
            # delete not-ready before ready, newest first (Kubernetes' ranking, simplified)
            ranked = sorted(live, key=lambda p: (p.state == PodState.READY, -p.uid))
            for pod in ranked[:-diff]:
                self._terminate(pod, lost=False)

    def _refresh_effects(self) -> None:
        """Recompute per-service serving effects, averaged over ready pods.

        Latency factor (version x node slowdown x service slowdown), error rate (version
        mix) and the share of pods whose calls take a degraded network path.
        """
        for s in range(self.n_services):
            n = 0
            lat = 0.0
            err = 0.0
            bad = 0
            for u in self.by_service[s]:
                pod = self.pods[u]
                if pod.state == PodState.READY:
                    v = self.versions[s][pod.template[0]]
                    n += 1
                    lat += v.latency_factor * self.nodes[pod.node].slowdown
                    err += v.error_rate
                    bad += pod.bad_path
            base = self.specs[s].pod.error_rate
            self.latency_factor[s] = (lat / n if n else 1.0) * self.service_slowdown[s]
            self.app_error[s] = min(1.0, base + (err / n if n else 0.0))
            self.bad_path_fraction[s] = bad / n if n else 0.0

    def refresh(self) -> None:
        """Recompute serving effects after a fault changed them, and tell the data plane."""
        self.hooks.before_change()
        self._refresh_effects()
        self.hooks.capacity_changed()

    def _recount(self) -> None:
        self._refresh_effects()

    # ------------------------------------------------------------------ rollouts
    def deploy(
        self,
        s: int,
        latency_factor: float = 1.0,
        error_rate: float = 0.0,
        leak_mb_per_s: float = 0.0,
        memory_limit_mb: float | None = None,
    ) -> int:
        """Roll out a new version of service ``s``; returns its version number."""
        v = Version(
            len(self.versions[s]), latency_factor, error_rate, leak_mb_per_s, memory_limit_mb
        )
        self.leaking = self.leaking or leak_mb_per_s > 0
        self.versions[s].append(v)
        self.history[s].append(self.current_version[s])
        self.current_version[s] = v.number
        self._begin_rollout(s)
        return v.number

    def _begin_rollout(self, s: int) -> None:
        if not self.rolling[s]:
            self.rolling[s] = True
            self.env.process(self._rollout(s))

    def _rollout(self, s: int) -> Generator[Any, Any, None]:
        while True:
            template = (self.current_version[s], self.restart_gen[s])
            live = self._live(s)
            old = [p for p in live if p.template != template]
            new = [p for p in live if p.template == template]
            want = self.desired[s]
            if not old and len(new) == want:
                break
            surge = max(1, math.ceil(0.25 * want))
            max_unavailable = math.floor(0.25 * want)
            # scale up the new set within the surge budget
            room = want + surge - len(live)
            for _ in range(max(0, min(room, want - len(new)))):
                self._create_pod(s)
            self._schedule()
            # scale down old pods while enough pods stay ready
            ready_total = sum(1 for p in live if p.state == PodState.READY)
            min_ready = want - max_unavailable
            for pod in sorted(old, key=lambda p: (p.state == PodState.READY, -p.uid)):
                if pod.state != PodState.READY:
                    self._terminate(pod, lost=False)
                elif ready_total - 1 >= min_ready:
                    ready_total -= 1
                    self._terminate(pod, lost=False)
            if not old and len(new) > want:
                for pod in sorted(new, key=lambda p: (p.state == PodState.READY, -p.uid))[
                    : len(new) - want
                ]:
                    self._terminate(pod, lost=False)
            yield self.env.timeout(ROLLOUT_POLL_S)
        self.rolling[s] = False
        self._reconcile(s)

    # ------------------------------------------------------------------ autoscaler
    def _autoscaler(self) -> Generator[Any, Any, None]:
        au = self.sc.cluster.autoscaler
        assert au is not None
        while True:
            yield self.env.timeout(AUTOSCALER_POLL_S)
            now = self.env.now
            live = [n for n in self.nodes if n.state != NodeState.GONE]
            provisioning = sum(1 for n in live if n.state == NodeState.PROVISIONING)
            waiting = [
                self.pods[u]
                for u in self.pending
                if now - self.pods[u].pending_since >= au.scale_up_delay_s
            ]
            if waiting and provisioning == 0 and len(live) < au.max_nodes:
                cpu = sum(self.specs[p.service].pod.cpu_request for p in waiting)
                mem = sum(self.specs[p.service].pod.memory_request_mb for p in waiting)
                c = self.sc.cluster
                need = max(math.ceil(cpu / c.node_cpu), math.ceil(mem / c.node_memory_mb), 1)
                for _ in range(min(need, au.max_nodes - len(live))):
                    self._add_node()
            elif not self.pending:
                ready_nodes = [n for n in live if n.state in (NodeState.READY, NodeState.CORDONED)]
                for node in reversed(ready_nodes):
                    if len(live) <= au.min_nodes:
                        break
                    if not node.pods and now - node.empty_since >= au.scale_down_unneeded_s:
                        self._remove_node(node)
                        live.remove(node)

    # ------------------------------------------------------------------ actions
    def check(self, actions: list[Action]) -> None:
        """Raise :class:`InvalidActionError` if any of ``actions`` cannot be applied now."""
        rollbacks: dict[str, int] = {}
        for action in actions:
            self._check_one(action, rollbacks)

    def apply(self, actions: list[Action]) -> None:
        """Check all ``actions``, then carry each out after the actuation delay (all or none)."""
        self.check(actions)
        for action in actions:
            if not isinstance(action, Noop):
                self.env.process(self._actuate(action))

    def _check_one(self, action: Action, rollbacks: dict[str, int]) -> None:
        validate_action(action, self.sc)
        if isinstance(action, Rollback):
            s = self.sc.service_names.index(action.service)
            rollbacks[action.service] = rollbacks.get(action.service, 0) + 1
            if len(self.history[s]) < rollbacks[action.service]:
                raise InvalidActionError(
                    f"rollback {action.service}: no previous revision to roll back to "
                    "(the service has not been deployed since the start)"
                )
        if isinstance(action, DrainNode) and (
            action.node >= len(self.nodes)
            or self.nodes[action.node].state in (NodeState.GONE, NodeState.PROVISIONING)
        ):
            live = [n.index for n in self.nodes if n.state == NodeState.READY]
            raise InvalidActionError(
                f"drain_node {action.node}: no such ready node; ready nodes are {live}"
            )

    def _actuate(self, action: Action) -> Generator[Any, Any, None]:
        delay = self.sc.actuation_delay_s
        if delay > 0:
            yield self.env.timeout(delay)
        names = self.sc.service_names
        if isinstance(action, Scale):
            s = names.index(action.service)
            self.desired[s] = action.replicas
            self._reconcile(s)
        elif isinstance(action, Restart):
            s = names.index(action.service)
            self.restart_gen[s] += 1
            self._begin_rollout(s)
        elif isinstance(action, Rollback):
            s = names.index(action.service)
            if self.history[s]:
                self.current_version[s] = self.history[s].pop()
                self._begin_rollout(s)
        elif isinstance(action, ShedLoad):
            self.hooks.before_change()
            self.shed_fraction = action.fraction
            self.hooks.capacity_changed()
        elif isinstance(action, DrainNode):
            self.drain(action.node)

    # ------------------------------------------------------------------ views
    def node_counts(self) -> tuple[int, int]:
        """``(ready or cordoned nodes, provisioning nodes)``."""
        ready = sum(1 for n in self.nodes if n.state in (NodeState.READY, NodeState.CORDONED))
        prov = sum(1 for n in self.nodes if n.state == NodeState.PROVISIONING)
        return ready, prov

    def ready_pods(self, s: int) -> list[Pod]:
        """Ready pods of service ``s`` in uid order."""
        return [
            self.pods[u] for u in sorted(self.by_service[s]) if self.pods[u].state == PodState.READY
        ]
