"""Telemetry: one typed frame per scrape, the same type for the simulator and live Prometheus.

A frame holds per-service gauges in one ``(S, F)`` float matrix whose columns are
:data:`SERVICE_FIELDS`, with a boolean mask of the same shape (``True`` = observed). Anything
not observed is NaN *and* masked; a missing value is never zero. Underneath are the
Prometheus-style cumulative counters (:data:`COUNTER_FIELDS`) and cumulative latency-histogram
buckets (``le`` bounds in :data:`LATENCY_BUCKETS_S`), from which rates and percentiles over
any window can be recomputed, as PromQL's ``rate`` and ``histogram_quantile`` would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SERVICE_FIELDS: tuple[str, ...] = (
    "rps",  # attempts arriving per second over the scrape interval
    "throughput",  # attempts completed successfully per second
    "error_rate",  # failed+dropped / finished attempts over the interval (NaN if none)
    "p50",  # latency quantiles of finished (non-dropped) attempts, seconds (NaN if none)
    "p95",
    "p99",
    "mean_latency",
    "cpu_usage",  # cores used, summed over pods
    "cpu_request",  # cores requested by ready pods
    "cpu_util",  # cpu_usage / cpu_request (NaN with no ready pod)
    "memory_usage_mb",  # summed over ready pods
    "memory_request_mb",
    "replicas_desired",
    "replicas_ready",
    "replicas_pending",  # created, not scheduled (no node capacity)
    "replicas_starting",  # scheduled, not ready yet
    "restarts",  # cumulative container restarts
    "oom_kills",  # cumulative containers killed for exceeding their memory limit
    "backlog",  # requests waiting for a worker slot (end of interval)
    "in_flight",  # requests waiting or in service whose caller still waits
    "deploy_version",
    "slo_violation_s",  # cumulative seconds in violation of this service's SLO
    "error_budget_burn",  # error_rate / allowed error rate over the interval
)
FIELD_INDEX: dict[str, int] = {f: i for i, f in enumerate(SERVICE_FIELDS)}

COUNTER_FIELDS: tuple[str, ...] = ("arrived", "completed", "failed", "dropped")
"""Cumulative attempt counters per service (Prometheus counters)."""

CLUSTER_FIELDS: tuple[str, ...] = (
    "nodes_ready",
    "nodes_provisioning",
    "pods_unschedulable",
    "cost_rate_per_hour",  # current spend rate: nodes + pod surcharges
    "cost_total",  # cumulative spend since t=0
    "pod_seconds",  # cumulative pod-seconds (pods bound to a node)
    "node_hours",  # cumulative node-hours (incl. provisioning)
    "shed_fraction",  # fraction of external traffic shed at the ingress
    "allocated_cost_total",  # cumulative spend attributed to pods by their CPU requests
)
CLUSTER_INDEX: dict[str, int] = {f: i for i, f in enumerate(CLUSTER_FIELDS)}

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    float("inf"),
)
"""Histogram ``le`` bounds (prometheus_client's defaults plus 0.15 s and ``+Inf``)."""


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One scrape of the whole cluster.

    Attributes:
        t: Simulated time of the scrape, seconds.
        services: Service names; row order of every per-service array.
        values: ``(S, len(SERVICE_FIELDS))`` gauges in raw units, NaN where missing.
        mask: ``(S, len(SERVICE_FIELDS))`` bool, True where observed.
        counters: ``(S, len(COUNTER_FIELDS))`` cumulative attempt counts (floats: the fluid
            engine's counts are expected values).
        in_flight: ``(S,)`` attempts in flight at ``t`` (the conservation term).
        histogram: ``(S, len(LATENCY_BUCKETS_S))`` cumulative ``le`` bucket counts.
        cluster: ``(len(CLUSTER_FIELDS),)`` cluster gauges, NaN where missing.
        cluster_mask: ``(len(CLUSTER_FIELDS),)`` bool.
    """

    t: float
    services: tuple[str, ...]
    values: np.ndarray
    mask: np.ndarray
    counters: np.ndarray
    in_flight: np.ndarray
    histogram: np.ndarray
    cluster: np.ndarray
    cluster_mask: np.ndarray

    def __getitem__(self, field: str) -> np.ndarray:
        """Column ``field`` of :data:`SERVICE_FIELDS` (shape ``(S,)``)."""
        try:
            return self.values[:, FIELD_INDEX[field]]
        except KeyError:
            raise KeyError(
                f"unknown telemetry field {field!r}; one of {list(SERVICE_FIELDS)}"
            ) from None

    def observed(self, field: str) -> np.ndarray:
        """Mask column of ``field``: True where the value was observed."""
        return self.mask[:, FIELD_INDEX[field]]

    def cluster_value(self, field: str) -> float:
        """One cluster gauge by name."""
        return float(self.cluster[CLUSTER_INDEX[field]])

    def counter(self, field: str) -> np.ndarray:
        """Cumulative counter ``field`` of :data:`COUNTER_FIELDS` (shape ``(S,)``)."""
        return self.counters[:, COUNTER_FIELDS.index(field)]

    def service(self, name: str) -> dict[str, float]:
        """All gauges of one service as a dict (NaN where missing)."""
        row = self.values[self.services.index(name)]
        return {f: float(row[i]) for i, f in enumerate(SERVICE_FIELDS)}


def make_frame(
    t: float,
    services: tuple[str, ...],
    values: np.ndarray,
    counters: np.ndarray,
    in_flight: np.ndarray,
    histogram: np.ndarray,
    cluster: np.ndarray,
) -> Telemetry:
    """Build a frame whose masks are derived from NaNs (copies the arrays)."""
    values = np.array(values, dtype=np.float64)
    cluster = np.array(cluster, dtype=np.float64)
    assert values.shape == (len(services), len(SERVICE_FIELDS)), values.shape
    assert cluster.shape == (len(CLUSTER_FIELDS),), cluster.shape
    return Telemetry(
        t=float(t),
        services=services,
        values=values,
        mask=~np.isnan(values),
        counters=np.array(counters, dtype=np.float64),
        in_flight=np.array(in_flight, dtype=np.float64),
        histogram=np.array(histogram, dtype=np.float64),
        cluster=cluster,
        cluster_mask=~np.isnan(cluster),
    )


def histogram_quantile(q: float, bounds: np.ndarray, cumulative: np.ndarray) -> np.ndarray:
    """PromQL's ``histogram_quantile`` over cumulative ``le`` buckets, per row.

    Linear interpolation inside the bucket holding the rank; the lowest bucket interpolates
    from 0; a rank in the ``+Inf`` bucket returns the highest finite bound. Rows with no
    observations give NaN.

    Args:
        q: Quantile in [0, 1].
        bounds: ``(B,)`` upper bounds, last one ``inf``.
        cumulative: ``(..., B)`` cumulative counts.
    """
    cum = np.atleast_2d(np.asarray(cumulative, dtype=np.float64))
    total = cum[:, -1]
    out = np.full(cum.shape[0], np.nan)
    for r in range(cum.shape[0]):
        if not total[r] > 0:
            continue
        rank = q * total[r]
        b = int(np.searchsorted(cum[r], rank, side="left"))
        b = min(b, len(bounds) - 1)
        if not np.isfinite(bounds[b]):
            out[r] = bounds[-2]
            continue
        lo = 0.0 if b == 0 else bounds[b - 1]
        below = 0.0 if b == 0 else cum[r, b - 1]
        inside = cum[r, b] - below
        out[r] = bounds[b] if inside <= 0 else lo + (bounds[b] - lo) * (rank - below) / inside
    return out
