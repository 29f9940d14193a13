"""What a recorded episode gives a forecast evaluation: origins, plans and truths.

An episode is a dict of arrays as :func:`agents.world_model.data.run_episode` returns it
(``obs`` ``[T+1, O]``, ``action`` ``[T+1, A]``, ``violation`` ...). Row ``t`` of ``action``
holds the features of the action that led to row ``t`` of ``obs``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agents.world_model.forecast.types import METRICS, symexp_np


def forecast_origins(n_rows: int, horizon: int, warmup: int, every: int) -> np.ndarray:
    """Origins ``t = warmup, warmup + every, ...`` with ``t + horizon < n_rows``.

    ``warmup`` is the index of the first origin, so its history has ``warmup + 1`` rows.
    """
    if every < 1 or warmup < 0 or horizon < 1:
        raise ValueError(
            f"need every >= 1, warmup >= 0, horizon >= 1; got {every}, {warmup}, {horizon}"
        )
    return np.arange(warmup, n_rows - horizon, every, dtype=int)


def planned_actions(
    episode: dict[str, np.ndarray], origins: np.ndarray, horizon: int
) -> np.ndarray:
    """``[B, H, A]`` action features actually taken after each origin (rows ``t+1 .. t+H``)."""
    idx = np.asarray(origins)[:, None] + np.arange(1, horizon + 1)[None, :]
    return np.asarray(episode["action"][idx], dtype=np.float32)


def truths(
    episode: dict[str, np.ndarray], layout: Any, origins: np.ndarray, horizon: int
) -> dict[str, np.ndarray]:
    """Metric -> ``[B, H, S]`` raw values observed ``1 .. H`` steps after each origin."""
    idx = np.asarray(origins)[:, None] + np.arange(1, horizon + 1)[None, :]
    return {m: raw_series(episode, layout, m)[idx] for m in METRICS}


def raw_series(episode: dict[str, np.ndarray], layout: Any, metric: str) -> np.ndarray:
    """``[T+1, S]`` raw values of a service metric from an episode's observations.

    NaN where the observation's mask says the value was missing.
    """
    obs = episode["obs"]
    idx = [layout.service_index(i, metric) for i in range(layout.n_services)]
    vals = obs[:, layout.values][:, idx]
    mask = obs[:, layout.mask][:, idx] > 0.5
    return np.where(mask, symexp_np(vals), np.nan)
