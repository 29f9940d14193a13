"""Actuation: checking the operator's actions and carrying them out after the API delay.

:meth:`Actuator.apply` checks every action first (all or none), then carries each out
``actuation_delay_s`` later (the API server and the controllers acting on the change):
``Scale`` sets the desired replicas, ``Restart`` and ``Rollback`` start a rollout,
``ShedLoad`` sets the ingress shedding fraction, ``DrainNode`` cordons and drains a node,
``SetHPATarget`` changes the CPU target of a service's HPA (``autoscaling.hpa``), which the
HPA uses from its next sync on.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import simpy

from envs.core.actions import (
    Action,
    DrainNode,
    InvalidActionError,
    Noop,
    Restart,
    Rollback,
    Scale,
    SetHPATarget,
    ShedLoad,
)
from envs.scenarios.schema import Scenario
from envs.scenarios.validate import validate_action
from envs.sim.control.autoscalers import HorizontalPodAutoscalers
from envs.sim.control.deployments import Deployments
from envs.sim.control.nodes import Nodes
from envs.sim.control.objects import NodeState


class Actuator:
    """Checks and carries out actions on the control plane.

    Args:
        env: The simulation environment.
        scenario: The scenario (service names, bounds, ``actuation_delay_s``).
        deployments: What ``Scale``, ``Restart`` and ``Rollback`` change.
        nodes: The nodes ``DrainNode`` names.
        drain: Drains a node (the control plane's :meth:`~ControlPlane.drain`).
        shed: Sets the ingress shedding fraction (telling the data plane).
        hpa: The control plane's HPAs (None: the scenario has none).
    """

    def __init__(
        self,
        env: simpy.Environment,
        scenario: Scenario,
        deployments: Deployments,
        nodes: Nodes,
        drain: Callable[[int], None],
        shed: Callable[[float], None],
        hpa: HorizontalPodAutoscalers | None = None,
    ) -> None:
        self.env = env
        self.sc = scenario
        self.deployments = deployments
        self.nodes = nodes
        self._drain = drain
        self._shed = shed
        self.hpa = hpa

    def check(self, actions: list[Action]) -> None:
        """Raise :class:`InvalidActionError` if any of ``actions`` cannot be applied now."""
        rollbacks: dict[str, int] = {}
        for action in actions:
            self._check_one(action, rollbacks)

    def apply(self, actions: list[Action]) -> None:
        """Check all ``actions``, then carry each out after the actuation delay (all or none)."""
        self.check(actions)
        for action in actions:
            if not isinstance(action, Noop):
                self.env.process(self._actuate(action))

    def _check_one(self, action: Action, rollbacks: dict[str, int]) -> None:
        validate_action(action, self.sc)
        if isinstance(action, Rollback):
            s = self.sc.service_names.index(action.service)
            rollbacks[action.service] = rollbacks.get(action.service, 0) + 1
            if len(self.deployments.history[s]) < rollbacks[action.service]:
                raise InvalidActionError(
                    f"rollback {action.service}: no previous revision to roll back to "
                    "(the service has not been deployed since the start)"
                )
        if isinstance(action, SetHPATarget):
            hpa = self.hpa
            if hpa is None or action.service not in hpa.services:
                scaled = [] if hpa is None else list(hpa.services)
                raise InvalidActionError(
                    f"set_hpa_target {action.service}: that service has no HPA (services with "
                    f"one: {scaled}); give the scenario an autoscaling.hpa section"
                )
            if not hpa.has_cpu_metric():
                raise InvalidActionError(
                    f"set_hpa_target {action.service}: the HPA has no cpu metric to retarget"
                )
        nodes = self.nodes.nodes
        if isinstance(action, DrainNode) and (
            action.node >= len(nodes)
            or nodes[action.node].state in (NodeState.GONE, NodeState.PROVISIONING)
        ):
            live = [n.index for n in nodes if n.state == NodeState.READY]
            raise InvalidActionError(
                f"drain_node {action.node}: no such ready node; ready nodes are {live}"
            )

    def _actuate(self, action: Action) -> Generator[Any, Any, None]:
        delay = self.sc.actuation_delay_s
        if delay > 0:
            yield self.env.timeout(delay)
        names = self.sc.service_names
        dep = self.deployments
        if isinstance(action, Scale):
            s = names.index(action.service)
            dep.desired[s] = action.replicas
            dep.reconcile(s)
        elif isinstance(action, Restart):
            dep.restart(names.index(action.service))
        elif isinstance(action, Rollback):
            dep.rollback(names.index(action.service))
        elif isinstance(action, ShedLoad):
            self._shed(action.fraction)
        elif isinstance(action, DrainNode):
            self._drain(action.node)
        elif isinstance(action, SetHPATarget) and self.hpa is not None:
            self.hpa.set_target(action.service, action.cpu_target)
