"""One interface for every forecaster the evaluation scores: baselines and world models.

A :class:`Forecaster` sees one recorded episode as an :class:`EpisodeHistory` (raw
per-service series of :data:`~agents.world_model.forecast.types.METRICS`, the SLO-violation
flags, the action features, the encoded observations and the scenario) and, for B forecast
origins ``t``, returns a :class:`ForecastDraws`: raw draws ``[B, N, H, S]`` per metric and the
probability ``[B]`` of an SLO violation within the H steps after ``t``.

What a forecast may read of the episode (the evaluation's no-peeking rule): rows ``0..t`` of
``series``, ``violation`` and ``obs``, and rows ``t+1 .. t+H`` of ``action`` (the plan: the
actions the behaviour actually took, which a world model conditions on; a baseline ignores
them). Nothing else of the future.

Quantile forecasts are returned as draws too: an evenly spaced quantile grid at levels
``(k + 0.5) / M`` (:func:`quantile_levels`) counts as an ensemble of M members, and the
scores (CRPS, coverage, the median) treat it as one.

Forecasters that learn implement :meth:`Forecaster.fit` on TRAIN-suite episodes
(``train:fit`` under ``docs/protocol.md``); the others return themselves.
:class:`WorldModelForecaster` is the adapter for any model :func:`forecast_batch` runs (the
:class:`~agents.world_model.forecast.types.ForecastModel` protocol, optionally with a
:class:`~agents.world_model.forecast.calibration.Calibration`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from agents.world_model.forecast.calibration import Calibration
from agents.world_model.forecast.episodes import planned_actions
from agents.world_model.forecast.naive import period_steps
from agents.world_model.forecast.rollout import forecast_batch
from agents.world_model.forecast.types import (
    METRICS,
    ForecastModel,
    SampleForecast,
    clip_to_bounds,
    physical_bounds,
    symexp_np,
)


def quantile_levels(m: int) -> np.ndarray:
    """``[M]`` levels ``(k + 0.5) / M``: a quantile grid that scores as an ensemble."""
    if m < 1:
        raise ValueError(f"quantile_levels: m={m} must be >= 1")
    return (np.arange(m) + 0.5) / m


def _raw_from_obs(obs: np.ndarray, layout: Any, metric: str) -> np.ndarray:
    idx = [layout.service_index(i, metric) for i in range(layout.n_services)]
    vals = obs[:, layout.values][:, idx]
    mask = obs[:, layout.mask][:, idx] > 0.5
    return np.asarray(np.where(mask, symexp_np(vals), np.nan), dtype=np.float64)


@dataclass(frozen=True)
class EpisodeHistory:
    """One recorded episode, as every forecaster sees it.

    Attributes:
        scenario: The episode's scenario (topology, traffic, faults, horizon).
        series: Metric -> ``[T+1, S]`` raw values (NaN where missing).
        violation: ``[T+1]`` 1.0 where the step violated an SLO.
        action: ``[T+1, A]`` action features that led to each row (row 0: zeros).
        obs: ``[T+1, O]`` encoded observations (``env.encoder``), for world models.
        entry: Suite entry id.
        behaviour: Behaviour policy that ran it.
        replicate: Replicate index.
    """

    scenario: Any
    series: dict[str, np.ndarray]
    violation: np.ndarray
    action: np.ndarray
    obs: np.ndarray
    entry: str = ""
    behaviour: str = ""
    replicate: int = 0

    @classmethod
    def from_episode(
        cls,
        episode: dict[str, np.ndarray],
        scenario: Any,
        *,
        entry: str = "",
        behaviour: str = "",
        replicate: int = 0,
    ) -> EpisodeHistory:
        """From :func:`agents.world_model.data.run_episode`'s dict.

        The raw series are read with the default encoder layout of the scenario's topology.
        """
        from agents.world_model.config import ObsLayout

        layout = ObsLayout(n_services=len(scenario.service_names))
        obs = np.asarray(episode["obs"])
        if obs.shape[1] != layout.obs_size:
            raise ValueError(
                f"episode obs has {obs.shape[1]} columns, the {len(scenario.service_names)}-"
                f"service layout {layout.obs_size}: record it with the default ObsEncoder"
            )
        return cls(
            scenario,
            {m: _raw_from_obs(obs, layout, m) for m in METRICS},
            np.asarray(episode["violation"], dtype=np.float64),
            np.asarray(episode["action"], dtype=np.float32),
            obs,
            entry,
            behaviour,
            replicate,
        )

    @property
    def services(self) -> tuple[str, ...]:
        """S service names, topology order."""
        return tuple(self.scenario.service_names)

    @property
    def n_rows(self) -> int:
        """T + 1."""
        return int(self.violation.shape[0])

    @property
    def dt_s(self) -> float:
        """Seconds per step."""
        return float(self.scenario.decision_interval_s)

    @property
    def period(self) -> int | None:
        """Traffic period in steps (None when aperiodic)."""
        return period_steps(self.scenario)

    def bounds(self) -> dict[str, np.ndarray]:
        """Per-service physical upper bounds (:func:`physical_bounds`)."""
        return physical_bounds(self.scenario)


@dataclass(frozen=True)
class ForecastDraws:
    """What :meth:`Forecaster.predict` returns for B origins.

    Attributes:
        samples: Metric -> ``[B, N, H, S]`` raw draws (or a quantile grid at
            :func:`quantile_levels`), within the physical ranges.
        p_violation: ``[B]`` probability of an SLO violation within H steps (None: the
            forecaster does not forecast it).
    """

    samples: dict[str, np.ndarray]
    p_violation: np.ndarray | None = None


@runtime_checkable
class Forecaster(Protocol):
    """A probabilistic forecaster of service telemetry (see the module docstring).

    Attributes:
        name: Its name in tables and result files.
        horizon: H, the steps it forecasts.
    """

    name: str
    horizon: int

    def fit(self, episodes: Sequence[EpisodeHistory]) -> Forecaster:
        """Learn from TRAIN episodes (``train:fit``); returns itself."""
        ...

    def predict(self, episode: EpisodeHistory, origins: np.ndarray) -> ForecastDraws:
        """Forecast H steps from each origin ``t`` of ``episode`` (rows ``0..t`` only)."""
        ...


@dataclass
class WorldModelForecaster:
    """Adapter: a world model run through :func:`forecast_batch`, as a :class:`Forecaster`.

    The model conditions on the actions actually taken after each origin
    (:func:`planned_actions`); the draws are clipped to the scenario's
    :func:`physical_bounds`. ``fit`` does nothing (the model is fitted by
    ``opsworld fit-world-model``).

    Attributes:
        model: Anything :func:`forecast_batch` accepts.
        calibration: Applied to the draws and the violation probability (None: raw).
        name: Table name (``model`` / ``model_cal`` by convention).
        horizon: H.
        n_samples: Draws per origin.
        seed: Seed of the draws.
        shared: Optional memo of raw forecasts shared with another adapter of the model.
    """

    model: ForecastModel
    calibration: Calibration | None
    name: str
    horizon: int
    n_samples: int = 64
    seed: int = 0
    shared: dict[Any, SampleForecast] | None = None

    def fit(self, episodes: Sequence[EpisodeHistory]) -> WorldModelForecaster:
        """Nothing to fit here."""
        return self

    def raw(self, episode: EpisodeHistory, origins: np.ndarray) -> SampleForecast:
        """The uncalibrated :func:`forecast_batch` of ``origins``.

        Memoised in :attr:`shared` when given (a dict): a raw and a calibrated adapter of
        one model that share it imagine each episode once.
        """
        key = (episode.entry, episode.behaviour, episode.replicate, tuple(origins.tolist()))
        if self.shared is not None and key in self.shared:
            return self.shared[key]
        sf = forecast_batch(
            self.model,
            episode.obs,
            episode.action,
            origins,
            planned_actions({"action": episode.action}, origins, self.horizon),
            n_services=len(episode.services),
            n_samples=self.n_samples,
            seed=self.seed,
        )
        if self.shared is not None:
            self.shared.clear()  # one episode at a time: the raw and calibrated passes alternate
            self.shared[key] = sf
        return sf

    def predict(self, episode: EpisodeHistory, origins: np.ndarray) -> ForecastDraws:
        """Draws from ``origins`` under the actions taken after them.

        Calibrated and clipped to the physical ranges, as
        ``forecast_batch(calibration=, bounds=)`` does.
        """
        origins = np.asarray(origins, dtype=int)
        sf = self.raw(episode, origins)
        samples, p = sf.samples, sf.p_violation
        if self.calibration is not None:
            cal = self.calibration
            samples = {
                m: cal.apply_raw(m, x, sf.offset[m], sf.decoded[m]) for m, x in samples.items()
            }
            p = cal.apply_violation(p)
        bounds = episode.bounds()
        samples = {m: clip_to_bounds(m, x, bounds.get(m)) for m, x in samples.items()}
        return ForecastDraws(samples, p)
