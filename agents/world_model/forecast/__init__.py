"""Probabilistic forecasts of service telemetry (see ``docs/forecasting.md``)."""

from agents.world_model.forecast.rollout import *  # noqa: F403  (split into modules next)
