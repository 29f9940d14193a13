"""The simulated Kubernetes control plane, one concept per module (see :mod:`.plane`)."""

from envs.sim.control.objects import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    BACKOFF_RESET_S,
    DataPlaneHooks,
    Node,
    NodeState,
    Pod,
    PodState,
    Version,
)
from envs.sim.control.plane import ControlPlane

__all__ = [
    "BACKOFF_INITIAL_S",
    "BACKOFF_MAX_S",
    "BACKOFF_RESET_S",
    "ControlPlane",
    "DataPlaneHooks",
    "Node",
    "NodeState",
    "Pod",
    "PodState",
    "Version",
]
