"""Checking a typed action against a scenario (service names, replica bounds, ranges).

The actions themselves live in :mod:`envs.core.actions`; what is valid depends on the
scenario, so the check lives here. Node indices and rollback history depend on the running
cluster and are checked by the simulator when the action is applied.
"""

from __future__ import annotations

from envs.core.actions import (
    ACTION_TYPES,
    Action,
    DrainNode,
    InvalidActionError,
    Restart,
    Rollback,
    Scale,
    SetHPATarget,
    ShedLoad,
)
from envs.scenarios.schema import Scenario


def validate_action(action: object, scenario: Scenario) -> Action:
    """Return ``action`` if it is valid for ``scenario``; raise :class:`InvalidActionError`.

    Node indices and rollback history depend on the running cluster and are checked by
    the simulator when the action is applied.
    """
    if not isinstance(action, ACTION_TYPES):
        raise InvalidActionError(
            f"not an action: {action!r}; use one of Noop, Scale, Restart, Rollback, "
            "ShedLoad, DrainNode, SetHPATarget from envs.core.actions"
        )
    names = scenario.service_names
    if isinstance(action, Scale | Restart | Rollback | SetHPATarget) and (
        action.service not in names
    ):
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
    if isinstance(action, SetHPATarget) and (
        not isinstance(action.cpu_target, int)
        or isinstance(action.cpu_target, bool)
        or not 1 <= action.cpu_target <= 100
    ):
        raise InvalidActionError(
            f"set_hpa_target.cpu_target must be an int percent in [1, 100], "
            f"got {action.cpu_target!r}"
        )
    return action  # type: ignore[return-value]
