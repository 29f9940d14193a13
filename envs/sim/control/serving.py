"""Serving effects: what the data plane reads of the control plane besides ready-pod counts.

Per service, averaged over its ready pods: the latency factor (the version's, times the
node's noisy-neighbour slowdown, times the service's own slowdown), the application error
rate (the pod spec's plus the version's) and the share of pods whose outgoing calls take a
degraded network path; and, for the cluster, the fraction of external traffic shed at the
ingress.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from envs.scenarios.schema import Service
from envs.sim.control.objects import Node, Pod, PodState, Version


class ServingEffects:
    """The per-service serving effects (arrays of shape ``(S,)``) and ingress shedding.

    Args:
        specs: The scenario's services.
        pods: The pod table (uid -> pod).
        by_service: Per service, the uids of its pods.
        versions: Per service, its versions (indexed by version number).
        nodes: The cluster's nodes (indexed by node number).
    """

    def __init__(
        self,
        specs: Sequence[Service],
        pods: Mapping[int, Pod],
        by_service: Sequence[set[int]],
        versions: Sequence[Sequence[Version]],
        nodes: Sequence[Node],
    ) -> None:
        n = len(specs)
        self.specs = specs
        self.pods = pods
        self.by_service = by_service
        self.versions = versions
        self.nodes = nodes
        self.latency_factor = np.ones(n)
        self.app_error = np.array([s.pod.error_rate for s in specs], dtype=np.float64)
        self.service_slowdown = np.ones(n)
        """Slowdown of a service as a whole (a slow dependency behind it)."""
        self.bad_path_fraction = np.zeros(n)
        """Share of a service's ready pods whose outgoing calls take a degraded network path."""
        self.shed_fraction = 0.0
        """Fraction of external traffic rejected at the ingress."""

    def recompute(self) -> None:
        """Recompute the per-service effects from the ready pods now."""
        for s in range(len(self.specs)):
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
