"""Forecast baselines and scores by value (issue 17): MASE, CRPS (scoringrules), Brier and
reliability (scikit-learn) on hand cases; each baseline on a series whose forecast is known;
the world-model adapter within the physical ranges; the report script end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from agents.world_model.evaluation.metrics import (
    STATS,
    WINDOWS,
    brier_score,
    calibration,
    crps_ensemble,
    mase_scale,
    reliability_sums,
    score_sums,
    window_masks,
)
from agents.world_model.forecast import METRICS, EpisodeHistory, quantile_levels
from agents.world_model.forecast.baselines import Drift, Persistence, SeasonalNaive, recent_scale
from agents.world_model.forecast.forecaster import Forecaster


def _scenario(n_services: int = 2, period_s: float | None = None, faults=()):
    """The few scenario fields a forecaster and the scores read."""
    svc = [SimpleNamespace(replicas=SimpleNamespace(max=10)) for _ in range(n_services)]
    return SimpleNamespace(
        service_names=[f"s{i}" for i in range(n_services)],
        decision_interval_s=15.0,
        horizon_s=3600.0,
        faults=[SimpleNamespace(at_s=a) for a in faults],
        topology=SimpleNamespace(services=svc, name="toy"),
        traffic=SimpleNamespace(
            replay=None,
            diurnal=None if period_s is None else SimpleNamespace(period_s=period_s),
        ),
    )


def _history(series: dict[str, np.ndarray], scenario=None, violation=None, entry="e"):
    t_len, s = next(iter(series.values())).shape
    full = {m: series.get(m, np.zeros((t_len, s))) for m in METRICS}
    return EpisodeHistory(
        scenario or _scenario(s),
        full,
        np.zeros(t_len) if violation is None else violation,
        np.zeros((t_len, 1), np.float32),
        np.zeros((t_len, 1), np.float32),
        entry=entry,
    )


# --------------------------------------------------------------------------------- metrics


def test_mase_scale_by_hand_and_flat_series_are_left_out() -> None:
    y = np.array(
        [[0.0, 5.0, 1.0], [1.0, 5.0, np.nan], [3.0, 5.0, 2.0], [3.0, 5.0, 4.0], [7.0, 5.0, 4.0]]
    )
    s = mase_scale("rps", y)
    # diffs 1, 2, 0, 4 -> 7 / 4; a constant series is flat (NaN); the NaN row breaks pairs:
    # known pairs (2 -> 4), (4 -> 4) -> 2 / 2
    assert s[0] == pytest.approx(1.75)
    assert np.isnan(s[1])
    assert s[2] == pytest.approx(1.0)
    # below the metric's floor (1e-4 for error rates) counts as flat
    assert np.isnan(mase_scale("error_rate", np.array([[0.0], [1e-6], [0.0]]))[0])


def test_score_sums_mase_crps_and_coverage_by_hand() -> None:
    # one origin, one step, two services; draws are a 4-member ensemble
    series = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])  # scale 2 and flat
    draws = np.array([1.0, 2.0, 3.0, 4.0])[None, :, None, None] * np.ones((1, 4, 1, 2))
    truth = np.array([[[5.0, 2.0]]])
    masks = {"all": np.array([True]), "steady": np.array([False]), "incident": np.array([True])}
    out = score_sums("rps", draws, truth, series, masks)
    assert out.shape == (len(WINDOWS), 1, len(STATS))
    k = {s: i for i, s in enumerate(STATS)}
    row = out[0, 0]
    # median 2.5: |2.5 - 5| / 2 = 1.25 on service 0 only (service 1 is flat)
    assert row[k["ase"]] == pytest.approx(1.25) and row[k["n_ase"]] == 1
    assert row[k["ae"]] == pytest.approx(2.5 + 0.5)
    # CRPS (energy form): service 0: E|X-5| = 2.5, E|X-X'|/2 = 0.625 -> 1.875;
    # service 1: E|X-2| = 1, minus 0.625 -> 0.375
    assert row[k["crps"]] == pytest.approx(1.875 + 0.375)
    # the 90 % interval [1.15, 3.85] holds 2, not 5; the 80 % one [1.3, 3.7] too
    assert row[k["in90"]] == 1 and row[k["in80"]] == 1 and row[k["n"]] == 2
    np.testing.assert_array_equal(out[1], 0.0)  # the steady window has no origin
    np.testing.assert_array_equal(out[2], out[0])


def test_crps_matches_the_existing_sample_crps_and_a_known_case() -> None:
    from agents.world_model.forecast_metrics import crps_samples

    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 1.0, (5, 7, 33))
    y = rng.gamma(2.0, 1.0, (5, 7))
    y[0, 0] = np.nan
    got = crps_ensemble(x, y)
    np.testing.assert_allclose(got, crps_samples(x, y), rtol=1e-10, atol=1e-12)
    assert np.isnan(got[0, 0])
    # two members {0, 2} at y = 1: 1 - 0.5
    assert crps_ensemble(np.array([[0.0, 2.0]]), np.array([1.0]))[0] == pytest.approx(0.5)


def test_brier_reliability_and_calibration_curve_by_hand() -> None:
    p = np.array([0.05, 0.15, 0.95, 0.85, 0.55])
    o = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    # (0.0025 + 0.7225 + 0.0025 + 0.7225 + 0.2025) / 5
    assert brier_score(p, o) == pytest.approx(1.6525 / 5)
    bins = reliability_sums(p, o)
    assert bins.shape == (10, 3)
    np.testing.assert_allclose(bins[0], [1, 0.05, 0])
    np.testing.assert_allclose(bins[5], [1, 0.55, 1])
    np.testing.assert_allclose(bins[9], [1, 0.95, 1])
    assert bins[:, 0].sum() == 5
    frac, mean_p = calibration(p, o, n_bins=2)
    np.testing.assert_allclose(mean_p, [0.1, (0.95 + 0.85 + 0.55) / 3])
    np.testing.assert_allclose(frac, [0.5, 2 / 3])


def test_incident_and_steady_windows() -> None:
    sc = _scenario(faults=(600.0,))  # onset at row 40
    origins = np.array([10, 19, 20, 40, 79, 80, 81])
    w = window_masks(sc, origins, horizon=20)
    # incident: the onset within [t, t + 20 rows] or at most 600 s (40 rows) before t
    assert w["incident"].tolist() == [False, False, True, True, True, True, False]
    assert (w["steady"] == ~w["incident"]).all() and w["all"].all()
    assert not window_masks(_scenario(), origins, 20)["incident"].any()


# ------------------------------------------------------------------------------- baselines


def _fit_on(f: Forecaster, histories) -> Forecaster:
    return f.fit(histories)


def test_drift_on_a_ramp_is_exact() -> None:
    t = np.arange(100.0)
    y = np.stack([2.0 + 0.5 * t, 50.0 - 0.25 * t], 1)
    ep = _history({"rps": y})
    f = _fit_on(Drift(horizon=5, warmup=10), [ep])
    origins = np.array([10, 37, 90])
    pt = f.point(ep, "rps", origins)
    truth = y[origins[:, None] + np.arange(1, 6)[None, :]]
    np.testing.assert_allclose(pt, truth, atol=1e-12)
    # residuals are all 0, so every draw of the quantile grid is the truth
    draws = f.predict(ep, origins).samples["rps"]
    assert draws.shape == (3, 50, 5, 2)
    np.testing.assert_allclose(draws, np.broadcast_to(truth[:, None], draws.shape), atol=1e-9)


def test_persistence_on_a_step_and_seasonal_naive_on_a_sine_are_exact() -> None:
    t = np.arange(200)
    sine = 10.0 + 3.0 * np.sin(2 * np.pi * t / 40)[:, None] * np.ones((1, 2))
    sc = _scenario(period_s=40 * 15.0)  # the traffic period: 40 steps
    ep = _history({"p99": sine}, scenario=sc)
    seasonal = SeasonalNaive(horizon=20)
    origins = np.array([45, 100, 150])
    truth = sine[origins[:, None] + np.arange(1, 21)[None, :]]
    np.testing.assert_allclose(seasonal.point(ep, "p99", origins), truth, atol=1e-12)
    # persistence misses the sine by its change over h steps
    pers = Persistence(horizon=20).point(ep, "p99", origins)
    np.testing.assert_allclose(pers, np.repeat(sine[origins][:, None], 20, 1))
    # without a period the season falls back to 20 steps: exact on a 20-step sine
    sine20 = 1.0 + np.sin(2 * np.pi * t / 20)[:, None] * np.ones((1, 2))
    ep20 = _history({"p99": sine20})
    truth20 = sine20[origins[:, None] + np.arange(1, 21)[None, :]]
    np.testing.assert_allclose(seasonal.point(ep20, "p99", origins), truth20, atol=1e-12)


def test_scaled_residual_intervals_follow_the_series_scale_and_stay_in_range() -> None:
    rng = np.random.default_rng(0)
    quiet = 0.5 + 0.001 * rng.standard_normal((120, 1))
    noisy = 0.5 + 0.1 * rng.standard_normal((120, 1))
    eps = [_history({"error_rate": np.clip(np.hstack([quiet, noisy]), 0, 1)}) for _ in range(2)]
    f = Persistence(horizon=4).fit(eps)
    d = f.predict(eps[0], np.array([30, 60])).samples["error_rate"]
    width = d[:, -3] - d[:, 2]  # [B, H, S] between quantile-grid members 47 and 2
    assert np.all(width[..., 1] > 20 * width[..., 0])
    assert d.min() >= 0.0 and d.max() <= 1.0
    sc = recent_scale("error_rate", eps[0].series["error_rate"], np.array([30]))
    assert sc.shape == (1, 2) and sc[0, 1] > sc[0, 0] > 0


def test_statsforecast_baselines_on_constant_and_linear_series() -> None:
    from agents.world_model.forecast.stats import StatsForecastBaseline, fit_forecast

    mean, sigma = fit_forecast("ets", np.full(30, 4.0), 5)
    np.testing.assert_array_equal(mean, 4.0)
    np.testing.assert_array_equal(sigma, 0.0)
    t = np.arange(60.0)
    ramp = np.stack([10.0 + 0.5 * t, np.full(60, 3.0)], 1)
    ep = _history({"rps": ramp})
    f = StatsForecastBaseline("ets", horizon=5, window=30).fit([ep])
    d = f.predict(ep, np.array([40])).samples["rps"]
    assert d.shape == (1, 50, 5, 2)
    med = np.median(d[0], axis=0)  # [H, S]
    np.testing.assert_allclose(med[:, 0], 10.0 + 0.5 * np.arange(41, 46), rtol=0.02)
    np.testing.assert_array_equal(d[0, :, :, 1], 3.0)
    with pytest.raises(ValueError, match="kind"):
        StatsForecastBaseline("prophet")  # type: ignore[arg-type]


def test_lightgbm_direct_fits_predicts_shapes_and_is_deterministic() -> None:
    from agents.world_model.forecast.boosted import LightGBMDirect

    rng = np.random.default_rng(1)
    eps = []
    for i in range(4):
        t = np.arange(90.0)
        base = 5.0 + 0.05 * t[:, None] + rng.standard_normal((90, 3)) * 0.1
        v = (rng.random(90) < 0.2).astype(float)
        eps.append(_history({"rps": base, "p99": 0.1 + 0.01 * base}, violation=v, entry=f"e{i}"))

    def run(seed: int):
        f = LightGBMDirect(horizon=4, seed=seed, n_estimators=8, warmup=5, fit_every=3).fit(eps)
        return f.predict(eps[0], np.array([20, 40, 60]))

    a, b = run(0), run(0)
    assert a.samples["rps"].shape == (3, 50, 4, 3)
    for m in METRICS:
        np.testing.assert_array_equal(a.samples[m], b.samples[m])
    assert a.p_violation is not None and b.p_violation is not None
    np.testing.assert_array_equal(a.p_violation, b.p_violation)
    assert np.all((a.p_violation >= 0) & (a.p_violation <= 1))
    # the quantile grid is ordered along the members
    assert np.all(np.diff(a.samples["rps"], axis=1) >= -1e-12)
    with pytest.raises(ValueError, match="holdout_every"):
        LightGBMDirect(horizon=4).fit(eps[:1])


def test_quantile_levels() -> None:
    np.testing.assert_allclose(quantile_levels(4), [0.125, 0.375, 0.625, 0.875])
    with pytest.raises(ValueError, match="m=0"):
        quantile_levels(0)


# -------------------------------------------------------------- world model adapter, bounds


def test_world_model_adapter_keeps_calibrated_draws_in_the_physical_ranges() -> None:
    import torch

    from agents.world_model import ObsLayout, WorldModel, WorldModelConfig
    from agents.world_model.data import run_episode
    from agents.world_model.forecast import Calibration, WorldModelForecaster, physical_bounds
    from envs.gym.envs import ClusterOpsEnv
    from envs.scenarios.loader import load_scenario

    torch.manual_seed(0)
    scenario = load_scenario("chain3", {"horizon_s": 600})
    env = ClusterOpsEnv(scenario=scenario)
    layout = ObsLayout.from_encoder(env.encoder)
    cfg = WorldModelConfig.preset("tiny", deter=32, hidden=16, stoch=4, classes=4, units=16)
    model = WorldModel(layout, env.action_encoder.size, cfg)
    ep = EpisodeHistory.from_episode(run_episode(scenario, "hpa", seed=3), scenario)
    assert ep.series["rps"].shape == (ep.n_rows, 3)
    # a calibration that blows the spread up 10x pushes draws past every bound
    wide = Calibration({m: [10.0] * 5 for m in METRICS})
    f = WorldModelForecaster(model, wide, "model_cal", 5, n_samples=16)
    d = f.predict(ep, np.array([10, 20]))
    bounds = physical_bounds(scenario)
    assert d.p_violation is not None and d.p_violation.shape == (2,)
    for m in METRICS:
        x = d.samples[m]
        assert x.shape == (2, 16, 5, 3)
        assert x.min() >= 0.0 and np.all(x <= bounds[m][None, None, None, :]), m
    assert d.samples["error_rate"].max() <= 1.0
    # a raw and a calibrated adapter sharing a memo give what forecast_batch gives
    from agents.world_model.forecast import forecast_batch, planned_actions

    memo: dict = {}
    raw = WorldModelForecaster(model, None, "model", 5, n_samples=16, shared=memo)
    cal = WorldModelForecaster(model, wide, "model_cal", 5, n_samples=16, shared=memo)
    origins = np.array([10, 20])
    r, c = raw.predict(ep, origins), cal.predict(ep, origins)
    assert len(memo) == 1
    ref = forecast_batch(
        model,
        ep.obs,
        ep.action,
        origins,
        planned_actions({"action": ep.action}, origins, 5),
        n_services=3,
        n_samples=16,
        calibration=wide,
        bounds=bounds,
    )
    for m in METRICS:
        np.testing.assert_array_equal(c.samples[m], ref.samples[m])
        np.testing.assert_array_equal(c.samples[m], d.samples[m])
    assert not np.array_equal(r.samples["rps"], c.samples["rps"])  # the 10x spread


# ------------------------------------------------------------------------ report, end to end


def test_report_script_end_to_end(tmp_path) -> None:
    from experiments.forecast_report import END, START, main

    res, cache = tmp_path / "res", tmp_path / "cache"
    common = ["--results", str(res)]
    main(
        [
            "score",
            "--forecasters",
            "persistence",
            "drift",
            "--suites",
            "train:validation",
            "--topologies",
            "chain3",
            "--behaviours",
            "hpa",
            "--replicates",
            "1",
            "--limit",
            "2",
            "--train-limit",
            "1",
            "--cache",
            str(cache),
            *common,
        ]
    )
    runs = sorted(p.name for p in (res / "records").iterdir())
    assert runs == [
        "train-validation_chain3_drift_s0.json",
        "train-validation_chain3_persistence_s0.json",
    ]
    rec = json.loads((res / "records" / runs[1]).read_text())
    assert rec["forecaster"] == "persistence" and rec["steps"] == [1, 4, 10, 20]
    assert len(rec["entries"]) == 2 and rec["episodes"] == 2
    out = tmp_path / "forecast.md"
    out.write_text("# head\n\nprose\n")
    main(["report", "--out", str(out), "--n-boot", "50", *common])
    text = out.read_text()
    assert text.startswith("# head\n\nprose\n") and START in text and END in text
    assert "### train:validation / chain3" in text and "| `drift` |" in text
    summary = json.loads((res / "summary.json").read_text())
    s = summary["train:validation|chain3"]
    est, lo, hi = s["mase"]["all"]["p99"]["20"]["persistence"]
    assert lo <= est <= hi
    # the skill of a baseline against itself is 0 where it is the best
    best = s["skill"]["all"]["p99"]["20"]["best"]
    assert s["skill"]["all"]["p99"]["20"][best][0] == pytest.approx(0.0)
    # rebuilding from the same records gives the same page
    main(["report", "--out", str(out), "--n-boot", "50", *common])
    assert out.read_text() == text


def test_model_on_and_naive_for_other_topologies() -> None:
    from agents.run_config import RunConfigError
    from agents.world_model.evaluation.config import is_graph_fit, model_on, naive_for
    from agents.world_model.forecast import NaiveForecaster

    sc = _scenario(3)
    flat = SimpleNamespace(model="flat", spec={"services": ["s0", "s1", "s2"], "topology": "x"})
    assert model_on(flat, sc) == "flat" and not is_graph_fit(flat)  # type: ignore[arg-type]
    other = SimpleNamespace(model="flat", spec={"services": ["a"], "topology": "chain3"})
    with pytest.raises(RunConfigError, match=r"wm\.arch=graph"):
        model_on(other, sc)  # type: ignore[arg-type]
    graph = SimpleNamespace(
        model="g",
        spec={"world_model": {"arch": "graph"}},
        model_for=lambda topo: ("bound", topo.name),
    )
    assert is_graph_fit(graph) and model_on(graph, sc) == ("bound", "toy")  # type: ignore[arg-type]
    res = np.arange(2 * 2 * 3, dtype=float).reshape(2, 2, 3)  # [H, S=2, M]
    nf = NaiveForecaster("persistence", 2, np.array([0.25, 0.5, 0.75]), {"rps": res})
    assert naive_for(nf, 2).residuals["rps"] is res
    wide = naive_for(nf, 3).residuals["rps"]
    assert wide.shape == (2, 3, 3)
    np.testing.assert_allclose(wide[:, 1], res.mean(1))  # the mean over the fitted services
    np.testing.assert_allclose(wide[:, 0], wide[:, 2])


def _record(name: str, seed: int, entries: dict[str, float]) -> dict:
    """A run record whose every sum of entry e is ``entries[e]`` (n = 1 per cell)."""
    w, st = len(WINDOWS), 4

    def cell(x: float) -> list:
        return [[[x, 1.0, x, x, 1.0, 1.0, 1.0] for _ in range(st)] for _ in range(w)]

    viol = {
        k: {"n": 1.0, "brier_sum": 0.0, "events": 0.0, "bins": [[0, 0, 0]] * 10} for k in WINDOWS
    }
    return {
        "forecaster": name,
        "seed": seed,
        "topology": "toy",
        "metrics": list(METRICS),
        "windows": list(WINDOWS),
        "steps": [1, 4, 10, 20],
        "stats": list(STATS),
        "entries": {
            e: {"metrics": {m: cell(x) for m in METRICS}, "violation": viol, "episodes": 1}
            for e, x in entries.items()
        },
    }


def test_summary_pairs_forecasters_on_shared_entries_and_skill_by_value() -> None:
    from agents.world_model.evaluation.summary import Table, summarize

    recs = [
        _record("persistence", 0, {"e1": 2.0, "e2": 4.0, "e3": 100.0}),
        _record("model", 0, {"e1": 1.0, "e2": 3.0}),
        _record("model", 1, {"e1": 1.0, "e2": 1.0}),
    ]
    t = Table(recs)
    assert t.entries == ["e1", "e2"] and t.left_out == ["e3"]
    s = summarize(t, n_boot=200)
    # MASE = sum of scaled errors / count over entries and seeds
    assert s["mase"]["all"]["p99"]["20"]["persistence"][0] == pytest.approx(3.0)
    assert s["mase"]["all"]["p99"]["20"]["model"][0] == pytest.approx(6.0 / 4)
    sk = s["skill"]["all"]["p99"]["20"]
    assert sk["best"] == "persistence" and sk["model"][0] == pytest.approx(0.5)
    lo, hi = sk["model"][1:]
    assert lo <= 0.5 <= hi
