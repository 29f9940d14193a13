"""Billing: the node bill and the cost allocated to pods, integrated on every change.

The node bill runs while a node is live (provisioning, ready or cordoned), at
``cost_per_node_hour``, plus each bound pod's ``cost_per_pod_hour`` surcharge. The allocated
cost attributes spend to pods by their CPU requests at the node price per core, as FinOps
tools do, so it moves with every pod added or removed even while the node count stays fixed.
The counters are integrated up to now (:meth:`Billing.account`) before every change to them.
"""

from __future__ import annotations

import simpy

from envs.scenarios.schema import Cluster


class Billing:
    """The cost meters of one cluster.

    Args:
        env: The simulation environment (its clock).
        cluster: The scenario's cluster section (prices, node size).
    """

    def __init__(self, env: simpy.Environment, cluster: Cluster) -> None:
        self.env = env
        self.cluster = cluster
        self._acct_t = 0.0
        self.pod_seconds = 0.0
        """Cumulative pods bound to nodes, times seconds."""
        self.node_seconds = 0.0
        """Cumulative live nodes, times seconds."""
        self.cost_total = 0.0
        """Cumulative node bill plus pod surcharges."""
        self.core_seconds = 0.0
        """Cumulative CPU cores requested by pods bound to nodes, times seconds."""
        self.bound_pods = 0
        self.bound_cores = 0.0
        self.pod_cost_rate = 0.0
        """Per hour: the surcharges of the bound pods."""
        self.live_nodes = 0

    def account(self) -> None:
        """Integrate the meters up to now (call before any change to what they count)."""
        now = self.env.now
        dt = now - self._acct_t
        if dt > 0:
            self.pod_seconds += self.bound_pods * dt
            self.core_seconds += self.bound_cores * dt
            self.node_seconds += self.live_nodes * dt
            self.cost_total += dt / 3600.0 * self.cost_rate
            self._acct_t = now

    # ------------------------------------------------------------------ changes
    def node_added(self) -> None:
        """A node went live (its bill starts now, also while it provisions)."""
        self.account()
        self.live_nodes += 1

    def node_removed(self) -> None:
        """A node is gone."""
        self.account()
        self.live_nodes -= 1

    def pod_bound(self, cpu_request: float, cost_per_pod_hour: float) -> None:
        """A pod was bound to a node."""
        self.account()
        self.bound_pods += 1
        self.bound_cores += cpu_request
        self.pod_cost_rate += cost_per_pod_hour

    def pod_unbound(self, cpu_request: float, cost_per_pod_hour: float) -> None:
        """A pod left its node."""
        self.account()
        self.bound_pods -= 1
        self.bound_cores -= cpu_request
        self.pod_cost_rate -= cost_per_pod_hour

    # ------------------------------------------------------------------ readings
    @property
    def cost_rate(self) -> float:
        """Current spend per hour: live nodes plus per-pod surcharges."""
        return self.live_nodes * self.cluster.cost_per_node_hour + self.pod_cost_rate

    @property
    def core_price_per_hour(self) -> float:
        """Price of one requested core-hour: the node price over the node's cores."""
        return self.cluster.cost_per_node_hour / self.cluster.node_cpu

    @property
    def allocated_cost_rate(self) -> float:
        """Spend per hour attributed to the pods by their CPU requests (as FinOps tools do)."""
        return self.bound_cores * self.core_price_per_hour + self.pod_cost_rate

    def allocated_cost(self) -> float:
        """Cumulative spend attributed to pods by their CPU requests (plus pod surcharges).

        Unlike the node bill (``cost_total``), it moves with every pod added or removed,
        also while the node count stays fixed.
        """
        self.account()
        surcharge = self.cost_total - self.node_seconds / 3600.0 * self.cluster.cost_per_node_hour
        return self.core_seconds / 3600.0 * self.core_price_per_hour + max(surcharge, 0.0)

    def accounting(self) -> tuple[float, float, float]:
        """``(pod_seconds, node_hours, cost_total)`` up to now."""
        self.account()
        return self.pod_seconds, self.node_seconds / 3600.0, self.cost_total
