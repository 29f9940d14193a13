"""Persistence, seasonal naive and drift forecasters with scaled residual-quantile intervals.

They implement the :class:`~agents.world_model.forecast.forecaster.Forecaster` protocol.

Every baseline here makes a point forecast ``[B, H, S]`` per metric and turns it into a
quantile grid with **scaled residual quantiles**: on TRAIN episodes (``train:fit``) it
collects, per metric and horizon step h, the residuals ``(y[t+h] - point) / scale_t``
pooled over services, episodes and topologies, where ``scale_t`` is the series' recent
variability (:func:`recent_scale`: the mean absolute one-step change over the last
:data:`SCALE_WINDOW` rows, at least :data:`SCALE_FLOOR`). A forecast is then
``point + scale_t * q_h(levels)`` at the levels of
:func:`~agents.world_model.forecast.forecaster.quantile_levels`, clipped to the scenario's
physical ranges. Pooling over services with a per-series scale makes the intervals
independent of the topology (a model fitted on chain3 and boutique runs on mesh40) and
narrow on flat series, wide on noisy ones.

The violation probability of these baselines is the naive one
(:class:`~agents.world_model.forecast.naive.NaiveViolation`: the TRAIN frequency of a
violation within H given whether the origin step violates).

Point forecasts (``y`` forward-filled over missing values, ``t`` the origin):

* :class:`Persistence`: ``y[t]``;
* :class:`SeasonalNaive`: ``y[t + h - m ceil(h / m)]`` with season ``m`` the traffic period
  when the history covers it, else ``fallback_season`` steps (as
  :class:`~agents.world_model.forecast.naive.NaiveForecaster`);
* :class:`Drift`: ``y[t] + h (y[t] - y[t-w]) / w`` with ``w = t`` (the whole history, the
  textbook drift method, Hyndman & Athanasopoulos, *Forecasting: Principles and Practice*,
  3rd ed., section 5.2) or a fixed ``window``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agents.world_model.forecast.forecaster import (
    EpisodeHistory,
    ForecastDraws,
    quantile_levels,
)
from agents.world_model.forecast.naive import NaiveForecaster, NaiveViolation, _ffill
from agents.world_model.forecast.types import METRICS, clip_to_bounds

SCALE_WINDOW = 20
"""Rows of history behind :func:`recent_scale` (5 minutes at 15 s steps)."""
SCALE_FLOOR: dict[str, float] = {
    "p99": 1e-3,
    "rps": 1e-2,
    "error_rate": 1e-4,
    "replicas_ready": 1e-2,
}
"""Smallest scale per metric (raw units): the resolution below which changes are noise."""


def filled(y: np.ndarray) -> np.ndarray:
    """``[T, S]`` forward-filled; leading NaNs become 0 (no value seen yet)."""
    return np.nan_to_num(_ffill(np.asarray(y, dtype=np.float64)), nan=0.0)


def recent_scale(
    metric: str, y: np.ndarray, origins: np.ndarray, window: int = SCALE_WINDOW
) -> np.ndarray:
    """``[B, S]`` mean ``|y[i] - y[i-1]|`` over the ``window`` rows up to each origin.

    On the forward-filled series, at least :data:`SCALE_FLOOR` of ``metric``; an origin
    with fewer rows uses the rows it has (origin 0: the floor).
    """
    f = filled(y)
    d = np.abs(np.diff(f, axis=0, prepend=f[:1]))  # row i: |y[i] - y[i-1]|, row 0: 0
    c = np.concatenate([np.zeros((1, f.shape[1])), np.cumsum(d, axis=0)], 0)
    t = np.asarray(origins, dtype=int)
    lo = np.maximum(t - window, 0)
    n = np.maximum(t - lo, 1)
    s = (c[t + 1] - c[lo + 1]) / n[:, None]
    return np.maximum(s, SCALE_FLOOR[metric])


def horizon_index(origins: np.ndarray, horizon: int) -> np.ndarray:
    """``[B, H]`` rows ``t + 1 .. t + H``."""
    return np.asarray(origins, dtype=int)[:, None] + np.arange(1, horizon + 1)[None, :]


@dataclass
class ScaledResidualForecaster:
    """A point forecast plus scaled residual quantiles (see the module docstring).

    Subclasses implement :meth:`point`. Attributes:

    Attributes:
        name: Table name.
        horizon: H.
        n_levels: Quantile-grid size M of the forecast.
        fit_every: Origin stride on the TRAIN episodes.
        warmup: First TRAIN origin.
        residuals: Metric -> ``[H, M]`` scaled residual quantiles (fitted).
        violation: The naive violation model (fitted).
    """

    name: str
    horizon: int = 20
    n_levels: int = 50
    fit_every: int = 2
    warmup: int = 20
    residuals: dict[str, np.ndarray] = field(default_factory=dict)
    violation: NaiveViolation | None = None

    def point(self, episode: EpisodeHistory, metric: str, origins: np.ndarray) -> np.ndarray:
        """``[B, H, S]`` point forecasts (raw units) from rows ``0..t``."""
        raise NotImplementedError

    @property
    def levels(self) -> np.ndarray:
        """``[M]`` quantile levels."""
        return quantile_levels(self.n_levels)

    def scaled_residuals(self, episodes: Sequence[EpisodeHistory], metric: str) -> np.ndarray:
        """``[R, H]`` residuals ``(y[t+h] - point) / scale_t``.

        Pooled over episodes, origins and services (NaN where the truth is missing).
        """
        parts = []
        for ep in episodes:
            origins = np.arange(self.warmup, ep.n_rows - self.horizon, self.fit_every)
            if origins.size == 0:
                continue
            y = ep.series[metric]
            pt = self.point(ep, metric, origins)  # [B, H, S]
            truth = y[horizon_index(origins, self.horizon)]  # [B, H, S]
            sc = recent_scale(metric, y, origins)[:, None, :]
            r = (truth - pt) / sc
            parts.append(np.moveaxis(r, 2, 1).reshape(-1, self.horizon))  # [B*S, H]
        if not parts:
            raise ValueError(f"{self.name}: no TRAIN origin (episodes shorter than warmup + H)")
        return np.concatenate(parts, 0)

    def fit(self, episodes: Sequence[EpisodeHistory]) -> ScaledResidualForecaster:
        """Fit the residual quantiles and the naive violation model on TRAIN episodes."""
        for m in METRICS:
            r = self.scaled_residuals(episodes, m)
            q = np.zeros((self.horizon, self.n_levels))
            for h in range(self.horizon):
                v = r[:, h]
                v = v[~np.isnan(v)]
                if v.size:
                    q[h] = np.quantile(v, self.levels)
            self.residuals[m] = q
        self.violation = NaiveViolation.fit(
            [ep.violation for ep in episodes], self.horizon, self.warmup
        )
        return self

    def predict(self, episode: EpisodeHistory, origins: np.ndarray) -> ForecastDraws:
        """Quantile grids ``[B, M, H, S]`` per metric and the naive violation probability."""
        if not self.residuals or self.violation is None:
            raise RuntimeError(f"{self.name}: call fit() on TRAIN episodes first")
        origins = np.asarray(origins, dtype=int)
        bounds = episode.bounds()
        out = {}
        for m in METRICS:
            pt = self.point(episode, m, origins)  # [B, H, S]
            sc = recent_scale(m, episode.series[m], origins)  # [B, S]
            q = self.residuals[m]  # [H, M]
            draws = pt[:, None] + sc[:, None, None, :] * np.moveaxis(q, 1, 0)[None, :, :, None]
            out[m] = clip_to_bounds(m, draws, bounds[m])
        return ForecastDraws(out, self.violation.predict(episode.violation, origins))


@dataclass
class Persistence(ScaledResidualForecaster):
    """``y[t]`` for every step ahead."""

    name: str = "persistence"

    def point(self, episode: EpisodeHistory, metric: str, origins: np.ndarray) -> np.ndarray:
        """The last value, repeated H times."""
        f = filled(episode.series[metric])
        return np.repeat(f[np.asarray(origins, dtype=int)][:, None], self.horizon, axis=1)


@dataclass
class SeasonalNaive(ScaledResidualForecaster):
    """The value one season earlier (the traffic period, else ``fallback_season`` steps)."""

    name: str = "seasonal"
    fallback_season: int = 20

    def point(self, episode: EpisodeHistory, metric: str, origins: np.ndarray) -> np.ndarray:
        """``y[t + h - m ceil(h / m)]``."""
        nf = NaiveForecaster("seasonal", self.horizon, fallback_season=self.fallback_season)
        t = np.asarray(origins, dtype=int)
        season = np.array([nf.season(int(x) + 1, episode.period) for x in t], dtype=int)
        return np.asarray(filled(episode.series[metric])[nf.point_index(t, season)])


@dataclass
class Drift(ScaledResidualForecaster):
    """The last value plus ``h`` times the mean step over the history (or ``window`` rows)."""

    name: str = "drift"
    window: int | None = None

    def point(self, episode: EpisodeHistory, metric: str, origins: np.ndarray) -> np.ndarray:
        """``y[t] + h (y[t] - y[t - w]) / w``, ``w = t`` or ``window`` (at most ``t``)."""
        f = filled(episode.series[metric])
        t = np.asarray(origins, dtype=int)
        w = t if self.window is None else np.minimum(t, self.window)
        w = np.maximum(w, 1)
        start = np.maximum(t - w, 0)
        slope = (f[t] - f[start]) / w[:, None]  # [B, S]
        h = np.arange(1, self.horizon + 1)[None, :, None]
        return np.asarray(f[t][:, None] + h * slope[:, None])
