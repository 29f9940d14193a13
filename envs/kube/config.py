"""Configuration of a Kubernetes Horizontal Pod Autoscaler (``autoscaling/v2``).

:class:`HPAConfig` holds what an ``HorizontalPodAutoscaler`` object (``spec.metrics``,
``spec.minReplicas``/``maxReplicas``, ``spec.behavior``) and the controller manager's flags
(``--horizontal-pod-autoscaler-*``) say. It is a pydantic model, so a scenario's
``autoscaling.hpa`` section and a policy's configuration validate the same way.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_KUBERNETES_VERSION = "1.35"
"""The Kubernetes release whose HPA controller is reproduced unless a config names another.

Only one behaviour here depends on the release: from 1.33 (KEP-4951) a usage ratio is
within tolerance when ``1 - down <= ratio <= 1 + up``, and ``spec.behavior`` may set the
two tolerances; up to 1.32 it was ``|1 - ratio| <= tolerance`` with the controller's one
tolerance."""

TOLERANCE_RANGE_SINCE = (1, 33)
"""First release with the ``1 - down <= ratio <= 1 + up`` rule and per-direction tolerances."""


@lru_cache(maxsize=64)
def parse_version(version: str) -> tuple[int, int]:
    """``"1.33"`` -> ``(1, 33)``.

    Raises:
        ValueError: Not ``1.<minor>``, or older than 1.23 (``autoscaling/v2`` became GA).
    """
    m = re.fullmatch(r"1\.(\d+)", version)
    if m is None:
        raise ValueError(f"kubernetes_version must look like '1.33' (major.minor), got {version!r}")
    minor = int(m.group(1))
    if minor < 23:
        raise ValueError(f"kubernetes_version {version}: autoscaling/v2 needs 1.23 or later")
    return 1, minor


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
    tolerance: Annotated[float, Field(ge=0)] | None = None
    """This direction's tolerance (KEP-4951, Kubernetes >= 1.33); None: the controller's
    ``--horizontal-pod-autoscaler-tolerance``."""

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
    """``spec.behavior``; a direction given as a mapping keeps the other fields' defaults.

    The defaults apply only to an HPA that has a ``spec.behavior``; an HPA without one (what
    ``kubectl autoscale`` creates) takes the legacy path (see :class:`HPAConfig`).
    """

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
        tolerance: ``--horizontal-pod-autoscaler-tolerance`` (both directions, unless
            ``behavior`` sets a direction's own).
        sync_period_s: ``--horizontal-pod-autoscaler-sync-period``.
        cpu_initialization_period_s: ``--horizontal-pod-autoscaler-cpu-initialization-period``.
        initial_readiness_delay_s: ``--horizontal-pod-autoscaler-initial-readiness-delay``.
        downscale_stabilization_s: ``--horizontal-pod-autoscaler-downscale-stabilization``:
            the scale-down window of an HPA without ``behavior``.
        behavior: ``spec.behavior``; None: the HPA has none (``kubectl autoscale``), and
            the controller takes the legacy path of ``normalizeDesiredReplicas``: scale-up
            capped at ``max(2 x current, 4)`` per sync, scale-down stabilised over
            ``downscale_stabilization_s``, no rate policies, no scale-up window.
        kubernetes_version: The release whose controller is reproduced (``"1.33"``);
            see :data:`DEFAULT_KUBERNETES_VERSION`.
    """

    metrics: Annotated[tuple[ResourceMetric, ...], Field(min_length=1)] = (ResourceMetric(),)
    min_replicas: ReplicaBound | dict[str, ReplicaBound] | None = None
    max_replicas: ReplicaBound | dict[str, ReplicaBound] | None = None
    services: tuple[str, ...] | None = None
    tolerance: Annotated[float, Field(ge=0, lt=1)] = 0.1
    sync_period_s: Annotated[float, Field(gt=0)] = 15.0
    cpu_initialization_period_s: Annotated[float, Field(ge=0)] = 300.0
    initial_readiness_delay_s: Annotated[float, Field(ge=0)] = 30.0
    downscale_stabilization_s: Annotated[int, Field(ge=0, le=3600)] = 300
    behavior: HPABehavior | None = None
    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION

    @field_validator("kubernetes_version", mode="before")
    @classmethod
    def _version_is_text(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(
                f"kubernetes_version must be text such as '1.30', got the number {value!r} "
                "(quote it: YAML reads 1.30 as 1.3)"
            )
        return value

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
        version = parse_version(self.kubernetes_version)
        if version < TOLERANCE_RANGE_SINCE and self.behavior is not None:
            for direction in ("scale_up", "scale_down"):
                if getattr(self.behavior, direction).tolerance is not None:
                    raise ValueError(
                        f"behavior.{direction}.tolerance needs kubernetes_version >= 1.33 "
                        f"(KEP-4951), got {self.kubernetes_version}; remove it or raise the "
                        "version"
                    )
        return self

    @property
    def version(self) -> tuple[int, int]:
        """``kubernetes_version`` as ``(major, minor)``."""
        return parse_version(self.kubernetes_version)

    @classmethod
    def cpu(cls, target_utilization: int = 70, **kwargs: Any) -> HPAConfig:
        """An HPA on CPU utilisation alone, as ``kubectl autoscale --cpu-percent`` creates it.

        Without a ``behavior`` argument it has no ``spec.behavior`` (the legacy path), as
        ``kubectl autoscale`` leaves it.
        """
        return cls(metrics=(ResourceMetric(target_utilization=target_utilization),), **kwargs)
