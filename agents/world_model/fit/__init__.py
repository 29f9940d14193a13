"""Fitting a world model for forecasting (the library behind ``opsworld fit-world-model``).

This ``__init__`` lists the public API; each name lives in one module:

* :mod:`~agents.world_model.fit.config`: the run schema :class:`FitWorldModelConfig`
  (:class:`WorldModelOverrides`, :class:`CalibSplit`), :func:`world_model_config` and the
  start-up checks shared with the forecast evaluation (:func:`suite_entries`,
  :func:`check_behaviours`); they raise :class:`agents.run_config.RunConfigError`;
* :mod:`~agents.world_model.fit.train`: :func:`build_trainer`, :func:`train_world_model`;
* :mod:`~agents.world_model.fit.extras`: :func:`fit_forecast_extras` and
  :class:`ForecastExtras` (calibration and naive baselines);
* :mod:`~agents.world_model.fit.run_dir`: the fit folder, :func:`load_fit` and
  :class:`FittedModel`;
* :mod:`~agents.world_model.fit.pipeline`: :func:`fit_world_model`, the whole command.

``docs/forecasting.md`` is the user guide.
"""

from agents.world_model.fit.config import (
    TOP_LEVEL_WM_FIELDS,
    CalibSplit,
    FitWorldModelConfig,
    WorldModelOverrides,
    check_behaviours,
    suite_entries,
    world_model_config,
)
from agents.world_model.fit.extras import ForecastExtras, fit_forecast_extras
from agents.world_model.fit.pipeline import fit_world_model
from agents.world_model.fit.run_dir import (
    FORECAST_DIR,
    MODEL_CODE,
    FittedModel,
    load_fit,
    model_code_digest,
)
from agents.world_model.fit.train import build_trainer, train_world_model

__all__ = [
    "FORECAST_DIR",
    "MODEL_CODE",
    "TOP_LEVEL_WM_FIELDS",
    "CalibSplit",
    "FitWorldModelConfig",
    "FittedModel",
    "ForecastExtras",
    "WorldModelOverrides",
    "build_trainer",
    "check_behaviours",
    "fit_forecast_extras",
    "fit_world_model",
    "load_fit",
    "model_code_digest",
    "suite_entries",
    "train_world_model",
    "world_model_config",
]
