"""Probabilistic forecasts of service telemetry: the world model and two naive baselines.

:func:`forecast` answers "given this history and this plan, what happens next?": it runs the
world model's posterior over the history (``model.observe``), then rolls the prior forward
under the planned action features ``n_samples`` times in one batch (``model.imagine``),
decodes each imagined state into the Gaussian of the value vector in symlog space, adds
observation noise drawn from that Gaussian, maps the draws to raw units (``symexp``, then
clipped to each metric's support) and returns per-service quantiles of :data:`METRICS`
(``[H, S, Q]``) plus the probability of an SLO violation within the horizon::

    p_violation = mean over samples of 1 - prod_h (1 - violation_prob(state_h))

:func:`forecast_batch` does the same for many forecast origins of one episode at once (one
posterior pass, then all origins x samples imagined together); the evaluation uses it.

:class:`Calibration` optionally post-processes the draws per metric and horizon step, in
symlog space, with weights fitted on TRAIN-suite episodes (:class:`CalibrationStats`): the
median moves to a blend of the model's predicted change and the last observation (weights
chosen for the least MAE; from "the model as is" through "the last observation plus the
model's change" to persistence), the spread around it is scaled so that the central 90%
interval covers 90%, and the violation probability is Platt-scaled.

Naive baselines (:class:`NaiveForecaster`), probabilistic through empirical residual
quantiles per (metric, horizon step, service) in symlog space fitted on TRAIN-suite
episodes:

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

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from agents.world_model.forecast_metrics import empirical_quantiles

METRICS: tuple[str, ...] = ("p99", "rps", "error_rate", "replicas_ready")
"""The per-service metrics a forecast covers (names of ObsEncoder service features)."""
SUPPORT: dict[str, tuple[float, float]] = {
    "p99": (0.0, math.inf),
    "rps": (0.0, math.inf),
    "error_rate": (0.0, 1.0),
    "replicas_ready": (0.0, math.inf),
}
"""Raw-unit range of each metric; forecast draws are clipped to it."""
ZERO_SNAP: dict[str, float] = {"error_rate": 1e-3}
"""Draws below these values are reported as exactly 0: telemetry shows an error rate of
exactly 0 whenever nothing fails, a point mass that a Gaussian in symlog space (std >= 0.01)
cannot put its quantiles on."""


def to_raw(metric: str, z: np.ndarray) -> np.ndarray:
    """Symlog values of ``metric`` -> raw units.

    ``symexp``, clipped to :data:`SUPPORT`, values below :data:`ZERO_SNAP` set to 0.
    """
    lo, hi = SUPPORT[metric]
    x = np.clip(_symexp(z), lo, hi)
    snap = ZERO_SNAP.get(metric)
    return np.where(np.abs(x) < snap, 0.0, x) if snap is not None else x


class ForecastModel(Protocol):
    """What :func:`forecast` needs of a world model (``agents.world_model.model.WorldModel``)."""

    layout: Any

    def initial(self, batch: int) -> Any:
        """Initial carry of ``batch`` streams."""
        ...

    def observe(
        self, obs: Tensor, action: Tensor, is_first: Tensor, carry: Any, **kw: Any
    ) -> tuple[Any, Any]:
        """Posterior over ``[B, T, ...]``: ``(carry, states)``."""
        ...

    def imagine(self, carry: Any, actions: Tensor, **kw: Any) -> Any:
        """Prior rollout under ``actions`` ``[B, H, A]``."""
        ...

    def feat(self, states: Any) -> Tensor:
        """Features ``[..., D + K*C]``."""
        ...

    def decode(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std of the value vector in symlog space."""
        ...

    def violation_prob(self, feat: Tensor) -> Tensor:
        """Probability that the step leading to the state violated an SLO."""
        ...


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class Forecast:
    """A probabilistic forecast of H steps of one cluster.

    Attributes:
        services: Service names (topology order), S of them.
        quantiles: The Q quantile levels, ascending.
        p99: ``[H, S, Q]`` p99 latency quantiles (s).
        rps: ``[H, S, Q]`` request-rate quantiles (attempts / s).
        error_rate: ``[H, S, Q]`` error-fraction quantiles.
        replicas_ready: ``[H, S, Q]`` ready-replica quantiles (pods).
        p_violation: Probability of at least one SLO-violating step within the H steps.
        p_p99_over_slo: With ``slo_p99`` given: the share of sampled futures in which some
            service's p99 exceeds its SLO at some step (else None).
        samples: Metric -> ``[N, H, S]`` raw draws (None unless asked for).
    """

    services: tuple[str, ...]
    quantiles: tuple[float, ...]
    p99: np.ndarray
    rps: np.ndarray
    error_rate: np.ndarray
    replicas_ready: np.ndarray
    p_violation: float
    p_p99_over_slo: float | None = None
    samples: dict[str, np.ndarray] | None = None

    def __getitem__(self, metric: str) -> np.ndarray:
        """The ``[H, S, Q]`` quantiles of ``metric`` (one of :data:`METRICS`)."""
        if metric not in METRICS:
            raise KeyError(f"unknown forecast metric {metric!r}; one of {list(METRICS)}")
        out: np.ndarray = getattr(self, metric)
        return out

    @property
    def horizon(self) -> int:
        """H."""
        return int(self.p99.shape[0])

    def quantile(self, metric: str, level: float) -> np.ndarray:
        """``[H, S]`` quantile at ``level`` (one of :attr:`quantiles`)."""
        try:
            q = self.quantiles.index(level)
        except ValueError:
            raise KeyError(
                f"level {level} not in the forecast's quantiles {self.quantiles}"
            ) from None
        return self[metric][..., q]


@dataclass(frozen=True)
class SampleForecast:
    """Forecasts of B origins as raw draws (what :func:`forecast_batch` returns).

    Attributes:
        samples: Metric -> ``[B, N, H, S]`` raw draws.
        p_violation: ``[B]`` probability of a violation within H.
        offset: Metric -> ``[B, S]`` the decoder's error on the observation at each origin,
            ``symlog(obs_t) - decode(posterior_t)`` (0 where ``obs_t`` is missing); what
            :class:`Calibration` anchors the forecast with.
        decoded: Metric -> ``[B, S]`` ``decode(posterior_t)`` (symlog): where the model
            thinks the origin is, from which its predicted change is measured.
    """

    samples: dict[str, np.ndarray]
    p_violation: np.ndarray
    offset: dict[str, np.ndarray] = field(default_factory=dict)
    decoded: dict[str, np.ndarray] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# calibration

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
        return to_raw(metric, self.apply(metric, _symlog(draws), offset, decoded))


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
            z = _symlog(draws)
            q = np.quantile(z, (0.5, 0.1, 0.9, 0.05, 0.95), axis=1)
            y_raw = np.asarray(truth[metric], dtype=np.float64)
            shape = (z.shape[0], z.shape[-1])
            offset = forecast.offset.get(metric, np.zeros(shape))
            dec = forecast.decoded.get(metric, np.full(shape, np.nan))
            rows = dict(zip(self.KEYS[:5], q, strict=True))
            rows.update(
                y=_symlog(y_raw),
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


# --------------------------------------------------------------------------------------------
# forecast origins of an episode


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


# --------------------------------------------------------------------------------------------
# the world model's forecast


def _symlog(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.log1p(np.abs(x))


def _symexp(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.expm1(np.minimum(np.abs(x), 80.0))


def _carry_rows(carry: Any, index: Tensor) -> Any:
    """A carry (dataclass of ``[B, ...]`` tensors) restricted/repeated to rows ``index``."""
    return dataclasses.replace(
        carry,
        **{
            f.name: getattr(carry, f.name)[index]
            for f in dataclasses.fields(carry)
            if isinstance(getattr(carry, f.name), Tensor)
        },
    )


def _carry_cat(carries: Sequence[Any]) -> Any:
    """Concatenate carries along the batch axis."""
    first = carries[0]
    return dataclasses.replace(
        first,
        **{
            f.name: torch.cat([getattr(c, f.name) for c in carries], 0)
            for f in dataclasses.fields(first)
            if isinstance(getattr(first, f.name), Tensor)
        },
    )


def _value_index(layout: Any, n_services: int, metric: str) -> list[int]:
    return [layout.service_index(i, metric) for i in range(n_services)]


@torch.no_grad()
def rollout(
    model: ForecastModel,
    carry: Any,
    planned: Tensor,
    n_samples: int,
    n_services: int,
    generator: torch.Generator,
) -> SampleForecast:
    """Imagine ``n_samples`` futures from each of B carries under ``planned`` ``[B, H, A]``.

    Returns uncalibrated raw draws of :data:`METRICS` ``[B, N, H, S]`` (observation noise
    included, clipped to :data:`SUPPORT`) and ``[B]`` violation probabilities.
    """
    b, h, _ = planned.shape
    rows = torch.arange(b).repeat_interleave(n_samples)  # origin b, sample n -> row b*N + n
    start = _carry_rows(carry, rows)
    states = model.imagine(start, planned[rows], generator=generator)
    feat = model.feat(states)  # [B*N, H, F]
    mean, std = model.decode(feat)  # [B*N, H, V] symlog
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    z_all = (mean + std * noise).double().numpy().reshape(b, n_samples, h, -1)
    vp = model.violation_prob(feat).double()
    if vp.dim() == 3:
        vp = vp.squeeze(-1)
    assert vp.shape == (b * n_samples, h), (vp.shape, b, n_samples, h)
    p_any = 1.0 - torch.prod(1.0 - vp.clamp(0.0, 1.0), dim=1)
    p_violation = p_any.reshape(b, n_samples).mean(1).numpy()
    out: dict[str, np.ndarray] = {}
    for metric in METRICS:
        z = z_all[..., _value_index(model.layout, n_services, metric)]  # [B, N, H, S]
        out[metric] = to_raw(metric, z)
    return SampleForecast(out, np.clip(p_violation, 0.0, 1.0))


def _as_tensor(x: np.ndarray | Tensor) -> Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


@torch.no_grad()
def forecast_batch(
    model: ForecastModel,
    obs: np.ndarray,
    action: np.ndarray,
    origins: Sequence[int] | np.ndarray,
    planned: np.ndarray,
    *,
    n_services: int,
    n_samples: int = 64,
    seed: int = 0,
    calibration: Calibration | None = None,
) -> SampleForecast:
    """Forecasts from several origins of one episode (one posterior pass over it).

    Args:
        model: The world model.
        obs: ``[T, O]`` observations, row 0 the episode's first.
        action: ``[T, A]`` action features that led to each row (row 0: zeros).
        origins: Rows ``t`` to forecast from (the history is rows ``0..t``).
        planned: ``[len(origins), H, A]`` action features of steps ``t+1 .. t+H``.
        n_services: S.
        n_samples: Draws N per origin.
        seed: Seeds every draw (posterior, prior and observation noise).
        calibration: Optional :class:`Calibration` (anchoring and spread).

    Returns:
        A :class:`SampleForecast` with ``[B, N, H, S]`` draws, each origin's decoded values
        and decoder error ``offset`` (``symlog(obs_t) - decode(posterior_t)``, 0 where
        missing).
    """
    t_len = obs.shape[0]
    assert action.shape[0] == t_len, (obs.shape, action.shape)
    assert planned.shape[0] == len(origins), (planned.shape, len(origins))
    if any(not 0 <= t < t_len for t in origins):
        raise ValueError(f"origins must lie in [0, {t_len}), got {list(origins)}")
    gen = torch.Generator().manual_seed(int(seed))
    is_first = torch.zeros(1, t_len)
    is_first[0, 0] = 1.0
    last = max(origins) + 1
    _, states = model.observe(
        _as_tensor(obs[:last])[None],
        _as_tensor(action[:last])[None],
        is_first[:, :last],
        model.initial(1),
        generator=gen,
    )
    carry = _carry_cat([states.carry(int(t)) for t in origins])
    sf = rollout(model, carry, _as_tensor(planned), n_samples, n_services, gen)
    lay = model.layout
    now = _as_tensor(obs[np.asarray(origins)])  # [B, O]
    mean_now, _ = model.decode(model.feat(carry))
    err = ((now[:, lay.values] - mean_now) * now[:, lay.mask]).double().numpy()  # [B, V]
    dec = mean_now.double().numpy()
    offset = {m: err[:, _value_index(lay, n_services, m)] for m in METRICS}
    decoded = {m: dec[:, _value_index(lay, n_services, m)] for m in METRICS}
    samples, p_violation = sf.samples, sf.p_violation
    if calibration is not None:
        samples = {
            m: calibration.apply_raw(m, x, offset[m], decoded[m]) for m, x in samples.items()
        }
        p_violation = calibration.apply_violation(p_violation)
    return SampleForecast(samples, p_violation, offset, decoded)


def forecast(
    model: ForecastModel,
    obs: np.ndarray,
    action: np.ndarray,
    planned: np.ndarray,
    *,
    services: Sequence[str],
    n_samples: int = 64,
    quantiles: Sequence[float] = (0.1, 0.5, 0.9),
    slo_p99: float | Sequence[float] | np.ndarray | None = None,
    seed: int = 0,
    calibration: Calibration | None = None,
    keep_samples: bool = False,
) -> Forecast:
    """Forecast H steps after the history under a planned action sequence.

    Args:
        model: A trained world model (:class:`ForecastModel`).
        obs: ``[T, O]`` history of encoded observations (``env.encoder.encode``), oldest
            first; row 0 starts the model's state (``is_first``).
        action: ``[T, A]`` action features that led to each history row (row 0: zeros).
        planned: ``[H, A]`` action features to take at the next H steps (ActionEncoder, or
            ``onehot(action) @ env.action_feature_matrix()``).
        services: The S service names, topology order.
        n_samples: Sampled futures (one batch).
        quantiles: Quantile levels to report, ascending in (0, 1).
        slo_p99: p99 SLO in seconds, one for all services or one per service (NaN: no SLO);
            when given, :attr:`Forecast.p_p99_over_slo` is filled.
        seed: Seeds every random draw.
        calibration: :class:`Calibration` to apply (e.g. the one stored with the model).
        keep_samples: Also return the raw draws.

    Returns:
        A :class:`Forecast` (quantiles ``[H, S, Q]`` in raw units, ``p_violation``).
    """
    obs = np.asarray(obs, dtype=np.float32)
    action = np.asarray(action, dtype=np.float32)
    planned = np.asarray(planned, dtype=np.float32)
    if obs.ndim != 2 or action.ndim != 2 or planned.ndim != 2:
        raise ValueError(
            f"forecast: want obs [T, O], action [T, A], planned [H, A]; got {obs.shape}, "
            f"{action.shape}, {planned.shape}"
        )
    if planned.shape[1] != action.shape[1]:
        raise ValueError(
            f"planned has {planned.shape[1]} action features, history {action.shape[1]}"
        )
    levels = tuple(float(q) for q in quantiles)
    if list(levels) != sorted(levels) or not all(0.0 < q < 1.0 for q in levels):
        raise ValueError(f"quantiles must be ascending in (0, 1), got {levels}")
    n_svc = len(services)
    sf = forecast_batch(
        model,
        obs,
        action,
        [obs.shape[0] - 1],
        planned[None],
        n_services=n_svc,
        n_samples=n_samples,
        seed=seed,
        calibration=calibration,
    )
    draws = {m: v[0] for m, v in sf.samples.items()}  # [N, H, S]
    qs = {m: empirical_quantiles(np.moveaxis(v, 0, -1), levels) for m, v in draws.items()}
    p_slo = None
    if slo_p99 is not None:
        slo = np.broadcast_to(np.asarray(slo_p99, dtype=np.float64), (n_svc,))
        with np.errstate(invalid="ignore"):
            over = (draws["p99"] > slo[None, None, :]).any(axis=(1, 2))
        p_slo = float(over.mean())
    return Forecast(
        tuple(services),
        levels,
        qs["p99"],
        qs["rps"],
        qs["error_rate"],
        qs["replicas_ready"],
        float(sf.p_violation[0]),
        p_slo,
        draws if keep_samples else None,
    )


# --------------------------------------------------------------------------------------------
# naive forecasters


def raw_series(episode: dict[str, np.ndarray], layout: Any, metric: str) -> np.ndarray:
    """``[T+1, S]`` raw values of a service metric from an episode's observations.

    NaN where the observation's mask says the value was missing.
    """
    obs = episode["obs"]
    idx = [layout.service_index(i, metric) for i in range(layout.n_services)]
    vals = obs[:, layout.values][:, idx]
    mask = obs[:, layout.mask][:, idx] > 0.5
    return np.where(mask, _symexp(vals), np.nan)


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
            import csv

            with open(traffic.replay.path, newline="") as fh:
                ts = [float(r["t"]) for r in csv.DictReader(fh)]
            if len(ts) > 1:
                return ts[-1] - ts[0]
        except OSError:
            return None
    if traffic.diurnal is not None:
        return float(traffic.diurnal.period_s)
    return None


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
        draws = _symexp(_symlog(point)[:, None] + r)
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
            series: Per episode, metric -> ``[T+1, S]`` raw series (:func:`raw_series`).
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
                collected.setdefault(metric, []).append(_symlog(truth) - _symlog(point))
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
