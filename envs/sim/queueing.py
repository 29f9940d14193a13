"""Queueing formulas used by the fluid engine and by the tests that validate both engines.

Everything is vectorised over services (numpy arrays of equal shape). The formulas, their
sources and their error bounds are written up in ``docs/queueing.md``.
"""

from __future__ import annotations

import numpy as np
from scipy import special

_Z = {0.5: 0.0, 0.95: 1.6448536269514722, 0.99: 2.3263478740408408}


def erlang_b(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Erlang-B blocking probability ``B(c, a)`` for ``c`` servers and offered load ``a``.

    Uses ``B = pois_pmf(c; a) / pois_cdf(c; a)``, which is exact for integer ``c`` and stable
    for thousands of servers (the textbook recursion is O(c)).
    """
    c = np.asarray(c, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        logpmf = special.xlogy(c, a) - a - special.gammaln(c + 1.0)
        cdf = special.pdtr(c, a)
        b = np.exp(logpmf) / cdf
    return np.where(c <= 0, 1.0, np.where(a <= 0, 0.0, b))


def erlang_c(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Erlang-C probability that an arrival waits, for ``a < c`` (1 where ``a >= c``)."""
    c = np.asarray(c, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    b = erlang_b(c, a)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = a / c
        out = b / (1.0 - rho * (1.0 - b))
    return np.where(a >= c, 1.0, np.clip(out, 0.0, 1.0))


def erlang_c_raw(c: np.ndarray, a: np.ndarray, log_c_fact: np.ndarray) -> np.ndarray:
    """:func:`erlang_c` bit for bit, for float arrays and ``gammaln(c + 1)`` given.

    The fluid engine's hot path: ``c`` changes only with the capacity, so its log-factorial
    is kept; call it under ``np.errstate(divide="ignore", invalid="ignore")``.
    """
    b = np.exp(special.xlogy(c, a) - a - log_c_fact) / special.pdtr(c, a)
    b = np.where(c <= 0, 1.0, np.where(a <= 0, 0.0, b))
    out = b / (1.0 - a / c * (1.0 - b))
    return np.where(a >= c, 1.0, np.minimum(np.maximum(out, 0.0), 1.0))


def mmc_mean_wait(lam: float, mu: float, c: int) -> float:
    """Mean waiting time in queue ``Wq = C(c, a) / (c mu - lam)`` of M/M/c (stable only)."""
    a = lam / mu
    if a >= c:
        raise ValueError(f"M/M/c is unstable: offered load {a:g} >= servers {c}")
    return float(erlang_c(np.array(c), np.array(a))) / (c * mu - lam)


def mmc_mean_response(lam: float, mu: float, c: int) -> float:
    """Mean response time ``W = Wq + 1/mu`` of M/M/c."""
    return mmc_mean_wait(lam, mu, c) + 1.0 / mu


def mmc_response_cdf(t: np.ndarray, lam: float, mu: float, c: int) -> np.ndarray:
    """Exact response-time CDF of FCFS M/M/c (wait, then exponential service).

    With ``C`` the Erlang-C probability and ``g = c mu - lam`` the rate of the conditional
    wait, ``P(R > t) = (1 - C) e^{-mu t} + C * h(t)`` where ``h`` is the tail of
    ``Exp(g) + Exp(mu)``.
    """
    t = np.asarray(t, dtype=np.float64)
    cc = float(erlang_c(np.array(c), np.array(lam / mu)))
    g = c * mu - lam
    if abs(g - mu) < 1e-12:
        h = np.exp(-mu * t) * (1.0 + mu * t)
    else:
        h = (g * np.exp(-mu * t) - mu * np.exp(-g * t)) / (g - mu)
    return 1.0 - ((1.0 - cc) * np.exp(-mu * t) + cc * h)


def allen_cunneen_wait(
    c: np.ndarray, a: np.ndarray, mean_s: np.ndarray, scv_s: np.ndarray
) -> np.ndarray:
    """Mean wait of M/G/c by Allen-Cunneen: ``Wq(M/M/c) * (1 + scv) / 2`` (Poisson arrivals).

    Args:
        c: Servers.
        a: Offered load ``lam * mean_s`` (must be < c).
        mean_s: Mean service (holding) time.
        scv_s: Squared coefficient of variation of the service time.
    """
    cw = erlang_c(c, a)
    with np.errstate(divide="ignore", invalid="ignore"):
        wq = cw * mean_s / (c - a)
    return np.where(a > 0, wq * (1.0 + scv_s) / 2.0, 0.0)


def gamma_shape_scale(mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shape ``k`` and scale ``theta`` of the gamma law with the given mean and variance."""
    var = np.maximum(var, 1e-12 * mean * mean + 1e-18)
    return mean * mean / var, var / mean


def gamma_quantile(q: float, k: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Quantile of gamma(k, theta) by the Wilson-Hilferty cube-root normal approximation.

    Relative error below 1.5% for k >= 1 at q in [0.5, 0.99] (a few % at k = 0.3); this
    is what keeps the fluid engine's percentiles cheap. Exact: ``scipy.special.gammaincinv``.
    """
    z = _Z.get(q)
    if z is None:
        z = float(special.ndtri(q))
    v = 1.0 / (9.0 * k)
    base = np.maximum(1.0 - v + z * np.sqrt(v), 0.0)
    return k * theta * base * base * base


def gamma_sf(x: np.ndarray, k: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """``P(X > x)`` for X ~ gamma(k, theta); 1 for x <= 0."""
    return np.where(x > 0, special.gammaincc(k, np.maximum(x, 0.0) / theta), 1.0)


def gamma_mean_min(u: np.ndarray, k: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """``E[min(X, u)]`` for X ~ gamma(k, theta) and ``u >= 0`` (``inf`` allowed)."""
    x = np.maximum(u, 0.0) / theta
    finite = np.isfinite(x)
    xs = np.where(finite, x, 0.0)
    head = k * theta * special.gammainc(k + 1.0, xs)
    tail = np.where(finite, np.maximum(u, 0.0), 0.0) * special.gammaincc(k, xs)
    return np.where(finite, head + tail, k * theta)


def gamma_sf_mean_min(
    u: np.ndarray, k: np.ndarray, theta: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(P(X > u), E[min(X, u)])`` for X ~ gamma(k, theta), finite ``u > 0``.

    :func:`gamma_sf` and :func:`gamma_mean_min` at once, sharing their upper incomplete
    gamma function (the fluid engine needs both at every caller's timeout).
    """
    x = u / theta
    sf = special.gammaincc(k, x)
    return sf, k * theta * special.gammainc(k + 1.0, x) + u * sf
