"""The simulator as a live cluster: a Prometheus target serving ``/metrics`` in wall-clock time.

:class:`LiveSimulation` runs a :class:`~envs.sim.simulator.Simulator` under a controller (any
:class:`~envs.core.policy.Policy`; the entry point ``opsworld exporter`` passes the Kubernetes
HPA by default) in a background thread. The simulation computes each decision interval ahead
and *publishes* each frame when the wall clock reaches ``start + frame.t / speed``; a scrape
of ``/metrics`` returns the series of the latest published frame under the names a real
cluster has (:mod:`envs.live.cluster_metrics`), so the same PromQL works on both. Faults of
the scenario (the incident catalog) play out as the simulation reaches them.

Prometheus stamps samples at scrape time, so rates come out per *wall* second: with
``speed != 1`` a ``rate()`` is ``speed`` times the simulated rate. Accelerated history goes
through OpenMetrics backfill instead (:mod:`envs.live.openmetrics`).

Besides the cluster series, the exporter serves ``opsworld_exporter_simulated_seconds`` (the
simulated time of the frame on show) and ``opsworld_exporter_info{scenario,seed,fidelity}``.
At the horizon the last frame stays on show (counters stop growing). Binds 127.0.0.1 unless
told otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric

from envs.core.policy import Policy
from envs.core.telemetry import Telemetry
from envs.live.cluster_metrics import ClusterMetrics, Family
from envs.sim.simulator import Simulator


@dataclass(frozen=True)
class Published:
    """One frame put on show: its wall-clock time (``time.time()``) and the frame."""

    wall: float
    frame: Telemetry


def to_metric(fam: Family) -> Metric:
    """A :class:`Family` as a prometheus_client metric (samples kept as they are)."""
    metric = Metric(fam.name, fam.help, fam.kind.value)
    for name, labels, value in fam.samples:
        metric.add_sample(name, dict(labels), value)
    return metric


class LiveSimulation:
    """A simulator run in wall-clock time behind a prometheus_client collector.

    Args:
        sim: The simulator (reset by :meth:`start`).
        controller: Decides at every decision point from the latest frame.
        speed: Simulated seconds per wall second (> 0).
        namespace: The ``namespace`` label of every series.
        clock: Wall clock (seconds); ``time.time`` by default.
        sleep: How to wait (seconds); ``time.sleep`` by default.
    """

    def __init__(
        self,
        sim: Simulator,
        controller: Policy,
        speed: float = 1.0,
        namespace: str = "opsworld",
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0 (simulated seconds per wall second), got {speed}")
        self.sim = sim
        self.controller = controller
        self.speed = float(speed)
        self.namespace = namespace
        self._clock = clock
        self._sleep = sleep
        self._metrics = ClusterMetrics(sim.services, namespace)
        self._lock = threading.Lock()
        self._families: list[Family] = []
        self._current: Telemetry | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.history: list[Published] = []
        """Every frame published so far, in order (for tests and reports)."""
        self.error: BaseException | None = None
        """What stopped the simulation thread early, if anything."""
        self.t0: float | None = None
        """Wall time of simulated ``t = 0``."""

    # -- the simulation thread ---------------------------------------------------------------
    def _publish(self, frame: Telemetry) -> None:
        families = self._metrics.update(frame)
        with self._lock:
            self._families = families
            self._current = frame
            self.history.append(Published(self._clock(), frame))

    def _wait_until(self, wall: float) -> bool:
        """Sleep until ``wall``; False when stopped meanwhile."""
        while not self._stop.is_set():
            left = wall - self._clock()
            if left <= 0:
                return True
            self._sleep(min(left, 0.25))
        return False

    def run(self) -> None:
        """Run to the horizon in wall-clock time (blocking; :meth:`start` runs it in a thread)."""
        try:
            frame = self.sim.reset()
            self.t0 = self._clock()
            self._publish(frame)
            state = self.controller.reset(1)
            while not self.sim.done and not self._stop.is_set():
                actions, state, _ = self.controller.act(frame, state)
                for frame in self.sim.step(actions):
                    if not self._wait_until(self.t0 + frame.t / self.speed):
                        return
                    self._publish(frame)
        except BaseException as err:  # kept for the caller; the server keeps serving
            self.error = err
            raise

    def start(self) -> LiveSimulation:
        """Start :meth:`run` in a daemon thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("LiveSimulation already started")
        self._thread = threading.Thread(target=self.run, name="opsworld-exporter", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the simulation thread (the last frame stays on show)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def current(self) -> Telemetry | None:
        """The frame on show (None before the first)."""
        with self._lock:
            return self._current

    # -- the prometheus_client collector -----------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        """Yield the series of the frame on show (prometheus_client's collector protocol)."""
        with self._lock:
            families = list(self._families)
            frame = self._current
        for fam in families:
            yield to_metric(fam)
        sc = self.sim.scenario
        info = Metric("opsworld_exporter", "The simulated cluster behind this exporter.", "info")
        info.add_sample(
            "opsworld_exporter_info",
            {
                "namespace": self.namespace,
                "scenario": sc.name,
                "seed": str(sc.seed),
                "fidelity": sc.fidelity,
                "speed": f"{self.speed:g}",
            },
            1.0,
        )
        yield info
        if frame is not None:
            simt = Metric(
                "opsworld_exporter_simulated_seconds",
                "Simulated time of the frame on show, seconds.",
                "gauge",
            )
            simt.add_sample("opsworld_exporter_simulated_seconds", {}, frame.t)
            yield simt


@dataclass
class ExporterServer:
    """A running exporter: the simulation, its registry and the HTTP server."""

    live: LiveSimulation
    registry: CollectorRegistry
    host: str
    port: int
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        """Base URL (``/metrics`` is under it)."""
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        """Stop the simulation and the HTTP server."""
        self.live.stop()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def serve(live: LiveSimulation, host: str = "127.0.0.1", port: int = 0) -> ExporterServer:
    """Start ``live`` and serve its ``/metrics`` on ``host:port`` (0 = a free port).

    Returns:
        The running server; call :meth:`ExporterServer.close` to stop it.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(live)
    server, thread = start_http_server(port, addr=host, registry=registry)
    live.start()
    return ExporterServer(live, registry, host, int(server.server_address[1]), server, thread)
