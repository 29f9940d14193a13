"""Queueing formulas against hand computation and exact references."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats

from envs.sim import queueing as q


def _erlang_b_recursion(c: int, a: float) -> float:
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b


@given(c=st.integers(1, 400), rho=st.floats(0.01, 1.5))
def test_erlang_b_matches_the_recursion(c: int, rho: float) -> None:
    a = rho * c
    assert float(q.erlang_b(np.array(c), np.array(a))) == pytest.approx(
        _erlang_b_recursion(c, a), rel=1e-9, abs=1e-300
    )


def test_erlang_c_hand_values() -> None:
    # M/M/1: C = rho.  M/M/2 with a = 1: C = a^2/(2(2-a)) / (1 + a + a^2/(2(2-a))) = 1/3.
    assert float(q.erlang_c(np.array(1), np.array(0.7))) == pytest.approx(0.7)
    assert float(q.erlang_c(np.array(2), np.array(1.0))) == pytest.approx(1 / 3)
    assert float(q.erlang_c(np.array(4), np.array(5.0))) == 1.0  # unstable: always waits


def test_mmc_mean_wait_hand_value() -> None:
    # M/M/2, lambda = 1, mu = 1: Wq = C / (c mu - lambda) = (1/3) / 1
    assert q.mmc_mean_wait(1.0, 1.0, 2) == pytest.approx(1 / 3)
    assert q.mmc_mean_response(1.0, 1.0, 2) == pytest.approx(4 / 3)
    with pytest.raises(ValueError, match="unstable"):
        q.mmc_mean_wait(3.0, 1.0, 2)


@pytest.mark.parametrize(("c", "rho"), [(1, 0.5), (4, 0.8), (16, 0.95)])
def test_mmc_response_cdf_integrates_to_the_mean(c: int, rho: float) -> None:
    mu = 2.0
    lam = rho * c * mu
    mean, _ = integrate.quad(lambda t: 1 - q.mmc_response_cdf(np.array(t), lam, mu, c), 0, np.inf)
    assert mean == pytest.approx(q.mmc_mean_response(lam, mu, c), rel=1e-6)


def test_allen_cunneen_is_exact_for_exponential_service() -> None:
    c, a, s = np.array(8.0), np.array(6.0), np.array(0.01)
    exact = q.mmc_mean_wait(600.0, 100.0, 8)
    assert float(q.allen_cunneen_wait(c, a, s, np.array(1.0))) == pytest.approx(exact)
    # deterministic service halves the M/M/c wait in the approximation
    assert float(q.allen_cunneen_wait(c, a, s, np.array(0.0))) == pytest.approx(exact / 2)


@pytest.mark.parametrize("k", [1.0, 2.0, 5.0, 30.0])
@pytest.mark.parametrize("p", [0.5, 0.95, 0.99])
def test_wilson_hilferty_within_1_5_percent_for_k_at_least_one(k: float, p: float) -> None:
    exact = special.gammaincinv(k, p) * 0.3
    approx = float(q.gamma_quantile(p, np.array(k), np.array(0.3)))
    assert approx == pytest.approx(exact, rel=0.015)


def test_gamma_shape_scale_round_trip() -> None:
    k, theta = q.gamma_shape_scale(np.array([2.0]), np.array([0.5]))
    assert stats.gamma(k[0], scale=theta[0]).mean() == pytest.approx(2.0)
    assert stats.gamma(k[0], scale=theta[0]).var() == pytest.approx(0.5)


@settings(deadline=None)  # numerical integration: slow under load, not a timing test
@given(k=st.floats(0.3, 20), theta=st.floats(0.01, 3), u=st.floats(0, 30))
def test_gamma_mean_min_matches_numerical_integration(k: float, theta: float, u: float) -> None:
    dist = stats.gamma(k, scale=theta)
    expected, _ = integrate.quad(dist.sf, 0, u, limit=200)  # E[min(X, u)] = int_0^u P(X > x)
    got = float(q.gamma_mean_min(np.array(u), np.array(k), np.array(theta)))
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_gamma_mean_min_infinite_cap_is_the_mean() -> None:
    got = q.gamma_mean_min(np.array([np.inf]), np.array([3.0]), np.array([0.5]))
    assert got[0] == pytest.approx(1.5)


@given(
    k=st.floats(0.05, 50),
    theta=st.floats(1e-4, 10),
    u=st.floats(1e-3, 100),
)
def test_gamma_sf_mean_min_is_both_functions_at_once(k: float, theta: float, u: float) -> None:
    args = (np.array([u]), np.array([k]), np.array([theta]))
    sf, mean_min = q.gamma_sf_mean_min(*args)
    # the same floating-point operations as the two functions: equal to the last bit
    assert sf[0] == q.gamma_sf(*args)[0]
    assert mean_min[0] == q.gamma_mean_min(*args)[0]


@given(
    c=st.lists(st.integers(0, 400), min_size=1, max_size=6),
    rho=st.lists(st.floats(0.0, 1.5), min_size=6, max_size=6),
)
def test_erlang_c_raw_is_erlang_c_bit_for_bit(c: list[int], rho: list[float]) -> None:
    cs = np.array(c, dtype=np.float64)
    a = cs * np.array(rho[: cs.size])
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = q.erlang_c_raw(cs, a, special.gammaln(cs + 1.0))
    np.testing.assert_array_equal(raw, q.erlang_c(cs, a))


def test_gamma_sf_is_one_below_zero() -> None:
    out = q.gamma_sf(np.array([-1.0, 0.0, 1.0]), np.array(2.0), np.array(1.0))
    assert out[0] == 1.0 and out[1] == 1.0
    assert out[2] == pytest.approx(stats.gamma(2.0).sf(1.0))


# ---------------------------------------------------------------- edges (mutation testing)
def test_erlang_edges_exact() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the edges are handled, not warned about
        b = q.erlang_b(np.array([0.0, 3.0, 0.0, 4.0]), np.array([5.0, 0.0, 0.0, 2.0]))
        np.testing.assert_array_equal(b[:3], [1.0, 0.0, 1.0])  # no server blocks; no load never
        assert b[3] == pytest.approx(2.0**4 / 24 / (1 + 2 + 2 + 4 / 3 + 2 / 3))
        c = q.erlang_c(np.array([2.0, 3.0, 4.0]), np.array([3.0, 0.0, 2.0]))
        np.testing.assert_array_equal(c[:2], [1.0, 0.0])  # overloaded: everyone waits
        assert 0.0 < c[2] < 1.0
        assert (
            q.allen_cunneen_wait(np.array(4.0), np.array(0.0), np.array(0.1), np.array(1.0)) == 0.0
        )
    with pytest.raises(ValueError, match="unstable"):
        q.mmc_mean_wait(4.0, 1.0, 4)  # a == c


def test_allen_cunneen_below_one_erlang() -> None:
    # a = 0.5 on 2 servers, exponential service: the M/M/c wait exactly
    got = float(q.allen_cunneen_wait(np.array(2.0), np.array(0.5), np.array(0.1), np.array(1.0)))
    assert got == pytest.approx(q.mmc_mean_wait(5.0, 10.0, 2), rel=1e-12) and got > 0


def test_mmc_response_cdf_when_the_wait_rate_equals_the_service_rate() -> None:
    # c mu - lam = mu (lam = (c - 1) mu): Exp(mu) + Exp(mu) is Erlang-2, the special branch
    c, mu = 2, 10.0
    lam = (c - 1) * mu
    t = np.array([0.0, 0.05, 0.1, 0.3, 1.0])
    cc = float(q.erlang_c(np.array(c), np.array(lam / mu)))
    sf = (1 - cc) * np.exp(-mu * t) + cc * np.exp(-mu * t) * (1 + mu * t)
    np.testing.assert_allclose(q.mmc_response_cdf(t, lam, mu, c), 1 - sf, rtol=1e-12, atol=1e-15)
    near = q.mmc_response_cdf(t, lam * (1 - 1e-9), mu, c)  # the general branch, next to it
    np.testing.assert_allclose(near, 1 - sf, atol=1e-6)


def test_gamma_helpers_off_the_tabulated_points() -> None:
    # a level that is not tabulated goes through ndtri (Wilson-Hilferty within 1.5% for k >= 1)
    k, theta = np.array([1.0, 4.0]), np.array([0.5, 0.01])
    exact = special.gammaincinv(k, 0.9) * theta
    np.testing.assert_allclose(q.gamma_quantile(0.9, k, theta), exact, rtol=0.015)
    # below 1 and at 0
    x = np.array([0.0, 0.2, 0.7])
    np.testing.assert_allclose(
        q.gamma_sf(x, np.full(3, 2.0), np.full(3, 0.5)),
        special.gammaincc(2.0, x / 0.5),
        rtol=1e-12,
    )
    # a variance of zero is floored at 1e-12 mean^2 (+1e-18)
    kk, th = q.gamma_shape_scale(np.array(2.0), np.array(0.0))
    assert float(kk) == pytest.approx(4.0 / (4e-12 + 1e-18), rel=1e-12)
    assert float(th) == pytest.approx((4e-12 + 1e-18) / 2.0, rel=1e-12)
