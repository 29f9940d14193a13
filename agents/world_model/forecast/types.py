"""What a forecast covers and what it returns.

:data:`METRICS` are the per-service metrics forecast, :data:`SUPPORT` their raw-unit ranges
and :data:`ZERO_SNAP` the values reported as exactly 0; :func:`to_raw` maps symlog draws to
raw units under both. :class:`ForecastModel` is what a forecaster needs of a world model;
:class:`Forecast` (quantiles of one origin) and :class:`SampleForecast` (raw draws of many
origins) are the results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

METRICS: tuple[str, ...] = ("p99", "rps", "error_rate", "replicas_ready")
"""The per-service metrics a forecast covers (names of ObsEncoder service features)."""
SUPPORT: dict[str, tuple[float, float]] = {
    "p99": (0.0, math.inf),
    "rps": (0.0, math.inf),
    "error_rate": (0.0, 1.0),
    "replicas_ready": (0.0, math.inf),
}
"""Raw-unit range of each metric; forecast draws are clipped to it."""
UNITS: dict[str, str] = {
    "p99": "s",
    "rps": "attempts/s",
    "error_rate": "fraction",
    "replicas_ready": "pods",
}
"""Raw unit of each metric (labels of tables and plots)."""
ZERO_SNAP: dict[str, float] = {"error_rate": 1e-3}
"""Draws below these values are reported as exactly 0: telemetry shows an error rate of
exactly 0 whenever nothing fails, a point mass that a Gaussian in symlog space (std >= 0.01)
cannot put its quantiles on."""


def symlog_np(x: np.ndarray) -> np.ndarray:
    """``sign(x) log(1 + |x|)`` in float64 (numpy twin of ``agents.world_model.math.symlog``)."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.log1p(np.abs(x))


def symexp_np(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`symlog_np` (arguments clipped to +-80 so it never overflows)."""
    return np.sign(x) * np.expm1(np.minimum(np.abs(x), 80.0))


def physical_bounds(scenario: Any) -> dict[str, np.ndarray]:
    """Per-service upper bounds ``[S]`` of the metrics a run of ``scenario`` can show.

    ``p99``: the horizon (no request of the run takes longer than the run);
    ``replicas_ready``: each service's ``replicas.max``; ``error_rate``: 1; ``rps``: no bound.
    :func:`~agents.world_model.forecast.rollout.forecast` clips its draws to them (with
    :data:`SUPPORT`), so a band never reaches values the cluster cannot produce.
    """
    services = scenario.topology.services
    n = len(services)
    return {
        "p99": np.full(n, float(scenario.horizon_s)),
        "rps": np.full(n, math.inf),
        "error_rate": np.ones(n),
        "replicas_ready": np.array([float(s.replicas.max) for s in services]),
    }


def clip_to_bounds(metric: str, draws: np.ndarray, high: Any = None) -> np.ndarray:
    """``[..., S]`` raw draws clipped to :data:`SUPPORT` and, per service, to ``high``.

    ``high``: ``[S]`` upper bounds (e.g. ``physical_bounds(scenario)[metric]``) or None.
    """
    lo, top = SUPPORT[metric]
    if high is None:
        return np.clip(draws, lo, top)
    hi = np.minimum(np.asarray(high, dtype=np.float64), top)
    return np.clip(draws, lo, hi)


def to_raw(metric: str, z: np.ndarray) -> np.ndarray:
    """Symlog values of ``metric`` -> raw units.

    ``symexp``, clipped to :data:`SUPPORT`, values below :data:`ZERO_SNAP` set to 0.
    """
    lo, hi = SUPPORT[metric]
    x = np.clip(symexp_np(z), lo, hi)
    snap = ZERO_SNAP.get(metric)
    return np.where(np.abs(x) < snap, 0.0, x) if snap is not None else x


class ForecastModel(Protocol):
    """What :func:`forecast` needs of a world model (``agents.world_model.model.WorldModel``)."""

    layout: Any

    def initial(self, batch: int) -> Any:
        """Initial carry of ``batch`` streams."""
        ...

    def observe(
        self,
        obs: Tensor,
        action: Tensor,
        is_first: Tensor,
        carry: Any,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[Any, Any]:
        """Posterior over ``[B, T, ...]``: ``(carry, states)``."""
        ...

    def imagine(
        self, carry: Any, actions: Tensor, *, generator: torch.Generator | None = None
    ) -> Any:
        """Prior rollout under ``actions`` ``[B, H, A]``."""
        ...

    def feat(self, states: Any) -> Tensor:
        """Features ``[..., D + K*C]``."""
        ...

    def decode(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std of the value vector in symlog space."""
        ...

    def violation_prob(self, feat: Tensor) -> Tensor:
        """Probability that the step leading to the state violated an SLO."""
        ...


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class Forecast:
    """A probabilistic forecast of H steps of one cluster.

    Attributes:
        services: Service names (topology order), S of them.
        quantiles: The Q quantile levels, ascending.
        p99: ``[H, S, Q]`` p99 latency quantiles (s).
        rps: ``[H, S, Q]`` request-rate quantiles (attempts / s).
        error_rate: ``[H, S, Q]`` error-fraction quantiles.
        replicas_ready: ``[H, S, Q]`` ready-replica quantiles (pods).
        p_violation: Probability of at least one SLO-violating step within the H steps.
        p_p99_over_slo: With ``slo_p99`` given: the share of sampled futures in which some
            service's p99 exceeds its SLO at some step (else None).
        samples: Metric -> ``[N, H, S]`` raw draws (None unless asked for).
    """

    services: tuple[str, ...]
    quantiles: tuple[float, ...]
    p99: np.ndarray
    rps: np.ndarray
    error_rate: np.ndarray
    replicas_ready: np.ndarray
    p_violation: float
    p_p99_over_slo: float | None = None
    samples: dict[str, np.ndarray] | None = None

    def __getitem__(self, metric: str) -> np.ndarray:
        """The ``[H, S, Q]`` quantiles of ``metric`` (one of :data:`METRICS`)."""
        if metric not in METRICS:
            raise KeyError(f"unknown forecast metric {metric!r}; one of {list(METRICS)}")
        out: np.ndarray = getattr(self, metric)
        return out

    @property
    def horizon(self) -> int:
        """H."""
        return int(self.p99.shape[0])

    def quantile(self, metric: str, level: float) -> np.ndarray:
        """``[H, S]`` quantile at ``level`` (one of :attr:`quantiles`)."""
        try:
            q = self.quantiles.index(level)
        except ValueError:
            raise KeyError(
                f"level {level} not in the forecast's quantiles {self.quantiles}"
            ) from None
        return self[metric][..., q]


@dataclass(frozen=True)
class SampleForecast:
    """Forecasts of B origins as raw draws (what :func:`forecast_batch` returns).

    Attributes:
        samples: Metric -> ``[B, N, H, S]`` raw draws.
        p_violation: ``[B]`` probability of a violation within H.
        offset: Metric -> ``[B, S]`` the decoder's error on the observation at each origin,
            ``symlog(obs_t) - decode(posterior_t)`` (0 where ``obs_t`` is missing); what
            :class:`Calibration` anchors the forecast with.
        decoded: Metric -> ``[B, S]`` ``decode(posterior_t)`` (symlog): where the model
            thinks the origin is, from which its predicted change is measured.
    """

    samples: dict[str, np.ndarray]
    p_violation: np.ndarray
    offset: dict[str, np.ndarray] = field(default_factory=dict)
    decoded: dict[str, np.ndarray] = field(default_factory=dict)
