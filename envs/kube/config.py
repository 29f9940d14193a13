"""Configuration of a Kubernetes Horizontal Pod Autoscaler (``autoscaling/v2``).

:class:`HPAConfig` holds what an ``HorizontalPodAutoscaler`` object (``spec.metrics``,
``spec.minReplicas``/``maxReplicas``, ``spec.behavior``) and the controller manager's flags
(``--horizontal-pod-autoscaler-*``) say. It is a pydantic model, so a scenario's
``autoscaling.hpa`` section and a policy's configuration validate the same way.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    """Base: unknown keys are errors, models are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ScalingPolicy(_Strict):
    """One ``HPAScalingPolicy``: at most ``value`` pods or percent per ``period_seconds``."""

    type: Literal["Pods", "Percent"]
    value: Annotated[int, Field(gt=0)]
    period_seconds: Annotated[int, Field(gt=0, le=1800)]


class _ScalingRules(_Strict):
    """``HPAScalingRules`` of one direction (see the subclasses for the defaults)."""

    stabilization_window_seconds: Annotated[int, Field(ge=0, le=3600)]
    select_policy: Literal["Max", "Min", "Disabled"] = "Max"
    """``Max``: the policy allowing the largest change; ``Min``: the smallest; ``Disabled``."""
    policies: Annotated[tuple[ScalingPolicy, ...], Field(min_length=1)]

    @property
    def longest_period_s(self) -> int:
        """``getLongestPolicyPeriod``."""
        return max(p.period_seconds for p in self.policies)


class ScaleUpRules(_ScalingRules):
    """Scale-up rules; the defaults are Kubernetes': no window, max(100%, 4 pods) per 15 s."""

    stabilization_window_seconds: Annotated[int, Field(ge=0, le=3600)] = 0
    policies: Annotated[tuple[ScalingPolicy, ...], Field(min_length=1)] = (
        ScalingPolicy(type="Percent", value=100, period_seconds=15),
        ScalingPolicy(type="Pods", value=4, period_seconds=15),
    )


class ScaleDownRules(_ScalingRules):
    """Scale-down rules; the defaults are Kubernetes': a 300 s window, 100% per 15 s.

    300 s is also the default of ``--horizontal-pod-autoscaler-downscale-stabilization``,
    which Kubernetes uses when the window is not set.
    """

    stabilization_window_seconds: Annotated[int, Field(ge=0, le=3600)] = 300
    policies: Annotated[tuple[ScalingPolicy, ...], Field(min_length=1)] = (
        ScalingPolicy(type="Percent", value=100, period_seconds=15),
    )


class HPABehavior(_Strict):
    """``spec.behavior``; a direction given as a mapping keeps the other fields' defaults."""

    scale_up: ScaleUpRules = ScaleUpRules()
    scale_down: ScaleDownRules = ScaleDownRules()


class ResourceMetric(_Strict):
    """A ``Resource`` metric with a ``Utilization`` target (percent of the pods' request)."""

    resource: Literal["cpu", "memory"] = "cpu"
    target_utilization: Annotated[int, Field(gt=0)] = 70
    """70% is this project's choice; Kubernetes defaults an HPA without metrics to CPU 80%
    (``DefaultCPUUtilization``) and recommends nothing (see ``docs/baselines.md``)."""


ReplicaBound = Annotated[int, Field(ge=1)]


class HPAConfig(_Strict):
    """One HPA object per scaled service, and the controller settings they run under.

    Attributes:
        metrics: ``spec.metrics``; several metrics: the largest proposal wins.
        min_replicas: ``spec.minReplicas``: one value for all services, a mapping by
            service, or None for the scenario's ``replicas.min`` (at least 1).
        max_replicas: ``spec.maxReplicas``, likewise (None: the scenario's ``replicas.max``).
        services: Services with an HPA; None: all of them.
        tolerance: ``--horizontal-pod-autoscaler-tolerance``.
        sync_period_s: ``--horizontal-pod-autoscaler-sync-period``.
        cpu_initialization_period_s: ``--horizontal-pod-autoscaler-cpu-initialization-period``.
        initial_readiness_delay_s: ``--horizontal-pod-autoscaler-initial-readiness-delay``.
        behavior: ``spec.behavior``.
    """

    metrics: Annotated[tuple[ResourceMetric, ...], Field(min_length=1)] = (ResourceMetric(),)
    min_replicas: ReplicaBound | dict[str, ReplicaBound] | None = None
    max_replicas: ReplicaBound | dict[str, ReplicaBound] | None = None
    services: tuple[str, ...] | None = None
    tolerance: Annotated[float, Field(ge=0, lt=1)] = 0.1
    sync_period_s: Annotated[float, Field(gt=0)] = 15.0
    cpu_initialization_period_s: Annotated[float, Field(ge=0)] = 300.0
    initial_readiness_delay_s: Annotated[float, Field(ge=0)] = 30.0
    behavior: HPABehavior = HPABehavior()

    @model_validator(mode="after")
    def _check(self) -> HPAConfig:
        kinds = [m.resource for m in self.metrics]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"metrics: each resource at most once, got {kinds}")
        lo, hi = self.min_replicas, self.max_replicas
        if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
            raise ValueError(f"min_replicas ({lo}) must be <= max_replicas ({hi})")
        if self.services is not None and len(set(self.services)) != len(self.services):
            raise ValueError(f"services: duplicate names in {list(self.services)}")
        return self

    @classmethod
    def cpu(cls, target_utilization: int = 70, **kwargs: Any) -> HPAConfig:
        """An HPA on CPU utilisation alone (``kubectl autoscale --cpu-percent``)."""
        return cls(metrics=(ResourceMetric(target_utilization=target_utilization),), **kwargs)
