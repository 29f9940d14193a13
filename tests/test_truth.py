"""The simulator's numbers against independent truth: live attempts, drains, exact quantiles.

Each test here compares a figure the engines report with something computed apart from it:
the attempts actually alive in the SimPy run, the requests the traffic source spawned, the
exact response-time distribution of M/M/c (derived here, not taken from ``envs.sim.queueing``),
and hand computations of :func:`envs.sim.validation.run_stats`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize

from envs.scenarios.loader import load_scenario
from envs.scenarios.schema import Scenario
from envs.sim import queueing as q
from envs.sim.request import RequestEngine
from envs.sim.simulator import Simulator
from envs.sim.validation import (
    at_utilisation,
    mmc_scenario,
    run_frames,
    run_stats,
    without_timeouts,
)

FIDELITIES = ("fluid", "request")


def _chain3(util: float, **updates: object) -> Scenario:
    return at_utilisation(load_scenario("chain3"), util, **updates)


# ---------------------------------------------------------------- live attempts, drains
def _request_engine(sim: Simulator) -> RequestEngine:
    eng = sim.engine
    assert isinstance(eng, RequestEngine)
    return eng


def test_in_flight_equals_the_requests_in_the_pool_of_a_single_queue() -> None:
    """One service, no calls, no timeouts: in flight is exactly queued + in service."""
    sc = mmc_scenario(0.9, horizon_s=120.0, seed=4)
    sim = Simulator(sc)
    frames = [sim.reset()]
    pool = _request_engine(sim).pools[0]
    seen = []
    while not sim.done:
        frames.extend(sim.step([]))
        f = frames[-1]
        alive = len(pool.users) + len(pool.queue)
        assert f.in_flight[0] == alive
        arrived, completed, failed, dropped = f.counters[0]
        assert arrived == completed + failed + dropped + alive
        seen.append(alive)
    assert max(seen) > 0  # the check was not trivially 0 == 0


def _drain(sim: Simulator, extra_s: float = 120.0) -> np.ndarray:
    """Run past the horizon with no new traffic; returns the counters then."""
    eng = _request_engine(sim)
    while not sim.done:
        sim.step([])
    eng.env.run(until=eng.env.now + extra_s)
    return np.array([eng._arrived, eng._completed, eng._failed, eng._dropped], dtype=float).T


def test_drain_without_retries_every_request_ends_and_entry_arrivals_equal_spawned() -> None:
    sc = without_timeouts(_chain3(0.8, horizon_s=60.0, seed=3, fidelity="request"))
    sim = Simulator(sc)
    sim.reset()
    eng = _request_engine(sim)
    counters = _drain(sim)
    np.testing.assert_array_equal(eng.live_in_flight(), np.zeros(eng.n))
    np.testing.assert_array_equal(counters[:, 0], counters[:, 1:].sum(axis=1))
    assert eng.spawned > 1000
    assert counters[eng.entry, 0] == eng.spawned  # no retries at the entry: one attempt each
    # every attempt downstream came from a call: the downstream totals are those of chain3
    assert (counters[:, 0] > 0).all()


def test_drain_with_timeouts_and_retries_ends_every_attempt() -> None:
    """Overloaded, with timeouts and retries: abandoned work ends too, and in flight is 0."""
    sc = _chain3(1.4, horizon_s=60.0, seed=5, fidelity="request")
    sim = Simulator(sc)
    frames = [sim.reset()]
    eng = _request_engine(sim)
    while not sim.done:
        frames.extend(sim.step([]))
    assert max(f.in_flight.sum() for f in frames) > 0
    counters = _drain(sim, extra_s=300.0)
    np.testing.assert_array_equal(eng.live_in_flight(), np.zeros(eng.n))
    assert eng._alive == [0] * eng.n and eng._abandoned == [0] * eng.n
    np.testing.assert_array_equal(counters[:, 0], counters[:, 1:].sum(axis=1))
    assert counters[:, 2].sum() > 0  # timeouts really happened
    # the entry saw each spawned request once plus its retries, never fewer
    assert counters[eng.entry, 0] >= eng.spawned


# ---------------------------------------------------------------- quantile order in every frame
@st.composite
def _scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(1, 3))
    services, edges = [], []
    for i in range(n):
        services.append(
            {
                "name": f"s{i}",
                "pod": {
                    "concurrency": draw(st.integers(1, 6)),
                    "service_time": {
                        "mean": draw(st.floats(0.002, 0.05)),
                        "cv": draw(st.sampled_from([0.0, 0.5, 1.0, 1.5])),
                    },
                    "timeout_s": draw(st.one_of(st.none(), st.floats(0.05, 1.0))),
                    "retries": draw(st.integers(0, 2)),
                    "queue_per_pod": draw(st.integers(0, 50)),
                    "error_rate": draw(st.sampled_from([0.0, 0.05])),
                },
                "replicas": {"initial": draw(st.integers(1, 3)), "min": 0, "max": 8},
            }
        )
        if i:
            edges.append({"src": f"s{draw(st.integers(0, i - 1))}", "dst": f"s{i}"})
    return Scenario.model_validate(
        {
            "topology": {"entry": "s0", "services": services, "edges": edges},
            "traffic": {
                "base_rps": draw(st.floats(5, 200)),
                "noise": {"cv": 0.3, "tau_s": 5},
                "bursts": [{"at_s": 20, "duration_s": 15, "factor": draw(st.floats(1, 5))}],
            },
            "horizon_s": 45.0,
            "scrape_interval_s": 5.0,
            "decision_interval_s": 15.0,
            "seed": draw(st.integers(0, 2**31 - 1)),
        }
    )


@pytest.mark.parametrize("fidelity", FIDELITIES)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=_scenarios())
def test_p50_le_p95_le_p99_in_every_frame(fidelity: str, sc: Scenario) -> None:
    frames = run_frames(sc.model_copy(update={"fidelity": fidelity}))
    known = 0
    for f in frames:
        p50, p95, p99 = f["p50"], f["p95"], f["p99"]
        ok = ~np.isnan(p50)
        # a quantile is missing exactly when the others are
        np.testing.assert_array_equal(ok, ~np.isnan(p95))
        np.testing.assert_array_equal(ok, ~np.isnan(p99))
        assert (p50[ok] <= p95[ok] * (1 + 1e-9)).all(), (f.t, p50, p95)
        assert (p95[ok] <= p99[ok] * (1 + 1e-9)).all(), (f.t, p95, p99)
        assert (p50[ok] > 0).all()
        known += int(ok.sum())
    assert known > 0


def test_p50_and_p95_differ_where_latency_varies() -> None:
    """The three quantiles are distinct figures (exponential service): p50 < p95 < p99."""
    frames = run_frames(mmc_scenario(0.7, horizon_s=60.0, seed=1))
    for f in frames[1:]:
        assert f["p50"][0] < 0.8 * f["p95"][0] < 0.8 * f["p99"][0]


# ---------------------------------------------------------------- exact M/M/c quantiles
def _erlang_c(c: int, a: float) -> float:
    """Erlang-C by its textbook sum (independent of ``envs.sim.queueing``)."""
    head = sum(a**k / math.factorial(k) for k in range(c))
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (head + top)


def _mmc_response_sf(t: float, lam: float, mu: float, c: int) -> float:
    """``P(R > t)`` of FCFS M/M/c, by numerical convolution.

    A request waits with probability ``C`` (Erlang-C); given that it waits, the wait is
    ``Exp(c mu - lam)`` (memoryless departures at rate ``c mu`` against arrivals at
    ``lam``). Its service is ``Exp(mu)``, independent of the wait. So
    ``P(R > t) = (1 - C) e^{-mu t} + C P(W + S > t)`` with
    ``P(W + S > t) = P(W > t) + int_0^t g e^{-g w} e^{-mu (t - w)} dw``.
    """
    cc = _erlang_c(c, lam / mu)
    g = c * mu - lam
    conv, _ = integrate.quad(lambda w: g * math.exp(-g * w - mu * (t - w)), 0.0, t)
    return (1 - cc) * math.exp(-mu * t) + cc * (math.exp(-g * t) + conv)


def mmc_response_quantile(p: float, lam: float, mu: float, c: int) -> float:
    """Exact ``p`` quantile of the M/M/c response time, by root finding."""
    return float(
        optimize.brentq(lambda t: 1.0 - _mmc_response_sf(t, lam, mu, c) - p, 0.0, 1e4 / mu)
    )


def test_exact_quantiles_hand_values() -> None:
    # c = 1: the response time is Exp(mu - lam); its median is ln 2 / (mu - lam)
    assert mmc_response_quantile(0.5, 50.0, 100.0, 1) == pytest.approx(math.log(2) / 50, rel=1e-9)
    # lam -> 0: no waiting, the quantile of Exp(mu)
    assert mmc_response_quantile(0.99, 1e-6, 100.0, 8) == pytest.approx(
        -math.log(0.01) / 100, rel=1e-6
    )
    # the library's closed form agrees with the convolution here
    t = np.linspace(0.0, 0.2, 41)
    mine = np.array([1 - _mmc_response_sf(x, 560.0, 100.0, 8) for x in t])
    np.testing.assert_allclose(q.mmc_response_cdf(t, 560.0, 100.0, 8), mine, atol=1e-12)
    assert _erlang_c(8, 5.6) == pytest.approx(float(q.erlang_c(np.array(8), np.array(5.6))))


# Response-time quantiles of one scrape interval hold about rate x 5 s samples; their
# average over intervals estimates the stationary quantile. Tolerance: 4% for p50 and p95,
# 6% for p99, over 600 s (rho 0.5) and 1200 s (rho 0.8). Measured over seeds 0-4 of both
# (tests/test_truth.py's functions, 2026-12-05): worst errors 1.4% (p50), 1.8% (p95) and
# 1.9% (p99), at rho 0.8, seed 2.
@pytest.mark.parametrize(("rho", "horizon"), [(0.5, 600.0), (0.8, 1200.0)])
def test_request_level_quantiles_match_exact_mmc(rho: float, horizon: float) -> None:
    servers, mean = 8, 0.01
    lam, mu = rho * servers / mean, 1.0 / mean
    frames = run_frames(mmc_scenario(rho, servers, mean, horizon_s=horizon, seed=11))
    stats = run_stats(frames, warmup=2)
    for p, got, tol in ((0.5, stats.p50, 0.04), (0.95, stats.p95, 0.04), (0.99, stats.p99, 0.06)):
        exact = mmc_response_quantile(p, lam, mu, servers)
        assert float(got[0]) == pytest.approx(exact, rel=tol), (p, float(got[0]), exact)


# fluid vs request for p50 and p95: test_engines.py's fidelity tests (_assert_close)


# ---------------------------------------------------------------- run_stats by values
def test_run_stats_skips_its_warmup_by_values() -> None:
    sc = _chain3(0.6, horizon_s=120.0, seed=2, fidelity="fluid")
    raw = sc.model_dump()
    raw["traffic"]["steps"] = [{"at_s": 60.0, "factor": 1.5}]
    frames = run_frames(Scenario.model_validate(raw))
    for warmup in (0, 1, 5):
        stats = run_stats(frames, warmup=warmup)
        first, last = frames[warmup], frames[-1]
        d = last.counters - first.counters
        span = last.t - first.t
        np.testing.assert_array_equal(stats.throughput, d[:, 1] / span)
        body = frames[warmup + 1 :]
        for field in ("p50", "p95", "p99", "mean_latency"):
            expected = np.mean([f[field] for f in body], axis=0)
            np.testing.assert_allclose(getattr(stats, field), expected, rtol=1e-12)
        finished = d[:, 1:].sum(axis=1)
        np.testing.assert_allclose(stats.error_rate, (d[:, 2] + d[:, 3]) / finished)
    # the step raises traffic by half, half-way: skipping the calm half raises the mean rate
    late = run_stats(frames, warmup=len(frames) // 2)
    early = run_stats(frames, warmup=1)
    assert (late.throughput > 1.1 * early.throughput).all()
    assert (late.p99 > early.p99).all()


def test_run_stats_refuses_a_warmup_that_leaves_nothing() -> None:
    frames = run_frames(_chain3(0.5, horizon_s=15.0, fidelity="fluid"))
    with pytest.raises(ValueError, match="warmup"):
        run_stats(frames, warmup=len(frames) - 1)
