"""Behaviour of the traffic model: patterns against hand values, noise statistics, replay."""

from __future__ import annotations

import math
import timeit
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envs.scenarios.schema import Traffic
from envs.sim.traffic import TrafficModel


def model(
    horizon_s: float = 100.0, seed: int = 0, base_dir: Path | None = None, **traffic: Any
) -> TrafficModel:
    return TrafficModel(
        Traffic.model_validate(traffic), horizon_s, np.random.default_rng(seed), base_dir
    )


def reference_integral(m: TrafficModel, t0: float, t1: float) -> float:
    """Sum over ticks of rate * overlap, with the first/last rate extended beyond the ticks."""
    res, n = m.resolution_s, len(m.rates)
    total = 0.0
    lo, hi = min(t0, t1), max(t0, t1)
    for k in range(n):
        a = -math.inf if k == 0 else k * res
        b = math.inf if k == n - 1 else (k + 1) * res
        overlap = min(hi, b) - max(lo, a)
        if overlap > 0:
            total += m.rates[k] * overlap
    return total if t1 >= t0 else -total


# ------------------------------------------------------------------------------ basics


def test_constant_rate_is_exact() -> None:
    m = model(horizon_s=60.0, base_rps=42.0, resolution_s=5.0)
    assert m.rates.shape == (13,)  # ceil(60 / 5) + 1
    assert np.all(m.rates == 42.0)
    assert m.rate(0.0) == 42.0 and m.rate(59.9) == 42.0 and m.rate(1e9) == 42.0
    assert m.integral(0.0, 60.0) == pytest.approx(42.0 * 60.0, rel=1e-12)
    assert m.integral(3.3, 17.9) == pytest.approx(42.0 * 14.6, rel=1e-12)
    assert m.mean_rate(1.0, 2.0) == pytest.approx(42.0)
    assert m.mean_rate(7.0, 7.0) == 42.0


def test_tick_count_and_read_only() -> None:
    m = model(horizon_s=10.5, resolution_s=1.0)
    assert len(m.rates) == math.ceil(10.5) + 1 == m.n_ticks
    with pytest.raises(ValueError):
        m.rates[0] = 1.0


def test_rate_uses_tick_floor_and_clips() -> None:
    m = model(horizon_s=10.0, base_rps=10.0, steps=[{"at_s": 3.0, "factor": 2.0}])
    assert m.rate(2.999) == 10.0
    assert m.rate(3.0) == 20.0  # a boundary belongs to the new tick
    assert m.rate(-5.0) == m.rates[0]
    assert m.rate(1e6) == m.rates[-1]
    for k in range(len(m.rates)):
        assert m.rate(k * m.resolution_s) == m.rates[k]


def test_integral_matches_tick_sum_with_partial_ticks() -> None:
    m = model(horizon_s=50.0, seed=3, resolution_s=2.0, noise={"cv": 0.5, "tau_s": 5.0})
    rng = np.random.default_rng(1)
    for _ in range(200):
        t0, t1 = rng.uniform(-5.0, 60.0, size=2)
        assert m.integral(t0, t1) == pytest.approx(reference_integral(m, t0, t1), rel=1e-9)
        if t1 != t0:
            assert m.mean_rate(t0, t1) == pytest.approx(m.integral(t0, t1) / (t1 - t0))
    # Whole ticks and a hand-made partial case.
    assert m.integral(0.0, 2.0 * len(m.rates)) == pytest.approx(float(m.rates.sum()) * 2.0)
    assert m.integral(1.0, 5.0) == pytest.approx(m.rates[0] * 1 + m.rates[1] * 2 + m.rates[2] * 1)
    assert m.integral(3.0, 3.0) == 0.0


def test_integral_is_cheap() -> None:
    m = model(horizon_s=86400.0, noise={"cv": 0.2})
    f = m.integral
    per_call = min(timeit.repeat(lambda: f(1234.5, 5678.9), number=20_000, repeat=3)) / 20_000
    assert per_call < 10e-6  # about 0.3 µs on a laptop; generous for busy CI machines


def test_tick_bounds_split_into_constant_pieces() -> None:
    m = model(horizon_s=10.0, resolution_s=2.0)
    assert m.tick_bounds(1.0, 7.5) == [1.0, 2.0, 4.0, 6.0, 7.5]
    assert m.tick_bounds(2.0, 4.0) == [2.0, 4.0]
    assert m.tick_bounds(3.0, 3.0) == [3.0, 3.0]
    # 6 ticks; the last starts at 10 and holds for ever.
    assert m.tick_bounds(9.0, 100.0) == [9.0, 10.0, 100.0]


# ------------------------------------------------------------------------------ patterns


def test_diurnal_peak_and_trough_exact() -> None:
    # peak_s on a tick midpoint: the peak tick is exactly base*(1+a), 12 h later base*(1-a).
    m = model(
        horizon_s=86400.0,
        base_rps=100.0,
        diurnal={"amplitude": 0.4, "period_s": 86400.0, "peak_s": 3600.5},
    )
    assert int(np.argmax(m.rates)) == 3600
    assert m.rate(3600.5) == pytest.approx(140.0, rel=1e-12)
    assert int(np.argmin(m.rates)) == 3600 + 43200
    assert m.rate(3600.5 + 43200) == pytest.approx(60.0, rel=1e-12)
    # Quarter period away the multiplier is 1.
    assert m.rate(3600.5 + 21600) == pytest.approx(100.0, abs=1e-9)
    # The mean over whole days is the base.
    assert m.integral(0.0, 86400.0) / 86400.0 == pytest.approx(100.0, rel=1e-9)


def test_default_diurnal_peaks_at_14h() -> None:
    m = model(horizon_s=86400.0, base_rps=10.0, diurnal={"amplitude": 0.5})
    assert int(np.argmax(m.rates)) in (14 * 3600 - 1, 14 * 3600)
    assert m.rate(14 * 3600) == pytest.approx(15.0, rel=1e-8)
    assert m.rate(2 * 3600) == pytest.approx(5.0, rel=1e-8)


def test_weekly_component_multiplies() -> None:
    m = model(
        horizon_s=7 * 86400.0,
        base_rps=100.0,
        resolution_s=1.0,
        diurnal={
            "amplitude": 0.5,
            "peak_s": 0.5,
            "weekly_amplitude": 0.2,
            "weekly_peak_s": 2 * 86400 + 0.5,
        },
    )
    assert m.rate(2 * 86400 + 0.5) == pytest.approx(100.0 * 1.5 * 1.2, rel=1e-12)
    assert m.rate(2 * 86400 + 0.5 + 3.5 * 86400) == pytest.approx(100.0 * 0.5 * 0.8, rel=1e-12)
    assert int(np.argmax(m.rates)) == 2 * 86400


def test_burst_trapezoid() -> None:
    m = model(
        horizon_s=600.0,
        base_rps=10.0,
        bursts=[{"at_s": 100.0, "duration_s": 200.0, "factor": 3.0, "ramp_s": 50.0}],
    )
    assert m.rate(99.0) == 10.0
    assert m.rate(125.0) == pytest.approx(10.0 * (1 + 2 * 25.5 / 50))  # midpoint 125.5
    assert m.rate(149.0) == pytest.approx(10.0 * (1 + 2 * 49.5 / 50))
    assert m.rate(150.0) == pytest.approx(30.0)
    assert m.rate(299.0) == pytest.approx(30.0)
    assert m.rate(300.0) == pytest.approx(10.0 * (1 + 2 * 49.5 / 50))  # the fall starts at 300
    assert m.rate(325.0) == pytest.approx(10.0 * (1 + 2 * 24.5 / 50))
    assert m.rate(350.0) == 10.0
    assert m.rate(500.0) == 10.0


def test_burst_without_ramp_and_short_burst() -> None:
    m = model(
        horizon_s=100.0,
        base_rps=1.0,
        bursts=[{"at_s": 10.0, "duration_s": 5.0, "factor": 4.0, "ramp_s": 0.0}],
    )
    assert m.rate(9.0) == 1.0 and m.rate(10.0) == 4.0 and m.rate(14.0) == 4.0
    assert m.rate(15.0) == 1.0
    # duration < ramp: a triangle that peaks below factor.
    tri = model(
        horizon_s=100.0,
        base_rps=1.0,
        bursts=[{"at_s": 10.0, "duration_s": 10.0, "factor": 3.0, "ramp_s": 40.0}],
    )
    assert tri.rates.max() < 3.0
    assert tri.rate(19.0) == pytest.approx(1 + 2 * 9.5 / 40)
    assert tri.rate(40.0) == pytest.approx(1 + 2 * (60 - 40.5) / 40)


def test_steps_multiply_from_their_time() -> None:
    m = model(
        horizon_s=100.0,
        base_rps=10.0,
        steps=[{"at_s": 20.0, "factor": 2.0}, {"at_s": 50.0, "factor": 0.25}],
    )
    assert m.rate(19.0) == 10.0
    assert m.rate(20.0) == 20.0
    assert m.rate(60.0) == 5.0
    assert m.integral(0.0, 100.0) == pytest.approx(10 * 20 + 20 * 30 + 5 * 50)


def test_trend_linear_and_floored() -> None:
    up = model(horizon_s=7200.0, base_rps=100.0, trend={"per_hour": 0.5})
    assert up.rate(3600.0) == pytest.approx(100.0 * (1 + 0.5 * 3600.5 / 3600))
    down = model(horizon_s=7200.0, base_rps=100.0, trend={"per_hour": -2.0})
    assert down.rate(900.0) == pytest.approx(100.0 * (1 - 2.0 * 900.5 / 3600))
    assert down.rate(1800.0) == 0.0 and down.rate(5000.0) == 0.0
    assert np.all(down.rates >= 0)


def test_patterns_multiply() -> None:
    m = model(
        horizon_s=1000.0,
        base_rps=10.0,
        steps=[{"at_s": 100.0, "factor": 2.0}],
        bursts=[{"at_s": 200.0, "duration_s": 100.0, "factor": 3.0, "ramp_s": 0.0}],
        trend={"per_hour": 3.6},
    )
    assert m.rate(250.0) == pytest.approx(10.0 * 2.0 * 3.0 * (1 + 3.6 * 250.5 / 3600))


# ------------------------------------------------------------------------------ noise


@pytest.mark.parametrize(("cv", "tau_s"), [(0.3, 10.0), (0.8, 5.0), (0.2, 0.0)])
def test_noise_mean_cv_and_autocorrelation(cv: float, tau_s: float) -> None:
    n = 400_000
    m = model(horizon_s=n - 1, seed=7, base_rps=1.0, noise={"cv": cv, "tau_s": tau_s})
    x = m.rates
    phi = math.exp(-1.0 / tau_s) if tau_s > 0 else 0.0
    # Correlation of the log-normal multiplier at lag k, and the variance of the sample mean.
    s2 = math.log1p(cv * cv)
    lags = np.arange(1, 20_000)
    rho = np.expm1(s2 * phi**lags) / np.expm1(s2)
    var_mean = cv**2 / n * (1 + 2 * float(np.sum((1 - lags / n) * rho)))
    assert abs(x.mean() - 1.0) < 5 * math.sqrt(var_mean)
    # CV: the effective sample size of the variance is smaller; 5 sigma with a crude bound.
    n_eff = n * (1 - phi) / (1 + phi)
    kurt = math.exp(4 * s2) + 2 * math.exp(3 * s2) + 3 * math.exp(2 * s2) - 6  # excess
    rel_se_cv = 0.5 * math.sqrt((2 + kurt) / n_eff)
    assert abs(x.std() / x.mean() - cv) < 5 * rel_se_cv * cv + 1e-3
    # The log is Gaussian AR(1): lag-1 autocorrelation phi.
    lx = np.log(x)
    r1 = np.corrcoef(lx[:-1], lx[1:])[0, 1]
    assert r1 == pytest.approx(phi, abs=5 * math.sqrt((1 - phi**2) / n) + 1e-3)
    assert lx.var() == pytest.approx(s2, rel=5 * math.sqrt(2 / n_eff))


def test_noise_is_drawn_per_tick_and_constant_within_it() -> None:
    m = model(horizon_s=100.0, resolution_s=10.0, noise={"cv": 0.5, "tau_s": 0.0})
    assert len(set(m.rates.tolist())) == len(m.rates)
    assert m.rate(10.0) == m.rate(19.99)


def test_same_seed_same_rates_different_seed_different() -> None:
    cfg: dict[str, Any] = {
        "noise": {"cv": 0.3},
        "diurnal": {},
        "bursts": [{"at_s": 10.0, "duration_s": 20.0}],
    }
    a = model(horizon_s=500.0, seed=11, **cfg)
    b = model(horizon_s=500.0, seed=11, **cfg)
    c = model(horizon_s=500.0, seed=12, **cfg)
    np.testing.assert_array_equal(a.rates, b.rates)
    assert not np.array_equal(a.rates, c.rates)


def test_no_noise_draws_nothing() -> None:
    rng = np.random.default_rng(5)
    TrafficModel(Traffic.model_validate({"diurnal": {"amplitude": 0.2}}), 100.0, rng)
    assert rng.random() == np.random.default_rng(5).random()


# ------------------------------------------------------------------------------ replay


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_replay_interpolates_scales_and_loops(tmp_path: Path) -> None:
    write(tmp_path / "trace.csv", "t,rps\n0,10\n10,20\n20,10\n")
    looped = model(horizon_s=60.0, base_dir=tmp_path, replay={"path": "trace.csv", "scale": 2.0})
    assert looped.rate(5.0) == pytest.approx(2 * 15.5)  # midpoint 5.5
    assert looped.rate(14.0) == pytest.approx(2 * (20 - 4.5))
    assert looped.rate(25.0) == pytest.approx(2 * 15.5)  # 25.5 -> 5.5 (period 20)
    assert looped.rate(45.0) == pytest.approx(2 * 15.5)
    once = model(
        horizon_s=60.0,
        base_dir=tmp_path,
        replay={"path": str(tmp_path / "trace.csv"), "loop": False},
    )
    assert once.rate(5.0) == pytest.approx(15.5)
    assert once.rate(25.0) == pytest.approx(10.0)  # last value holds
    assert once.rate(59.0) == pytest.approx(10.0)


def test_replay_ignores_base_rps_but_keeps_other_patterns(tmp_path: Path) -> None:
    write(tmp_path / "flat.csv", "rps,t,comment\n7,0,a\n7,100,b\n")
    m = model(
        horizon_s=50.0,
        base_dir=tmp_path,
        base_rps=1000.0,
        replay={"path": "flat.csv"},
        steps=[{"at_s": 10.0, "factor": 3.0}],
    )
    assert m.rate(0.0) == pytest.approx(7.0)
    assert m.rate(20.0) == pytest.approx(21.0)


def test_replay_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "one.csv", "t,rps\n0,3\n")
    monkeypatch.chdir(tmp_path)
    m = model(horizon_s=10.0, replay={"path": "one.csv"})
    assert np.all(m.rates == 3.0)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("time,rps\n0,1\n", "missing column(s) ['t']"),
        ("t,value\n0,1\n", "missing column(s) ['rps']"),
        ("t,rps\n0,1\n5,2\n3,4\n", "line 4: t=3.0 does not increase"),
        ("t,rps\n0,1\n0,2\n", "does not increase"),
        ("t,rps\n0,1\n5,-2\n", "line 3: negative rps -2.0"),
        ("t,rps\n0,abc\n", "are not both numbers"),
        ("t,rps\n0,nan\n", "must be finite"),
        ("t,rps\n", "has no data rows"),
        ("", "missing column(s) ['t', 'rps']"),
    ],
)
def test_bad_replay_csv(tmp_path: Path, text: str, problem: str) -> None:
    write(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError) as err:
        model(base_dir=tmp_path, replay={"path": "bad.csv"})
    msg = str(err.value)
    assert str(tmp_path / "bad.csv") in msg
    assert problem in msg


def test_missing_replay_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.csv.*cannot be read.*traffic\.replay\.path"):
        model(base_dir=tmp_path, replay={"path": "nope.csv"})


def test_bad_horizon() -> None:
    with pytest.raises(ValueError, match="horizon_s"):
        model(horizon_s=0.0)


# ------------------------------------------------------------------------------ property


@st.composite
def traffic_configs(draw: st.DrawFn) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "base_rps": draw(st.floats(0.0, 1e4)),
        "resolution_s": draw(st.sampled_from([0.1, 0.5, 1.0, 2.5, 15.0, 60.0])),
    }
    if draw(st.booleans()):
        cfg["diurnal"] = {
            "amplitude": draw(st.floats(0.0, 0.99)),
            "period_s": draw(st.floats(60.0, 86400.0)),
            "peak_s": draw(st.floats(-1e5, 1e5)),
            "weekly_amplitude": draw(st.floats(0.0, 0.99)),
        }
    cfg["steps"] = [
        {"at_s": draw(st.floats(0.0, 5000.0)), "factor": draw(st.floats(0.01, 10.0))}
        for _ in range(draw(st.integers(0, 3)))
    ]
    cfg["bursts"] = [
        {
            "at_s": draw(st.floats(0.0, 5000.0)),
            "duration_s": draw(st.floats(0.1, 2000.0)),
            "factor": draw(st.floats(0.01, 20.0)),
            "ramp_s": draw(st.floats(0.0, 500.0)),
        }
        for _ in range(draw(st.integers(0, 3)))
    ]
    if draw(st.booleans()):
        cfg["trend"] = {"per_hour": draw(st.floats(-5.0, 5.0))}
    if draw(st.booleans()):
        cfg["noise"] = {"cv": draw(st.floats(0.0, 2.0)), "tau_s": draw(st.floats(0.0, 600.0))}
    return cfg


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cfg=traffic_configs(),
    horizon=st.floats(1.0, 5000.0),
    seed=st.integers(0, 2**32 - 1),
    cut=st.floats(0.0, 1.0),
)
def test_rates_finite_nonnegative_and_integral_consistent(
    cfg: dict[str, Any], horizon: float, seed: int, cut: float
) -> None:
    m = model(horizon_s=horizon, seed=seed, **cfg)
    res = m.resolution_s
    assert len(m.rates) == math.ceil(horizon / res - 1e-9) + 1
    assert np.all(np.isfinite(m.rates)) and np.all(m.rates >= 0)
    whole = len(m.rates) * res
    total = float(np.sum(m.rates * res))
    assert m.integral(0.0, whole) == pytest.approx(total, rel=1e-9, abs=1e-9)
    # Additivity at an arbitrary cut point.
    t = cut * whole
    assert m.integral(0.0, t) + m.integral(t, whole) == pytest.approx(total, rel=1e-9, abs=1e-6)
