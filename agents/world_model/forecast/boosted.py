"""A direct gradient-boosted forecaster: one LightGBM regressor per metric and horizon step.

:class:`LightGBMDirect` is the strongest learned baseline: for every (origin, service) it
builds lagged features of the service's own telemetry and of the cluster
(:func:`features`), and a LightGBM regressor per (metric, h) (Ke et al. 2017, *LightGBM*;
the "direct" multi-horizon strategy, Taieb et al. 2012) predicts the scaled change
``(y[t+h] - y[t]) / scale_t`` with the L1 objective (its median), ``scale_t`` the series'
recent variability (:func:`~agents.world_model.forecast.baselines.recent_scale`). Scaled
targets and features make the model independent of a service's units and of the
topology: it is trained on chain3 and boutique episodes and runs on any topology.

Intervals are scaled residual quantiles as in
:mod:`~agents.world_model.forecast.baselines`, measured on the TRAIN episodes the
regressors did not see (every ``holdout_every``-th episode). The violation probability is a
LightGBM classifier on per-origin cluster features (the per-service features' max and mean
over services, the current violation flag and the violations of the last 20 steps), trained
on the same episodes as the regressors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agents.world_model.forecast.baselines import (
    SCALE_WINDOW,
    filled,
    horizon_index,
    recent_scale,
)
from agents.world_model.forecast.forecaster import (
    EpisodeHistory,
    ForecastDraws,
    quantile_levels,
)
from agents.world_model.forecast.types import METRICS, clip_to_bounds, symlog_np

LAGS: tuple[int, ...] = (1, 2, 4, 8, 20)
"""Lags (steps) of the change features."""


def features(episode: EpisodeHistory, origins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-service and per-origin features at ``origins`` (rows ``0..t`` only).

    Returns:
        ``([B, S, F] service features, [B, G] cluster features)``. Per metric: the level
        ``symlog(y_t)``, the changes ``(y_t - y_{t-l}) / scale`` for :data:`LAGS`, the
        deviation from and the spread over the last 20 rows (over ``scale``) and
        ``log10(scale)``; per origin: the violation flag, the violations of the last
        20 steps, and the max and mean over services of every service feature.
    """
    t = np.asarray(origins, dtype=int)
    cols = []
    for m in METRICS:
        f = filled(episode.series[m])  # [T, S]
        sc = recent_scale(m, episode.series[m], t)  # [B, S]
        now = f[t]
        cols.append(symlog_np(now))
        for lag in LAGS:
            cols.append((now - f[np.maximum(t - lag, 0)]) / sc)
        win = np.stack([f[np.maximum(t - k, 0)] for k in range(SCALE_WINDOW)], 0)  # [W, B, S]
        cols.append((now - win.mean(0)) / sc)
        cols.append(win.std(0) / sc)
        cols.append(np.log10(sc))
    svc = np.stack(cols, -1)  # [B, S, F]
    v = episode.violation
    c = np.concatenate([[0.0], np.cumsum(v > 0.5)])
    recent = c[t + 1] - c[np.maximum(t + 1 - SCALE_WINDOW, 0)]
    cluster = np.concatenate(
        [(v[t] > 0.5)[:, None], recent[:, None], svc.max(1), svc.mean(1)], axis=1
    )
    return svc.astype(np.float64), cluster.astype(np.float64)


def _lgb_params(seed: int, n_estimators: int) -> dict[str, Any]:
    """Settings both LightGBM models share: bagging, one thread, deterministic, quiet."""
    return {
        "n_estimators": n_estimators,
        "learning_rate": 0.05,
        "min_child_samples": 40,
        "subsample": 0.8,
        "subsample_freq": 1,
        "colsample_bytree": 0.8,
        "random_state": seed,
        "n_jobs": 1,
        "deterministic": True,
        "force_row_wise": True,
        "verbose": -1,
    }


def _regressor(seed: int, n_estimators: int) -> Any:
    import lightgbm as lgb

    return lgb.LGBMRegressor(objective="l1", num_leaves=31, **_lgb_params(seed, n_estimators))


def _classifier(seed: int, n_estimators: int) -> Any:
    import lightgbm as lgb

    return lgb.LGBMClassifier(num_leaves=15, **_lgb_params(seed, n_estimators))


@dataclass
class LightGBMDirect:
    """Direct LightGBM forecaster (see the module docstring).

    Attributes:
        name: Table name.
        horizon: H.
        seed: LightGBM's seed (bagging and feature sampling): the training seed.
        n_estimators: Trees per regressor / classifier.
        n_levels: Quantile-grid size M.
        fit_every: Origin stride on the TRAIN episodes.
        warmup: First TRAIN origin.
        holdout_every: Every ``holdout_every``-th TRAIN episode measures the residuals
            instead of training the regressors.
        models: ``[metric][h]`` fitted regressors.
        residuals: Metric -> ``[H, M]`` scaled residual quantiles.
        violation_model: The fitted classifier.
    """

    name: str = "lightgbm"
    horizon: int = 20
    seed: int = 0
    n_estimators: int = 100
    n_levels: int = 50
    fit_every: int = 4
    warmup: int = 20
    holdout_every: int = 4
    models: dict[str, list[Any]] = field(default_factory=dict)
    residuals: dict[str, np.ndarray] = field(default_factory=dict)
    violation_model: Any = None

    def _rows(
        self, episodes: Sequence[EpisodeHistory]
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """Stacked ``(X [R, F+G], cluster X [B, G], targets {m: [R, H]}, outcome [B])``."""
        xs, xc, ys, outs = [], [], {m: [] for m in METRICS}, []  # type: ignore[var-annotated]
        for ep in episodes:
            origins = np.arange(self.warmup, ep.n_rows - self.horizon, self.fit_every)
            if origins.size == 0:
                continue
            svc, clu = features(ep, origins)
            b, s, _ = svc.shape
            xs.append(np.concatenate([svc, np.repeat(clu[:, None], s, 1)], -1).reshape(b * s, -1))
            xc.append(clu)
            idx = horizon_index(origins, self.horizon)
            for m in METRICS:
                f = filled(ep.series[m])
                truth = ep.series[m][idx]  # [B, H, S] (NaN where missing)
                sc = recent_scale(m, ep.series[m], origins)[:, None, :]
                z = (truth - f[origins][:, None, :]) / sc
                ys[m].append(np.moveaxis(z, 2, 1).reshape(b * s, self.horizon))
            outs.append((ep.violation[idx] > 0.5).any(1).astype(np.float64))
        if not xs:
            raise ValueError(f"{self.name}: no TRAIN origin (episodes shorter than warmup + H)")
        return (
            np.concatenate(xs),
            np.concatenate(xc),
            {m: np.concatenate(v) for m, v in ys.items()},
            np.concatenate(outs),
        )

    def fit(self, episodes: Sequence[EpisodeHistory]) -> LightGBMDirect:
        """Train the regressors and the classifier; residual quantiles on the rest."""
        train = [
            ep for i, ep in enumerate(episodes) if i % self.holdout_every != self.holdout_every - 1
        ]
        held = [
            ep for i, ep in enumerate(episodes) if i % self.holdout_every == self.holdout_every - 1
        ]
        if not held or not train:
            raise ValueError(
                f"{self.name}: {len(episodes)} TRAIN episodes; need at least "
                f"{self.holdout_every} (holdout_every={self.holdout_every})"
            )
        x, xc, ys, out = self._rows(train)
        for m in METRICS:
            self.models[m] = []
            for h in range(self.horizon):
                y = ys[m][:, h]
                ok = ~np.isnan(y)
                reg = _regressor(self.seed + 1000 * h, self.n_estimators)
                reg.fit(x[ok], y[ok])
                self.models[m].append(reg)
        clf = _classifier(self.seed, self.n_estimators)
        if out.min() == out.max():  # one class only: a constant probability
            self.violation_model = float(out[0])
        else:
            clf.fit(xc, out.astype(int))
            self.violation_model = clf
        levels = quantile_levels(self.n_levels)
        xh, _, yh, _ = self._rows(held)
        for m in METRICS:
            q = np.zeros((self.horizon, self.n_levels))
            for h in range(self.horizon):
                r = yh[m][:, h] - self.models[m][h].predict(xh)
                r = r[~np.isnan(r)]
                if r.size:
                    q[h] = np.quantile(r, levels)
            self.residuals[m] = q
        return self

    def predict(self, episode: EpisodeHistory, origins: np.ndarray) -> ForecastDraws:
        """Quantile grids ``[B, M, H, S]`` and the classifier's violation probability."""
        if not self.models:
            raise RuntimeError(f"{self.name}: call fit() on TRAIN episodes first")
        origins = np.asarray(origins, dtype=int)
        svc, clu = features(episode, origins)
        b, s, _ = svc.shape
        x = np.concatenate([svc, np.repeat(clu[:, None], s, 1)], -1).reshape(b * s, -1)
        bounds = episode.bounds()
        out = {}
        for m in METRICS:
            f = filled(episode.series[m])
            sc = recent_scale(m, episode.series[m], origins)  # [B, S]
            z = np.stack([reg.predict(x) for reg in self.models[m]], -1)  # [B*S, H]
            z = np.moveaxis(z.reshape(b, s, self.horizon), 2, 1)  # [B, H, S]
            q = np.moveaxis(self.residuals[m], 1, 0)  # [M, H]
            zz = z[:, None] + q[None, :, :, None]  # [B, M, H, S]
            draws = f[origins][:, None, None, :] + sc[:, None, None, :] * zz
            out[m] = clip_to_bounds(m, draws, bounds[m])
        if isinstance(self.violation_model, float):
            p = np.full(b, self.violation_model)
        else:
            p = self.violation_model.predict_proba(clu)[:, 1]
        return ForecastDraws(out, np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0))
