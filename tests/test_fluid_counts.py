"""The fluid engine's counters and latency quantiles by exact values (``envs/sim/fluid.py``).

Scope: ``FluidEngine._read_data_plane`` (the counters, the finished-weighted quantiles and the
histogram of a scrape) and ``FluidEngine._law`` (quantiles and bucket probabilities of
``min(d + X, T)`` with X gamma). Each case is a single service or a hand-made segment, so the
expected figure follows from ``envs/sim/queueing.py``'s formulas: an M/M/c queue at fixed
utilisation has the Erlang-C mean and variance of its response time (the engine matches a
gamma law to both), counters grow by rate x dt, a full queue drops the excess, and nothing is
lost (arrived = completed + failed + dropped + in flight). No test runs more than a few
simulated seconds.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
from scipy import optimize

from envs.core.telemetry import LATENCY_BUCKETS_S
from envs.scenarios.schema import Scenario
from envs.sim import queueing as q
from envs.sim.engine import DataPlaneReading
from envs.sim.fluid import FluidEngine, _mean_backlog, _Segment

BOUNDS = np.array(LATENCY_BUCKETS_S)
B = len(BOUNDS)
Z = (0.5, 0.95, 0.99)


def _scenario(
    rps: float,
    *,
    replicas: int = 2,
    concurrency: int = 2,
    mean_s: float = 0.1,
    cv: float = 1.0,
    queue_per_pod: int = 5,
    timeout_s: float | None = None,
    **updates: Any,
) -> Scenario:
    """One service (the entry) with ``replicas x concurrency`` slots, Poisson arrivals."""
    raw: dict[str, Any] = {
        "name": "counts",
        "topology": {
            "name": "one",
            "entry": "api",
            "services": [
                {
                    "name": "api",
                    "pod": {
                        "concurrency": concurrency,
                        "service_time": {"mean": mean_s, "cv": cv},
                        "queue_per_pod": queue_per_pod,
                        "timeout_s": timeout_s,
                        "startup": {"mean": 1.0, "cv": 0.0},
                        "termination_grace_s": 0.0,
                    },
                    "replicas": {"initial": replicas, "min": 0, "max": 8},
                }
            ],
            "edges": [],
        },
        "traffic": {"base_rps": rps},
        "cluster": {"nodes": 4, "node_startup_s": 0.0},
        "horizon_s": 10.0,
        "scrape_interval_s": 1.0,
        "decision_interval_s": 1.0,
        "actuation_delay_s": 0.0,
        "fidelity": "fluid",
    }
    raw.update(updates)
    return Scenario.model_validate(raw)


def _engine(sc: Scenario) -> FluidEngine:
    eng = FluidEngine(sc)
    eng.start()
    return eng


def _read_at(eng: FluidEngine, t: float) -> DataPlaneReading:
    eng.env.run(until=t)
    return eng._read_data_plane()


def _counters(r: DataPlaneReading) -> np.ndarray:
    """arrived, completed, failed, dropped of the only service."""
    return np.asarray(r.counters[0], dtype=np.float64)


# ---------------------------------------------------------------- M/M/c steady state
LAM, MU, C = 24.0, 10.0, 4  # 4 slots of 0.1 s: utilisation 0.6


def _mmc_moments(lam: float, mu: float, c: int) -> tuple[float, float]:
    """Exact mean and variance of the M/M/c response time (FCFS)."""
    cw = float(q.erlang_c(np.array(float(c)), np.array(lam / mu)))
    g = c * mu - lam
    mean = cw / g + 1.0 / mu
    var = cw * (2.0 - cw) / g**2 + 1.0 / mu**2
    return mean, var


def test_mmc_steady_state_mean_and_quantiles_match_erlang_c() -> None:
    eng = _engine(_scenario(LAM))
    _read_at(eng, 1.0)  # the first interval
    r = _read_at(eng, 2.0)
    mean, var = _mmc_moments(LAM, MU, C)
    assert mean == pytest.approx(q.mmc_mean_response(LAM, MU, C), rel=1e-12)
    assert r.mean_latency[0] == pytest.approx(mean, rel=1e-9)
    k, theta = mean * mean / var, var / mean
    want = [float(q.gamma_quantile(z, np.array(k), np.array(theta))) for z in Z]
    got = [r.p50[0], r.p95[0], r.p99[0]]
    assert got == pytest.approx(want, rel=1e-9)
    # and close to the exact M/M/c quantiles (the gamma law is an approximation: +0.3%, -0.6%
    # and +1.2% at p50, p95, p99 here)
    for z, v in zip(Z, got, strict=True):
        exact = optimize.brentq(lambda t, z=z: q.mmc_response_cdf(t, LAM, MU, C) - z, 0.0, 5.0)
        assert v == pytest.approx(exact, rel=0.02)
    assert r.p50[0] < r.p95[0] < r.p99[0]
    # Little: in flight = lambda x mean response; queue length = lambda x mean wait
    assert r.in_flight[0] == pytest.approx(LAM * mean, rel=1e-9)
    assert r.backlog[0] == pytest.approx(LAM * (mean - 1.0 / MU), rel=1e-9)
    # busy core-seconds of the interval: lambda x E[S] x dt
    assert r.own_busy_s[0] == pytest.approx(LAM / MU * 1.0, rel=1e-12)


def test_counter_increments_over_an_interval_are_rate_times_dt() -> None:
    eng = _engine(_scenario(LAM))
    first = _counters(_read_at(eng, 1.0))
    # the first interval fills the system: arrivals all counted, in flight not yet finished
    mean, _ = _mmc_moments(LAM, MU, C)
    assert first == pytest.approx([LAM, LAM - LAM * mean, 0.0, 0.0], rel=1e-9)
    prev = first
    for t in (2.0, 3.5, 4.0):
        dt = t - eng.now
        cur = _counters(_read_at(eng, t))
        assert cur - prev == pytest.approx([LAM * dt, LAM * dt, 0.0, 0.0], rel=1e-9)
        prev = cur


def test_a_full_queue_drops_the_excess_and_failures_count() -> None:
    # 2 slots of 0.1 s serve 20/s; 50/s arrive; the queue holds 2 x 5 = 10
    eng = _engine(_scenario(50.0, replicas=1, queue_per_pod=10, concurrency=2))
    lam, mu, cap = 50.0, 20.0, 10.0
    r = _read_at(eng, 1.0)
    a, done, failed, dropped = _counters(r)
    assert a == pytest.approx(lam, rel=1e-9)
    # the backlog fills in 10 / 30 s, then the excess (30/s) is dropped
    assert dropped == pytest.approx((lam - mu) * 1.0 - cap, rel=1e-9)
    assert failed == 0.0
    assert r.backlog[0] >= cap
    # the next second: everything beyond the capacity is dropped, the service serves mu
    prev = np.array([a, done, failed, dropped])
    r2 = _read_at(eng, 2.0)
    d = _counters(r2) - prev
    assert d[0] == pytest.approx(lam, rel=1e-9)
    assert d[3] == pytest.approx(lam - mu, rel=1e-9)
    assert d[1] + d[2] == pytest.approx(mu, rel=1e-9)
    assert r2.own_busy_s[0] == pytest.approx(mu / 10.0 * 1.0, rel=1e-12)  # all 2 slots busy


@pytest.mark.parametrize(
    "kw",
    [
        {"rps": LAM},
        {"rps": 50.0, "replicas": 1},
        {"rps": 30.0, "timeout_s": 0.15},
    ],
)
def test_conservation_arrived_is_finished_dropped_or_in_flight(kw: dict[str, Any]) -> None:
    eng = _engine(_scenario(**kw))
    for t in (0.5, 1.0, 2.5, 3.0):
        r = _read_at(eng, t)
        a, done, failed, dropped = _counters(r)
        assert a == pytest.approx(kw["rps"] * t, rel=1e-9)
        assert a == pytest.approx(done + failed + dropped + r.in_flight[0], rel=1e-9)
        assert min(done, failed, dropped, r.in_flight[0]) >= 0.0


def test_a_timeout_fails_the_slow_share_and_caps_the_quantiles() -> None:
    t_out = 0.15
    eng = _engine(_scenario(30.0, timeout_s=t_out))
    _read_at(eng, 1.0)
    prev = _counters(eng._read_data_plane())
    r = _read_at(eng, 2.0)
    d = _counters(r) - prev
    assert d[2] > 0.0  # some attempts time out
    k, theta = eng._law_key[0], eng._law_key[1]  # type: ignore[index]
    p_to = float(q.gamma_sf(np.array(t_out), k, theta)[0])
    assert d[2] / (d[1] + d[2]) == pytest.approx(p_to, rel=1e-6)
    assert r.p99[0] == t_out  # the law min(X, T): its high quantiles are T
    assert r.p50[0] < t_out


def test_zero_traffic_interval_has_no_latency_and_zero_counts() -> None:
    eng = _engine(_scenario(0.0))
    r = _read_at(eng, 1.0)
    assert (r.counters == 0.0).all()
    assert np.isnan([r.p50[0], r.p95[0], r.p99[0], r.mean_latency[0]]).all()
    assert (r.hist_delta == 0.0).all()
    assert r.in_flight[0] == 0.0 and r.backlog[0] == 0.0 and r.own_busy_s[0] == 0.0


def test_a_read_with_no_time_passed_has_no_segment() -> None:
    eng = _engine(_scenario(LAM))
    _read_at(eng, 1.0)
    before = _counters(_read_at(eng, 2.0))
    r = eng._read_data_plane()  # again at t = 2: no segment since
    assert _counters(r) == pytest.approx(before, rel=0)
    assert np.isnan([r.p50[0], r.p95[0], r.p99[0], r.mean_latency[0]]).all()
    assert r.hist_delta.shape == (1, B)
    assert (r.hist_delta == 0.0).all()
    assert r.own_busy_s[0] == 0.0  # the busy time was read (and reset) by the first read
    assert r.in_flight[0] > 0.0


# ---------------------------------------------------------------- histogram and quantiles
def test_histogram_sums_to_finished_and_brackets_the_quantiles() -> None:
    eng = _engine(_scenario(LAM))
    _read_at(eng, 1.0)
    prev = _counters(eng._read_data_plane())
    r = _read_at(eng, 2.0)
    d = _counters(r) - prev
    h = r.hist_delta[0]
    assert (h >= 0.0).all()
    assert h.sum() == pytest.approx(d[1] + d[2], rel=1e-12)
    cum = np.cumsum(h) / h.sum()
    mean, var = _mmc_moments(LAM, MU, C)
    k, theta = mean * mean / var, var / mean
    want = 1.0 - q.gamma_sf(BOUNDS[:-1], np.array(k), np.array(theta))
    assert cum[:-1] == pytest.approx(want, rel=1e-9, abs=1e-15)
    assert cum[-1] == pytest.approx(1.0, rel=1e-12)
    for z, v in zip(Z, (r.p50[0], r.p95[0], r.p99[0]), strict=True):
        i = int(np.searchsorted(BOUNDS, v))  # bucket of the quantile: (BOUNDS[i-1], BOUNDS[i]]
        assert cum[i] >= z - 0.02
        assert i == 0 or cum[i - 1] <= z + 0.02


def _seg(weight: float, delay: float, k: float, theta: float, mean: float) -> _Segment:
    return _Segment(
        np.array([weight]), np.array([delay]), np.array([k]), np.array([theta]), np.array([mean])
    )


@pytest.mark.parametrize(
    ("delay", "k", "theta", "timeout"),
    [
        (0.0, 2.0, 0.05, None),
        (0.3, 0.7, 0.2, None),
        (0.01, 5.0, 0.01, 0.12),
        (0.2, 3.0, 0.1, 0.25),
        (8.0, 2.0, 2.0, None),  # a quarter of the mass between 10 s and +Inf
    ],
)
def test_law_quantiles_and_buckets_by_value(
    delay: float, k: float, theta: float, timeout: float | None
) -> None:
    eng = FluidEngine(_scenario(LAM, timeout_s=timeout))
    t_cap = math.inf if timeout is None else timeout
    quants, pmf = eng._law(_seg(7.0, delay, k, theta, k * theta))
    kk, th = np.array([k]), np.array([theta])
    want = [min(delay + float(q.gamma_quantile(z, kk, th)[0]), t_cap) for z in Z]
    assert quants.shape == (3, 1)
    assert quants[:, 0] == pytest.approx(want, rel=1e-12)
    assert pmf.shape == (1, B)
    cdf = np.array(
        [
            1.0 if (b >= t_cap or i == B - 1) else 1.0 - float(q.gamma_sf(b - delay, kk, th)[0])
            for i, b in enumerate(BOUNDS)
        ]
    )
    assert np.cumsum(pmf[0]) == pytest.approx(cdf, rel=1e-9, abs=1e-15)
    assert pmf[0].sum() == pytest.approx(1.0, rel=1e-12)
    assert (pmf >= 0.0).all()
    if delay > 0:  # nothing finishes before the fixed delay
        assert pmf[0][delay >= BOUNDS].sum() == 0.0


@pytest.mark.parametrize(
    ("k", "theta", "quantile"), [(2.0, math.inf, math.inf), (math.nan, 0.05, math.nan)]
)
def test_a_law_without_finite_scale_puts_everything_in_the_inf_bucket(
    k: float, theta: float, quantile: float
) -> None:
    eng = FluidEngine(_scenario(LAM))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inf / inf and NaN are read as no probability, silently
        quants, pmf = eng._law(_seg(1.0, 0.0, k, theta, 1.0))
    assert quants[:, 0] == pytest.approx([quantile] * 3, nan_ok=True)
    assert pmf[0].tolist() == [0.0] * (B - 1) + [1.0]


def test_law_is_cached_only_for_the_same_law() -> None:
    eng = FluidEngine(_scenario(LAM))
    a = eng._law(_seg(1.0, 0.0, 2.0, 0.05, 0.1))
    # the weight and the mean are not part of the law: the cached value comes back
    assert eng._law(_seg(3.0, 0.0, 2.0, 0.05, 0.2)) is eng._law_value
    assert eng._law_value[0] is a[0]
    for other in (_seg(1.0, 0.0, 2.5, 0.05, 0.1), _seg(1.0, 0.0, 2.0, 0.06, 0.1)):
        assert not np.array_equal(eng._law(other)[0], a[0])
    delayed = eng._law(_seg(1.0, 0.1, 2.0, 0.05, 0.1))[0]
    assert delayed[:, 0] == pytest.approx(a[0][:, 0] + 0.1, rel=1e-12)


def test_several_segments_average_by_finished_weight() -> None:
    eng = _engine(_scenario(LAM))
    base = _counters(_read_at(eng, 1.0))
    s1 = _seg(3.0, 0.0, 2.0, 0.05, 0.1)
    s2 = _seg(1.0, 0.2, 4.0, 0.02, 0.28)
    s3 = _seg(np.inf, 0.0, 9.0, 0.01, 0.09)  # infinite weight is read as 0
    q1, h1 = eng._law(s1)
    q2, h2 = eng._law(s2)
    eng._segments = [s1, s2, s3]
    r = eng._read_data_plane()
    assert _counters(r) == pytest.approx(base, rel=0)
    got = [r.p50[0], r.p95[0], r.p99[0], r.mean_latency[0]]
    want = [(3.0 * q1[i, 0] + 1.0 * q2[i, 0]) / 4.0 for i in range(3)] + [(3.0 * 0.1 + 0.28) / 4.0]
    assert got == pytest.approx(want, rel=1e-12)
    assert r.hist_delta[0] == pytest.approx(3.0 * h1[0] + 1.0 * h2[0], rel=1e-12, abs=1e-15)
    assert eng._segments == []


@pytest.mark.parametrize("weights", [[0.0, 0.0], [0.0, 1e-10], [1e-9, 0.0]])
def test_several_segments_with_no_finished_weight_give_nan(weights: list[float]) -> None:
    eng = _engine(_scenario(LAM))
    _read_at(eng, 1.0)
    eng._segments = [_seg(weights[0], 0.0, 2.0, 0.05, 0.1), _seg(weights[1], 0.0, 3.0, 0.05, 0.15)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0 / 0 is read as no value, silently
        r = eng._read_data_plane()
    assert np.isnan([r.p50[0], r.p95[0], r.p99[0], r.mean_latency[0]]).all()
    assert r.hist_delta[0].sum() == pytest.approx(sum(weights), rel=1e-9)


def test_several_segments_with_small_weights_are_averaged() -> None:
    eng = _engine(_scenario(LAM))
    _read_at(eng, 1.0)
    eng._segments = [_seg(0.3, 0.0, 2.0, 0.05, 0.1), _seg(0.2, 0.0, 2.0, 0.05, 0.2)]
    r = eng._read_data_plane()
    assert r.mean_latency[0] == pytest.approx((0.3 * 0.1 + 0.2 * 0.2) / 0.5, rel=1e-12)
    quants, _ = eng._law(_seg(1.0, 0.0, 2.0, 0.05, 0.1))
    assert [r.p50[0], r.p95[0], r.p99[0]] == pytest.approx(quants[:, 0], rel=1e-12)


@pytest.mark.parametrize("weight", [0.0, 1e-9, 2e-9, np.inf])
def test_one_segment_below_the_weight_threshold_gives_nan(weight: float) -> None:
    eng = _engine(_scenario(LAM))
    _read_at(eng, 1.0)
    eng._segments = [_seg(weight, 0.0, 2.0, 0.05, 0.1)]
    r = eng._read_data_plane()
    vals = np.array([r.p50[0], r.p95[0], r.p99[0], r.mean_latency[0]])
    w = weight if np.isfinite(weight) else 0.0
    if w > 1e-9:
        _, pmf = eng._law(_seg(1.0, 0.0, 2.0, 0.05, 0.1))
        assert vals[3] == 0.1
        assert r.hist_delta[0] == pytest.approx(w * pmf[0], rel=1e-12)
    else:
        assert np.isnan(vals).all()
        if w > 0:
            _, pmf = eng._law(_seg(1.0, 0.0, 2.0, 0.05, 0.1))
            assert r.hist_delta[0] == pytest.approx(w * pmf[0], rel=1e-12)
        else:
            assert (r.hist_delta[0] == 0.0).all()


# ---------------------------------------------------------------- the backlog gauge's mean
@pytest.mark.parametrize(
    ("b0", "net", "cap", "dt", "want"),
    [
        (2.0, 3.0, 100.0, 4.0, 8.0),  # growing, never full: 2 + 3 x 4 / 2
        (2.0, 3.0, math.inf, 4.0, 8.0),  # no queue limit
        (2.0, 4.0, 10.0, 4.0, 8.0),  # full after 2 s: (6 x 2 + 10 x 2) / 4
        (2.0, 2.0, 10.0, 4.0, 6.0),  # full exactly at the end
        (9.0, 0.5, 10.0, 4.0, 9.75),  # slow growth, full after 2 s: (9.5 x 2 + 10 x 2) / 4
        (1.0, 0.5, 100.0, 2.0, 1.5),  # slow growth, never full: 1 + 0.5 x 2 / 2
        (0.0, 8.0, 4.0, 1.0, 3.0),  # full after 0.5 s: (2 x 0.5 + 4 x 0.5) / 1
        (10.0, -1.0, 100.0, 4.0, 8.0),  # draining, never empty: 10 - 1 x 4 / 2
        (4.0, -2.0, 100.0, 4.0, 1.0),  # empty after 2 s: 4 / 2 x 2 / 4
        (4.0, -1.0, 100.0, 4.0, 2.0),  # empty exactly at the end
        (0.0, -3.0, 100.0, 2.0, 0.0),  # nothing to drain
        (5.0, 0.0, 100.0, 3.0, 5.0),  # flat
        (0.0, 0.0, 0.0, 3.0, 0.0),
    ],
)
def test_mean_backlog_by_value(b0: float, net: float, cap: float, dt: float, want: float) -> None:
    got = _mean_backlog(np.array([b0]), np.array([net]), np.array([cap]), dt)
    assert got.shape == (1,)
    assert got[0] == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_mean_backlog_is_vectorised_per_service() -> None:
    b0 = np.array([2.0, 10.0, 5.0, 2.0])
    net = np.array([4.0, -1.0, 0.0, 3.0])
    cap = np.array([10.0, 100.0, 100.0, math.inf])
    assert _mean_backlog(b0, net, cap, 4.0) == pytest.approx([8.0, 8.0, 5.0, 8.0], rel=1e-12)


def test_mean_backlog_of_a_flat_or_empty_queue_is_silent() -> None:
    # net = 0 divides by zero in the branches that are not taken: no warning comes out
    b0 = np.array([3.0, 0.0, 10.0])
    net = np.zeros(3)
    cap = np.array([10.0, 10.0, 10.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _mean_backlog(b0, net, cap, 2.0)
    assert got.tolist() == [3.0, 0.0, 10.0]
