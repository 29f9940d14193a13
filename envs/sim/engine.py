"""What both engines share: the SimPy environment, seeding, the control plane, scrapes, SLOs.

An engine owns one :class:`simpy.Environment`. All randomness comes from one
:class:`numpy.random.SeedSequence` made from the scenario seed, split into independent
streams for traffic, the control plane and the data plane, so traffic is the same at both
fidelities and the same seed gives the same trajectory.

Subclasses implement the data plane: how requests are served between control-plane events,
and what a scrape reads from it (:meth:`Engine._read_data_plane`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np
import simpy

from envs.core.actions import Action
from envs.core.telemetry import (
    CLUSTER_FIELDS,
    COUNTER_FIELDS,
    FIELD_INDEX,
    LATENCY_BUCKETS_S,
    SERVICE_FIELDS,
    Telemetry,
)
from envs.scenarios.schema import Scenario
from envs.sim.cluster import ControlPlane
from envs.sim.faults import FaultInjector, traffic_with_faults
from envs.sim.traffic import TrafficModel

_F = FIELD_INDEX
_EPS = 1e-9


@dataclass
class DataPlaneReading:
    """What an engine's data plane reports at a scrape (per-service arrays, shape ``(S,)``).

    ``counters`` are cumulative; ``hist_delta``, ``own_busy_s`` are for the interval since
    the previous scrape; latency statistics describe attempts that finished (completed or
    failed, not dropped) in the interval and are NaN where none did.
    """

    counters: np.ndarray  # (S, 4) arrived, completed, failed, dropped
    in_flight: np.ndarray
    backlog: np.ndarray
    own_busy_s: np.ndarray
    p50: np.ndarray
    p95: np.ndarray
    p99: np.ndarray
    mean_latency: np.ndarray
    hist_delta: np.ndarray  # (S, B) per-bucket (non-cumulative) counts


class Engine(abc.ABC):
    """Base engine; see the module docstring."""

    fidelity: str = ""

    def __init__(self, scenario: Scenario) -> None:
        self.sc = scenario
        self.env = simpy.Environment()
        seq = np.random.SeedSequence(scenario.seed)
        traffic_seq, control_seq, data_seq, fault_seq = seq.spawn(4)
        self.traffic = TrafficModel(
            traffic_with_faults(scenario), scenario.horizon_s, np.random.default_rng(traffic_seq)
        )
        self.fault_rng = np.random.default_rng(fault_seq)
        self.control_rng = np.random.default_rng(control_seq)
        self.data_rng = np.random.default_rng(data_seq)
        self.names: tuple[str, ...] = tuple(scenario.service_names)
        self.n = len(self.names)
        self.entry = self.names.index(scenario.topology.entry)
        specs = scenario.topology.services
        self.concurrency = np.array([s.pod.concurrency for s in specs], dtype=np.float64)
        self.cpu_req = np.array([s.pod.cpu_request for s in specs])
        self.cpu_idle = np.array([s.pod.cpu_idle for s in specs])
        self.cpu_full = np.array([s.pod.full_load_cores for s in specs])
        self.mem_req = np.array([s.pod.memory_request_mb for s in specs])
        self.mem_base = np.array([s.pod.memory_base_mb for s in specs])
        self.mem_per_req = np.array([s.pod.memory_per_request_mb for s in specs])
        slos = scenario.effective_slos()
        self.slo_p99 = np.array(
            [slos[n].p99_latency_s if n in slos else np.nan for n in self.names]
        )
        self.slo_err = np.array([slos[n].error_rate if n in slos else np.nan for n in self.names])
        self.edge_faults: dict[tuple[int, int], tuple[float, float]] = {}
        """Degraded call edges ``(src, dst) -> (loss, delay_s)`` (network faults)."""
        self.violation_s = np.zeros(self.n)
        self.hist_cum = np.zeros((self.n, len(LATENCY_BUCKETS_S)))
        self._prev_counters = np.zeros((self.n, len(COUNTER_FIELDS)))
        self._last_scrape = 0.0
        self._next_scrape = 0.0
        self.cp = ControlPlane(self.env, scenario, self.control_rng, self)
        self.faults = FaultInjector(self)

    # ------------------------------------------------------------------ hooks
    @abc.abstractmethod
    def before_change(self) -> None:
        """Bring the data plane up to ``env.now`` before the control plane changes."""

    @abc.abstractmethod
    def capacity_changed(self) -> None:
        """Re-read ready pods, versions and shedding from the control plane."""

    @abc.abstractmethod
    def pods_lost(self, service: int, lost_fraction: float) -> None:
        """A ready pod died: fail ``lost_fraction`` of the requests in service there."""

    @abc.abstractmethod
    def set_call_policy(self, service: int, timeout_s: float | None, retries: int) -> None:
        """Callers of ``service`` use this timeout and retry count from now on."""

    @abc.abstractmethod
    def _start_data_plane(self) -> None:
        """Start arrival processes (called once, at t = 0)."""

    @abc.abstractmethod
    def _read_data_plane(self) -> DataPlaneReading:
        """Bring the data plane to now and read it for a scrape."""

    # ------------------------------------------------------------------ running
    @property
    def now(self) -> float:
        """Simulated time, seconds."""
        return float(self.env.now)

    def start(self) -> Telemetry:
        """Start the data plane and return the frame at t = 0."""
        self._start_data_plane()
        self.capacity_changed()
        frame = self._scrape()
        self._next_scrape = self.sc.scrape_interval_s
        return frame

    def advance(self, actions: list[Action]) -> list[Telemetry]:
        """Apply ``actions``, run one decision interval, return the frames scraped."""
        self.cp.apply(actions)
        target = min(self.now + self.sc.decision_interval_s, self.sc.horizon_s)
        frames = []
        while self._next_scrape <= target + _EPS:
            if self._next_scrape > self.env.now:
                self.env.run(until=self._next_scrape)
            frames.append(self._scrape())
            self._next_scrape += self.sc.scrape_interval_s
        if target > self.env.now + _EPS:
            self.env.run(until=target)
        return frames

    # ------------------------------------------------------------------ scraping
    def _scrape(self) -> Telemetry:
        now = self.now
        dt = now - self._last_scrape
        r = self._read_data_plane()
        cp = self.cp
        ready = cp.ready.astype(np.float64)
        v = np.full((self.n, len(SERVICE_FIELDS)), np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = r.counters - self._prev_counters
            finished = d[:, 1] + d[:, 2] + d[:, 3]
            err = np.where(finished > 0, (d[:, 2] + d[:, 3]) / finished, np.nan)
            if dt > 0:
                v[:, _F["rps"]] = d[:, 0] / dt
                v[:, _F["throughput"]] = d[:, 1] / dt
                busy = r.own_busy_s / dt
                usage = ready * self.cpu_idle + busy * (self.cpu_full - self.cpu_idle) / (
                    self.concurrency
                )
                v[:, _F["cpu_usage"]] = usage
                v[:, _F["cpu_util"]] = np.where(ready > 0, usage / (ready * self.cpu_req), np.nan)
            v[:, _F["error_rate"]] = err
            v[:, _F["error_budget_burn"]] = err / self.slo_err
        v[:, _F["p50"]] = r.p50
        v[:, _F["p95"]] = r.p95
        v[:, _F["p99"]] = r.p99
        v[:, _F["mean_latency"]] = r.mean_latency
        v[:, _F["cpu_request"]] = ready * self.cpu_req
        if cp.leaking:
            resident = np.array([cp.memory_mb(s) for s in range(self.n)])
        else:
            resident = ready * self.mem_base
        v[:, _F["memory_usage_mb"]] = np.where(
            ready > 0, resident + self.mem_per_req * r.in_flight, np.nan
        )
        v[:, _F["memory_request_mb"]] = ready * self.mem_req
        v[:, _F["replicas_desired"]] = cp.desired
        v[:, _F["replicas_ready"]] = ready
        v[:, _F["replicas_pending"]] = cp.n_pending
        v[:, _F["replicas_starting"]] = cp.starting
        v[:, _F["restarts"]] = cp.restarts
        v[:, _F["oom_kills"]] = cp.oom_kills
        v[:, _F["backlog"]] = r.backlog
        v[:, _F["in_flight"]] = r.in_flight
        v[:, _F["deploy_version"]] = cp.current_version
        if dt > 0:
            with np.errstate(invalid="ignore"):
                bad = (v[:, _F["p99"]] > self.slo_p99) | (err > self.slo_err)
            self.violation_s += np.where(bad, dt, 0.0)
        v[:, _F["slo_violation_s"]] = np.where(np.isnan(self.slo_p99), np.nan, self.violation_s)
        self.hist_cum += r.hist_delta
        pod_s, node_h, cost = cp.accounting()
        ready_nodes, prov = cp.node_counts()
        cl = np.array(
            [
                ready_nodes,
                prov,
                len(cp.pending),
                cp.cost_rate,
                cost,
                pod_s,
                node_h,
                cp.shed_fraction,
                cp.allocated_cost(),
            ],
            dtype=np.float64,
        )
        assert cl.shape == (len(CLUSTER_FIELDS),)
        self._prev_counters = r.counters.copy()
        self._last_scrape = now
        frame = Telemetry(
            t=now,
            services=self.names,
            values=v,
            mask=~np.isnan(v),
            counters=r.counters.copy(),
            in_flight=r.in_flight.copy(),
            histogram=np.cumsum(self.hist_cum, axis=1),
            cluster=cl,
            cluster_mask=np.ones(len(CLUSTER_FIELDS), dtype=bool),
        )
        if not self.faults.faults:
            return frame
        self.faults.poll()
        return self.faults.observe(frame)


def make_engine(scenario: Scenario) -> Engine:
    """The engine for ``scenario.fidelity``."""
    if scenario.fidelity == "fluid":
        from envs.sim.fluid import FluidEngine

        return FluidEngine(scenario)
    if scenario.fidelity == "request":
        from envs.sim.request import RequestEngine

        return RequestEngine(scenario)
    raise ValueError(f"fidelity must be 'fluid' or 'request', got {scenario.fidelity!r}")
