"""Forecast scoring by hand: a ramp episode whose truths, errors and coverage are known exactly.

Service ``s`` serves ``a_s + b_s t`` requests per second at step ``t``. A persistence
forecast made at origin ``t`` says ``a_s + b_s t`` for every step ahead, so its error ``h``
steps ahead is exactly ``h b_s`` and its MAE over ``h = 1..H`` is ``b_s (H + 1) / 2``. Draws
spread evenly over ``point +- K`` put the central 90 % interval at ``point +- 0.9 K`` and the
80 % one at ``point +- 0.8 K`` (linear quantiles of an even grid), so which steps' truths
fall inside, and hence the coverage, is known too.
"""

from __future__ import annotations

import numpy as np
import pytest

from agents.world_model import ObsLayout
from agents.world_model.evaluation.scoring import score_draws
from agents.world_model.forecast import (
    METRICS,
    NaiveForecaster,
    NaiveViolation,
    forecast_origins,
    planned_actions,
    raw_series,
    truths,
)
from agents.world_model.forecast_metrics import coverage, mae

T = 41  # rows 0..40
H = 5
A = np.array([100.0, 40.0])  # rps at t = 0
B = np.array([2.0, 3.0])  # rps added per step
N_DRAWS = 21


def _symlog(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _ramp_episode() -> tuple[dict[str, np.ndarray], ObsLayout]:
    layout = ObsLayout(n_services=2)
    obs = np.zeros((T, layout.obs_size))
    t = np.arange(T, dtype=np.float64)
    constant = {"p99": 0.1, "error_rate": 0.0, "replicas_ready": 3.0}
    for s in range(2):
        obs[:, layout.service_index(s, "rps")] = _symlog(A[s] + B[s] * t)
        for metric, value in constant.items():
            obs[:, layout.service_index(s, metric)] = _symlog(np.full(T, value))
    obs[:, layout.mask] = 1.0
    action = np.arange(T, dtype=np.float32)[:, None] * np.ones((1, 3), dtype=np.float32)
    violation = np.zeros(T)
    violation[20] = 1.0
    return {"obs": obs, "action": action, "violation": violation}, layout


def _ramp(t: np.ndarray) -> np.ndarray:
    """``[..., S]`` rps of the ramp at rows ``t``."""
    return A + B * np.asarray(t, dtype=np.float64)[..., None]


def test_origins_and_truths_are_the_rows_after_each_origin() -> None:
    ep, layout = _ramp_episode()
    origins = forecast_origins(T, H, warmup=3, every=2)
    np.testing.assert_array_equal(origins, np.arange(3, T - H, 2))
    assert origins[-1] + H == T - 1  # the last origin's last truth is the last row
    truth = truths(ep, layout, origins, H)
    assert set(truth) == set(METRICS)
    steps = origins[:, None] + np.arange(1, H + 1)[None, :]  # [B, H]
    np.testing.assert_allclose(truth["rps"], _ramp(steps), rtol=1e-12)
    np.testing.assert_allclose(truth["replicas_ready"], 3.0, rtol=1e-12)
    # the actions planned after an origin are those of rows t+1 .. t+H
    np.testing.assert_array_equal(planned_actions(ep, origins, H)[..., 0], steps)


def test_persistence_error_is_h_times_the_slope() -> None:
    ep, layout = _ramp_episode()
    origins = forecast_origins(T, H, warmup=3, every=2)
    series = raw_series(ep, layout, "rps")
    np.testing.assert_allclose(series, _ramp(np.arange(T)), rtol=1e-12)
    pers = NaiveForecaster("persistence", H)
    point = pers.point(series, origins)
    np.testing.assert_allclose(point, np.repeat(_ramp(origins)[:, None], H, axis=1), rtol=1e-12)
    truth = truths(ep, layout, origins, H)["rps"]
    err = np.abs(point - truth)  # [B, H, S]
    h = np.arange(1, H + 1)[:, None]
    np.testing.assert_allclose(err, np.broadcast_to(h * B, err.shape), rtol=1e-9)
    for s in range(2):
        assert mae(point[..., s], truth[..., s]) == pytest.approx(B[s] * (H + 1) / 2, rel=1e-9)


def test_scores_of_even_draws_around_persistence_are_known_exactly() -> None:
    ep, layout = _ramp_episode()
    origins = forecast_origins(T, H, warmup=3, every=2)
    series = raw_series(ep, layout, "rps")
    pers = NaiveForecaster("persistence", H)
    pers.residuals["rps"] = np.zeros((H, 2, pers.levels.size))  # no spread: draws = point
    draws = pers.samples("rps", series, origins)  # [B, M, H, S]
    point = draws[:, 0]
    np.testing.assert_array_equal(draws, np.repeat(point[:, None], pers.levels.size, axis=1))
    # K = 3.5 b: the 90 % interval reaches 3.15 b (steps 1-3 inside), the 80 % one 2.8 b (1-2)
    spread = 3.5 * B * np.linspace(-1.0, 1.0, N_DRAWS)[:, None]  # [N, S]
    even = point[:, None] + spread[None, :, None, :]  # [B, N, H, S]
    truth = truths(ep, layout, origins, H)["rps"]
    scores = score_draws(even, truth)
    h = np.arange(1, H + 1)[:, None]
    np.testing.assert_allclose(scores["abs_err"].mean(0), h * B, rtol=1e-9)  # median = point
    in90 = scores["in90"].mean(0)  # [H, S]
    in80 = scores["in80"].mean(0)
    np.testing.assert_array_equal(
        in90, np.broadcast_to([[1.0], [1.0], [1.0], [0.0], [0.0]], in90.shape)
    )
    np.testing.assert_array_equal(
        in80, np.broadcast_to([[1.0], [1.0], [0.0], [0.0], [0.0]], in80.shape)
    )
    assert float(np.mean(scores["in90"])) == pytest.approx(3 / 5)
    assert float(np.mean(scores["in80"])) == pytest.approx(2 / 5)
    # the same through forecast_metrics.coverage on the interval ends
    lo = point - 0.9 * 3.5 * B
    hi = point + 0.9 * 3.5 * B
    assert coverage(lo, hi, truth) == pytest.approx(3 / 5)


def test_violation_outcomes_look_at_the_next_h_rows() -> None:
    ep, _ = _ramp_episode()
    origins = np.arange(0, T - H)
    out = NaiveViolation.outcomes(ep["violation"], origins, H)
    # row 20 violated: origins 15..19 see it within 1..5 steps; origin 20 does not
    np.testing.assert_array_equal(np.flatnonzero(out), np.arange(15, 20))


# ---------------------------------------------------------------- metric edges (mutation testing)
def test_metrics_on_integer_inputs_are_float_and_exact() -> None:
    from agents.world_model.forecast_metrics import abs_error, crps, crps_samples

    err = abs_error(np.array([1, 5]), np.array([3, 2]))
    assert err.dtype == np.float64
    np.testing.assert_array_equal(err, [2.0, 3.0])
    c = crps_samples(np.array([[0, 2], [1, 1]]), np.array([1, 3]))
    assert c.dtype == np.float64
    np.testing.assert_allclose(c, [0.5, 2.0], rtol=1e-12)
    assert crps(np.array([[0, 2], [1, 1]]), np.array([np.nan, 3.0])) == 2.0
    assert np.isnan(crps(np.array([[0.0, 2.0]]), np.array([np.nan])))
    # three members by hand: E|X - y| = (1 + 0 + 3) / 3, E|X - X'| / 2 = (1 + 3 + 4) * 2 / 9 / 2
    assert crps_samples(np.array([[5.0, 1.0, 2.0]]), np.array([2.0]))[0] == pytest.approx(
        4 / 3 - 8 / 9, rel=1e-12
    )


def test_inside_and_coverage_edges() -> None:
    from agents.world_model.forecast_metrics import inside

    y = np.array([1.0, 0.999, 2.0, 2.001, np.nan])
    got = inside(np.ones(5), np.full(5, 2.0), y)
    np.testing.assert_array_equal(got[:4], [1.0, 0.0, 1.0, 0.0])
    assert np.isnan(got[4])
    assert coverage(np.ones(5), np.full(5, 2.0), y) == 0.5
    assert np.isnan(coverage(np.zeros(1), np.ones(1), np.array([np.nan])))
    assert mae(np.array([1.0, 4.0]), np.array([np.nan, 1.0])) == 3.0


def test_interval_levels_bounds_and_values() -> None:
    from agents.world_model.forecast_metrics import interval_levels

    assert interval_levels(0.5) == (0.25, 0.75)
    assert interval_levels(0.95) == (0.025, 0.975)  # rounded to 10 digits
    assert interval_levels(1e-9) == (0.4999999995, 0.5000000005)
    for bad in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=rf"^interval level {bad} must be in \(0, 1\)$"):
            interval_levels(bad)


def test_brier_edges() -> None:
    from agents.world_model.forecast_metrics import brier

    assert brier(np.array([0.0, 1.0]), np.array([0.0, 1.0])) == 0.0  # the ends are valid
    assert brier(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == 1.0
    assert brier(np.array([0.2, np.nan, 0.6]), np.array([1.0, 1.0, np.nan])) == pytest.approx(0.64)
    assert np.isnan(brier(np.array([0.5]), np.array([np.nan])))
    for bad in (-0.01, 1.01):
        with pytest.raises(ValueError, match=r"^brier: probabilities must lie in \[0, 1\]$"):
            brier(np.array([0.5, bad]), np.array([1.0, 0.0]))


def test_reliability_edges_and_dict() -> None:
    from agents.world_model.forecast_metrics import reliability

    one = reliability(np.array([0.0, 0.3, 1.0]), np.array([1.0, 0.0, 1.0]), n_bins=1)
    np.testing.assert_array_equal(one.count, [3.0])
    np.testing.assert_allclose(one.mean_p, [1.3 / 3], rtol=1e-12)
    np.testing.assert_allclose(one.frequency, [2 / 3], rtol=1e-12)
    p = np.array([0.0, 0.25, 0.5, 0.74, 0.75, 1.0, np.nan, 0.3])
    o = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, np.nan])
    rel = reliability(p, o, n_bins=4)  # NaN p or outcome: left out
    np.testing.assert_allclose(rel.edges, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(rel.count, [1.0, 1.0, 2.0, 2.0])  # left-closed, last closed
    np.testing.assert_allclose(rel.mean_p, [0.0, 0.25, 0.62, 0.875], rtol=1e-12)
    np.testing.assert_allclose(rel.frequency, [0.0, 1.0, 0.5, 1.0], rtol=1e-12)
    assert rel.as_dict() == {
        "edges": [0.0, 0.25, 0.5, 0.75, 1.0],
        "mean_p": [0.0, 0.25, 0.62, 0.875],
        "frequency": [0.0, 1.0, 0.5, 1.0],
        "count": [1.0, 1.0, 2.0, 2.0],
    }
    gap = reliability(np.array([0.9]), np.array([0.0]), n_bins=3).as_dict()
    assert gap["mean_p"][:2] == [None, None] and gap["frequency"] == [None, None, 0.0]
    assert gap["count"] == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match=r"^reliability: n_bins=0 must be >= 1$"):
        reliability(np.array([0.5]), np.array([1.0]), n_bins=0)
    for bad in (-0.01, 1.01):
        with pytest.raises(ValueError, match=r"^reliability: probabilities must lie in \[0, 1\]$"):
            reliability(np.array([0.5, bad]), np.array([1.0, 0.0]))


def test_empirical_quantiles_interpolate_linearly_on_the_last_axis() -> None:
    from agents.world_model.forecast_metrics import empirical_quantiles

    x = np.array([[[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]]])  # [1, 2, 4]
    q = empirical_quantiles(x, np.array([0.25, 0.5]))
    assert q.shape == (1, 2, 2)
    np.testing.assert_allclose(q, [[[0.75, 1.5], [0.75, 1.5]]], rtol=1e-12)


def test_crps_and_levels_on_more_axes_and_digits() -> None:
    from agents.world_model.forecast_metrics import crps_samples, interval_levels, reliability

    x = np.array([[[2.0, 0.0], [5.0, 1.0]], [[1.0, 1.0], [0.0, 4.0]]])  # [2, 2, M=2]
    y = np.array([[1.0, 1.0], [3.0, 4.0]])
    # per entry: E|X - y| - |x1 - x2| / 4
    np.testing.assert_allclose(crps_samples(x, y), [[0.5, 1.0], [2.0, 1.0]], rtol=1e-12)
    assert interval_levels(0.12345678912) == (0.4382716054, 0.5617283946)  # 10 digits
    assert reliability(np.array([0.5]), np.array([1.0])).count.size == 10  # default bins
    top_empty = reliability(np.array([0.1]), np.array([1.0]), n_bins=3)
    np.testing.assert_array_equal(top_empty.frequency, [1.0, np.nan, np.nan])
