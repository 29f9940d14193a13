"""Naive forecasts: persistence, seasonal naive and the naive violation probability.

:class:`NaiveForecaster` is probabilistic through empirical residual quantiles per (metric,
horizon step, service) in symlog space fitted on TRAIN-suite episodes:

* ``persistence``: the last observed value, for every step ahead;
* ``seasonal``: ``y[t + h - m * ceil(h / m)]`` with season ``m`` the scenario's traffic
  period (the diurnal ``period_s``, or the replayed trace's loop length) in steps when the
  history covers one period; otherwise (always, with 30-60 minute episodes and daily or
  hourly periods) ``fallback_season`` steps (default 20 = 5 minutes = the horizon), i.e.
  "the last 5 minutes repeat".

:class:`NaiveViolation` is the naive forecast of the violation probability: the TRAIN
frequency of a violation within H steps given whether the current step violated.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agents.world_model.forecast.types import SUPPORT, symexp_np, symlog_np


def _ffill(y: np.ndarray) -> np.ndarray:
    """Forward-fill NaNs along axis 0 (leading NaNs stay)."""
    t_len = y.shape[0]
    idx = np.where(~np.isnan(y), np.arange(t_len)[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    out = y[idx, np.arange(y.shape[1])[None, :]]
    return out


def traffic_period_s(scenario: Any) -> float | None:
    """The scenario's traffic period in seconds (None for aperiodic traffic).

    The replayed trace's loop length when it replays one, else the diurnal ``period_s``.
    """
    traffic = scenario.traffic
    if traffic.replay is not None and traffic.replay.loop:
        try:
            with open(traffic.replay.path, newline="") as fh:
                ts = [float(r["t"]) for r in csv.DictReader(fh)]
            if len(ts) > 1:
                return ts[-1] - ts[0]
        except OSError:
            return None
    if traffic.diurnal is not None:
        return float(traffic.diurnal.period_s)
    return None


def period_steps(scenario: Any) -> int | None:
    """The scenario's traffic period in decision steps (None when aperiodic)."""
    p = traffic_period_s(scenario)
    return None if p is None else round(p / scenario.decision_interval_s)


@dataclass
class NaiveForecaster:
    """Persistence or seasonal-naive point forecasts with residual-quantile uncertainty.

    Attributes:
        kind: ``persistence`` or ``seasonal``.
        horizon: H.
        levels: ``[M]`` residual quantile levels ``(k + 0.5) / M``.
        residuals: Metric -> ``[H, S, M]`` residual quantiles in symlog space
            (``symlog(truth) - symlog(point)``); fitted by :meth:`fit`.
        fallback_season: Season in steps when the history does not cover the traffic period.
    """

    kind: Literal["persistence", "seasonal"]
    horizon: int
    levels: np.ndarray = field(default_factory=lambda: (np.arange(50) + 0.5) / 50)
    residuals: dict[str, np.ndarray] = field(default_factory=dict)
    fallback_season: int = 20

    def season(self, history_len: int, period_steps: int | None) -> int:
        """Season in steps for a history of ``history_len`` rows (1 for persistence)."""
        if self.kind == "persistence":
            return 1
        if period_steps is not None and history_len >= period_steps:
            return period_steps
        return self.fallback_season

    def point_index(self, t: np.ndarray, season: np.ndarray) -> np.ndarray:
        """``[B, H]`` history rows that give the point forecast of ``t + h`` (h = 1..H)."""
        h = np.arange(1, self.horizon + 1)[None, :]
        t = np.asarray(t)[:, None]
        if self.kind == "persistence":
            return np.broadcast_to(t, (t.shape[0], self.horizon)).copy()
        m = np.asarray(season)[:, None]
        idx = t + h - m * np.ceil(h / m).astype(int)
        return np.maximum(idx, 0)

    def point(
        self,
        series: np.ndarray,
        origins: Sequence[int] | np.ndarray,
        period_steps: int | None = None,
    ) -> np.ndarray:
        """``[B, H, S]`` point forecasts from rows ``origins`` of a ``[T, S]`` raw series."""
        t = np.asarray(origins, dtype=int)
        season = np.array([self.season(int(x) + 1, period_steps) for x in t])
        filled = _ffill(series)
        return filled[self.point_index(t, season)]

    def samples(
        self,
        metric: str,
        series: np.ndarray,
        origins: Sequence[int] | np.ndarray,
        period_steps: int | None = None,
    ) -> np.ndarray:
        """``[B, M, H, S]`` draws: the point in symlog space plus each residual quantile."""
        if metric not in self.residuals:
            raise KeyError(f"{self.kind} forecaster not fitted for {metric!r}; call fit() first")
        point = self.point(series, origins, period_steps)  # [B, H, S]
        r = np.moveaxis(self.residuals[metric], -1, 0)[None]  # [1, M, H, S]
        draws = symexp_np(symlog_np(point)[:, None] + r)
        draws = np.where(r == 0.0, point[:, None], draws)  # exact where no change is expected
        lo, hi = SUPPORT[metric]
        return np.clip(draws, lo, hi)

    def fit(
        self,
        series: Sequence[dict[str, np.ndarray]],
        periods: Sequence[int | None],
        warmup: int = 0,
    ) -> NaiveForecaster:
        """Fit the residual quantiles on episodes' raw series (TRAIN-suite episodes only).

        Args:
            series: Per episode, metric -> ``[T+1, S]`` raw series (``episodes.raw_series``).
            periods: Per episode, the traffic period in steps (or None).
            warmup: First origin (rows of history needed before forecasting).
        """
        collected: dict[str, list[np.ndarray]] = {}
        for ep, period in zip(series, periods, strict=True):
            for metric, y in ep.items():
                t_len = y.shape[0]
                origins = np.arange(warmup, t_len - self.horizon)
                if origins.size == 0:
                    continue
                point = self.point(y, origins, period)  # [B, H, S]
                truth = y[origins[:, None] + np.arange(1, self.horizon + 1)[None, :]]
                collected.setdefault(metric, []).append(symlog_np(truth) - symlog_np(point))
        for metric, parts in collected.items():
            r = np.concatenate(parts, 0)  # [B, H, S]
            q = np.full((*r.shape[1:], self.levels.size), 0.0)
            for h in range(r.shape[1]):
                for s in range(r.shape[2]):
                    v = r[:, h, s]
                    v = v[~np.isnan(v)]
                    if v.size:
                        q[h, s] = np.quantile(v, self.levels)
            self.residuals[metric] = q
        return self

    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` (no pickles)."""
        arrays = {f"res/{m}": v for m, v in self.residuals.items()}
        np.savez(
            Path(path),
            kind=np.array(self.kind),
            horizon=np.array(self.horizon),
            levels=self.levels,
            fallback_season=np.array(self.fallback_season),
            **arrays,  # type: ignore[arg-type]
        )
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> NaiveForecaster:
        """Read :meth:`save`'s file."""
        with np.load(Path(path), allow_pickle=False) as d:
            kind = str(d["kind"])
            assert kind in ("persistence", "seasonal"), kind
            return cls(
                kind,  # type: ignore[arg-type]
                int(d["horizon"]),
                np.asarray(d["levels"]),
                {k.split("/", 1)[1]: np.asarray(d[k]) for k in d.files if k.startswith("res/")},
                int(d["fallback_season"]),
            )


@dataclass(frozen=True)
class NaiveViolation:
    """P(violation within H steps | whether the current step violated), from TRAIN episodes.

    Attributes:
        horizon: H.
        p_if_violating: Frequency after a violating step.
        p_if_not: Frequency after a non-violating step.
        base_rate: Frequency over all origins (climatology).
    """

    horizon: int
    p_if_violating: float
    p_if_not: float
    base_rate: float

    @staticmethod
    def outcomes(
        violation: np.ndarray, origins: Sequence[int] | np.ndarray, horizon: int
    ) -> np.ndarray:
        """``[B]`` 1.0 where some step of ``t+1 .. t+H`` violated."""
        v = np.asarray(violation)
        idx = np.asarray(origins)[:, None] + np.arange(1, horizon + 1)[None, :]
        return np.asarray((v[idx] > 0.5).any(axis=1), dtype=np.float64)

    @classmethod
    def fit(cls, violations: Sequence[np.ndarray], horizon: int, warmup: int = 0) -> NaiveViolation:
        """Fit on episodes' ``violation`` arrays (TRAIN-suite episodes only)."""
        now, future = [], []
        for v in violations:
            origins = np.arange(warmup, len(v) - horizon)
            now.append(np.asarray(v)[origins] > 0.5)
            future.append(cls.outcomes(v, origins, horizon))
        cur = np.concatenate(now)
        out = np.concatenate(future)

        def freq(sel: np.ndarray) -> float:
            return float(out[sel].mean()) if sel.any() else float(out.mean())

        return cls(horizon, freq(cur), freq(~cur), float(out.mean()))

    def predict(self, violation: np.ndarray, origins: Sequence[int] | np.ndarray) -> np.ndarray:
        """``[B]`` probabilities given the violation flag at each origin."""
        cur = np.asarray(violation)[np.asarray(origins)] > 0.5
        return np.asarray(np.where(cur, self.p_if_violating, self.p_if_not), dtype=np.float64)
