"""The control plane both engines share, assembled from its parts.

One concept per module:

* :mod:`~envs.sim.control.objects`: pods, nodes, versions, the data-plane hooks.
* :mod:`~envs.sim.control.nodes`: node lifecycle and the scheduler (pending queue, binding).
* :mod:`~envs.sim.control.pods`: the pod table and pod lifecycle (start, readiness, crash
  loops and OOM kills under CrashLoopBackOff, termination).
* :mod:`~envs.sim.control.deployments`: desired replicas, versions, the ReplicaSet
  controller and rolling updates.
* :mod:`~envs.sim.control.serving`: per-service serving effects and ingress shedding.
* :mod:`~envs.sim.control.billing`: the node bill and the cost allocated to pods.
* :mod:`~envs.sim.control.autoscalers`: the cluster autoscaler and the HPA.
* :mod:`~envs.sim.control.actuation`: checking and carrying out the operator's actions.

:class:`ControlPlane` wires them together and is what the engines, the fault injector and
the environments talk to. The data plane (an engine) is told about every change that
affects serving through the :class:`~envs.sim.control.objects.DataPlaneHooks` it passes
in: ``before_change`` (bring the data plane up to now), ``capacity_changed`` (ready pods or
their versions changed) and ``pods_lost`` (requests on a pod that died are lost).
"""

from __future__ import annotations

import numpy as np
import simpy

from envs.core.actions import Action
from envs.core.telemetry import Telemetry
from envs.scenarios.schema import Scenario
from envs.sim.control.actuation import Actuator
from envs.sim.control.autoscalers import ClusterAutoscaler, HorizontalPodAutoscalers
from envs.sim.control.billing import Billing
from envs.sim.control.deployments import Deployments
from envs.sim.control.nodes import Nodes
from envs.sim.control.objects import DataPlaneHooks, NodeState, Pod, PodState
from envs.sim.control.pods import Pods
from envs.sim.control.serving import ServingEffects


class ControlPlane:
    """Kubernetes-like control plane over SimPy; see the module docstring.

    The per-service arrays and lists it exposes (``ready``, ``desired``, ``latency_factor``,
    ...) are the parts' own objects, updated in place; read them, and change the control
    plane through its methods (a fault may also write ``desired``, ``service_slowdown``,
    a node's ``slowdown`` or a pod's fields and then call :meth:`reconcile` or
    :meth:`refresh`).

    Args:
        env: The simulation environment.
        scenario: The scenario.
        rng: The control plane's random stream.
        hooks: The data plane.
    """

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
        self.n_services = len(self.specs)
        self.billing = Billing(env, scenario.cluster)
        self.workload = Pods(env, self.specs, rng, hooks)
        self.node_pool = Nodes(env, scenario.cluster, self.specs, self.workload.pods, self.billing)
        self.deployments = Deployments(env, self.specs, self.workload)
        self.serving = ServingEffects(
            self.specs,
            self.workload.pods,
            self.workload.by_service,
            self.deployments.versions,
            self.node_pool.nodes,
        )
        self.workload.attach(self.node_pool, self.serving, self.deployments.versions)
        self.node_pool.on_node_ready = self.workload.schedule
        hpa = scenario.autoscaling.hpa
        self.hpa: HorizontalPodAutoscalers | None = (
            None if hpa is None else HorizontalPodAutoscalers(hpa, scenario, self.apply)
        )
        self.actuator = Actuator(
            env, scenario, self.deployments, self.node_pool, self.drain, self._set_shed, self.hpa
        )
        # the parts' tables, under the names the engines, faults and environments read
        self.pods = self.workload.pods
        self.by_service = self.workload.by_service
        self.ready = self.workload.ready
        self.starting = self.workload.starting
        self.restarts = self.workload.restarts
        self.oom_kills = self.workload.oom_kills
        self.nodes = self.node_pool.nodes
        self.pending = self.node_pool.pending
        self.n_pending = self.node_pool.n_pending
        self.desired = self.deployments.desired
        self.versions = self.deployments.versions
        self.current_version = self.deployments.current_version
        self.restart_gen = self.deployments.restart_gen
        self.history = self.deployments.history
        self.rolling = self.deployments.rolling
        self.latency_factor = self.serving.latency_factor
        self.app_error = self.serving.app_error
        self.service_slowdown = self.serving.service_slowdown
        self.bad_path_fraction = self.serving.bad_path_fraction
        # the cluster at t = 0: its nodes, and each service's initial pods running
        for _ in range(scenario.cluster.nodes):
            self.node_pool.add(ready_at_start=True)
        for s in range(self.n_services):
            for _ in range(self.desired[s]):
                pod = self.workload.create(s, self.deployments.template(s))
                if self.node_pool.try_bind(pod):
                    self.workload.set_state(pod, PodState.READY)
                    pod.started_t = 0.0
        self.serving.recompute()
        au = scenario.cluster.autoscaler
        self.cluster_autoscaler: ClusterAutoscaler | None = None
        if au is not None and au.enabled:
            self.cluster_autoscaler = ClusterAutoscaler(
                env, au, scenario.cluster, self.specs, self.node_pool
            )

    # ------------------------------------------------------------------ state read by others
    @property
    def shed_fraction(self) -> float:
        """Fraction of external traffic rejected at the ingress."""
        return self.serving.shed_fraction

    @property
    def leaking(self) -> bool:
        """True once any version that leaks memory was deployed."""
        return self.deployments.leaking

    @property
    def cost_rate(self) -> float:
        """Current spend per hour: live nodes plus per-pod surcharges."""
        return self.billing.cost_rate

    @property
    def core_price_per_hour(self) -> float:
        """Price of one requested core-hour: the node price over the node's cores."""
        return self.billing.core_price_per_hour

    @property
    def allocated_cost_rate(self) -> float:
        """Spend per hour attributed to the pods by their CPU requests (as FinOps tools do)."""
        return self.billing.allocated_cost_rate

    def allocated_cost(self) -> float:
        """Cumulative spend attributed to pods by their CPU requests (plus pod surcharges)."""
        return self.billing.allocated_cost()

    def accounting(self) -> tuple[float, float, float]:
        """``(pod_seconds, node_hours, cost_total)`` up to now."""
        return self.billing.accounting()

    def node_counts(self) -> tuple[int, int]:
        """``(ready or cordoned nodes, provisioning nodes)``."""
        return self.node_pool.counts()

    def live_pods(self, s: int) -> list[Pod]:
        """Pods of service ``s`` that are not terminating, in uid order."""
        return self.workload.live(s)

    def ready_pods(self, s: int) -> list[Pod]:
        """Ready pods of service ``s`` in uid order."""
        return self.workload.ready_pods(s)

    def memory_mb(self, s: int) -> float:
        """Resident memory of service ``s``'s ready pods now (base plus any leak)."""
        return self.workload.memory_mb(s)

    def running_version(self, s: int, version: int) -> bool:
        """Whether ``version`` of service ``s`` is still deployed or has live pods."""
        return self.deployments.running_version(s, version)

    # ------------------------------------------------------------------ changes (faults)
    def crash(self, pod: Pod) -> None:
        """The pod's container dies (crash or OOM kill); it restarts under backoff."""
        self.workload.crash(pod)

    def deploy(
        self,
        s: int,
        latency_factor: float = 1.0,
        error_rate: float = 0.0,
        leak_mb_per_s: float = 0.0,
        memory_limit_mb: float | None = None,
    ) -> int:
        """Roll out a new version of service ``s``; returns its version number."""
        return self.deployments.deploy(
            s, latency_factor, error_rate, leak_mb_per_s, memory_limit_mb
        )

    def reconcile(self, s: int) -> None:
        """Create or delete pods of ``s`` toward its desired count now."""
        self.deployments.reconcile(s)

    def refresh(self) -> None:
        """Recompute serving effects after a fault changed them, and tell the data plane."""
        self.hooks.before_change()
        self.serving.recompute()
        self.hooks.capacity_changed()

    def fail_node(self, index: int) -> None:
        """Node ``index`` dies: its pods are lost at once and replaced elsewhere."""
        node = self.nodes[index]
        if node.state == NodeState.GONE:
            return
        for uid in sorted(node.pods):
            self.workload.terminate(self.pods[uid], lost=True)
        self.node_pool.remove(node)
        for s in range(self.n_services):
            self.deployments.reconcile(s)

    def drain(self, index: int) -> None:
        """Cordon node ``index`` and evict its pods; replacements are scheduled elsewhere."""
        node = self.nodes[index]
        if node.state in (NodeState.GONE, NodeState.PROVISIONING):
            return  # removed (or not up) since the drain was requested: nothing to drain
        node.state = NodeState.CORDONED
        for uid in sorted(node.pods):
            self.workload.terminate(self.pods[uid], lost=False)
        for s in range(self.n_services):
            self.deployments.reconcile(s)

    def _set_shed(self, fraction: float) -> None:
        self.hooks.before_change()
        self.serving.shed_fraction = fraction
        self.hooks.capacity_changed()

    # ------------------------------------------------------------------ telemetry
    def observe(self, frame: Telemetry) -> None:
        """A frame was scraped: the controllers that read telemetry (the HPAs) see it."""
        if self.hpa is not None:
            self.hpa.observe(frame)

    # ------------------------------------------------------------------ actions
    def check(self, actions: list[Action]) -> None:
        """Raise :class:`~envs.core.actions.InvalidActionError` if any action is invalid now."""
        self.actuator.check(actions)

    def apply(self, actions: list[Action]) -> None:
        """Check all ``actions``, then carry each out after the actuation delay (all or none)."""
        self.actuator.apply(actions)
