"""Exponential smoothing and ARIMA baselines through statsforecast (AutoETS, AutoARIMA).

:class:`StatsForecastBaseline` fits one model per series and origin on the last ``window``
rows of history (raw units, forward-filled), with automatic model selection by AICc
(statsforecast's ``AutoETS``: Hyndman et al. 2008, *Forecasting with Exponential
Smoothing*; ``AutoARIMA``: Hyndman & Khandakar 2008, the ``auto.arima`` algorithm), and
turns the model's own Gaussian prediction interval into a quantile grid:
``sigma_h = (hi90_h - mean_h) / z_0.95``, draws ``mean_h + sigma_h Phi^-1(levels)``, clipped
to the physical ranges. A window whose values are all equal is forecast as that value
with no spread (statsforecast needs variation to fit; nothing else is defensible). The
violation probability is the naive one
(:class:`~agents.world_model.forecast.naive.NaiveViolation`).

Cost: one model fit per (origin, service, metric). ``window`` and the origin stride bound
it; ``experiments/results/forecast.md`` reports the measured seconds per fit.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import norm

from agents.world_model.forecast.baselines import filled
from agents.world_model.forecast.forecaster import (
    EpisodeHistory,
    ForecastDraws,
    quantile_levels,
)
from agents.world_model.forecast.naive import NaiveViolation
from agents.world_model.forecast.types import METRICS, clip_to_bounds

Z90 = float(norm.ppf(0.95))
"""Half-width of the central 90 % Gaussian interval in standard deviations."""


def _model(kind: str) -> object:
    from statsforecast.models import AutoARIMA, AutoETS

    if kind == "ets":
        return AutoETS(season_length=1)
    # a small search keeps a fit near 25 ms (the default search: 50-200 ms per series)
    return AutoARIMA(season_length=1, seasonal=False, max_p=2, max_q=2, max_d=1, approximation=True)


def fit_forecast(kind: str, y: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean [H], sigma [H])`` of ``kind`` (``ets`` / ``arima``) fitted on ``y``.

    A constant ``y`` gives ``(y[-1], 0)``; a model that fails to fit falls back to the
    same (counted by the caller through the zero spread).
    """
    y = np.asarray(y, dtype=np.float64)
    last = float(y[-1])
    if y.size < 3 or np.ptp(y) <= 1e-12 * max(1.0, abs(last)):
        return np.full(horizon, last), np.zeros(horizon)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = _model(kind).forecast(y=y, h=horizon, level=[90])  # type: ignore[attr-defined]
        except Exception:
            return np.full(horizon, last), np.zeros(horizon)
    mean = np.asarray(out["mean"], dtype=np.float64)
    sigma = np.maximum((np.asarray(out["hi-90"], dtype=np.float64) - mean) / Z90, 0.0)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(sigma))):
        return np.full(horizon, last), np.zeros(horizon)
    return mean, sigma


@dataclass
class StatsForecastBaseline:
    """AutoETS or AutoARIMA per series and origin (see the module docstring).

    Attributes:
        kind: ``ets`` or ``arima``.
        name: Table name (default: ``kind``).
        horizon: H.
        window: Rows of history each model is fitted on (the last ones).
        n_levels: Quantile-grid size M.
        warmup: First TRAIN origin of the violation model.
        violation: The naive violation model (fitted).
    """

    kind: Literal["ets", "arima"] = "ets"
    name: str = ""
    horizon: int = 20
    window: int = 60
    n_levels: int = 50
    warmup: int = 20
    violation: NaiveViolation | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("ets", "arima"):
            raise ValueError(f"kind={self.kind!r}: one of 'ets', 'arima'")
        self.name = self.name or self.kind

    def fit(self, episodes: Sequence[EpisodeHistory]) -> StatsForecastBaseline:
        """Fit the naive violation model (the series models are fitted at each origin)."""
        self.violation = NaiveViolation.fit(
            [ep.violation for ep in episodes], self.horizon, self.warmup
        )
        return self

    def predict(self, episode: EpisodeHistory, origins: np.ndarray) -> ForecastDraws:
        """Quantile grids ``[B, M, H, S]`` from one fit per (origin, service, metric)."""
        if self.violation is None:
            raise RuntimeError(f"{self.name}: call fit() on TRAIN episodes first")
        origins = np.asarray(origins, dtype=int)
        zq = norm.ppf(quantile_levels(self.n_levels))  # [M]
        bounds = episode.bounds()
        out = {}
        for m in METRICS:
            f = filled(episode.series[m])
            n_svc = f.shape[1]
            mean = np.zeros((origins.size, self.horizon, n_svc))
            sigma = np.zeros_like(mean)
            for b, t in enumerate(origins):
                lo = max(0, int(t) + 1 - self.window)
                for s in range(n_svc):
                    mean[b, :, s], sigma[b, :, s] = fit_forecast(
                        self.kind, f[lo : t + 1, s], self.horizon
                    )
            draws = mean[:, None] + sigma[:, None] * zq[None, :, None, None]
            out[m] = clip_to_bounds(m, draws, bounds[m])
        return ForecastDraws(out, self.violation.predict(episode.violation, origins))
