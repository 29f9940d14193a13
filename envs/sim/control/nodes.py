"""Nodes and the scheduler: node lifecycle, the pending queue, binding pods to nodes.

Nodes go ``provisioning -> ready (-> cordoned) -> gone``; the scenario's starting nodes are
ready at t = 0, nodes added later (by the cluster autoscaler) take ``node_startup_s``. The
scheduler binds pending pods, oldest first, to the least-allocated ready node with room for
the pod's CPU and memory requests; a pod stays pending while no node has room.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

import numpy as np
import simpy

from envs.scenarios.schema import Cluster, Service
from envs.sim.control.billing import Billing
from envs.sim.control.objects import Node, NodeState, Pod


def _nothing() -> None:
    return None


class Nodes:
    """The cluster's nodes and the scheduler that binds pods to them.

    Args:
        env: The simulation environment.
        cluster: The scenario's cluster section.
        specs: The scenario's services (pod requests, surcharges).
        pods: The pod table (uid -> pod) the pending queue refers to.
        billing: Told about every node and binding change.
    """

    def __init__(
        self,
        env: simpy.Environment,
        cluster: Cluster,
        specs: Sequence[Service],
        pods: Mapping[int, Pod],
        billing: Billing,
    ) -> None:
        self.env = env
        self.cluster = cluster
        self.specs = specs
        self.pods = pods
        self.billing = billing
        self.nodes: list[Node] = []
        self.pending: list[int] = []
        """Uids of the pods waiting for a node, oldest first."""
        self.n_pending = np.zeros(len(specs), dtype=np.int64)
        """Pending pods per service."""
        self.on_node_ready: Callable[[], None] = _nothing
        """Called when a provisioned node becomes ready (the control plane schedules then)."""

    # ------------------------------------------------------------------ node lifecycle
    def add(self, ready_at_start: bool = False) -> Node:
        """A new node: ready now (``ready_at_start``) or after ``node_startup_s``."""
        self.billing.node_added()
        c = self.cluster
        node = Node(len(self.nodes), c.node_cpu, c.node_memory_mb, empty_since=self.env.now)
        self.nodes.append(node)
        if ready_at_start:
            node.state = NodeState.READY
        else:
            self.env.process(self._provision(node))
        return node

    def _provision(self, node: Node) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(self.cluster.node_startup_s)
        if node.state == NodeState.PROVISIONING:
            node.state = NodeState.READY
            node.empty_since = self.env.now
            self.on_node_ready()

    def remove(self, node: Node) -> None:
        """The node is gone (its pods must have been dealt with)."""
        if node.state == NodeState.GONE:
            return
        self.billing.node_removed()
        node.state = NodeState.GONE

    def counts(self) -> tuple[int, int]:
        """``(ready or cordoned nodes, provisioning nodes)``."""
        ready = sum(1 for n in self.nodes if n.state in (NodeState.READY, NodeState.CORDONED))
        prov = sum(1 for n in self.nodes if n.state == NodeState.PROVISIONING)
        return ready, prov

    # ------------------------------------------------------------------ scheduler
    def enqueue(self, pod: Pod) -> None:
        """A new pod waits for a node."""
        self.pending.append(pod.uid)
        self.n_pending[pod.service] += 1

    def dequeue(self, pod: Pod) -> None:
        """A pending pod is deleted before it was bound."""
        self.pending.remove(pod.uid)
        self.n_pending[pod.service] -= 1

    def try_bind(self, pod: Pod) -> bool:
        """Bind pending ``pod`` to the least-allocated ready node with room; False if none."""
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
        self.billing.pod_bound(spec.cpu_request, self.specs[pod.service].cost_per_pod_hour)
        best.cpu_used += spec.cpu_request
        best.mem_used += spec.memory_request_mb
        best.pods.add(pod.uid)
        pod.node = best.index
        self.dequeue(pod)
        return True

    def unbind(self, pod: Pod) -> None:
        """Release ``pod``'s requests on its node (no-op when it is not bound)."""
        if pod.node < 0:
            return
        self.billing.pod_unbound(
            self.specs[pod.service].pod.cpu_request, self.specs[pod.service].cost_per_pod_hour
        )
        spec = self.specs[pod.service].pod
        node = self.nodes[pod.node]
        node.cpu_used -= spec.cpu_request
        node.mem_used -= spec.memory_request_mb
        node.pods.discard(pod.uid)
        if not node.pods:
            node.empty_since = self.env.now
        pod.node = -1

    def schedule(self, start: Callable[[Pod], None]) -> None:
        """Bind every pending pod that fits, oldest first, and ``start`` each one bound."""
        for uid in list(self.pending):
            pod = self.pods[uid]
            if self.try_bind(pod):
                start(pod)
