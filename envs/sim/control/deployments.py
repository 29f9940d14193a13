"""Deployments: desired replicas, versions, the ReplicaSet controller and rolling updates.

Each service is one Deployment. Its ReplicaSet controller creates or deletes pods toward
the desired count (deleting not-ready pods before ready ones, newest first). A new template
(a deploy, a restart, a rollback) is rolled out with maxSurge 25% / maxUnavailable 25%, as
Kubernetes does by default; while a rollout runs it owns the pod count.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from typing import Any

import simpy

from envs.scenarios.schema import Service
from envs.sim.control.objects import PodState, Version
from envs.sim.control.pods import Pods

ROLLOUT_POLL_S = 1.0
"""How often a rollout re-examines its pods."""


class Deployments:
    """The services' Deployments (lists indexed by service).

    Args:
        env: The simulation environment.
        specs: The scenario's services (initial replicas).
        pods: The pod table and lifecycle pods are created and deleted through.

    Attributes:
        desired: Desired replicas (``spec.replicas``).
        versions: Every version deployed so far, by version number.
        current_version: The version of the current template.
        restart_gen: Bumped by a rolling restart (part of the template).
        history: Earlier versions, most recent last (what a rollback returns to).
        rolling: Whether a rollout is in progress.
        leaking: True once any version that leaks memory was deployed.
    """

    def __init__(self, env: simpy.Environment, specs: Sequence[Service], pods: Pods) -> None:
        n = len(specs)
        self.env = env
        self.pods = pods
        self.desired = [s.replicas.initial for s in specs]
        self.versions: list[list[Version]] = [[Version(0)] for _ in range(n)]
        self.current_version = [0] * n
        self.restart_gen = [0] * n
        self.history: list[list[int]] = [[] for _ in range(n)]
        self.rolling = [False] * n
        self.leaking = False

    def template(self, s: int) -> tuple[int, int]:
        """The current pod template of service ``s``: (version, restart generation)."""
        return (self.current_version[s], self.restart_gen[s])

    def running_version(self, s: int, version: int) -> bool:
        """Whether ``version`` of service ``s`` is still deployed or has live pods."""
        return self.current_version[s] == version or any(
            p.template[0] == version for p in self.pods.live(s)
        )

    # ------------------------------------------------------------------ ReplicaSet
    def reconcile(self, s: int) -> None:
        """ReplicaSet controller: create or delete pods of ``s`` toward the desired count."""
        if self.rolling[s]:
            return  # the rollout process owns the pod count while it runs
        live = self.pods.live(s)
        diff = self.desired[s] - len(live)
        if diff > 0:
            for _ in range(diff):
                self.pods.create(s, self.template(s))
            self.pods.schedule()
        elif diff < 0:
            # delete not-ready before ready, newest first (Kubernetes' ranking, simplified)
            ranked = sorted(live, key=lambda p: (p.state == PodState.READY, -p.uid))
            for pod in ranked[:-diff]:
                self.pods.terminate(pod, lost=False)

    # ------------------------------------------------------------------ rollouts
    def deploy(
        self,
        s: int,
        latency_factor: float = 1.0,
        error_rate: float = 0.0,
        leak_mb_per_s: float = 0.0,
        memory_limit_mb: float | None = None,
    ) -> int:
        """Roll out a new version of service ``s``; returns its version number."""
        v = Version(
            len(self.versions[s]), latency_factor, error_rate, leak_mb_per_s, memory_limit_mb
        )
        self.leaking = self.leaking or leak_mb_per_s > 0
        self.versions[s].append(v)
        self.history[s].append(self.current_version[s])
        self.current_version[s] = v.number
        self.begin_rollout(s)
        return v.number

    def restart(self, s: int) -> None:
        """Rolling restart (``kubectl rollout restart``): a new template, same version."""
        self.restart_gen[s] += 1
        self.begin_rollout(s)

    def rollback(self, s: int) -> None:
        """Return to the previous version (``kubectl rollout undo``), if there is one."""
        if self.history[s]:
            self.current_version[s] = self.history[s].pop()
            self.begin_rollout(s)

    def begin_rollout(self, s: int) -> None:
        """Start rolling ``s`` to its current template (no-op while a rollout runs)."""
        if not self.rolling[s]:
            self.rolling[s] = True
            self.env.process(self._rollout(s))

    def _rollout(self, s: int) -> Generator[Any, Any, None]:
        pods = self.pods
        while True:
            template = self.template(s)
            live = pods.live(s)
            old = [p for p in live if p.template != template]
            new = [p for p in live if p.template == template]
            want = self.desired[s]
            if not old and len(new) == want:
                break
            surge = max(1, math.ceil(0.25 * want))
            max_unavailable = math.floor(0.25 * want)
            # scale up the new set within the surge budget
            room = want + surge - len(live)
            for _ in range(max(0, min(room, want - len(new)))):
                pods.create(s, template)
            pods.schedule()
            # scale down old pods while enough pods stay ready
            ready_total = sum(1 for p in live if p.state == PodState.READY)
            min_ready = want - max_unavailable
            for pod in sorted(old, key=lambda p: (p.state == PodState.READY, -p.uid)):
                if pod.state != PodState.READY:
                    pods.terminate(pod, lost=False)
                elif ready_total - 1 >= min_ready:
                    ready_total -= 1
                    pods.terminate(pod, lost=False)
            if not old and len(new) > want:
                for pod in sorted(new, key=lambda p: (p.state == PodState.READY, -p.uid))[
                    : len(new) - want
                ]:
                    pods.terminate(pod, lost=False)
            yield self.env.timeout(ROLLOUT_POLL_S)
        self.rolling[s] = False
        self.reconcile(s)
