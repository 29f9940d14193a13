"""The control plane's autoscalers: the cluster autoscaler (nodes) and the HPA (replicas).

* :class:`ClusterAutoscaler` (``cluster.autoscaler``): every 10 s, if pods have been
  pending for ``scale_up_delay_s`` and no node is provisioning, it adds enough nodes for
  their requests (up to ``max_nodes``); when nothing is pending, it removes nodes that have
  been empty for ``scale_down_unneeded_s`` (down to ``min_nodes``), newest first.
* :class:`HorizontalPodAutoscalers` (``autoscaling.hpa``): one Kubernetes HPA object per
  scaled service, reconciled by :class:`envs.kube.hpa.HPAController` from the telemetry the
  control plane scrapes (the frame a policy would see, after any telemetry fault), at the
  first scrape and then at the first scrape at least ``sync_period_s`` after the previous
  sync. A changed replica count is written as a ``Scale`` through the actuation path (after
  ``actuation_delay_s``, as an operator's would be), so the controller and the telemetry-only
  :class:`agents.baselines.hpa.HPAPolicy` make the same decisions at the same times. Its
  state (recommendations, scale events, CPU targets in force) lives here; ``SetHPATarget``
  changes a service's CPU target from the next sync on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from typing import Any

import simpy

from envs.core.actions import Action, Scale
from envs.core.telemetry import Telemetry
from envs.kube.config import HPAConfig
from envs.kube.hpa import HPAController, HPAState
from envs.scenarios.schema import Cluster, Scenario, Service
from envs.scenarios.schema import ClusterAutoscaler as ClusterAutoscalerSpec
from envs.sim.control.nodes import Nodes
from envs.sim.control.objects import NodeState

AUTOSCALER_POLL_S = 10.0
"""How often the cluster autoscaler looks at pending pods and empty nodes."""


class ClusterAutoscaler:
    """The cluster autoscaler; see the module docstring. Starts its loop on construction.

    Args:
        env: The simulation environment.
        spec: The scenario's ``cluster.autoscaler`` section.
        cluster: The scenario's cluster section (node size).
        specs: The scenario's services (pod requests).
        nodes: The nodes it adds and removes, with the pending queue it watches.
    """

    def __init__(
        self,
        env: simpy.Environment,
        spec: ClusterAutoscalerSpec,
        cluster: Cluster,
        specs: Sequence[Service],
        nodes: Nodes,
    ) -> None:
        self.env = env
        self.spec = spec
        self.cluster = cluster
        self.specs = specs
        self.nodes = nodes
        env.process(self._loop())

    def _loop(self) -> Generator[Any, Any, None]:
        au = self.spec
        pool = self.nodes
        while True:
            yield self.env.timeout(AUTOSCALER_POLL_S)
            now = self.env.now
            live = [n for n in pool.nodes if n.state != NodeState.GONE]
            provisioning = sum(1 for n in live if n.state == NodeState.PROVISIONING)
            waiting = [
                pool.pods[u]
                for u in pool.pending
                if now - pool.pods[u].pending_since >= au.scale_up_delay_s
            ]
            if waiting and provisioning == 0 and len(live) < au.max_nodes:
                cpu = sum(self.specs[p.service].pod.cpu_request for p in waiting)
                mem = sum(self.specs[p.service].pod.memory_request_mb for p in waiting)
                c = self.cluster
                need = max(math.ceil(cpu / c.node_cpu), math.ceil(mem / c.node_memory_mb), 1)
                for _ in range(min(need, au.max_nodes - len(live))):
                    pool.add()
            elif not pool.pending:
                ready_nodes = [n for n in live if n.state in (NodeState.READY, NodeState.CORDONED)]
                for node in reversed(ready_nodes):
                    if len(live) <= au.min_nodes:
                        break
                    if not node.pods and now - node.empty_since >= au.scale_down_unneeded_s:
                        pool.remove(node)
                        live.remove(node)


class HorizontalPodAutoscalers:
    """The control plane's HPAs; see the module docstring.

    Args:
        config: The scenario's ``autoscaling.hpa``.
        scenario: The scenario (services and their replica bounds).
        scale: Carries out the controller's ``Scale`` writes (the control plane's actuation).

    Attributes:
        controller: The HPA algorithm over the HPA objects.
        state: The controller's history.
        targets: CPU utilisation targets set by ``SetHPATarget``, by service (the others
            keep the configured target).
        report: What the last sync decided, by service (empty before the first sync).
        writes: Every replica count the HPAs wrote, as ``(sync time, Scale)``.
    """

    def __init__(
        self, config: HPAConfig, scenario: Scenario, scale: Callable[[list[Action]], None]
    ) -> None:
        bounds = {s.name: (s.replicas.min, s.replicas.max) for s in scenario.topology.services}
        self.controller = HPAController(config, scenario.service_names, bounds)
        self.state: HPAState = self.controller.fresh_state()
        self.targets: dict[str, int] = {}
        self.report: dict[str, Any] = {}
        self.writes: list[tuple[float, Scale]] = []
        self._scale = scale

    @property
    def services(self) -> tuple[str, ...]:
        """The services with an HPA."""
        return self.controller.services

    def has_cpu_metric(self) -> bool:
        """Whether the HPAs scale on CPU utilisation (what ``SetHPATarget`` changes)."""
        return any(m.resource == "cpu" for m in self.controller.config.metrics)

    def set_target(self, service: str, cpu_target: int) -> None:
        """Set ``service``'s CPU utilisation target (percent) from the next sync on."""
        self.targets[service] = cpu_target

    def observe(self, frame: Telemetry) -> None:
        """A scrape: sync when due and write the replica counts that change."""
        out = self.controller.sync(frame, self.state, self.targets or None)
        if not out.synced:
            return
        self.state = out.state
        self.report = out.report
        if out.scales:
            scales = [Scale(name, replicas) for name, replicas in out.scales]
            self.writes.extend((frame.t, a) for a in scales)
            self._scale(list(scales))
