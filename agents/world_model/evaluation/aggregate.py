"""Pooling the per-episode scores of ``opsworld evaluate-forecast`` into the report's numbers."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from agents.world_model.evaluation.scoring import (
    FORECASTERS,
    VIOLATION_FORECASTERS,
    EpisodeScores,
)
from agents.world_model.forecast import METRICS
from agents.world_model.forecast_metrics import brier, reliability


def _nanmean(a: np.ndarray, axis: Any = None) -> Any:
    """``np.nanmean`` without the all-NaN warning (an all-NaN slice gives NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def aggregate(results: Sequence[EpisodeScores], services: Sequence[str]) -> dict[str, Any]:
    """Pool every origin of every episode into the report's numbers.

    Per forecaster, metric and horizon step: MAE, CRPS and 80 % / 90 % coverage (means over
    origins and services); per service at the last step; the model's MAE skill vs the
    better naive forecaster; Brier scores and reliability bins of the violation probability.
    """
    pooled: dict[str, dict[str, dict[str, np.ndarray]]] = {
        f: {
            m: {
                s: np.concatenate([r.scores[f][m][s] for r in results], 0)
                for s in ("abs_err", "crps", "in80", "in90")
            }
            for m in METRICS
        }
        for f in FORECASTERS
    }
    per_step: dict[str, Any] = {}
    overall: dict[str, Any] = {}
    per_service: dict[str, Any] = {}
    for f in FORECASTERS:
        per_step[f], overall[f], per_service[f] = {}, {}, {}
        for m in METRICS:
            d = pooled[f][m]
            per_step[f][m] = {
                "mae": _nanmean(d["abs_err"], (0, 2)).tolist(),
                "crps": _nanmean(d["crps"], (0, 2)).tolist(),
                "coverage80": _nanmean(d["in80"], (0, 2)).tolist(),
                "coverage90": _nanmean(d["in90"], (0, 2)).tolist(),
            }
            overall[f][m] = {
                "coverage80": float(_nanmean(d["in80"])),
                "coverage90": float(_nanmean(d["in90"])),
                "n": int(np.sum(~np.isnan(d["in90"]))),
            }
            per_service[f][m] = {
                "mae_last": dict(
                    zip(services, _nanmean(d["abs_err"][:, -1], 0).tolist(), strict=True)
                ),
            }
    skill: dict[str, Any] = {}
    for m in METRICS:
        skill[m] = {}
        for k, step in (("last", -1), ("mean", None)):
            model_vals: dict[str, float] = {}
            for f in FORECASTERS:
                v = np.asarray(per_step[f][m]["mae"])
                model_vals[f] = float(v[step]) if step is not None else float(np.nanmean(v))
            best_naive = min(model_vals["persistence"], model_vals["seasonal"])
            skill[m][f"mae_{k}"] = model_vals
            for f in ("model", "model_cal"):
                skill[m][f"mae_skill_{f}_{k}"] = (
                    1.0 - model_vals[f] / best_naive if best_naive > 0 else float("nan")
                )
    outcome = np.concatenate([r.outcome for r in results])
    viol: dict[str, Any] = {"base_rate": float(outcome.mean()), "n": int(outcome.size)}
    for f in VIOLATION_FORECASTERS:
        p = np.concatenate([r.p_violation[f] for r in results])
        viol[f] = {"brier": brier(p, outcome), "reliability": reliability(p, outcome).as_dict()}
    ref = viol["climatology"]["brier"]
    for f in VIOLATION_FORECASTERS:
        viol[f]["brier_skill_vs_climatology"] = 1.0 - viol[f]["brier"] / ref if ref > 0 else None
    return {
        "per_step": per_step,
        "overall": overall,
        "per_service": per_service,
        "skill": skill,
        "violation": viol,
        "origins": int(outcome.size),
        "episodes": len(results),
    }
