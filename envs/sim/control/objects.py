"""The objects of the simulated control plane: pods, nodes, versions, and the data-plane hooks.

Plain data, shared by the control plane's parts (:mod:`envs.sim.control.pods`,
:mod:`~envs.sim.control.nodes`, :mod:`~envs.sim.control.deployments`, ...); no behaviour
beyond what a record needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

BACKOFF_INITIAL_S = 10.0
"""CrashLoopBackOff: the first restart delay."""
BACKOFF_MAX_S = 300.0
"""CrashLoopBackOff: the delay doubles up to this."""
BACKOFF_RESET_S = 600.0
"""CrashLoopBackOff: a container that ran this long starts over at the initial delay."""


class PodState(IntEnum):
    """Pod lifecycle states."""

    PENDING = 0
    STARTING = 1
    READY = 2
    BACKOFF = 3
    TERMINATING = 4
    GONE = 5


class NodeState(IntEnum):
    """Node lifecycle states."""

    PROVISIONING = 0
    READY = 1
    CORDONED = 2
    GONE = 3


@dataclass(frozen=True)
class Version:
    """A deployable version of a service: how it differs from the scenario's pod spec."""

    number: int
    latency_factor: float = 1.0
    error_rate: float = 0.0
    leak_mb_per_s: float = 0.0
    """Memory each container of this version leaks per second."""
    memory_limit_mb: float | None = None
    """Memory limit of this version's pods; None: the pod spec's."""


@dataclass(eq=False)
class Pod:
    """One pod. ``template`` is (version number, restart generation)."""

    uid: int
    service: int
    template: tuple[int, int]
    created_t: float
    state: PodState = PodState.PENDING
    node: int = -1
    restarts: int = 0
    backoff_s: float = 0.0
    started_t: float = 0.0
    pending_since: float = 0.0
    crash_loop_s: float | None = None
    """Set by a crash-loop fault: the container crashes this long after every start."""
    bad_path: bool = False
    """Set by a network fault: this pod's calls take the degraded path."""
    epoch: int = 0
    """Bumped on every state change; stale timers compare it and do nothing."""


@dataclass(eq=False)
class Node:
    """One node."""

    index: int
    cpu: float
    memory_mb: float
    state: NodeState = NodeState.PROVISIONING
    cpu_used: float = 0.0
    mem_used: float = 0.0
    pods: set[int] = field(default_factory=set)
    empty_since: float = 0.0
    slowdown: float = 1.0
    """Noisy-neighbour slowdown of the pods on this node (1: none)."""


class DataPlaneHooks(Protocol):
    """What the control plane tells the engine."""

    def before_change(self) -> None:
        """Called before any change that affects serving, at the current time."""

    def capacity_changed(self) -> None:
        """Called after ready pods, versions or shedding changed."""

    def pods_lost(self, service: int, lost_fraction: float) -> None:
        """A ready pod of ``service`` died: ``lost_fraction`` of its in-service work is lost."""
