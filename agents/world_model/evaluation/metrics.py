"""Forecast scores from libraries and the steady / incident windows they are reported on.

MASE, CRPS (scoringrules), interval coverage, Brier score and reliability (scikit-learn):

* **MASE** (Hyndman & Koehler 2006, *Another look at measures of forecast accuracy*): the
  absolute error of the point forecast (the median of the draws) divided by the series'
  scale, the in-sample mean absolute error of the one-step naive forecast
  ``mean |y[i] - y[i-1]|`` over the recorded episode (:func:`mase_scale`). A series whose
  scale is below :data:`~agents.world_model.forecast.baselines.SCALE_FLOOR` is *flat*: every
  sensible forecaster is exact on it up to noise, and a ratio to a zero scale is undefined,
  so flat series are left out of MASE (and counted) instead of diluting it. The scale is the
  episode's, not the history's before each origin, so that a series flat until an incident
  still has a finite scale at the incident; it is the same for every forecaster, so MASE
  ratios between forecasters stay paired.
* **CRPS**: ``scoringrules.crps_ensemble`` with the quantile-decomposition (``qd``)
  estimator: the CRPS of the draws' empirical distribution, equal to the energy form
  ``E|X - y| - E|X - X'| / 2`` (``nrg``) in O(N log N) instead of O(N^2) (80x faster on a
  mesh40 episode); a quantile grid counts as an ensemble.
* **Coverage**: the share of truths inside the central 80 % / 90 % interval of the draws.
* **Brier** and **reliability**: ``sklearn.metrics.brier_score_loss`` and
  ``sklearn.calibration.calibration_curve`` (10 equal-width bins) of P(SLO violation within
  H); :func:`reliability_sums` keeps the per-bin sums so that runs can be pooled.
* **Windows** (:func:`window_masks`): an origin is *incident* when a fault starts within
  ``[t - INCIDENT_AFTER_S, t + H dt]`` (the forecast window holds the onset, or the origin
  lies in the first 10 minutes after it), *steady* otherwise (before the run-up to the
  first onset, or more than 10 minutes after every onset).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agents.world_model.forecast.baselines import SCALE_FLOOR

WINDOWS: tuple[str, ...] = ("all", "steady", "incident")
"""Origin windows each score is reported on."""
INCIDENT_AFTER_S = 600.0
"""Seconds after a fault onset that origins count as *incident*."""
STATS: tuple[str, ...] = ("ase", "n_ase", "ae", "crps", "in80", "in90", "n")
"""Per (window, step) sums a run keeps: scaled abs error and its count (non-flat series),
abs error, CRPS, hits of the 80 / 90 % intervals, count of known truths."""
N_BINS = 10
"""Reliability bins."""


def mase_scale(metric: str, y: np.ndarray) -> np.ndarray:
    """``[S]`` in-sample one-step naive MAE of each series of ``y`` ``[T, S]``.

    Over the consecutive known pairs; NaN for a flat series (scale below
    :data:`~agents.world_model.forecast.baselines.SCALE_FLOOR` or no known pair).
    """
    y = np.asarray(y, dtype=np.float64)
    d = np.abs(np.diff(y, axis=0))
    ok = ~np.isnan(d)
    n = ok.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(ok, d, 0.0).sum(0) / n
    return np.where((n > 0) & (s >= SCALE_FLOOR[metric]), s, np.nan)


def crps_ensemble(draws: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``[...]`` CRPS of ``[..., N]`` draws at ``[...]`` truths (NaN where the truth is)."""
    import scoringrules as sr

    y = np.asarray(truth, dtype=np.float64)
    c = np.asarray(
        sr.crps_ensemble(np.nan_to_num(y), np.asarray(draws, np.float64), estimator="qd"),
        dtype=np.float64,
    )
    return np.where(np.isnan(y), np.nan, c)


def window_masks(scenario: Any, origins: np.ndarray, horizon: int) -> dict[str, np.ndarray]:
    """``[B]`` boolean masks of :data:`WINDOWS` for origins of an episode of ``scenario``."""
    dt = float(scenario.decision_interval_s)
    t = np.asarray(origins, dtype=np.float64) * dt
    onsets = np.array([float(f.at_s) for f in scenario.faults])
    if onsets.size == 0:
        return {
            "all": np.ones(t.size, bool),
            "steady": np.ones(t.size, bool),
            "incident": np.zeros(t.size, bool),
        }
    end = t + horizon * dt
    incident = np.asarray(
        ((onsets[None] >= t[:, None] - INCIDENT_AFTER_S) & (onsets[None] <= end[:, None])).any(1)
    )
    return {"all": np.ones(t.size, bool), "steady": ~incident, "incident": incident}


def score_sums(
    metric: str,
    draws: np.ndarray,
    truth: np.ndarray,
    series: np.ndarray,
    masks: dict[str, np.ndarray],
) -> np.ndarray:
    """``[W, H, K]`` sums of :data:`STATS` per window (:data:`WINDOWS`) and step.

    Args:
        metric: The metric (for the flat-series floor of :func:`mase_scale`).
        draws: ``[B, N, H, S]`` raw draws.
        truth: ``[B, H, S]`` raw truths (NaN: missing, left out).
        series: ``[T, S]`` the whole recorded series (the MASE scale).
        masks: Window -> ``[B]`` origins in it.
    """
    x = np.moveaxis(np.asarray(draws, np.float64), 1, -1)  # [B, H, S, N]
    q05, q10, q50, q90, q95 = np.quantile(x, (0.05, 0.1, 0.5, 0.9, 0.95), axis=-1)
    known = ~np.isnan(truth)
    ae = np.abs(q50 - truth)
    scale = mase_scale(metric, series)[None, None, :]
    ase = ae / scale  # NaN where flat or missing
    crps = crps_ensemble(x, truth)
    in80 = (q10 <= truth) & (truth <= q90)
    in90 = (q05 <= truth) & (truth <= q95)
    per = {
        "ase": np.nan_to_num(ase),
        "n_ase": np.asarray(~np.isnan(ase)),
        "ae": np.where(known, ae, 0.0),
        "crps": np.where(known, crps, 0.0),
        "in80": np.asarray(in80 & known),
        "in90": np.asarray(in90 & known),
        "n": np.asarray(known),
    }
    out = np.zeros((len(WINDOWS), truth.shape[1], len(STATS)))
    for w, name in enumerate(WINDOWS):
        sel = masks[name]
        for k, stat in enumerate(STATS):
            out[w, :, k] = np.asarray(per[stat][sel], np.float64).sum(axis=(0, 2))
    return out


def reliability_sums(p: np.ndarray, outcome: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """``[n_bins, 3]`` per equal-width bin of ``p``: count, sum of ``p``, sum of outcomes."""
    p = np.clip(np.asarray(p, np.float64), 0.0, 1.0)
    o = np.asarray(outcome, np.float64)
    idx = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    out = np.zeros((n_bins, 3))
    np.add.at(out[:, 0], idx, 1.0)
    np.add.at(out[:, 1], idx, p)
    np.add.at(out[:, 2], idx, o)
    return out


def brier_score(p: np.ndarray, outcome: np.ndarray) -> float:
    """``sklearn.metrics.brier_score_loss`` (NaN for no outcome)."""
    from sklearn.metrics import brier_score_loss

    o = np.asarray(outcome, np.float64)
    if o.size == 0:
        return float("nan")
    return float(brier_score_loss(o.astype(int), np.clip(np.asarray(p, np.float64), 0, 1)))


def calibration(
    p: np.ndarray, outcome: np.ndarray, n_bins: int = N_BINS
) -> tuple[np.ndarray, np.ndarray]:
    """``sklearn.calibration.calibration_curve`` with uniform bins.

    Returns ``(observed frequency, mean p)`` over the non-empty bins.
    """
    from sklearn.calibration import calibration_curve

    frac, mean_p = calibration_curve(
        np.asarray(outcome).astype(int), np.clip(np.asarray(p, np.float64), 0, 1), n_bins=n_bins
    )
    return np.asarray(frac), np.asarray(mean_p)
