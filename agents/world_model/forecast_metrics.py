"""Scores of probabilistic forecasts: MAE, CRPS, interval coverage, Brier, reliability.

Conventions: forecasts and truths are numpy arrays in raw units; a truth that is NaN
(a missing value: no ready pod, a telemetry gap) is left out of every average, never
counted as zero.

* **MAE** is the mean absolute error of the point forecast (the median of the forecast
  distribution; the median is the point forecast that MAE rewards).
* **CRPS** is computed from samples (an ensemble; a quantile grid at levels
  ``(k + 0.5) / M`` counts as one): the CRPS of the ensemble's empirical distribution,
  ``E|X - y| - E|X - X'| / 2`` over all pairs (Gneiting & Raftery 2007, eq. 21, the "NRG"
  form), in ``O(M log M)`` through the sorted samples. It is in the units of the data, and
  equals the absolute error when the forecast is a point (all samples equal).
* **Coverage** of the central ``c`` interval is the fraction of truths inside
  ``[q_{(1-c)/2}, q_{(1+c)/2}]`` (ends included).
* **Brier** is ``mean((p - o)^2)`` for probabilities ``p`` of binary outcomes ``o``;
  :func:`reliability` bins ``p`` in equal-width bins and returns the mean ``p`` and the
  observed frequency per bin (a reliability diagram's points).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _valid(y: np.ndarray) -> np.ndarray:
    return ~np.isnan(y)


def abs_error(point: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``|point - y|`` elementwise (NaN where ``y`` is NaN)."""
    return np.abs(np.asarray(point, dtype=np.float64) - np.asarray(y, dtype=np.float64))


def mae(point: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute error over the entries where ``y`` is known (NaN if none)."""
    err = abs_error(point, y)
    return float(np.nanmean(err)) if np.any(_valid(err)) else float("nan")


def crps_samples(samples: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CRPS of the empirical distribution of ``samples`` at ``y``, elementwise.

    Args:
        samples: ``[..., M]`` draws (or an evenly spaced quantile grid) per forecast.
        y: ``[...]`` truths (NaN: the result is NaN there).

    Returns:
        ``[...]`` CRPS values, ``mean_i |x_i - y| - (1 / M^2) sum_i (2i - M - 1) x_(i)``
        (``x_(i)`` sorted, ``i = 1..M``), which is ``E|X - y| - E|X - X'| / 2``.
    """
    x = np.sort(np.asarray(samples, dtype=np.float64), axis=-1)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[:-1] != y.shape:
        raise ValueError(f"crps_samples: samples {x.shape} do not match truths {y.shape} + (M,)")
    m = x.shape[-1]
    term1 = np.mean(np.abs(x - y[..., None]), axis=-1)
    weights = (2.0 * np.arange(1, m + 1) - m - 1.0) / (m * m)
    term2 = np.sum(x * weights, axis=-1)
    return term1 - term2


def crps(samples: np.ndarray, y: np.ndarray) -> float:
    """Mean of :func:`crps_samples` over the entries where ``y`` is known (NaN if none)."""
    c = crps_samples(samples, y)
    return float(np.nanmean(c)) if np.any(_valid(c)) else float("nan")


def inside(lo: np.ndarray, hi: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1.0 where ``lo <= y <= hi``, 0.0 outside, NaN where ``y`` is NaN."""
    y = np.asarray(y, dtype=np.float64)
    hit = ((np.asarray(lo) <= y) & (y <= np.asarray(hi))).astype(np.float64)
    return np.where(_valid(y), hit, np.nan)


def coverage(lo: np.ndarray, hi: np.ndarray, y: np.ndarray) -> float:
    """Fraction of known truths inside ``[lo, hi]`` (NaN if none)."""
    h = inside(lo, hi, y)
    return float(np.nanmean(h)) if np.any(_valid(h)) else float("nan")


def interval_levels(level: float) -> tuple[float, float]:
    """Quantile levels of the central ``level`` interval: ``0.9 -> (0.05, 0.95)``."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level {level} must be in (0, 1)")
    return (round((1.0 - level) / 2.0, 10), round((1.0 + level) / 2.0, 10))


def brier(p: np.ndarray, outcome: np.ndarray) -> float:
    """``mean((p - o)^2)`` over the known outcomes (NaN: left out)."""
    p = np.asarray(p, dtype=np.float64)
    o = np.asarray(outcome, dtype=np.float64)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("brier: probabilities must lie in [0, 1]")
    ok = _valid(o) & _valid(p)
    return float(np.mean((p[ok] - o[ok]) ** 2)) if ok.any() else float("nan")


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram's data: equal-width bins of forecast probability.

    Attributes:
        edges: ``[n_bins + 1]`` bin edges over [0, 1].
        mean_p: ``[n_bins]`` mean forecast probability per bin (NaN when empty).
        frequency: ``[n_bins]`` observed frequency of the event per bin (NaN when empty).
        count: ``[n_bins]`` forecasts per bin.
    """

    edges: np.ndarray
    mean_p: np.ndarray
    frequency: np.ndarray
    count: np.ndarray

    def as_dict(self) -> dict[str, list[float]]:
        """JSON-ready lists (NaN becomes None)."""

        def clean(a: np.ndarray) -> list[float]:
            return [None if np.isnan(v) else float(v) for v in a.astype(float)]  # type: ignore[misc]

        return {
            "edges": clean(self.edges),
            "mean_p": clean(self.mean_p),
            "frequency": clean(self.frequency),
            "count": [float(c) for c in self.count],
        }


def reliability(p: np.ndarray, outcome: np.ndarray, n_bins: int = 10) -> Reliability:
    """Bin ``p`` into ``n_bins`` equal-width bins (the last one closed) and compare.

    Raises:
        ValueError: For ``n_bins < 1`` or probabilities outside [0, 1].
    """
    if n_bins < 1:
        raise ValueError(f"reliability: n_bins={n_bins} must be >= 1")
    p = np.asarray(p, dtype=np.float64).ravel()
    o = np.asarray(outcome, dtype=np.float64).ravel()
    ok = _valid(p) & _valid(o)
    p, o = p[ok], o[ok]
    if np.any((p < 0) | (p > 1)):
        raise ValueError("reliability: probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=n_bins) / count
        freq = np.bincount(idx, weights=o, minlength=n_bins) / count
    return Reliability(edges, mean_p, freq, count)


def empirical_quantiles(samples: np.ndarray, levels: tuple[float, ...] | np.ndarray) -> np.ndarray:
    """Quantiles over the last axis: ``[..., M] -> [..., Q]`` (linear interpolation)."""
    q = np.quantile(np.asarray(samples, dtype=np.float64), np.asarray(levels), axis=-1)
    return np.moveaxis(q, 0, -1)
