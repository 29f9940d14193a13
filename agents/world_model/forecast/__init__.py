"""Probabilistic forecasts of service telemetry: the world model's and naive ones.

This ``__init__`` is the one list of the public API; each name lives in one module:

* :mod:`~agents.world_model.forecast.types`: :data:`METRICS`, :data:`SUPPORT`,
  :data:`UNITS`, :data:`ZERO_SNAP`, :func:`to_raw`, the :class:`ForecastModel` protocol and
  the results :class:`Forecast` and :class:`SampleForecast`;
* :mod:`~agents.world_model.forecast.rollout`: :func:`forecast` (one origin, quantiles),
  :func:`forecast_batch` (many origins of one episode, draws) and :func:`sample_futures`
  (the imagined draws behind both);
* :mod:`~agents.world_model.forecast.calibration`: :class:`Calibration`,
  :class:`CalibrationStats` (fits it) and :func:`fit_platt`;
* :mod:`~agents.world_model.forecast.naive`: :class:`NaiveForecaster` (persistence and
  seasonal naive), :class:`NaiveViolation`, :func:`traffic_period_s`, :func:`period_steps`;
* :mod:`~agents.world_model.forecast.forecaster`: the :class:`Forecaster` protocol every
  scored forecaster implements, :class:`EpisodeHistory` (what it sees),
  :class:`ForecastDraws` (what it returns), :class:`WorldModelForecaster` (the adapter of
  :func:`forecast_batch`) and :func:`quantile_levels`;
* :mod:`~agents.world_model.forecast.episodes`: :func:`forecast_origins`,
  :func:`planned_actions`, :func:`truths` and :func:`raw_series` of a recorded episode.

``docs/forecasting.md`` is the user guide.
"""

from agents.world_model.forecast.calibration import (
    ANCHOR_GRID,
    CHANGE_GRID,
    SCALE_GRID,
    Calibration,
    CalibrationStats,
    fit_platt,
)
from agents.world_model.forecast.episodes import (
    forecast_origins,
    planned_actions,
    raw_series,
    truths,
)
from agents.world_model.forecast.forecaster import (
    EpisodeHistory,
    ForecastDraws,
    Forecaster,
    WorldModelForecaster,
    quantile_levels,
)
from agents.world_model.forecast.naive import (
    NaiveForecaster,
    NaiveViolation,
    period_steps,
    traffic_period_s,
)
from agents.world_model.forecast.rollout import forecast, forecast_batch, sample_futures
from agents.world_model.forecast.types import (
    METRICS,
    SUPPORT,
    UNITS,
    ZERO_SNAP,
    Forecast,
    ForecastModel,
    SampleForecast,
    clip_to_bounds,
    physical_bounds,
    symexp_np,
    symlog_np,
    to_raw,
)

__all__ = [
    "ANCHOR_GRID",
    "CHANGE_GRID",
    "METRICS",
    "SCALE_GRID",
    "SUPPORT",
    "UNITS",
    "ZERO_SNAP",
    "Calibration",
    "CalibrationStats",
    "EpisodeHistory",
    "Forecast",
    "ForecastDraws",
    "ForecastModel",
    "Forecaster",
    "NaiveForecaster",
    "NaiveViolation",
    "SampleForecast",
    "WorldModelForecaster",
    "clip_to_bounds",
    "fit_platt",
    "forecast",
    "forecast_batch",
    "forecast_origins",
    "period_steps",
    "physical_bounds",
    "planned_actions",
    "quantile_levels",
    "raw_series",
    "sample_futures",
    "symexp_np",
    "symlog_np",
    "to_raw",
    "traffic_period_s",
    "truths",
]
