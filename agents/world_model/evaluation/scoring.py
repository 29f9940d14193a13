"""Scoring forecasts of one episode: what a worker of ``opsworld evaluate-forecast`` runs.

:func:`score_task` runs one episode (:class:`ScoreTask`) under its behaviour and, at every
forecast origin, forecasts the next H steps with each of :data:`FORECASTERS` (the world
model raw and calibrated, persistence, seasonal naive) and the violation probability with
each of :data:`VIOLATION_FORECASTERS`, and scores them against what happened
(:class:`EpisodeScores`): absolute error of the median, sample CRPS and whether the truth
lies in the central 80 % / 90 % intervals. :func:`score_tasks` maps it over many episodes
with :func:`agents.parallel.parallel_map` (same results for any worker count).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from agents.parallel import parallel_map
from agents.world_model.data import ProgressBar, run_episode
from agents.world_model.evaluation.config import model_on, naive_for
from agents.world_model.fit import FittedModel, load_fit
from agents.world_model.forecast import (
    METRICS,
    NaiveViolation,
    clip_to_bounds,
    forecast_batch,
    forecast_origins,
    period_steps,
    physical_bounds,
    planned_actions,
    raw_series,
    truths,
)
from agents.world_model.forecast_metrics import abs_error, crps_samples, inside

FORECASTERS: tuple[str, ...] = ("model", "model_cal", "persistence", "seasonal")
"""Forecasters scored, in table order."""
VIOLATION_FORECASTERS: tuple[str, ...] = ("model", "model_cal", "naive", "climatology")
"""Forecasters of the violation probability."""
LEVELS: tuple[float, ...] = (0.05, 0.1, 0.5, 0.9, 0.95)
"""Quantile levels: the 90 % and 80 % intervals and the median."""


@dataclass(frozen=True)
class ScoreTask:
    """One episode to run and score (picklable).

    Attributes:
        model_dir: The fit-world-model folder.
        entry: Suite entry id.
        scenario: Its scenario.
        behaviour: Behaviour policy.
        replicate: Replicate index.
        seed: Env seed (``entry.run_seed(replicate)``).
        fidelity: Simulator fidelity.
        horizon: H.
        warmup: First origin.
        every: Origin stride.
        n_samples: Draws per forecast.
        forecast_seed: Seed of the draws.
        threads: Torch threads.
    """

    model_dir: str
    entry: str
    scenario: Any
    behaviour: str
    replicate: int
    seed: int
    fidelity: str
    horizon: int
    warmup: int
    every: int
    n_samples: int
    forecast_seed: int
    threads: int


@dataclass
class EpisodeScores:
    """Per-origin scores of one episode.

    Attributes:
        entry: Suite entry id.
        behaviour: Behaviour policy.
        replicate: Replicate index.
        origins: ``[B]`` forecast origins.
        scores: ``[forecaster][metric][stat]`` -> ``[B, H, S]`` with stats ``abs_err``,
            ``crps``, ``in80``, ``in90`` (NaN where the truth is missing).
        p_violation: ``[forecaster]`` -> ``[B]`` probability of a violation within H.
        outcome: ``[B]`` 1.0 where a violation happened within H.
        wall_s: Wall seconds (episode and forecasts).
    """

    entry: str
    behaviour: str
    replicate: int
    origins: np.ndarray
    scores: dict[str, dict[str, dict[str, np.ndarray]]]
    p_violation: dict[str, np.ndarray]
    outcome: np.ndarray
    wall_s: float


_FIT_CACHE: dict[str, FittedModel] = {}


def cached_fit(model_dir: str) -> FittedModel:
    """The fitted model of ``model_dir``, loaded once per process."""
    if model_dir not in _FIT_CACHE:
        _FIT_CACHE[model_dir] = load_fit(model_dir)
    return _FIT_CACHE[model_dir]


def score_draws(draws: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of ``[B, N, H, S]`` draws against ``[B, H, S]`` truths, each ``[B, H, S]``."""
    x = np.moveaxis(draws, 1, -1)  # [B, H, S, N]
    q = np.quantile(x, LEVELS, axis=-1)  # [Q, B, H, S]
    return {
        "abs_err": abs_error(q[LEVELS.index(0.5)], truth),
        "crps": crps_samples(x, truth),
        "in80": inside(q[LEVELS.index(0.1)], q[LEVELS.index(0.9)], truth),
        "in90": inside(q[LEVELS.index(0.05)], q[LEVELS.index(0.95)], truth),
    }


def score_task(task: ScoreTask) -> EpisodeScores:
    """Run one episode under its behaviour and score every forecaster at every origin."""
    start = time.perf_counter()
    torch.set_num_threads(task.threads)
    fit = cached_fit(task.model_dir)
    model = model_on(fit, task.scenario)
    layout = model.layout
    ep = run_episode(task.scenario, task.behaviour, task.seed, task.fidelity)
    origins = forecast_origins(len(ep["obs"]), task.horizon, task.warmup, task.every)
    h = task.horizon
    if origins.size == 0:
        raise ValueError(
            f"entry {task.entry}: {len(ep['obs'])} rows leave no origin for warmup "
            f"{task.warmup} and horizon {h}"
        )
    truth = truths(ep, layout, origins, h)
    sf = forecast_batch(
        model,
        ep["obs"],
        ep["action"],
        origins,
        planned_actions(ep, origins, h),
        n_services=layout.n_services,
        n_samples=task.n_samples,
        seed=task.forecast_seed + task.seed,
    )
    period = period_steps(task.scenario)
    bounds = physical_bounds(task.scenario)
    persistence = naive_for(fit.persistence, layout.n_services)
    seasonal = naive_for(fit.seasonal, layout.n_services)
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = {f: {} for f in FORECASTERS}
    for m in METRICS:
        raw = sf.samples[m]
        cal = fit.calibration.apply_raw(m, raw, sf.offset[m], sf.decoded[m])
        series = raw_series(ep, layout, m)
        draws = {
            "model": raw,
            "model_cal": cal,
            "persistence": persistence.samples(m, series, origins, period),
            "seasonal": seasonal.samples(m, series, origins, period),
        }
        for f in FORECASTERS:
            # every forecaster's draws within the physical ranges (issue 17, item 5)
            clipped = clip_to_bounds(m, draws[f][:, :, :h], bounds[m])
            scores[f][m] = score_draws(clipped, truth[m])
    return EpisodeScores(
        task.entry,
        task.behaviour,
        task.replicate,
        origins,
        scores,
        {
            "model": sf.p_violation,
            "model_cal": fit.calibration.apply_violation(sf.p_violation),
            "naive": fit.violation.predict(ep["violation"], origins),
            "climatology": np.full(origins.size, fit.violation.base_rate),
        },
        NaiveViolation.outcomes(ep["violation"], origins, h),
        time.perf_counter() - start,
    )


def score_tasks(tasks: Sequence[ScoreTask], workers: int, progress: bool) -> list[EpisodeScores]:
    """Score every task (in ``workers`` spawned processes when > 1), in task order."""
    with ProgressBar(progress, len(tasks), "forecast") as tick:
        return parallel_map(score_task, tasks, workers, on_result=lambda i, _: tick(tasks[i].entry))
