"""Fault injection: the incident catalog made to happen inside a running engine.

Each fault spec of the scenario (``envs/scenarios/schema.py``) becomes one SimPy process
that starts the fault at ``at_s`` and, if the spec has a ``duration_s``, stops its cause
then. A fault's *cause* also ends when a mitigation removes it (a rollback replaces the bad
version, a restart replaces crash-looping pods, ...); :meth:`FaultInjector.poll` notices
that at every scrape. ``records`` keeps, per fault, its onset and the end of its cause:
the scorer's "fault active" windows. Whether the *symptoms* are gone is judged from the
SLOs, by the scorer.

Telemetry faults change only what is observed: :meth:`FaultInjector.observe` degrades each
frame's gauges (values and mask); counters and histograms stay the ground truth, which is
what scoring reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from envs.core.telemetry import FIELD_INDEX, Telemetry
from envs.scenarios.schema import (
    BadDeployFault,
    Burst,
    CpuHogFault,
    Fault,
    FlashCrowdFault,
    MemoryLeakFault,
    MisconfigurationFault,
    NetworkFault,
    NodeFailureFault,
    PodCrashFault,
    RetryStormFault,
    Scenario,
    SlowDependencyFault,
    TelemetryFault,
    Traffic,
)
from envs.sim.cluster import PodState

if TYPE_CHECKING:
    from envs.sim.engine import Engine

_NOISY = [
    FIELD_INDEX[f]
    for f in (
        "rps",
        "throughput",
        "p50",
        "p95",
        "p99",
        "mean_latency",
        "cpu_usage",
        "cpu_util",
        "memory_usage_mb",
    )
]


@dataclass
class FaultRecord:
    """When a fault started and when its cause ended (None: still there at the end)."""

    index: int
    kind: str
    target: str
    onset: float
    end: float | None = None
    started: bool = False


def traffic_with_faults(scenario: Scenario) -> Traffic:
    """The scenario's traffic with every flash crowd added as a burst."""
    bursts = list(scenario.traffic.bursts)
    for f in scenario.faults:
        if isinstance(f, FlashCrowdFault):
            duration = f.duration_s if f.duration_s is not None else scenario.horizon_s
            bursts.append(Burst(at_s=f.at_s, duration_s=duration, factor=f.factor, ramp_s=f.ramp_s))
    if len(bursts) == len(scenario.traffic.bursts):
        return scenario.traffic
    return scenario.traffic.model_copy(update={"bursts": bursts})


def _target(f: Fault) -> str:
    for attr in ("service", "src"):
        v = getattr(f, attr, None)
        if v:
            return str(v) + (f"->{f.dst}" if isinstance(f, NetworkFault) else "")
    node = getattr(f, "node", None)
    return f"node{node}" if node is not None else "cluster"


class FaultInjector:
    """Starts, stops and tracks the faults of one engine; see the module docstring."""

    def __init__(self, engine: Engine) -> None:
        self.eng = engine
        self.faults = list(engine.sc.faults)
        self.records = [
            FaultRecord(i, f.kind, _target(f), f.at_s) for i, f in enumerate(self.faults)
        ]
        self._state: list[dict[str, Any]] = [{} for _ in self.faults]
        self._history: deque[np.ndarray] = deque(maxlen=21)
        self._rng = engine.fault_rng
        for i in range(len(self.faults)):
            engine.env.process(self._run(i))

    # ------------------------------------------------------------------ lifecycle
    def _run(self, i: int) -> Generator[Any, Any, None]:
        f = self.faults[i]
        env = self.eng.env
        if f.at_s > env.now:
            yield env.timeout(f.at_s - env.now)
        self.records[i].started = True
        self._start(i)
        if isinstance(f, RetryStormFault):
            trigger = f.trigger_s if f.duration_s is None else min(f.trigger_s, f.duration_s)
            yield env.timeout(trigger)
            self._end_trigger(i)
            if f.duration_s is not None:
                if f.duration_s > trigger:
                    yield env.timeout(f.duration_s - trigger)
                self._stop(i)
        elif f.duration_s is not None:
            yield env.timeout(f.duration_s)
            self._stop(i)

    def _svc(self, name: str) -> int:
        return self.eng.names.index(name)

    def _start(self, i: int) -> None:
        f = self.faults[i]
        cp = self.eng.cp
        st = self._state[i]
        if isinstance(f, PodCrashFault):
            s = self._svc(f.service)
            victims = [p for p in cp.ready_pods(s)][: f.pods]
            st["pods"] = [p.uid for p in victims]
            for pod in victims:
                if f.crash_loop:
                    pod.crash_loop_s = f.run_s
                cp.crash(pod)
        elif isinstance(f, MemoryLeakFault):
            s = self._svc(f.service)
            st["version"] = cp.deploy(s, leak_mb_per_s=f.leak_mb_per_s)
        elif isinstance(f, BadDeployFault):
            s = self._svc(f.service)
            st["version"] = cp.deploy(s, latency_factor=f.latency_factor, error_rate=f.error_rate)
        elif isinstance(f, MisconfigurationFault):
            s = self._svc(f.service)
            spec = self.eng.sc.topology.services[s].pod
            if f.mode == "scale_to_zero":
                cp.desired[s] = 0
                cp.reconcile(s)
            elif f.mode == "memory_limit":
                st["version"] = cp.deploy(s, memory_limit_mb=f.factor * spec.memory_base_mb)
            else:  # cpu_limit: throttled to factor x the request
                st["version"] = cp.deploy(s, latency_factor=1.0 / f.factor)
        elif isinstance(f, CpuHogFault):
            node = cp.nodes[f.node]
            node.slowdown *= f.slowdown
            cp.refresh()
        elif isinstance(f, SlowDependencyFault):
            s = self._svc(f.service)
            cp.service_slowdown[s] *= f.latency_factor
            cp.refresh()
        elif isinstance(f, RetryStormFault):
            s = self._svc(f.service)
            spec = self.eng.sc.topology.services[s].pod
            st["policy"] = (spec.timeout_s, spec.retries)
            self.eng.set_call_policy(s, f.timeout_s, f.retries)
            cp.service_slowdown[s] *= f.latency_factor
            cp.refresh()
        elif isinstance(f, NodeFailureFault):
            cp.fail_node(f.node)
        elif isinstance(f, NetworkFault):
            src, dst = self._svc(f.src), self._svc(f.dst)
            for pod in cp.live_pods(src):
                pod.bad_path = True
            self.eng.edge_faults[(src, dst)] = (f.loss, f.delay_s)
            cp.refresh()
        # flash crowds live in the traffic curve; telemetry faults in observe()

    def _end_trigger(self, i: int) -> None:
        f = self.faults[i]
        assert isinstance(f, RetryStormFault)
        cp = self.eng.cp
        cp.service_slowdown[self._svc(f.service)] /= f.latency_factor
        cp.refresh()

    def _stop(self, i: int) -> None:
        """The cause goes away by itself (end of ``duration_s``)."""
        f = self.faults[i]
        cp = self.eng.cp
        st = self._state[i]
        if self.records[i].end is None:
            self.records[i].end = self.eng.now
        if isinstance(f, PodCrashFault):
            for uid in st.get("pods", []):
                if uid in cp.pods:
                    cp.pods[uid].crash_loop_s = None
        elif isinstance(f, CpuHogFault):
            cp.nodes[f.node].slowdown /= f.slowdown
            cp.refresh()
        elif isinstance(f, SlowDependencyFault):
            cp.service_slowdown[self._svc(f.service)] /= f.latency_factor
            cp.refresh()
        elif isinstance(f, RetryStormFault):
            timeout, retries = st["policy"]
            self.eng.set_call_policy(self._svc(f.service), timeout, retries)
        elif isinstance(f, NetworkFault):
            src = self._svc(f.src)
            for pod in cp.live_pods(src):
                pod.bad_path = False
            self.eng.edge_faults.pop((src, self._svc(f.dst)), None)
            cp.refresh()
        # deploy-borne faults (leak, bad deploy, limits) persist until rolled back

    # ------------------------------------------------------------------ tracking
    def cause_active(self, i: int) -> bool:
        """Whether fault ``i``'s cause is still present (started and not removed)."""
        rec = self.records[i]
        if not rec.started or rec.end is not None:
            return False
        f = self.faults[i]
        cp = self.eng.cp
        st = self._state[i]
        if isinstance(f, PodCrashFault):
            if not f.crash_loop:
                return any(
                    uid in cp.pods and cp.pods[uid].state != PodState.READY for uid in st["pods"]
                )
            return any(uid in cp.pods for uid in st["pods"])
        if isinstance(f, MemoryLeakFault | BadDeployFault) or (
            isinstance(f, MisconfigurationFault) and f.mode != "scale_to_zero"
        ):
            return cp.running_version(self._svc(f.service), st["version"])
        if isinstance(f, MisconfigurationFault):
            s = self._svc(f.service)
            return cp.desired[s] == 0 or cp.ready[s] == 0
        if isinstance(f, CpuHogFault):
            return any(cp.pods[u].state == PodState.READY for u in cp.nodes[f.node].pods)
        if isinstance(f, NodeFailureFault):
            return any(int(cp.ready[s]) < cp.desired[s] for s in range(self.eng.n))
        if isinstance(f, NetworkFault):
            return any(p.bad_path for p in cp.live_pods(self._svc(f.src)))
        if isinstance(f, FlashCrowdFault | TelemetryFault):
            end = f.at_s + (f.duration_s if f.duration_s is not None else np.inf)
            return self.eng.now < end
        return True  # slow dependency, retry storm: until their duration ends, if any

    def poll(self) -> None:
        """Close the record of every fault whose cause is gone (called at each scrape)."""
        for i, rec in enumerate(self.records):
            if rec.started and rec.end is None and not self.cause_active(i):
                rec.end = self.eng.now

    def active(self) -> list[FaultRecord]:
        """Records of the faults whose cause is present now."""
        return [r for r in self.records if r.started and r.end is None]

    # ------------------------------------------------------------------ observation
    def observe(self, frame: Telemetry) -> Telemetry:
        """Degrade a frame's gauges by the telemetry faults active now."""
        now = self.eng.now
        self._history.append(frame.values)
        values = frame.values
        cluster = frame.cluster
        changed = False
        for f in self.faults:
            if not isinstance(f, TelemetryFault):
                continue
            end = f.at_s + (f.duration_s if f.duration_s is not None else np.inf)
            if not f.at_s <= now < end:
                continue
            if not changed:
                values = values.copy()
                changed = True
            if f.mode == "gap":
                values[:] = np.nan
                cluster = np.full_like(cluster, np.nan)
            elif f.mode == "delay":
                k = min(f.delay_scrapes, len(self._history) - 1)
                values[:] = self._history[-1 - k] if k > 0 else np.nan
            elif f.mode == "noise":
                s2 = np.log1p(f.noise_cv**2)
                shape = (values.shape[0], len(_NOISY))
                noise = np.exp(self._rng.normal(-s2 / 2, np.sqrt(s2), shape))
                values[:, _NOISY] = values[:, _NOISY] * noise
            elif f.mode == "missing_service" and f.service is not None:
                values[self._svc(f.service)] = np.nan
        if not changed:
            return frame
        return Telemetry(
            t=frame.t,
            services=frame.services,
            values=values,
            mask=~np.isnan(values),
            counters=frame.counters,
            in_flight=frame.in_flight,
            histogram=frame.histogram,
            cluster=cluster,
            cluster_mask=~np.isnan(cluster),
        )
