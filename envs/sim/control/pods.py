"""Pods: the pod table and each pod's lifecycle (what a kubelet does).

Pods go ``pending -> starting -> ready -> terminating -> gone``. A bound pod starts (a
start-up time drawn from the pod spec's distribution) and becomes ready; a ready container
can die (a crash-loop fault, or an OOM kill when a leaking version outgrows its memory
limit) and then waits in ``backoff`` (CrashLoopBackOff: 10 s doubling to 300 s, reset after
10 min of running) before it starts again at half the pod start-up time (no scheduling, no
image pull). A terminating pod keeps its node for the grace period (none when it was lost).

The data plane hears of every change that affects serving through the
:class:`~envs.sim.control.objects.DataPlaneHooks`.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
import simpy

from envs.scenarios.schema import Distribution, Service
from envs.sim.control.nodes import Nodes
from envs.sim.control.objects import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    BACKOFF_RESET_S,
    DataPlaneHooks,
    Pod,
    PodState,
    Version,
)
from envs.sim.control.serving import ServingEffects


class Pods:
    """The pod table, per-service pod counts, and the pod lifecycle.

    Args:
        env: The simulation environment.
        specs: The scenario's services (pod specs).
        rng: The control plane's random stream (start-up times).
        hooks: The data plane.

    :meth:`attach` connects the scheduler, the serving effects and the deployments'
    versions before first use.
    """

    def __init__(
        self,
        env: simpy.Environment,
        specs: Sequence[Service],
        rng: np.random.Generator,
        hooks: DataPlaneHooks,
    ) -> None:
        n = len(specs)
        self.env = env
        self.specs = specs
        self.rng = rng
        self.hooks = hooks
        self.pods: dict[int, Pod] = {}
        self.by_service: list[set[int]] = [set() for _ in range(n)]
        self._next_uid = 0
        # per-service live counts, kept up to date on every transition
        self.ready = np.zeros(n, dtype=np.int64)
        self.starting = np.zeros(n, dtype=np.int64)
        self.restarts = np.zeros(n, dtype=np.int64)
        self.oom_kills = np.zeros(n, dtype=np.int64)

    def attach(
        self, nodes: Nodes, serving: ServingEffects, versions: Sequence[Sequence[Version]]
    ) -> None:
        """Connect the scheduler, the serving effects and the versions (by service).

        The scheduler and the serving effects read this pod table, and the deployments
        create pods through it, so these are connected after construction.
        """
        self.nodes = nodes
        self.serving = serving
        self.versions = versions

    # ------------------------------------------------------------------ table
    def create(self, s: int, template: tuple[int, int]) -> Pod:
        """A new pending pod of service ``s`` from ``template``; it waits for a node."""
        pod = Pod(self._next_uid, s, template, self.env.now, pending_since=self.env.now)
        self._next_uid += 1
        self.pods[pod.uid] = pod
        self.by_service[s].add(pod.uid)
        self.nodes.enqueue(pod)
        return pod

    def _forget(self, pod: Pod) -> None:
        self.by_service[pod.service].discard(pod.uid)
        del self.pods[pod.uid]

    def live(self, s: int) -> list[Pod]:
        """Pods of service ``s`` that are not terminating, in uid order."""
        return [
            self.pods[u]
            for u in sorted(self.by_service[s])
            if self.pods[u].state not in (PodState.TERMINATING, PodState.GONE)
        ]

    def ready_pods(self, s: int) -> list[Pod]:
        """Ready pods of service ``s`` in uid order."""
        return [
            self.pods[u] for u in sorted(self.by_service[s]) if self.pods[u].state == PodState.READY
        ]

    def memory_mb(self, s: int) -> float:
        """Resident memory of service ``s``'s ready pods now (base plus any leak)."""
        spec = self.specs[s].pod
        now = self.env.now
        total = 0.0
        for u in self.by_service[s]:
            pod = self.pods[u]
            if pod.state == PodState.READY:
                leak = self.versions[s][pod.template[0]].leak_mb_per_s
                total += spec.memory_base_mb + leak * (now - pod.started_t)
        return total

    def set_state(self, pod: Pod, state: PodState) -> None:
        """Move ``pod`` to ``state``, keeping the counts; stale timers of the pod expire."""
        old = pod.state
        s = pod.service
        if old == PodState.READY:
            self.ready[s] -= 1
        elif old == PodState.STARTING:
            self.starting[s] -= 1
        if state == PodState.READY:
            self.ready[s] += 1
        elif state == PodState.STARTING:
            self.starting[s] += 1
        pod.state = state
        pod.epoch += 1

    # ------------------------------------------------------------------ starting
    def schedule(self) -> None:
        """Run the scheduler; start every pod it binds."""
        self.nodes.schedule(self._start_bound)

    def _start_bound(self, pod: Pod) -> None:
        self.start(pod, self.specs[pod.service].pod.startup)

    def _sample(self, d: Distribution) -> float:
        if d.cv == 0:
            return d.mean
        if d.kind == "lognormal":
            s2 = math.log1p(d.cv * d.cv)
            return float(d.mean * math.exp(self.rng.normal(-s2 / 2, math.sqrt(s2))))
        shape = 1.0 / (d.cv * d.cv)
        return float(self.rng.gamma(shape, d.mean / shape))

    def start(self, pod: Pod, startup: Distribution) -> None:
        """Start ``pod``'s container; it becomes ready after a draw from ``startup``."""
        self.set_state(pod, PodState.STARTING)
        self.env.process(self._become_ready(pod, pod.epoch, self._sample(startup)))

    def _become_ready(self, pod: Pod, epoch: int, delay: float) -> Generator[Any, Any, None]:
        yield self.env.timeout(delay)
        if pod.epoch != epoch or pod.state != PodState.STARTING:
            return
        self.hooks.before_change()
        self.set_state(pod, PodState.READY)
        pod.started_t = self.env.now
        self.serving.recompute()
        self.hooks.capacity_changed()
        self._arm_container(pod)

    # ------------------------------------------------------------------ container death
    def _arm_container(self, pod: Pod) -> None:
        """Schedule the death of a freshly started container: OOM kill or crash loop."""
        v = self.versions[pod.service][pod.template[0]]
        spec = self.specs[pod.service].pod
        limit = v.memory_limit_mb if v.memory_limit_mb is not None else spec.memory_limit_mb
        oom_in: float | None = None
        if limit <= spec.memory_base_mb:
            oom_in = 1.0  # cannot even start within its limit
        elif v.leak_mb_per_s > 0:
            oom_in = (limit - spec.memory_base_mb) / v.leak_mb_per_s
        crash_in = pod.crash_loop_s
        if oom_in is not None and (crash_in is None or oom_in <= crash_in):
            self.env.process(self._die_after(pod, pod.epoch, oom_in, oom=True))
        elif crash_in is not None:
            self.env.process(self._die_after(pod, pod.epoch, crash_in, oom=False))

    def _die_after(
        self, pod: Pod, epoch: int, delay: float, oom: bool
    ) -> Generator[Any, Any, None]:
        yield self.env.timeout(delay)
        if pod.epoch != epoch or pod.state != PodState.READY:
            return
        if oom:
            self.oom_kills[pod.service] += 1
        self.crash(pod)

    def crash(self, pod: Pod) -> None:
        """The pod's container dies (crash or OOM kill); it restarts under backoff."""
        if pod.state not in (PodState.READY, PodState.STARTING):
            return
        self.hooks.before_change()
        was_ready = pod.state == PodState.READY
        if was_ready:
            self.hooks.pods_lost(pod.service, 1.0 / max(int(self.ready[pod.service]), 1))
        if self.env.now - pod.started_t >= BACKOFF_RESET_S:
            pod.backoff_s = 0.0
        pod.backoff_s = (
            BACKOFF_INITIAL_S if pod.backoff_s == 0 else min(2 * pod.backoff_s, BACKOFF_MAX_S)
        )
        pod.restarts += 1
        self.restarts[pod.service] += 1
        self.set_state(pod, PodState.BACKOFF)
        self.env.process(self._restart_after(pod, pod.epoch, pod.backoff_s))
        self.serving.recompute()
        self.hooks.capacity_changed()

    def _restart_after(self, pod: Pod, epoch: int, delay: float) -> Generator[Any, Any, None]:
        yield self.env.timeout(delay)
        if pod.epoch != epoch or pod.state != PodState.BACKOFF:
            return
        spec = self.specs[pod.service].pod.startup
        # a container restart skips scheduling and image pull: half the pod start-up time
        self.start(pod, Distribution(mean=spec.mean * 0.5, cv=spec.cv, kind=spec.kind))

    # ------------------------------------------------------------------ termination
    def terminate(self, pod: Pod, lost: bool) -> None:
        """Delete ``pod``: at once when pending; else after its grace period (none if lost).

        ``lost``: the pod died with its node, and the requests in service on it are lost.
        """
        if pod.state in (PodState.TERMINATING, PodState.GONE):
            return
        self.hooks.before_change()
        if pod.state == PodState.PENDING:
            self.nodes.dequeue(pod)
            self.set_state(pod, PodState.GONE)
            self._forget(pod)
            return
        if lost and pod.state == PodState.READY:
            self.hooks.pods_lost(pod.service, 1.0 / max(int(self.ready[pod.service]), 1))
        self.set_state(pod, PodState.TERMINATING)
        self.serving.recompute()
        self.hooks.capacity_changed()
        grace = 0.0 if lost else self.specs[pod.service].pod.termination_grace_s
        self.env.process(self._finish_termination(pod, grace))

    def _finish_termination(self, pod: Pod, grace: float) -> Generator[Any, Any, None]:
        if grace > 0:
            yield self.env.timeout(grace)
        self.nodes.unbind(pod)
        self.set_state(pod, PodState.GONE)
        self._forget(pod)
        self.schedule()
