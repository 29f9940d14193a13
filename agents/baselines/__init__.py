"""Baseline deciders: the exact Kubernetes HPA and a runbook of SRE remediations on top of it.

* :mod:`agents.baselines.hpa`: :class:`HPAPolicy`, the telemetry-only policy over the exact
  HPA controller (``replica_calculator.go`` and ``horizontal.go``, in :mod:`envs.kube.hpa`).
* :mod:`agents.baselines.runbook`: :class:`RunbookPolicy`, rule-based incident remediation
  (restart, rollback, shed load, scale back from zero) with the HPA scaling underneath.

``docs/baselines.md`` gives the algorithms, the telemetry mapping and the rules table.
"""

from agents.baselines.hpa import HPABehavior, HPAConfig, HPAPolicy, ResourceMetric, ScalingPolicy
from agents.baselines.runbook import RunbookConfig, RunbookPolicy

__all__ = [
    "HPABehavior",
    "HPAConfig",
    "HPAPolicy",
    "ResourceMetric",
    "RunbookConfig",
    "RunbookPolicy",
    "ScalingPolicy",
]
