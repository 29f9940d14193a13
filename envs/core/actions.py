"""Typed actions that a policy hands to the world, and what counts as disruptive.

The simulator applies the actions; shadow mode only records them. Every action is a small
frozen dataclass that names what an operator would do through the Kubernetes API. Checking
one against a scenario (service names, replica bounds) is
:func:`envs.scenarios.validate.validate_action`; it raises :class:`InvalidActionError`
naming what is wrong and what would be valid. :func:`is_disruptive` is the one definition
of a disruptive action that the env reward and the scorer share.
"""

from __future__ import annotations

from dataclasses import dataclass


class InvalidActionError(ValueError):
    """An action that cannot be applied, with the reason and the valid alternatives."""


@dataclass(frozen=True, slots=True)
class Noop:
    """Do nothing."""

    kind: str = "noop"


@dataclass(frozen=True, slots=True)
class Scale:
    """Set a service's desired replicas to ``replicas`` (clamped to nothing: must be valid)."""

    service: str
    replicas: int
    kind: str = "scale"


@dataclass(frozen=True, slots=True)
class Restart:
    """Rolling restart of a service's pods (``kubectl rollout restart``)."""

    service: str
    kind: str = "restart"


@dataclass(frozen=True, slots=True)
class Rollback:
    """Roll a service back to its previous deploy version (``kubectl rollout undo``)."""

    service: str
    kind: str = "rollback"


@dataclass(frozen=True, slots=True)
class ShedLoad:
    """Reject ``fraction`` of external traffic at the ingress (0 stops shedding)."""

    fraction: float
    kind: str = "shed_load"


@dataclass(frozen=True, slots=True)
class DrainNode:
    """Cordon node ``node`` (an index) and evict its pods (``kubectl drain``)."""

    node: int
    kind: str = "drain_node"


@dataclass(frozen=True, slots=True)
class SetHPATarget:
    """Set the CPU utilisation target of a service's Horizontal Pod Autoscaler.

    What an operator does to a live HPA object (``kubectl patch hpa ... averageUtilization``):
    ``cpu_target`` is the percent of the pods' CPU request the HPA steers toward.
    """

    service: str
    cpu_target: int
    kind: str = "set_hpa_target"


Action = Noop | Scale | Restart | Rollback | ShedLoad | DrainNode | SetHPATarget
ACTION_TYPES: tuple[type, ...] = (Noop, Scale, Restart, Rollback, ShedLoad, DrainNode, SetHPATarget)
"""The action classes, in the order of :data:`ACTION_KINDS`."""
ACTION_KINDS: tuple[str, ...] = (
    "noop",
    "scale",
    "restart",
    "rollback",
    "shed_load",
    "drain_node",
    "set_hpa_target",
)


def is_disruptive(action: Action, ready: float) -> bool:
    """Whether ``action`` takes serving capacity or traffic away, or replaces running pods.

    The one definition that the env reward and the scorer both count: ``Restart``,
    ``Rollback``, ``DrainNode``, ``ShedLoad`` with ``fraction > 0``, and ``Scale`` to fewer
    replicas than the service has ready (it terminates serving pods; a scale-down that only
    cancels pods not ready yet is not disruptive). ``Noop`` and ``SetHPATarget`` are not.

    Args:
        action: The action.
        ready: Ready replicas of a ``Scale``'s service when it was issued (ignored for the
            other actions).
    """
    if isinstance(action, Restart | Rollback | DrainNode):
        return True
    if isinstance(action, ShedLoad):
        return action.fraction > 0
    if isinstance(action, Scale):
        return action.replicas < ready
    return False
