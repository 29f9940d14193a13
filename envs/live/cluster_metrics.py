"""Telemetry frames as the series a real Kubernetes cluster exposes.

:class:`ClusterMetrics` is fed the frames of one run in time order and returns, for each,
the metric families a Prometheus scraping that cluster would see, under the names of
kube-state-metrics, cAdvisor, OpenCost and an instrumented HTTP service:

=============================================  =========  ======================================
series                                         type       from the frame
=============================================  =========  ======================================
``kube_deployment_spec_replicas``              gauge      ``replicas_desired``
``kube_deployment_status_replicas_ready``      gauge      ``replicas_ready``
``kube_pod_container_status_restarts_total``   counter    ``restarts`` (per pod)
``kube_pod_container_resource_requests``       gauge      ``cpu_request`` / ``memory_request_mb``
``container_cpu_usage_seconds_total``          counter    ``cpu_usage`` x interval (per pod)
``container_memory_working_set_bytes``         gauge      ``memory_usage_mb`` x 2**20 (per pod)
``http_requests_total{code}``                  counter    ``completed`` (200), ``failed`` (500),
                                                          ``dropped`` (503) (per pod)
``http_request_duration_seconds``              histogram  latency buckets, ``mean_latency``
``kube_node_status_condition``                 gauge      ``nodes_ready`` (Ready=true per node)
``node_total_hourly_cost``                     gauge      ``cost_rate_per_hour`` over the nodes
=============================================  =========  ======================================

Every series carries ``namespace``; deployment series carry ``deployment``; pod series carry
``pod``, ``container`` and (as a convenience; a real cluster's pod series lack it)
``deployment``. Pods are the service's ready replicas, named as a Deployment names them
(``<deployment>-<template hash>-<suffix>``), so ``label_replace`` on ``pod`` recovers the
deployment on a real cluster and here alike. A new pod appears when ``replicas_ready`` grows,
the newest pod goes when it shrinks, and a new ``deploy_version`` replaces every pod; a new
pod's counters start at zero, as a new container's do. The service's counter increments
since the previous frame are split evenly over its ready pods (with no ready pod they are
lost, as nothing would report them).

A value that is missing in the frame (NaN) is not exported: its series is absent from that
scrape, so Prometheus marks it stale and a query for it comes back empty, never zero.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from envs.core.telemetry import LATENCY_BUCKETS_S, Telemetry

MIB = 2**20
"""Bytes per ``memory_*_mb`` unit of the simulator (MiB, as Kubernetes' ``Mi``)."""

_POD_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
"""Characters Kubernetes uses for generated name suffixes."""

HTTP_CODES: dict[str, str] = {"completed": "200", "failed": "500", "dropped": "503"}
"""Telemetry counter -> HTTP status code of ``http_requests_total``."""


class Kind(StrEnum):
    """Prometheus metric type."""

    counter = "counter"
    gauge = "gauge"
    histogram = "histogram"


Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    """One metric family at one scrape.

    Attributes:
        name: Family name (counters without ``_total``, histograms without suffixes).
        kind: Metric type.
        help: One-line description.
        samples: ``(sample name, labels, value)``; sample names carry ``_total``,
            ``_bucket``, ``_sum``, ``_count`` as the type requires.
    """

    name: str
    kind: Kind
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)


def _token(text: str, n: int) -> str:
    """``n`` characters of the pod-name alphabet, a deterministic function of ``text``."""
    digest = hashlib.sha256(text.encode()).digest()
    return "".join(_POD_ALPHABET[b % len(_POD_ALPHABET)] for b in digest[:n])


def format_le(bound: float) -> str:
    """The ``le`` label of a histogram bound (``+Inf`` for infinity)."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


@dataclass
class _Pod:
    name: str
    cpu_s: float = 0.0
    restarts: float = 0.0
    requests: dict[str, float] = field(default_factory=lambda: dict.fromkeys(HTTP_CODES, 0.0))
    buckets: np.ndarray = field(default_factory=lambda: np.zeros(len(LATENCY_BUCKETS_S)))
    latency_sum: float = 0.0


class ClusterMetrics:
    """Frames in, cluster-named metric families out; see the module docstring.

    Args:
        services: The services (= deployments), in the frames' row order.
        namespace: The ``namespace`` label of every series.
    """

    def __init__(self, services: tuple[str, ...], namespace: str = "opsworld") -> None:
        if not namespace:
            raise ValueError("namespace must be a non-empty label value")
        self.services = services
        self.namespace = namespace
        self._pods: list[list[_Pod]] = [[] for _ in services]
        self._version: list[float] = [math.nan] * len(services)
        self._born = 0
        self._last: Telemetry | None = None

    def pod_names(self, service: str) -> list[str]:
        """Names of the pods currently exported for ``service``."""
        return [p.name for p in self._pods[self.services.index(service)]]

    def _new_pod(self, s: int) -> _Pod:
        svc = self.services[s]
        template = _token(f"{self.namespace}/{svc}@{self._version[s]}", 10)
        self._born += 1
        return _Pod(f"{svc}-{template}-{_token(f'{svc}#{self._born}', 5)}")

    def _reconcile(self, s: int, frame: Telemetry) -> None:
        version = frame["deploy_version"][s]
        if not np.isnan(version) and version != self._version[s]:
            self._version[s] = float(version)
            n = len(self._pods[s])
            self._pods[s] = [self._new_pod(s) for _ in range(n)]
        ready = frame["replicas_ready"][s]
        if np.isnan(ready):
            return
        want = max(round(float(ready)), 0)
        pods = self._pods[s]
        while len(pods) < want:
            pods.append(self._new_pod(s))
        del pods[want:]

    def _accumulate(self, s: int, frame: Telemetry, prev: Telemetry | None) -> None:
        pods = self._pods[s]
        if not pods or prev is None:
            return
        n = len(pods)
        dt = frame.t - prev.t
        cpu = frame["cpu_usage"][s]
        d_restarts = frame["restarts"][s] - prev["restarts"][s]
        d_hist = frame.histogram[s] - prev.histogram[s]  # cumulative over le
        finished = float(frame.histogram[s, -1] - prev.histogram[s, -1])
        mean = frame["mean_latency"][s]
        for i, pod in enumerate(pods):
            if np.isfinite(cpu) and dt > 0:
                pod.cpu_s += float(cpu) * dt / n
            if np.isfinite(d_restarts) and d_restarts > 0 and i == 0:
                pod.restarts += float(d_restarts)
            for counter in HTTP_CODES:
                delta = frame.counter(counter)[s] - prev.counter(counter)[s]
                if np.isfinite(delta) and delta > 0:
                    pod.requests[counter] += float(delta) / n
            if np.all(np.isfinite(d_hist)):
                pod.buckets += d_hist / n
                if finished > 0 and np.isfinite(mean):
                    pod.latency_sum += float(mean) * finished / n

    def update(self, frame: Telemetry) -> list[Family]:
        """Advance to ``frame`` (time order) and return the families a scrape would see."""
        if frame.services != self.services:
            raise ValueError(
                f"frame services {frame.services} differ from the exporter's {self.services}"
            )
        prev = self._last
        if prev is not None and frame.t < prev.t:
            raise ValueError(f"frames out of order: t={frame.t} after t={prev.t}")
        for s in range(len(self.services)):
            # counts since the previous frame belong to the pods that served them
            self._accumulate(s, frame, prev)
            self._reconcile(s, frame)
        self._last = frame
        return self.families(frame)

    def families(self, frame: Telemetry) -> list[Family]:
        """The families for ``frame`` with the pods' current counters (no state change)."""
        ns = ("namespace", self.namespace)
        spec = Family("kube_deployment_spec_replicas", Kind.gauge, "Desired pods (KSM).")
        ready = Family(
            "kube_deployment_status_replicas_ready", Kind.gauge, "Ready pods of a deployment."
        )
        restarts = Family(
            "kube_pod_container_status_restarts",
            Kind.counter,
            "Container restarts (KSM).",
        )
        requests = Family(
            "kube_pod_container_resource_requests", Kind.gauge, "Container resource requests."
        )
        cpu = Family("container_cpu_usage_seconds", Kind.counter, "CPU time consumed (cAdvisor).")
        mem = Family(
            "container_memory_working_set_bytes", Kind.gauge, "Working set memory (cAdvisor)."
        )
        http = Family("http_requests", Kind.counter, "HTTP requests served, by status code.")
        hist = Family(
            "http_request_duration_seconds", Kind.histogram, "HTTP request latency, seconds."
        )
        for s, svc in enumerate(self.services):
            dep = (ns, ("deployment", svc))
            for fam, col in ((spec, "replicas_desired"), (ready, "replicas_ready")):
                v = frame[col][s]
                if np.isfinite(v):
                    fam.samples.append((fam.name, dep, float(v)))
            pods = self._pods[s]
            if not pods:
                continue
            n = len(pods)
            cpu_req = frame["cpu_request"][s]
            mem_req = frame["memory_request_mb"][s]
            mem_use = frame["memory_usage_mb"][s]
            for pod in pods:
                lab: Labels = (ns, ("pod", pod.name), ("container", svc), ("deployment", svc))
                restarts.samples.append((f"{restarts.name}_total", lab, pod.restarts))
                cpu.samples.append((f"{cpu.name}_total", lab, pod.cpu_s))
                if np.isfinite(mem_use):
                    mem.samples.append((mem.name, lab, float(mem_use) * MIB / n))
                if np.isfinite(cpu_req):
                    r = (*lab, ("resource", "cpu"), ("unit", "core"))
                    requests.samples.append((requests.name, r, float(cpu_req) / n))
                if np.isfinite(mem_req):
                    r = (*lab, ("resource", "memory"), ("unit", "byte"))
                    requests.samples.append((requests.name, r, float(mem_req) * MIB / n))
                for counter, code in HTTP_CODES.items():
                    http.samples.append(
                        (f"{http.name}_total", (*lab, ("code", code)), pod.requests[counter])
                    )
                for b, bound in enumerate(LATENCY_BUCKETS_S):
                    hist.samples.append(
                        (
                            f"{hist.name}_bucket",
                            (*lab, ("le", format_le(bound))),
                            float(pod.buckets[b]),
                        )
                    )
                hist.samples.append((f"{hist.name}_sum", lab, pod.latency_sum))
                hist.samples.append((f"{hist.name}_count", lab, float(pod.buckets[-1])))
        fams = [spec, ready, restarts, requests, cpu, mem, http, hist, *self._node_families(frame)]
        return [f for f in fams if f.samples]

    def _node_families(self, frame: Telemetry) -> list[Family]:
        ns = ("namespace", self.namespace)
        cond = Family("kube_node_status_condition", Kind.gauge, "Node conditions (KSM).")
        cost = Family("node_total_hourly_cost", Kind.gauge, "Node cost per hour (OpenCost).")
        ready = frame.cluster_value("nodes_ready")
        provisioning = frame.cluster_value("nodes_provisioning")
        if not np.isfinite(ready):
            return []
        n_ready = round(ready)
        n_all = n_ready + (round(provisioning) if np.isfinite(provisioning) else 0)
        rate = frame.cluster_value("cost_rate_per_hour")
        for i in range(n_all):
            node = (ns, ("node", f"{self.namespace}-node-{i}"))
            up = 1.0 if i < n_ready else 0.0
            cond.samples.append(
                (cond.name, (*node, ("condition", "Ready"), ("status", "true")), up)
            )
            if np.isfinite(rate) and n_all:
                cost.samples.append((cost.name, node, float(rate) / n_all))
        return [cond, cost]
