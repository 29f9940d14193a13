"""Queueing formulas against hand computation and exact references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
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


@given(k=st.floats(0.3, 20), theta=st.floats(0.01, 3), u=st.floats(0, 30))
def test_gamma_mean_min_matches_numerical_integration(k: float, theta: float, u: float) -> None:
    dist = stats.gamma(k, scale=theta)
    expected, _ = integrate.quad(dist.sf, 0, u, limit=200)  # E[min(X, u)] = int_0^u P(X > x)
    got = float(q.gamma_mean_min(np.array(u), np.array(k), np.array(theta)))
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_gamma_mean_min_infinite_cap_is_the_mean() -> None:
    got = q.gamma_mean_min(np.array([np.inf]), np.array([3.0]), np.array([0.5]))
    assert got[0] == pytest.approx(1.5)


def test_gamma_sf_is_one_below_zero() -> None:
    out = q.gamma_sf(np.array([-1.0, 0.0, 1.0]), np.array(2.0), np.array(1.0))
    assert out[0] == 1.0 and out[1] == 1.0
    assert out[2] == pytest.approx(stats.gamma(2.0).sf(1.0))
