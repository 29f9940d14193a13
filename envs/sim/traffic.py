"""External request rate at the entry service: a scenario's ``traffic`` section made concrete.

The rate is a product of patterns (see :class:`envs.scenarios.schema.Traffic`)::

    rps(t) = base(t) * diurnal(t) * steps(t) * bursts(t) * trend(t) * noise(t)

and is piecewise constant over ticks of ``resolution_s``: tick ``k`` covers
``[k*res, (k+1)*res)`` and holds the value of the deterministic patterns at the tick's midpoint
``(k + 0.5)*res`` times the tick's noise multiplier. Everything is computed once, vectorised, at
construction; :meth:`TrafficModel.rate` and :meth:`TrafficModel.integral` are then O(1) look-ups
in plain Python floats, cheap enough for the fluid engine's inner loop.

Patterns:

* ``base``: ``base_rps``, or a replayed CSV (columns ``t`` in seconds and ``rps``) linearly
  interpolated, multiplied by ``replay.scale``; before the first row the first value holds;
  after the last row the last value holds, or with ``replay.loop`` the series repeats with
  period ``t_last - t_first``.
* ``diurnal``: ``(1 + a*cos(2*pi*(t - peak_s)/period_s)) *
  (1 + a_w*cos(2*pi*(t - weekly_peak_s)/(7*86400)))``.
* ``steps``: each step multiplies by ``factor`` from ``at_s`` on.
* ``bursts``: each burst is a trapezoid multiplier rising linearly from 1 to ``factor`` over
  ``ramp_s`` from ``at_s``, holding until ``at_s + duration_s``, falling back to 1 over
  ``ramp_s`` (a triangle that stops short of ``factor`` when ``duration_s < ramp_s``).
* ``trend``: ``max(0, 1 + per_hour*t/3600)``.
* ``noise``: ``exp(x_k - s^2/2)`` with ``s^2 = ln(1 + cv^2)`` and ``x`` a stationary Gaussian
  AR(1) with variance ``s^2`` and lag-1 correlation ``phi = exp(-res/tau_s)`` (``tau_s = 0``:
  independent ticks), so the multiplier is log-normal with mean 1 and coefficient of
  variation ``cv``.

All randomness comes from the generator passed in: the same seed gives identical ``rates``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from envs.scenarios.schema import Burst, Diurnal, Noise, Replay, Traffic

WEEK_S = 7 * 86400.0
"""Period of the weekly diurnal component, seconds."""

_TICK_EPS = 1e-9
"""Relative slack when flooring ``t / res``: a time on a tick boundary belongs to the new tick."""


class TrafficModel:
    """Piecewise-constant external request rate over a horizon; see the module docstring.

    Args:
        traffic: The validated ``traffic`` section of a scenario.
        horizon_s: Simulated horizon in seconds; rates cover ``ceil(horizon_s / res) + 1``
            ticks (one spare tick so that ``t == horizon_s`` has its own value).
        rng: The scenario's generator; the only source of randomness (noise).
        base_dir: Folder that a relative ``traffic.replay.path`` resolves against; the
            current working directory when None.

    Attributes:
        resolution_s: Tick length in seconds.
        rates: Rate of each tick in requests per second, shape ``(n_ticks,)``, read-only.
        n_ticks: ``len(rates)``.

    Raises:
        ValueError: For a non-positive horizon or an unusable replay CSV (the message names
            the file, the problem and the fix).
    """

    def __init__(
        self,
        traffic: Traffic,
        horizon_s: float,
        rng: np.random.Generator,
        base_dir: Path | None = None,
    ) -> None:
        if not horizon_s > 0 or not math.isfinite(horizon_s):
            raise ValueError(f"TrafficModel: horizon_s must be a positive number, got {horizon_s}")
        self.traffic = traffic
        self.resolution_s: float = float(traffic.resolution_s)
        res = self.resolution_s
        self.n_ticks: int = math.ceil(horizon_s / res - _TICK_EPS) + 1
        mid = (np.arange(self.n_ticks, dtype=np.float64) + 0.5) * res  # (n_ticks,)

        if traffic.replay is not None:
            base = replay_base(traffic.replay, mid, base_dir)
        else:
            base = np.full(self.n_ticks, float(traffic.base_rps))
        mult = np.ones(self.n_ticks)
        if traffic.diurnal is not None:
            mult *= diurnal_multiplier(traffic.diurnal, mid)
        for step in traffic.steps:
            mult *= np.where(mid >= step.at_s, step.factor, 1.0)
        for burst in traffic.bursts:
            mult *= burst_multiplier(burst, mid)
        if traffic.trend is not None:
            mult *= np.maximum(0.0, 1.0 + traffic.trend.per_hour * mid / 3600.0)
        if traffic.noise is not None and traffic.noise.cv > 0:
            mult *= noise_multiplier(traffic.noise, self.n_ticks, res, rng)

        rates = base * mult
        if not np.all(np.isfinite(rates)) or np.any(rates < 0):  # pragma: no cover - defensive
            raise ValueError("TrafficModel: traffic produced a non-finite or negative rate")
        rates.setflags(write=False)
        self.rates: np.ndarray = rates

        # Plain Python floats for the O(1) look-ups (numpy scalar arithmetic is ~10x slower).
        cum = np.concatenate(([0.0], np.cumsum(rates * res)))  # (n_ticks + 1,)
        self._cum: list[float] = cum.tolist()
        self._rl: list[float] = rates.tolist()
        self._inv_res = 1.0 / res
        self._last = self.n_ticks - 1

    def tick(self, t: float) -> int:
        """Index of the tick in force at time ``t``, clipped to ``[0, n_ticks - 1]``."""
        k = math.floor(t * self._inv_res + _TICK_EPS)
        return 0 if k < 0 else (self._last if k > self._last else k)

    def rate(self, t: float) -> float:
        """Rate in requests per second in force at time ``t`` (clipped to the ticks held)."""
        return self._rl[self.tick(t)]

    def cumulative(self, t: float) -> float:
        """Expected arrivals in ``[0, t)``: the integral of :meth:`rate` from 0 to ``t``."""
        k = int(t * self._inv_res)
        if k > self._last:
            k = self._last
        elif k < 0:
            k = 0
        return self._cum[k] + self._rl[k] * (t - k * self.resolution_s)

    def integral(self, t0: float, t1: float) -> float:
        """Expected arrivals in ``[t0, t1)``: the exact integral of the piecewise-constant rate.

        O(1): two look-ups in a precomputed cumulative sum, partial ticks included. Before 0
        the first tick's rate holds, after the last tick the last rate holds (as :meth:`rate`).
        ``t1 < t0`` gives the negative of ``integral(t1, t0)``.
        """
        # Inlined cumulative(t1) - cumulative(t0): this is the fluid engine's hot path.
        # The cumulative function is continuous, so which side of a boundary int() picks
        # does not matter.
        inv, last, res, cum, rl = self._inv_res, self._last, self.resolution_s, self._cum, self._rl
        k1 = int(t1 * inv)
        if k1 > last:
            k1 = last
        elif k1 < 0:
            k1 = 0
        k0 = int(t0 * inv)
        if k0 > last:
            k0 = last
        elif k0 < 0:
            k0 = 0
        if k0 == k1:  # within one tick: exact, and no cancellation of large sums
            return rl[k0] * (t1 - t0)
        return (cum[k1] - cum[k0]) + (rl[k1] * (t1 - k1 * res) - rl[k0] * (t0 - k0 * res))

    def mean_rate(self, t0: float, t1: float) -> float:
        """Mean rate over ``[t0, t1)``: ``integral(t0, t1) / (t1 - t0)``; ``rate(t0)`` if empty."""
        if t1 == t0:
            return self.rate(t0)
        return self.integral(t0, t1) / (t1 - t0)

    def tick_bounds(self, t0: float, t1: float) -> list[float]:
        """Times splitting ``[t0, t1]`` into pieces of constant rate.

        Returns:
            ``[t0, b_1, ..., b_m, t1]`` where the ``b_i`` are the tick boundaries strictly
            inside ``(t0, t1)`` (none after the last tick, whose rate holds for ever). Over
            each consecutive pair the rate is constant. ``[t0, t1]`` when ``t1 <= t0``.
        """
        if t1 <= t0:
            return [t0, t1]
        res = self.resolution_s
        first = self.tick(t0) + 1
        last = min(self.tick(t1), self._last)
        inner = [k * res for k in range(first, last + 1) if t0 < k * res < t1]
        return [t0, *inner, t1]

    def __repr__(self) -> str:
        return (
            f"TrafficModel(n_ticks={self.n_ticks}, resolution_s={self.resolution_s}, "
            f"mean_rps={float(self.rates.mean()):.4g})"
        )


def diurnal_multiplier(diurnal: Diurnal, t: np.ndarray) -> np.ndarray:
    """Daily times weekly cosine multiplier at times ``t``; peaks at ``peak_s`` (mod period)."""
    daily = 1.0 + diurnal.amplitude * np.cos(2 * np.pi * (t - diurnal.peak_s) / diurnal.period_s)
    weekly = 1.0 + diurnal.weekly_amplitude * np.cos(
        2 * np.pi * (t - diurnal.weekly_peak_s) / WEEK_S
    )
    return daily * weekly


def burst_multiplier(burst: Burst, t: np.ndarray) -> np.ndarray:
    """Trapezoid multiplier of one burst at times ``t``: 1 outside, ``factor`` on the plateau."""
    start, end = burst.at_s, burst.at_s + burst.duration_s
    if burst.ramp_s > 1e-9:  # shorter ramps are steps (and would overflow the division)
        up = (t - start) / burst.ramp_s
        down = (end + burst.ramp_s - t) / burst.ramp_s
        shape = np.clip(np.minimum(up, down), 0.0, 1.0)
    else:
        shape = ((t >= start) & (t < end)).astype(np.float64)
    return 1.0 + (burst.factor - 1.0) * shape


def noise_multiplier(noise: Noise, n: int, res: float, rng: np.random.Generator) -> np.ndarray:
    """Log-normal AR(1) multipliers for ``n`` ticks of length ``res``: mean 1, CV ``noise.cv``.

    ``x_0 ~ N(0, s^2)`` and ``x_k = phi*x_{k-1} + s*sqrt(1 - phi^2)*z_k`` (stationary), then
    ``exp(x_k - s^2/2)``. Draws exactly ``n`` standard normals from ``rng``.
    """
    s2 = math.log1p(noise.cv**2)
    s = math.sqrt(s2)
    phi = math.exp(-res / noise.tau_s) if noise.tau_s > 0 else 0.0
    z = rng.standard_normal(n)
    if phi > 0:
        e = z * (s * math.sqrt(1.0 - phi * phi))
        e[0] = s * z[0]
        x = np.asarray(lfilter([1.0], [1.0, -phi], e), dtype=np.float64)
    else:
        x = s * z
    return np.exp(x - s2 / 2.0)


def read_replay_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a replay CSV with a header naming columns ``t`` and ``rps`` (others are ignored).

    Returns:
        ``(t, rps)`` as float arrays; ``t`` strictly increasing, ``rps`` finite and ``>= 0``.

    Raises:
        ValueError: Naming the file, the problem and the fix.
    """
    fix = "a replay CSV needs a header row 't,rps' and one row per sample"
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in ("t", "rps") if c not in fields]
            if missing:
                raise ValueError(
                    f"traffic replay CSV {str(path)!r}: missing column(s) {missing} "
                    f"(header is {fields}); {fix}"
                )
            ts: list[float] = []
            rs: list[float] = []
            for row in reader:
                row = {(k or "").strip(): v for k, v in row.items()}
                line = reader.line_num
                if all((v or "").strip() == "" for v in row.values() if isinstance(v, str)):
                    continue  # blank line
                try:
                    tv = float(row["t"])
                    rv = float(row["rps"])
                except (TypeError, ValueError):
                    raise ValueError(
                        f"traffic replay CSV {str(path)!r} line {line}: t={row.get('t')!r}, "
                        f"rps={row.get('rps')!r} are not both numbers; fix or delete the row"
                    ) from None
                if not (math.isfinite(tv) and math.isfinite(rv)):
                    raise ValueError(
                        f"traffic replay CSV {str(path)!r} line {line}: t and rps must be "
                        f"finite, got t={tv}, rps={rv}"
                    )
                if rv < 0:
                    raise ValueError(
                        f"traffic replay CSV {str(path)!r} line {line}: negative rps {rv}; "
                        "request rates must be >= 0"
                    )
                if ts and tv <= ts[-1]:
                    raise ValueError(
                        f"traffic replay CSV {str(path)!r} line {line}: t={tv} does not "
                        f"increase (previous t={ts[-1]}); sort the rows by t and drop "
                        "duplicate times"
                    )
                ts.append(tv)
                rs.append(rv)
    except OSError as exc:
        raise ValueError(
            f"traffic replay CSV {str(path)!r} cannot be read ({exc.strerror or exc}); "
            "check traffic.replay.path (relative paths resolve against the scenario file's "
            "folder, or the working directory)"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"traffic replay CSV {str(path)!r} is not UTF-8 text ({exc.reason}); {fix}"
        ) from exc
    if not ts:
        raise ValueError(f"traffic replay CSV {str(path)!r} has no data rows; {fix}")
    return np.asarray(ts, dtype=np.float64), np.asarray(rs, dtype=np.float64)


def replay_base(replay: Replay, t: np.ndarray, base_dir: Path | None = None) -> np.ndarray:
    """Replayed base rate at times ``t``: interpolated, scaled, optionally looped.

    Args:
        replay: The ``traffic.replay`` section.
        t: Times in seconds.
        base_dir: Folder a relative ``replay.path`` resolves against (cwd when None).

    Returns:
        Rates in requests per second, same shape as ``t``.
    """
    path = Path(replay.path).expanduser()
    if not path.is_absolute():
        path = (base_dir if base_dir is not None else Path.cwd()) / path
    ts, rs = read_replay_csv(path)
    period = float(ts[-1] - ts[0])
    if replay.loop and period > 0:
        t = np.where(t >= ts[0], ts[0] + np.mod(t - ts[0], period), t)
    return replay.scale * np.interp(t, ts, rs)
