"""Former home of the control plane, now split into :mod:`envs.sim.control`.

Kept as an alias of :mod:`envs.sim.control`'s public names while other branches still
import from here; new code imports from :mod:`envs.sim.control`.
"""

from envs.sim.control import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    BACKOFF_RESET_S,
    ControlPlane,
    DataPlaneHooks,
    Node,
    NodeState,
    Pod,
    PodState,
    Version,
)

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
