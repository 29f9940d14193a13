"""Typed actions that a policy hands to the simulator (or, in shadow mode, only records).

Every action is a small frozen dataclass. :func:`validate_action` checks one against a
scenario and raises :class:`InvalidActionError` naming what is wrong and what would be valid.
"""

from __future__ import annotations

from dataclasses import dataclass

from envs.scenarios.schema import Scenario


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


Action = Noop | Scale | Restart | Rollback | ShedLoad | DrainNode
ACTION_KINDS: tuple[str, ...] = ("noop", "scale", "restart", "rollback", "shed_load", "drain_node")


def validate_action(action: object, scenario: Scenario) -> Action:
    """Return ``action`` if it is valid for ``scenario``; raise :class:`InvalidActionError`.

    Node indices and rollback history depend on the running cluster and are checked by
    the simulator when the action is applied.
    """
    if not isinstance(action, Noop | Scale | Restart | Rollback | ShedLoad | DrainNode):
        raise InvalidActionError(
            f"not an action: {action!r}; use one of Noop, Scale, Restart, Rollback, "
            "ShedLoad, DrainNode from envs.sim.actions"
        )
    names = scenario.service_names
    if isinstance(action, Scale | Restart | Rollback) and action.service not in names:
        raise InvalidActionError(
            f"{action.kind}: unknown service {action.service!r}; one of {names}"
        )
    if isinstance(action, Scale):
        svc = scenario.topology.services[names.index(action.service)]
        if not isinstance(action.replicas, int) or isinstance(action.replicas, bool):
            raise InvalidActionError(f"scale.replicas must be an int, got {action.replicas!r}")
        lo, hi = svc.replicas.min, svc.replicas.max
        if not lo <= action.replicas <= hi:
            raise InvalidActionError(
                f"scale {action.service} to {action.replicas}: outside replicas "
                f"[min, max] = [{lo}, {hi}] of that service"
            )
    if isinstance(action, ShedLoad) and not 0.0 <= action.fraction <= 1.0:
        raise InvalidActionError(f"shed_load.fraction must be in [0, 1], got {action.fraction}")
    if isinstance(action, DrainNode) and (
        not isinstance(action.node, int) or isinstance(action.node, bool) or action.node < 0
    ):
        raise InvalidActionError(f"drain_node.node must be a node index >= 0, got {action.node}")
    return action
