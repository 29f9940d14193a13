"""The forecast extras of a fitted world model: its calibration and the naive baselines.

:func:`fit_forecast_extras` fits, on TRAIN-suite calibration episodes, the
:class:`~agents.world_model.forecast.Calibration` of the model's draws (anchor weights,
spread multipliers, Platt scaling of the violation probability), the persistence and
seasonal-naive :class:`~agents.world_model.forecast.NaiveForecaster` residual quantiles and
the :class:`~agents.world_model.forecast.NaiveViolation` frequencies. :meth:`ForecastExtras.save`
writes them to a fit folder's ``forecast/`` (what :func:`agents.world_model.fit.run_dir.load_fit`
reads back).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.world_model.data import ProgressBar
from agents.world_model.forecast import (
    METRICS,
    Calibration,
    CalibrationStats,
    ForecastModel,
    NaiveForecaster,
    NaiveViolation,
    SampleForecast,
    forecast_batch,
    forecast_origins,
    planned_actions,
    raw_series,
    truths,
)
from agents.world_model.forecast_metrics import brier

FILES: dict[str, str] = {
    "calibration": "calibration.json",
    "persistence": "persistence.npz",
    "seasonal": "seasonal.npz",
    "violation": "violation.json",
}
"""Extra -> file name in the fit folder's ``forecast/`` (``spec.json`` lists them)."""
REPORT_FILE = "calibration_report.json"
"""Coverage on the calibration split (not needed to load the model)."""


@dataclass(frozen=True)
class ForecastExtras:
    """What :func:`fit_forecast_extras` fits.

    Attributes:
        calibration: Calibration of the model's draws and violation probability.
        persistence: The persistence forecaster.
        seasonal: The seasonal-naive forecaster.
        violation: The naive violation model.
        report: Per metric the raw and calibrated 80 % / 90 % coverage on the calibration
            episodes and the fitted weights; ``violation``: Brier scores before and after
            the Platt scaling.
    """

    calibration: Calibration
    persistence: NaiveForecaster
    seasonal: NaiveForecaster
    violation: NaiveViolation
    report: dict[str, Any]

    def save(self, folder: Path) -> dict[str, Path]:
        """Write the :data:`FILES` and :data:`REPORT_FILE` into ``folder`` (created).

        Returns:
            Extra -> the path written.
        """
        folder.mkdir(exist_ok=True)
        paths = {k: folder / v for k, v in FILES.items()}
        paths["calibration"].write_text(self.calibration.to_json())
        self.persistence.save(paths["persistence"])
        self.seasonal.save(paths["seasonal"])
        paths["violation"].write_text(json.dumps(dataclasses.asdict(self.violation), indent=2))
        (folder / REPORT_FILE).write_text(json.dumps(self.report, indent=2))
        return paths


def fold_services(
    sf: SampleForecast, truth: dict[str, np.ndarray]
) -> tuple[SampleForecast, dict[str, np.ndarray]]:
    """Services moved into the origin axis: ``[B, N, H, S]`` -> ``[B S, N, H, 1]``.

    :class:`CalibrationStats` pools origins and services alike, so folding changes nothing
    of its fit; it lets episodes of topologies with different S share one pool (a
    ``wm.arch=graph`` model calibrated on several topologies).
    """

    def draws(x: np.ndarray) -> np.ndarray:
        return np.moveaxis(x, -1, 1).reshape(-1, *x.shape[1:-1], 1)

    def per_origin(x: np.ndarray) -> np.ndarray:  # [B, S] -> [B S, 1]
        return x.reshape(-1, 1)

    def per_step(x: np.ndarray) -> np.ndarray:  # [B, H, S] -> [B S, H, 1]
        return np.moveaxis(x, -1, 1).reshape(-1, x.shape[1], 1)

    folded = SampleForecast(
        {m: draws(v) for m, v in sf.samples.items()},
        sf.p_violation,
        {m: per_origin(v) for m, v in sf.offset.items()},
        {m: per_origin(v) for m, v in sf.decoded.items()},
    )
    return folded, {m: per_step(v) for m, v in truth.items()}


def calibration_stats(
    model: ForecastModel | Sequence[ForecastModel],
    episodes: list[dict[str, np.ndarray]],
    horizon: int,
    warmup: int,
    every: int,
    n_samples: int,
    seed: int,
    progress: bool = False,
) -> CalibrationStats:
    """The model's uncalibrated forecasts of ``episodes`` and their truths, summarised.

    Episode ``i`` is forecast from origins ``warmup, warmup + every, ...`` with draws seeded
    by ``seed + i`` and the actions taken as the plan. ``model`` may be a list with one
    model per episode (one ``wm.arch=graph`` model bound to each episode's topology); the
    services are then folded into the origins (:func:`fold_services`).
    """
    per_episode = isinstance(model, Sequence)
    models = list(model) if isinstance(model, Sequence) else [model] * len(episodes)
    if len(models) != len(episodes):
        raise ValueError(f"{len(models)} models for {len(episodes)} episodes")
    stats = CalibrationStats()
    with ProgressBar(progress, len(episodes), "calibrate") as tick:
        for i, (ep, mod) in enumerate(zip(episodes, models, strict=True)):
            layout = mod.layout
            origins = forecast_origins(len(ep["obs"]), horizon, warmup, every)
            if origins.size:
                sf = forecast_batch(
                    mod,
                    ep["obs"],
                    ep["action"],
                    origins,
                    planned_actions(ep, origins, horizon),
                    n_services=layout.n_services,
                    n_samples=n_samples,
                    seed=seed + i,
                )
                truth = truths(ep, layout, origins, horizon)
                if per_episode:
                    sf, truth = fold_services(sf, truth)
                stats.add(sf, truth, NaiveViolation.outcomes(ep["violation"], origins, horizon))
            tick()
    return stats


def calibration_report(stats: CalibrationStats, calibration: Calibration) -> dict[str, Any]:
    """Raw and calibrated coverage per metric, the weights, and the violation Brier scores."""
    raw, cal = stats.coverage(None), stats.coverage(calibration)
    report: dict[str, Any] = {
        m: {
            "raw_80": raw[m]["80"],
            "raw_90": raw[m]["90"],
            "calibrated_80": cal[m]["80"],
            "calibrated_90": cal[m]["90"],
            "change": calibration.change[m],
            "anchor": calibration.anchor[m],
            "scale": calibration.scale[m],
        }
        for m in raw
    }
    if stats.outcome:
        p = np.concatenate(stats.p_violation)
        o = np.concatenate(stats.outcome)
        report["violation"] = {
            "brier_raw": brier(p, o),
            "brier_calibrated": brier(calibration.apply_violation(p), o),
            "platt": calibration.violation,
        }
    return report


def fit_forecast_extras(
    model: ForecastModel | Sequence[ForecastModel],
    episodes: list[dict[str, np.ndarray]],
    periods: list[int | None],
    calib_episodes: list[dict[str, np.ndarray]],
    horizon: int,
    warmup: int,
    every: int,
    n_samples: int,
    level: float,
    seed: int,
    anchor: bool = True,
    progress: bool = False,
) -> ForecastExtras:
    """Fit the forecast extras on calibration episodes (TRAIN suite).

    The :class:`~agents.world_model.forecast.Calibration` (anchor weights and spread
    multipliers for the central ``level`` interval) is fitted on ``calib_episodes``; the
    naive forecasters and the naive violation model on ``episodes``, whose traffic periods
    in steps are ``periods``.
    """
    stats = calibration_stats(
        model, calib_episodes, horizon, warmup, every, n_samples, seed, progress
    )
    calibration = stats.fit(level, anchor=anchor)
    report = calibration_report(stats, calibration)
    layout = (model[0] if isinstance(model, Sequence) else model).layout
    series = [{m: raw_series(ep, layout, m) for m in METRICS} for ep in episodes]
    persistence = NaiveForecaster("persistence", horizon).fit(series, periods, warmup)
    seasonal = NaiveForecaster("seasonal", horizon, fallback_season=horizon).fit(
        series, periods, warmup
    )
    violation = NaiveViolation.fit([ep["violation"] for ep in episodes], horizon, warmup)
    return ForecastExtras(calibration, persistence, seasonal, violation, report)
