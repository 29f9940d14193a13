"""Calibration of the world model's forecast draws, fitted on TRAIN-suite episodes.

:class:`Calibration` post-processes the draws per metric and horizon step, in symlog space,
with weights fitted by :class:`CalibrationStats`: the median moves to a blend of the model's
predicted change and the last observation (weights chosen for the least MAE; from "the model
as is" through "the last observation plus the model's change" to persistence), the spread
around it is scaled so that the central 90% interval covers 90%, and the violation
probability is Platt-scaled (:func:`fit_platt`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from agents.world_model.forecast.types import SampleForecast, symlog_np, to_raw

ANCHOR_GRID: tuple[float, ...] = tuple(np.round(np.linspace(0.0, 1.0, 11), 2).tolist())
"""Anchor weights ``c`` :meth:`CalibrationStats.fit` chooses from."""
CHANGE_GRID: tuple[float, ...] = tuple(np.round(np.linspace(1.0, 0.0, 11), 2).tolist())
"""Weights ``lambda`` of the model's predicted change :meth:`CalibrationStats.fit` chooses
from (largest first: ties keep more of the model)."""


@dataclass(frozen=True)
class Calibration:
    """Post-processing of the model's draws, per metric and horizon step, in symlog space.

    Fitted on TRAIN-suite episodes (:class:`CalibrationStats`). For an origin where the
    model decodes ``d`` (:attr:`SampleForecast.decoded`) and the observation differs from it
    by ``o`` (:attr:`SampleForecast.offset`), the draws ``z`` of step ``h``, median ``m``,
    become ``target + scale[h] * (z - m)`` with

        target = d + change[h] * (m - d) + anchor[h] * o

    * ``change`` (lambda) weighs the model's predicted change ``m - d``; ``anchor`` (c)
      moves the forecast towards continuing from the observed value ``d + o``.
      ``change = 1, anchor = 0`` leaves the median alone; ``change = 1, anchor = 1`` is "the
      last observation plus the model's change"; ``change = 0, anchor = 1`` is persistence.
      Both are picked for the least MAE on the calibration episodes.
    * ``scale`` widens or narrows the spread around the (new) median so that the central
      ``level`` interval of the calibration episodes covers ``level``.

    The violation probability is recalibrated by Platt scaling,
    ``p' = sigmoid(a logit(p) + b)`` with ``violation = [a, b]`` (None: unchanged).

    Attributes:
        scale: Metric -> ``H`` spread multipliers.
        anchor: Metric -> ``H`` anchor weights c (a missing metric: 0).
        level: The interval level it was fitted for.
        n: Metric -> number of (origin, service) truths per step it was fitted on.
        violation: Platt coefficients ``[a, b]`` of the violation probability, or None.
        change: Metric -> ``H`` weights lambda of the model's change (missing: 1).
    """

    scale: dict[str, list[float]]
    anchor: dict[str, list[float]] = field(default_factory=dict)
    level: float = 0.9
    n: dict[str, int] = field(default_factory=dict)
    violation: list[float] | None = None
    change: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> str:
        """JSON text (:meth:`from_json` reads it)."""
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        """Parse :meth:`to_json`'s output."""
        d = json.loads(text)
        return cls(
            {k: [float(x) for x in v] for k, v in d["scale"].items()},
            {k: [float(x) for x in v] for k, v in d.get("anchor", {}).items()},
            d["level"],
            d["n"],
            d.get("violation"),
            {k: [float(x) for x in v] for k, v in d.get("change", {}).items()},
        )

    def apply_violation(self, p: np.ndarray) -> np.ndarray:
        """Platt-scaled violation probabilities (``p`` unchanged without coefficients)."""
        p = np.asarray(p, dtype=np.float64)
        if self.violation is None:
            return p
        a, b = self.violation
        return np.asarray(_sigmoid(a * _logit(p) + b), dtype=np.float64)

    def _steps(self, values: Sequence[float], h: int) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        if h > v.size:
            raise ValueError(f"calibration covers {v.size} steps, the forecast has {h}; refit it")
        return v[:h]

    def weights(self, metric: str, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(change, anchor, scale)`` of ``metric`` for the first ``h`` steps."""
        ones, zeros = [1.0] * h, [0.0] * h
        return (
            self._steps(self.change.get(metric, ones), h),
            self._steps(self.anchor.get(metric, zeros), h),
            self._steps(self.scale.get(metric, ones), h),
        )

    def apply(
        self,
        metric: str,
        z: np.ndarray,
        offset: np.ndarray | None = None,
        decoded: np.ndarray | None = None,
    ) -> np.ndarray:
        """Calibrate symlog draws ``z`` ``[B, N, H, S]`` of B origins.

        ``offset`` and ``decoded`` (``[B, S]``) are the origins' :attr:`SampleForecast.offset`
        and :attr:`SampleForecast.decoded`; without ``offset`` only the spread changes,
        without ``decoded`` the change weight is taken as 1.
        """
        lam, c, s = self.weights(metric, z.shape[-2])
        med = np.median(z, axis=-3, keepdims=True)  # [B, 1, H, S]
        target = med
        if offset is not None:
            o = np.asarray(offset)[:, None, None, :]
            target = med + c[:, None] * o
            if decoded is not None:
                d = np.asarray(decoded)[:, None, None, :]
                target = d + lam[:, None] * (med - d) + c[:, None] * o
        return target + s[:, None] * (z - med)

    def apply_raw(
        self,
        metric: str,
        draws: np.ndarray,
        offset: np.ndarray | None = None,
        decoded: np.ndarray | None = None,
    ) -> np.ndarray:
        """:meth:`apply` to raw draws ``[B, N, H, S]``.

        The draws go through symlog, the calibration, symexp and a clip to :data:`SUPPORT`.
        """
        return to_raw(metric, self.apply(metric, symlog_np(draws), offset, decoded))


SCALE_GRID: tuple[float, ...] = tuple(np.round(np.geomspace(0.05, 10.0, 107), 4).tolist())
"""Spread multipliers :meth:`CalibrationStats.fit` chooses from (log-spaced, 5 % apart; at
most 10: where the draws are degenerate, e.g. all at an error rate of 0, no multiplier
helps, and a large one only blows up the odd outlying draw)."""


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-4, 1.0 - 1e-4)
    return np.asarray(np.log(q / (1.0 - q)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64))))


def fit_platt(p: np.ndarray, outcome: np.ndarray, l2: float = 1e-3) -> list[float]:
    """Platt coefficients ``[a, b]``: the least log loss of ``sigmoid(a logit(p) + b)``.

    L-BFGS on the mean log loss plus a small L2 penalty towards ``[1, 0]`` (leaving ``p``
    as it is).
    """
    from scipy.optimize import minimize

    x = _logit(p)
    y = np.asarray(outcome, dtype=np.float64)
    ok = ~np.isnan(y) & ~np.isnan(x)
    x, y = x[ok], y[ok]
    prior = np.array([1.0, 0.0])
    if x.size == 0:
        return prior.tolist()

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        u = w[0] * x + w[1]
        # log(1 + e^u) - y u, stably
        value = np.mean(np.logaddexp(0.0, u) - y * u) + 0.5 * l2 * np.sum((w - prior) ** 2)
        r = _sigmoid(u) - y
        grad = np.array([np.mean(r * x), np.mean(r)]) + l2 * (w - prior)
        return float(value), grad

    res = minimize(loss, prior, jac=True, method="L-BFGS-B")
    return [float(res.x[0]), float(res.x[1])]


class CalibrationStats:
    """Summaries of uncalibrated forecasts and their truths, to fit a :class:`Calibration`.

    Only per-origin summaries are kept (the draws' median and 80 % / 90 % interval ends in
    symlog space, the offset and the truth), not the draws. Anchoring shifts every draw of
    an (origin, step, service) by the same amount, so its effect on the median, the
    intervals and the coverage follows from these summaries for any weight.
    """

    KEYS: tuple[str, ...] = (
        "med",
        "lo80",
        "hi80",
        "lo90",
        "hi90",
        "y",
        "y_raw",
        "offset",
        "dec",
    )

    def __init__(self) -> None:
        self.parts: dict[str, dict[str, list[np.ndarray]]] = {}
        self.p_violation: list[np.ndarray] = []
        self.outcome: list[np.ndarray] = []

    def add(
        self,
        forecast: SampleForecast,
        truth: Mapping[str, np.ndarray],
        outcome: np.ndarray | None = None,
    ) -> None:
        """Add B origins' forecasts (``[B, N, H, S]`` draws) and ``[B, H, S]`` truths.

        With ``outcome`` (``[B]``: 1 where a violation happened within H) the forecasts'
        violation probabilities are kept too, for the Platt scaling.
        """
        if outcome is not None:
            self.p_violation.append(np.asarray(forecast.p_violation, dtype=np.float64))
            self.outcome.append(np.asarray(outcome, dtype=np.float64))
        for metric, draws in forecast.samples.items():
            z = symlog_np(draws)
            q = np.quantile(z, (0.5, 0.1, 0.9, 0.05, 0.95), axis=1)
            y_raw = np.asarray(truth[metric], dtype=np.float64)
            shape = (z.shape[0], z.shape[-1])
            offset = forecast.offset.get(metric, np.zeros(shape))
            dec = forecast.decoded.get(metric, np.full(shape, np.nan))
            rows = dict(zip(self.KEYS[:5], q, strict=True))
            rows.update(
                y=symlog_np(y_raw),
                y_raw=y_raw,
                offset=np.asarray(offset, np.float64),
                dec=np.asarray(dec, np.float64),
            )
            store = self.parts.setdefault(metric, {k: [] for k in self.KEYS})
            for k in self.KEYS:
                store[k].append(rows[k])

    def _pooled(self, metric: str) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v, 0) for k, v in self.parts[metric].items()}

    @staticmethod
    def _target(d: dict[str, np.ndarray], h: int, lam: float, c: float) -> np.ndarray:
        """``[B, S]`` the calibrated median of step ``h`` (symlog); see :class:`Calibration`."""
        med = d["med"][:, h]
        dec = np.where(np.isnan(d["dec"]), med, d["dec"])  # no decoded value: lambda = 1
        return dec + lam * (med - dec) + c * d["offset"]

    def _inside(
        self,
        d: dict[str, np.ndarray],
        metric: str,
        h: int,
        weights: tuple[float, float, float],
        tag: str,
    ) -> np.ndarray:
        """``[B, S]`` 1.0 where the truth at step ``h`` lies in the ``tag`` interval.

        The interval under ``weights = (change, anchor, scale)``, in raw units and clipped to
        the support as the forecast is (NaN where the truth is missing).
        """
        lam, c, s = weights
        target = self._target(d, h, lam, c)
        lo = to_raw(metric, target - s * (d["med"][:, h] - d[f"lo{tag}"][:, h]))
        hi = to_raw(metric, target + s * (d[f"hi{tag}"][:, h] - d["med"][:, h]))
        y = d["y_raw"][:, h]
        hit = ((lo <= y) & (y <= hi)).astype(np.float64)
        return np.where(np.isnan(y), np.nan, hit)

    def fit(self, level: float = 0.9, anchor: bool = True) -> Calibration:
        """Fit a :class:`Calibration`: per metric and step, location weights, then spread.

        The change and anchor weights are the pair of :data:`CHANGE_GRID` x
        :data:`ANCHOR_GRID` with the least MAE of the median (raw units; ties: more of the
        model, less anchoring); the spread multiplier is then the smallest of
        :data:`SCALE_GRID` whose ``level`` interval (clipped to the metric's support, as the
        forecast is) covers at least ``level`` of the truths.

        Args:
            level: 0.8 or 0.9, the interval to calibrate.
            anchor: Fit the change and anchor weights (else they stay 1 and 0).
        """
        if level not in (0.8, 0.9):
            raise ValueError(f"level {level}: CalibrationStats keeps the 0.8 and 0.9 intervals")
        tag = "80" if level == 0.8 else "90"
        scale: dict[str, list[float]] = {}
        anchors: dict[str, list[float]] = {}
        changes: dict[str, list[float]] = {}
        counts: dict[str, int] = {}
        for metric in self.parts:
            d = self._pooled(metric)
            lams = CHANGE_GRID if anchor and not np.all(np.isnan(d["dec"])) else (1.0,)
            cs = ANCHOR_GRID if anchor else (0.0,)
            ls, ws, ss = [], [], []
            for h in range(d["med"].shape[1]):
                y_raw = d["y_raw"][:, h]
                best_w, best = (1.0, 0.0), np.inf
                for lam in lams:
                    for c in cs:
                        err = np.abs(to_raw(metric, self._target(d, h, lam, c)) - y_raw)
                        mae = float(np.nanmean(err)) if np.any(~np.isnan(err)) else np.inf
                        if mae < best - 1e-12:
                            best_w, best = (lam, c), mae
                best_s = SCALE_GRID[-1]
                for sc in SCALE_GRID:
                    hit = self._inside(d, metric, h, (*best_w, sc), tag)
                    if np.all(np.isnan(hit)) or np.nanmean(hit) >= level:
                        best_s = sc
                        break
                ls.append(best_w[0])
                ws.append(best_w[1])
                ss.append(best_s)
            changes[metric], anchors[metric], scale[metric] = ls, ws, ss
            counts[metric] = int(np.sum(~np.isnan(d["y"][:, 0])))
        platt = (
            fit_platt(np.concatenate(self.p_violation), np.concatenate(self.outcome))
            if self.outcome
            else None
        )
        return Calibration(scale, anchors, level, counts, platt, changes)

    def coverage(self, calibration: Calibration | None = None) -> dict[str, dict[str, float]]:
        """Coverage of the 80 % and 90 % intervals, uncalibrated or under ``calibration``."""
        out: dict[str, dict[str, float]] = {}
        for metric in self.parts:
            d = self._pooled(metric)
            n_steps = d["med"].shape[1]
            lam, c, s = np.ones(n_steps), np.zeros(n_steps), np.ones(n_steps)
            if calibration is not None:
                lam, c, s = calibration.weights(metric, n_steps)
            row = {}
            for tag in ("80", "90"):
                hits = np.stack(
                    [self._inside(d, metric, h, (lam[h], c[h], s[h]), tag) for h in range(n_steps)],
                    1,
                )
                row[tag] = float(np.nanmean(hits)) if np.any(~np.isnan(hits)) else float("nan")
            out[metric] = row
        return out
