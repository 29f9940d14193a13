"""The control plane's autoscalers: the cluster autoscaler (nodes) and the HPA (replicas).

* :class:`ClusterAutoscaler` (``cluster.autoscaler``): every 10 s, if pods have been
  pending for ``scale_up_delay_s`` and no node is provisioning, it adds enough nodes for
  their requests (up to ``max_nodes``); when nothing is pending, it removes nodes that have
  been empty for ``scale_down_unneeded_s`` (down to ``min_nodes``), newest first.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from typing import Any

import simpy

from envs.scenarios.schema import Cluster, Service
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
