"""The Kubernetes HPA as a telemetry-only policy.

:class:`HPAPolicy` runs :class:`envs.kube.hpa.HPAController` (the exact ``autoscaling/v2``
algorithm) on the frames it is given and emits :class:`~envs.core.actions.Scale` where an
HPA changes its target's replica count. Its recurrent state is the controller's
:class:`~envs.kube.hpa.HPAState`. It imports nothing of the simulator, so the policy server
and shadow mode run it as they run a learned policy. The simulated control plane can also
run the same controller itself (a scenario's ``autoscaling.hpa``), as a cluster runs its
HPAs; see ``docs/baselines.md``.

The configuration and algorithm names are re-exported here for existing imports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from envs.core.actions import Action, Scale
from envs.kube.config import (
    HPABehavior,
    HPAConfig,
    ResourceMetric,
    ScaleDownRules,
    ScaleUpRules,
    ScalingPolicy,
)
from envs.kube.hpa import HPAController, HPAState, Reconciliation, ServiceState
from envs.scenarios.schema import Scenario

__all__ = [
    "HPABehavior",
    "HPAConfig",
    "HPAPolicy",
    "HPAState",
    "ResourceMetric",
    "ScaleDownRules",
    "ScaleUpRules",
    "ScalingPolicy",
    "replica_bounds",
]


def replica_bounds(scenario: Scenario) -> dict[str, tuple[int, int]]:
    """Per service, the ``[min, max]`` replicas of ``scenario`` (the HPAs' outer bounds)."""
    return {s.name: (s.replicas.min, s.replicas.max) for s in scenario.topology.services}


class HPAPolicy:
    """The Kubernetes HPA as a :class:`~envs.core.policy.Policy`; see the module docstring.

    It syncs at the first frame and then whenever ``sync_period_s`` has passed: with the
    default 15 s decision interval and sync period, at every decision; with a decision
    interval that is a multiple of the sync period, also at every decision (the policy
    cannot act between decisions); with a longer sync period, at every k-th decision.

    Args:
        config: The HPA configuration.
        scenario_or_services: The scenario (replica bounds default to its services'
            ``replicas.min``/``max``, and are checked against them) or the service names
            (then ``config.max_replicas`` is required).

    Raises:
        ValueError: Unknown services, or bounds missing or outside the scenario's.
    """

    name = "hpa"

    def __init__(
        self, config: HPAConfig | None, scenario_or_services: Scenario | Sequence[str]
    ) -> None:
        if isinstance(scenario_or_services, Scenario):
            names: list[str] = list(scenario_or_services.service_names)
            bounds: dict[str, tuple[int, int]] | None = replica_bounds(scenario_or_services)
        else:
            names, bounds = [str(n) for n in scenario_or_services], None
        if not names:
            raise ValueError("HPAPolicy needs the scenario or the service names")
        self.controller = HPAController(config, names, bounds)
        self.config = self.controller.config
        self.services = self.controller.services
        self.bounds = self.controller.bounds

    def reset(self, n: int = 1) -> HPAState | tuple[HPAState, ...]:
        """Fresh state: one :class:`HPAState`, or a tuple of ``n`` for ``n > 1`` streams."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        fresh = self.controller.fresh_state()
        return fresh if n == 1 else tuple(fresh for _ in range(n))

    def act(
        self, obs: Any, state: Any, targets: Mapping[str, int] | None = None
    ) -> tuple[list[Action], HPAState, dict[str, Any]]:
        """One sync (when due): ``Scale`` for every service whose count should change.

        ``targets`` (optional) sets the CPU utilisation target of some services' HPAs for
        this sync, as editing ``spec.metrics`` between syncs would: the histories
        (recommendations, scale events) carry over unchanged.

        ``info["hpa"]`` maps each service to :meth:`Reconciliation.as_dict` (current,
        desired, raw and stabilised recommendation, each metric's utilisation and ratio,
        the limiting reason); ``info["hpa_synced"]`` says whether this frame was a sync.
        """
        if not isinstance(state, HPAState):
            raise TypeError(
                f"HPAPolicy.act needs the HPAState from reset(1), got {type(state).__name__}"
            )
        out = self.controller.sync(obs, state, targets)
        actions: list[Action] = [Scale(name, replicas) for name, replicas in out.scales]
        return actions, out.state, {"hpa_synced": out.synced, "hpa": out.report}

    def reconcile_service(
        self, obs: Any, name: str, state: ServiceState, cpu_target: int | None = None
    ) -> tuple[Reconciliation | None, ServiceState]:
        """One service's reconcile; see :meth:`envs.kube.hpa.HPAController.reconcile_service`."""
        return self.controller.reconcile_service(obs, name, state, cpu_target)
