"""Scoring a fitted world model's forecasts (the library behind ``opsworld evaluate-forecast``).

This ``__init__`` lists the public API; each name lives in one module:

* :mod:`~agents.world_model.evaluation.config`: the run schema
  :class:`EvaluateForecastConfig` and :func:`setup` (its checks);
* :mod:`~agents.world_model.evaluation.scoring`: :data:`FORECASTERS`,
  :data:`VIOLATION_FORECASTERS`, :data:`LEVELS`, :class:`ScoreTask`, :class:`EpisodeScores`,
  :func:`score_task`, :func:`score_tasks`, :func:`score_draws`;
* :mod:`~agents.world_model.evaluation.aggregate`: :func:`aggregate`;
* :mod:`~agents.world_model.evaluation.report`: :func:`markdown`;
* :mod:`~agents.world_model.evaluation.plots`: the figures;
* :mod:`~agents.world_model.evaluation.pipeline`: :func:`evaluate_forecast`, the whole
  command.

``docs/forecasting.md`` is the user guide.
"""

from agents.world_model.evaluation.aggregate import aggregate
from agents.world_model.evaluation.config import (
    EvaluateForecastConfig,
    EvaluationSetup,
    setup,
)
from agents.world_model.evaluation.pipeline import evaluate_forecast
from agents.world_model.evaluation.plots import (
    plot_coverage,
    plot_example,
    plot_reliability,
    plot_vs_horizon,
)
from agents.world_model.evaluation.report import TABLE_STEPS, markdown
from agents.world_model.evaluation.scoring import (
    FORECASTERS,
    LEVELS,
    VIOLATION_FORECASTERS,
    EpisodeScores,
    ScoreTask,
    score_draws,
    score_task,
    score_tasks,
)

__all__ = [
    "FORECASTERS",
    "LEVELS",
    "TABLE_STEPS",
    "VIOLATION_FORECASTERS",
    "EpisodeScores",
    "EvaluateForecastConfig",
    "EvaluationSetup",
    "ScoreTask",
    "aggregate",
    "evaluate_forecast",
    "markdown",
    "plot_coverage",
    "plot_example",
    "plot_reliability",
    "plot_vs_horizon",
    "score_draws",
    "score_task",
    "score_tasks",
    "setup",
]
