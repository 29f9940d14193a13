"""Forecasting: metrics against hand computations, naive forecasters, forecast() with a tiny
untrained world model, episode collection, and the fit / evaluate entry points end to end."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from agents.world_model.forecast_metrics import (
    abs_error,
    brier,
    coverage,
    crps,
    crps_samples,
    empirical_quantiles,
    interval_levels,
    mae,
    reliability,
)

# --------------------------------------------------------------------------------------------
# metrics


def test_crps_of_a_point_forecast_is_the_absolute_error() -> None:
    y = np.array([0.0, 1.5, -2.0, np.nan])
    point = np.array([1.0, 1.0, 1.0, 1.0])
    samples = np.repeat(point[:, None], 7, axis=1)
    c = crps_samples(samples, y)
    np.testing.assert_allclose(c[:3], [1.0, 0.5, 3.0])
    assert np.isnan(c[3])
    assert crps(samples, y) == pytest.approx(mae(point, y)) == pytest.approx(1.5)


def test_crps_of_standard_normal_at_zero() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000)
    expected = (math.sqrt(2.0) - 1.0) / math.sqrt(math.pi)  # 0.2337
    assert crps_samples(x[None], np.zeros(1))[0] == pytest.approx(expected, abs=3e-3)


def test_crps_two_member_ensemble_by_hand() -> None:
    # E|X - y| = (|0 - 1| + |2 - 1|) / 2 = 1; E|X - X'| / 2 = (0 + 2 + 2 + 0) / 4 / 2 = 0.5
    assert crps_samples(np.array([[2.0, 0.0]]), np.array([1.0]))[0] == pytest.approx(0.5)
    # y outside: E|X - y| = (3 + 1) / 2 = 2, minus 0.5
    assert crps_samples(np.array([[0.0, 2.0]]), np.array([3.0]))[0] == pytest.approx(1.5)


def test_crps_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="do not match"):
        crps_samples(np.zeros((3, 4)), np.zeros(2))


def test_mae_skips_missing_truths() -> None:
    assert mae(np.array([1.0, 2.0, 3.0]), np.array([2.0, np.nan, 1.0])) == pytest.approx(1.5)
    assert math.isnan(mae(np.array([1.0]), np.array([np.nan])))
    np.testing.assert_allclose(abs_error(np.array([1.0]), np.array([-1.0])), [2.0])


def test_coverage_of_a_known_interval() -> None:
    y = np.array([0.0, 0.5, 1.0, 1.5, 2.0, np.nan])
    assert coverage(np.zeros(6), np.ones(6), y) == pytest.approx(3 / 5)  # ends included
    # a standard normal's central 90% interval covers about 90% of normal draws
    rng = np.random.default_rng(1)
    draws = rng.standard_normal(100_000)
    assert coverage(np.full(draws.size, -1.6449), np.full(draws.size, 1.6449), draws) == (
        pytest.approx(0.9, abs=0.005)
    )
    assert interval_levels(0.9) == (0.05, 0.95)
    assert interval_levels(0.8) == (0.1, 0.9)


def test_brier_and_reliability_by_hand() -> None:
    p = np.array([0.0, 0.1, 0.9, 1.0, 0.5])
    o = np.array([0.0, 1.0, 1.0, 1.0, 0.0])
    # (0 + 0.81 + 0.01 + 0 + 0.25) / 5
    assert brier(p, o) == pytest.approx(1.07 / 5)
    rel = reliability(p, o, n_bins=2)
    np.testing.assert_allclose(rel.edges, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(rel.count, [2, 3])  # 0.5 falls in the upper bin
    np.testing.assert_allclose(rel.mean_p, [0.05, 0.8])
    np.testing.assert_allclose(rel.frequency, [0.5, 2 / 3])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        brier(np.array([1.2]), np.array([1.0]))
    empty = reliability(np.array([0.05]), np.array([1.0]), n_bins=2)
    assert np.isnan(empty.mean_p[1]) and empty.as_dict()["mean_p"][1] is None


def test_empirical_quantiles_axis() -> None:
    x = np.arange(101, dtype=float)[None, :].repeat(2, 0)  # [2, 101]
    q = empirical_quantiles(x, (0.1, 0.5, 0.9))
    assert q.shape == (2, 3)
    np.testing.assert_allclose(q[0], [10.0, 50.0, 90.0])


# --------------------------------------------------------------------------------------------
# naive forecasters


def test_persistence_and_seasonal_points_on_a_hand_series() -> None:
    from agents.world_model.forecast import NaiveForecaster

    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])[:, None]  # [T, S=1]
    pers = NaiveForecaster("persistence", horizon=2)
    np.testing.assert_allclose(pers.point(y, [3])[0, :, 0], [4.0, 4.0])
    seas = NaiveForecaster("seasonal", horizon=3, fallback_season=2)
    # y[t + h - m ceil(h / m)], t = 3, m = 2: rows 2, 3, 4 - 2 = 2
    np.testing.assert_allclose(seas.point(y, [3])[0, :, 0], [3.0, 4.0, 3.0])
    # the traffic period (3 steps) is used once the history (t + 1 = 4 rows) covers it
    np.testing.assert_allclose(seas.point(y, [3], period_steps=3)[0, :, 0], [2.0, 3.0, 4.0])
    # ... and not before (t + 1 = 2 rows < 3): the fallback season
    np.testing.assert_allclose(seas.point(y, [1], period_steps=3)[0, :, 0], [1.0, 2.0, 1.0])
    # missing values: the last observed one persists
    gappy = np.array([1.0, 2.0, np.nan, np.nan])[:, None]
    np.testing.assert_allclose(pers.point(gappy, [3])[0, :, 0], [2.0, 2.0])


def test_naive_residual_quantiles_and_samples() -> None:
    from agents.world_model.forecast import NaiveForecaster

    # constant series: every residual is 0, draws equal the point
    flat = {"rps": np.full((30, 2), 5.0)}
    nf = NaiveForecaster("persistence", horizon=3).fit([flat], [None])
    assert nf.residuals["rps"].shape == (3, 2, nf.levels.size)
    np.testing.assert_allclose(nf.residuals["rps"], 0.0)
    draws = nf.samples("rps", flat["rps"], [10, 20])
    assert draws.shape == (2, nf.levels.size, 3, 2)
    np.testing.assert_allclose(draws, 5.0)
    # y = e^t - 1 is linear in symlog space: the h-step residual is exactly h
    t = np.arange(12, dtype=float)
    ramp = {"rps": np.expm1(t)[:, None]}
    nf = NaiveForecaster("persistence", horizon=2).fit([ramp], [None], warmup=2)
    np.testing.assert_allclose(nf.residuals["rps"][:, 0, :], [[1.0] * 50, [2.0] * 50], atol=1e-9)
    with pytest.raises(KeyError, match="not fitted"):
        nf.samples("p99", ramp["rps"], [3])


def test_naive_forecaster_round_trips(tmp_path) -> None:
    from agents.world_model.forecast import NaiveForecaster

    rng = np.random.default_rng(0)
    nf = NaiveForecaster("seasonal", horizon=4, fallback_season=3).fit(
        [{"p99": rng.random((40, 3))}], [None]
    )
    back = NaiveForecaster.load(nf.save(tmp_path / "n.npz"))
    assert (back.kind, back.horizon, back.fallback_season) == ("seasonal", 4, 3)
    np.testing.assert_array_equal(back.residuals["p99"], nf.residuals["p99"])


def test_naive_violation_by_hand() -> None:
    from agents.world_model.forecast import NaiveViolation

    v = np.array([0, 0, 1, 0, 0, 0, 0], dtype=float)
    # origins 0..4; outcomes (violation in t+1..t+2): 1, 1, 0, 0, 0; violating now: t = 2
    np.testing.assert_allclose(NaiveViolation.outcomes(v, range(5), 2), [1, 1, 0, 0, 0])
    nv = NaiveViolation.fit([v], horizon=2)
    assert (nv.p_if_violating, nv.p_if_not, nv.base_rate) == (0.0, 0.5, 0.4)
    np.testing.assert_allclose(nv.predict(v, [1, 2]), [0.5, 0.0])


# --------------------------------------------------------------------------------------------
# forecast() with a tiny untrained world model


@pytest.fixture(scope="module")
def tiny_setup():
    import torch

    from agents.world_model import ObsLayout, WorldModel, WorldModelConfig
    from agents.world_model.data import run_episode
    from envs.gym.envs import ClusterOpsEnv
    from envs.scenarios.loader import load_scenario

    torch.manual_seed(0)
    scenario = load_scenario("chain3", {"horizon_s": 600})
    env = ClusterOpsEnv(scenario=scenario)
    layout = ObsLayout.from_encoder(env.encoder)
    cfg = WorldModelConfig.preset("tiny", deter=32, hidden=16, stoch=4, classes=4, units=16)
    model = WorldModel(layout, env.action_encoder.size, cfg)
    episode = run_episode(scenario, "explore", seed=3)
    return model, episode, env.services, scenario


def test_forecast_shapes_ordering_and_probability(tiny_setup) -> None:
    from agents.world_model.forecast import METRICS, forecast

    model, ep, services, _ = tiny_setup
    h = 5
    levels = (0.05, 0.1, 0.5, 0.9, 0.95)
    fc = forecast(
        model,
        ep["obs"][:12],
        ep["action"][:12],
        ep["action"][12 : 12 + h],
        services=services,
        n_samples=16,
        quantiles=levels,
        slo_p99=[0.25, np.nan, np.nan],
        keep_samples=True,
    )
    assert fc.horizon == h and fc.quantiles == levels
    for m in METRICS:
        q = fc[m]
        assert q.shape == (h, len(services), len(levels))
        assert np.all(np.diff(q, axis=-1) >= 0), m
        assert np.all(q >= 0), m
        assert fc.samples is not None and fc.samples[m].shape == (16, h, len(services))
    assert np.all(fc.error_rate <= 1.0)
    assert 0.0 <= fc.p_violation <= 1.0
    assert fc.p_p99_over_slo is not None and 0.0 <= fc.p_p99_over_slo <= 1.0
    np.testing.assert_array_equal(fc.quantile("rps", 0.5), fc.rps[..., 2])
    again = forecast(
        model,
        ep["obs"][:12],
        ep["action"][:12],
        ep["action"][12 : 12 + h],
        services=services,
        n_samples=16,
        quantiles=levels,
    )
    np.testing.assert_array_equal(again.p99, fc.p99)  # same seed, same forecast
    with pytest.raises(ValueError, match="ascending"):
        forecast(
            model,
            ep["obs"][:3],
            ep["action"][:3],
            ep["action"][3:5],
            services=services,
            quantiles=(0.9, 0.1),
        )


def test_forecast_bands_stay_in_the_physical_ranges_of_the_scenario(tiny_setup) -> None:
    from agents.world_model.forecast import METRICS, forecast, physical_bounds

    model, ep, services, scenario = tiny_setup
    bounds = physical_bounds(scenario)
    assert bounds["p99"].tolist() == [600.0] * 3  # the horizon
    assert bounds["replicas_ready"].tolist() == [
        float(s.replicas.max) for s in scenario.topology.services
    ]
    args = (model, ep["obs"][:12], ep["action"][:12], ep["action"][12:32])
    kw = {"services": services, "n_samples": 32, "quantiles": (0.01, 0.5, 0.99)}
    free = forecast(*args, **kw, keep_samples=True)
    held = forecast(*args, **kw, keep_samples=True, bounds=bounds)
    assert free.samples is not None and held.samples is not None
    for m in METRICS:
        top = bounds[m][None, :, None]
        assert np.all(held[m] >= 0.0) and np.all(held[m] <= top), m
        # the bounds only clip: a draw inside them is unchanged, one above is the bound
        np.testing.assert_array_equal(
            held.samples[m], np.minimum(free.samples[m], bounds[m][None, None, :])
        )
    assert np.all(held.error_rate <= 1.0)


def test_forecast_batch_matches_single_origin_forecast_layout(tiny_setup) -> None:
    from agents.world_model.forecast import forecast_batch

    model, ep, services, _ = tiny_setup
    origins = [5, 9]
    planned = np.stack([ep["action"][t + 1 : t + 4] for t in origins])
    sf = forecast_batch(
        model, ep["obs"], ep["action"], origins, planned, n_services=len(services), n_samples=8
    )
    assert sf.samples["p99"].shape == (2, 8, 3, len(services))
    assert sf.p_violation.shape == (2,)
    assert np.all((sf.p_violation >= 0) & (sf.p_violation <= 1))


def _symexp(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.expm1(np.abs(x))


def test_calibration_scales_spread_around_the_median() -> None:
    from agents.world_model.forecast import Calibration, CalibrationStats, SampleForecast

    rng = np.random.default_rng(0)
    b, n, h, s = 400, 200, 2, 1
    # draws from N(1, 0.1) in symlog space; truths twice as spread: the 90% scale is about 2
    z = 1.0 + 0.1 * rng.standard_normal((b, n, h, s))
    y = 1.0 + 0.2 * rng.standard_normal((b, h, s))
    stats = CalibrationStats()
    stats.add(SampleForecast({"p99": _symexp(z)}, np.zeros(b)), {"p99": _symexp(y)})
    cal = stats.fit(0.9, anchor=False)
    assert cal.scale["p99"] == pytest.approx([2.0, 2.0], rel=0.15)
    assert cal.anchor["p99"] == [0.0, 0.0]
    cov = stats.coverage(cal)["p99"]
    assert cov["90"] == pytest.approx(0.9, abs=0.02)
    assert stats.coverage(None)["p99"]["90"] == pytest.approx(0.59, abs=0.05)  # 2 P(|Z| < 0.82)
    back = Calibration.from_json(cal.to_json())
    assert back.scale == cal.scale and back.anchor == cal.anchor and back.level == 0.9
    ident = Calibration({"p99": [1.0, 1.0]})
    np.testing.assert_allclose(ident.apply("p99", z), z)
    with pytest.raises(ValueError, match="refit"):
        Calibration({"p99": [1.0]}).apply("p99", z)


def test_calibration_falls_back_to_persistence_when_the_model_change_is_noise() -> None:
    from agents.world_model.forecast import CalibrationStats, SampleForecast

    # the truth stays at the observed value; the model decodes the origin right but its
    # predicted change is noise: the fit keeps none of the change (lambda 0, anchor 1)
    rng = np.random.default_rng(3)
    b, n, h, s = 300, 16, 2, 1
    obs = rng.uniform(1.0, 3.0, (b, s))
    truth_z = np.repeat(obs[:, None, :], h, 1)
    noise = 0.5 * rng.standard_normal((b, 1, h, s))
    z = obs[:, None, None, :] + noise + 0.01 * rng.standard_normal((b, n, h, s))
    sf = SampleForecast({"rps": _symexp(z)}, np.zeros(b), {"rps": np.zeros((b, s))}, {"rps": obs})
    stats = CalibrationStats()
    stats.add(sf, {"rps": _symexp(truth_z)})
    cal = stats.fit(0.9)
    assert cal.change["rps"] == [0.0, 0.0]
    z_cal = cal.apply("rps", z, np.zeros((b, s)), obs)
    np.testing.assert_allclose(np.median(z_cal, 1), truth_z, atol=1e-9)


def test_platt_scaling_fixes_overconfident_probabilities() -> None:
    from agents.world_model.forecast import Calibration, fit_platt
    from agents.world_model.forecast_metrics import brier

    rng = np.random.default_rng(2)
    true_p = rng.uniform(0.05, 0.95, 20_000)
    outcome = (rng.random(true_p.size) < true_p).astype(float)
    logit = np.log(true_p / (1 - true_p))
    overconfident = 1 / (1 + np.exp(-3.0 * logit))  # p' = sigmoid(3 logit(p))
    a, b = fit_platt(overconfident, outcome)
    assert a == pytest.approx(1 / 3, rel=0.1) and b == pytest.approx(0.0, abs=0.05)
    cal = Calibration({}, violation=[a, b])
    assert brier(cal.apply_violation(overconfident), outcome) < brier(overconfident, outcome)
    np.testing.assert_allclose(Calibration({}).apply_violation(true_p), true_p)


def test_calibration_anchor_weight_by_hand() -> None:
    from agents.world_model.forecast import Calibration, CalibrationStats, SampleForecast

    # the model is 0.5 (symlog) too low everywhere and its decoder error at the origin says
    # so: anchoring with weight 1 removes the bias, and the fit picks weight 1
    rng = np.random.default_rng(1)
    b, n, h, s = 50, 32, 3, 2
    truth_z = rng.uniform(1.0, 3.0, (b, 1, s)).repeat(h, 1)  # [B, H, S]
    z = truth_z[:, None] - 0.5 + 0.01 * rng.standard_normal((b, n, h, s))
    offset = np.full((b, s), 0.5)
    sf = SampleForecast({"rps": _symexp(z)}, np.zeros(b), {"rps": offset})
    stats = CalibrationStats()
    stats.add(sf, {"rps": _symexp(truth_z)})
    cal = stats.fit(0.9)
    assert cal.anchor["rps"] == [1.0, 1.0, 1.0]
    shifted = Calibration({"rps": [1.0] * h}, {"rps": [1.0] * h}).apply("rps", z, offset)
    np.testing.assert_allclose(np.median(shifted, 1), truth_z, atol=0.01)
    assert stats.coverage(cal)["rps"]["90"] >= 0.85


# --------------------------------------------------------------------------------------------
# episode collection


def test_run_episode_follows_the_contract(tiny_setup) -> None:
    from agents.world_model.data import EPISODE_KEYS

    _, ep, services, scenario = tiny_setup
    steps = int(scenario.horizon_s / scenario.decision_interval_s)
    assert set(ep) == set(EPISODE_KEYS)
    assert ep["obs"].shape[0] == steps + 1 and ep["obs"].dtype == np.float32
    assert ep["action"].shape == (steps + 1, 3 * len(services) + 3)
    np.testing.assert_array_equal(ep["action"][0], 0.0)
    assert ep["is_first"][0] == 1.0 and ep["is_first"][1:].sum() == 0.0
    np.testing.assert_array_equal(ep["cont"], 1.0)
    assert ep["reward"][0] == 0.0 and set(np.unique(ep["violation"])) <= {0.0, 1.0}


def test_perturbed_scenarios_are_seeded_valid_variants() -> None:
    from agents.world_model.data import collect, perturb_scenario
    from envs.scenarios.suites import load_suite

    entry = next(e for e in load_suite("train").entries if e.id == "chain3-bad-deploy-api")
    a, b = perturb_scenario(entry.scenario, 1), perturb_scenario(entry.scenario, 1)
    assert a == b and a != entry.scenario and a.faults[0].kind == "bad_deploy"
    assert a.service_names == entry.scenario.service_names
    assert 0.01 <= a.faults[0].error_rate <= 0.9
    assert abs(a.faults[0].at_s - entry.scenario.faults[0].at_s) <= 120.0
    ratio = a.traffic.base_rps / entry.scenario.traffic.base_rps
    assert math.exp(-0.5) <= ratio <= math.exp(0.5)
    assert perturb_scenario(entry.scenario, 2) != a
    # replicate 0 keeps the entry as defined, replicate 1 runs a variant
    c = collect([entry], ("static",), (0, 1), workers=1, progress=False, perturb=1.0)
    d = collect([entry], ("static",), (0,), workers=1, progress=False)
    np.testing.assert_array_equal(c.episodes[0]["obs"], d.episodes[0]["obs"])
    assert not np.array_equal(c.episodes[1]["obs"][5:], c.episodes[0]["obs"][5:])


def test_collect_is_seeded_and_round_trips(tmp_path) -> None:
    from agents.world_model.data import Collection, collect
    from envs.scenarios.suites import load_suite

    suite = load_suite("train")
    entries = [e for e in suite.entries if e.scenario.topology.name == "chain3"][:1]
    a = collect(entries, behaviours=("explore", "runbook"), workers=1, progress=False)
    b = collect(entries, behaviours=("explore",), workers=1, progress=False)
    assert [m.behaviour for m in a.meta] == ["explore", "runbook"]
    np.testing.assert_array_equal(a.episodes[0]["obs"], b.episodes[0]["obs"])
    np.testing.assert_array_equal(a.episodes[0]["action"], b.episodes[0]["action"])
    assert np.abs(a.episodes[0]["action"]).sum() > 0  # the explorer acts
    back = Collection.load(a.save(tmp_path / "c.npz"))
    assert back.meta == a.meta
    for x, y in zip(a.episodes, back.episodes, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    with pytest.raises(ValueError, match="behaviours"):
        collect(entries, behaviours=("nope",), workers=1)
    mixed = [
        suite.entries[0],
        next(e for e in suite.entries if e.scenario.topology.name == "boutique"),
    ]
    with pytest.raises(ValueError, match="topolog"):
        collect(mixed, workers=1)


# --------------------------------------------------------------------------------------------
# entry points: fit-world-model and evaluate-forecast end to end on a tiny config


TINY_WM = ["wm.deter=32", "wm.hidden=16", "wm.stoch=4", "wm.classes=4", "wm.units=16"]


@pytest.fixture
def composer():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from experiments import evaluate_forecast as ef
    from experiments import fit_world_model as fw
    from experiments.cli import CONFIG_DIR, register_help_resolver

    register_help_resolver()  # default out folders interpolate ${opsworld_pid:}
    fw.register_configs()
    ef.register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield lambda name, overrides: compose(config_name=name, overrides=overrides)
    GlobalHydra.instance().clear()


def test_fit_and_evaluate_forecast_end_to_end(composer, tmp_path) -> None:
    import json

    from agents.world_model.evaluation import FORECASTERS
    from agents.world_model.fit import load_fit
    from experiments.cli import ConfigError
    from experiments.evaluate_forecast import evaluate_forecast
    from experiments.fit_world_model import fit

    wm_dir = tmp_path / "wm"
    cfg = composer(
        "fit_world_model",
        [
            "topology=chain3",
            "limit=2",
            "calib_split=entries",
            "calib_every=2",
            "behaviours=[hpa,explore]",
            "replicates=1",
            "updates=3",
            "log_every=2",
            "batch=2",
            "seq_len=16",
            "wm.overshoot=4",  # the configured 20 needs sequences longer than 20 steps
            "every=20",
            "n_samples=8",
            "workers=1",
            "calib_behaviours=[hpa]",
            f"out={wm_dir}",
            *TINY_WM,
        ],
    )
    summary = fit(cfg, log=None)
    assert summary["updates"] == 3 and summary["episodes"] == 2  # 1 entry x 2 behaviours
    split = summary["calibration_split"]
    assert split["entries"] == [summary["entries"][1]] == summary["entries"][1:]
    assert summary["train_entries"] == summary["entries"][:1]
    assert (split["episodes"], split["naive_episodes"]) == (1, 2)
    for f in ("checkpoint.pt", "spec.json", "metrics.csv", "summary.json", "config.yaml"):
        assert (wm_dir / f).exists(), f
    # 3 updates logged every 2: rows after update 2 and after the last one
    rows = (wm_dir / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[-2:] == ["update", "wall_s"]
    assert [r.split(",")[-2] for r in rows[1:]] == ["2.0", "3.0"]
    loaded = load_fit(wm_dir)
    assert loaded.spec["services"] == ["frontend", "api", "db"]
    assert len(loaded.calibration.scale["p99"]) == 20
    assert loaded.persistence.residuals["rps"].shape[:2] == (20, 3)

    # continue from the checkpoint without training: only the forecast extras are refitted
    again = fit(
        composer(
            "fit_world_model",
            [
                "topology=chain3",
                "limit=1",
                f"init={wm_dir}",
                "updates=0",
                "every=20",
                "n_samples=8",
                "workers=1",
                "calib_behaviours=[hpa]",
                f"out={tmp_path / 'wm2'}",
            ],
        ),
        log=None,
    )
    assert again["updates"] == 3 and again["updates_this_run"] == 0

    out = tmp_path / "fc"
    cfg = composer(
        "evaluate_forecast",
        [
            f"model={wm_dir}",
            "limit=1",
            "behaviours=[runbook]",
            "every=20",
            "n_samples=8",
            "workers=1",
            "examples=1",
            f"out={out}",
        ],
    )
    res = evaluate_forecast(cfg, log=None)
    for f in (
        "metrics.json",
        "forecast.md",
        "mae.png",
        "crps.png",
        "coverage.png",
        "reliability.png",
        "config.yaml",
    ):
        assert (out / f).exists(), f
    assert len(list((out / "examples").glob("*.png"))) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["suite"] == "holdout" and metrics["episodes"] == 1
    for f in FORECASTERS:
        assert len(metrics["per_step"][f]["p99"]["mae"]) == 20
        cov = metrics["overall"][f]["rps"]["coverage90"]
        assert 0.0 <= cov <= 1.0
    # persistence's error grows with the horizon: noisy traffic drifts away from the last
    # value (exact values of persistence scoring: tests/test_forecast_scoring.py)
    pers_rps = metrics["per_step"]["persistence"]["rps"]["mae"]
    assert 0 < pers_rps[0] < 0.75 * float(np.mean(pers_rps[-10:]))
    assert 0.0 <= metrics["violation"]["model"]["brier"] <= 1.0
    assert res["metrics"]["horizon"] == 20
    text = (out / "forecast.md").read_text()
    assert "## `p99` (s)" in text and "Brier" in text

    # two worker processes score the same episodes to the same numbers
    cfg2 = composer(
        "evaluate_forecast",
        [
            f"model={wm_dir}",
            "limit=1",
            "behaviours=[runbook,hpa]",
            "every=20",
            "n_samples=8",
            "workers=2",
            "examples=0",
            f"out={tmp_path / 'fc2'}",
        ],
    )
    cfg1 = composer(
        "evaluate_forecast",
        [
            f"model={wm_dir}",
            "limit=1",
            "behaviours=[runbook,hpa]",
            "every=20",
            "n_samples=8",
            "workers=1",
            "examples=0",
            f"out={tmp_path / 'fc1'}",
        ],
    )

    def numbers(res: dict) -> str:
        m = {k: v for k, v in res["metrics"].items() if k not in ("wall_s", "per_episode")}
        m["per_episode"] = [
            {k: v for k, v in e.items() if k != "wall_s"} for e in res["metrics"]["per_episode"]
        ]
        return json.dumps(m, sort_keys=True)

    two = evaluate_forecast(cfg2, log=None)
    assert [e["behaviour"] for e in two["metrics"]["per_episode"]] == ["runbook", "hpa"]
    assert numbers(two) == numbers(evaluate_forecast(cfg1, log=None))

    # the fitted model fixes the topology and the longest horizon
    with pytest.raises(ConfigError, match="fitted on 'chain3'"):
        evaluate_forecast(
            composer("evaluate_forecast", [f"model={wm_dir}", "topology=boutique"]), log=None
        )
    with pytest.raises(ConfigError, match=r"horizon=21: must be in \[1, 20\]"):
        evaluate_forecast(
            composer("evaluate_forecast", [f"model={wm_dir}", "horizon=21"]), log=None
        )


def test_entry_points_refuse_bad_configs(composer, tmp_path) -> None:
    from experiments.cli import ConfigError
    from experiments.evaluate_forecast import evaluate_forecast
    from experiments.fit_world_model import fit

    with pytest.raises(ConfigError, match="topology is required"):
        fit(composer("fit_world_model", [f"out={tmp_path}"]), log=None)
    with pytest.raises(ConfigError, match="mesh40"):
        fit(composer("fit_world_model", ["topology=mesh40", f"out={tmp_path}"]), log=None)
    with pytest.raises(ConfigError, match="behaviours"):
        fit(
            composer(
                "fit_world_model", ["topology=chain3", "behaviours=[nope]", f"out={tmp_path}"]
            ),
            log=None,
        )
    with pytest.raises(ConfigError, match="size"):
        fit(
            composer("fit_world_model", ["topology=chain3", "size=huge", f"out={tmp_path}"]),
            log=None,
        )
    with pytest.raises(ConfigError, match="model is required"):
        evaluate_forecast(composer("evaluate_forecast", [f"out={tmp_path}"]), log=None)
    with pytest.raises(ConfigError, match=r"spec\.json"):
        evaluate_forecast(composer("evaluate_forecast", [f"model={tmp_path}"]), log=None)
    with pytest.raises(ConfigError, match=r"init=.*no checkpoint\.pt"):
        fit(
            composer(
                "fit_world_model",
                ["topology=chain3", "limit=1", f"init={tmp_path}", f"out={tmp_path / 'o'}"],
            ),
            log=None,
        )
    with pytest.raises(ConfigError, match="n_samples=1: must be >= 2"):
        fit(
            composer("fit_world_model", ["topology=chain3", "n_samples=1", f"out={tmp_path}"]),
            log=None,
        )


def test_wm_overrides_cover_the_world_model_config() -> None:
    from agents.world_model.config import WorldModelConfig
    from agents.world_model.fit import TOP_LEVEL_WM_FIELDS, WorldModelOverrides

    names = {f.name for f in dataclasses.fields(WorldModelOverrides)}
    assert names | set(TOP_LEVEL_WM_FIELDS) == set(WorldModelConfig.model_fields)


def test_cli_knows_the_commands() -> None:
    from experiments import cli

    assert cli.main(["fit-world-model", "topologee=chain3"]) == cli.EXIT_USAGE
    assert cli.main(["evaluate-forecast", "modle=x"]) == cli.EXIT_USAGE
    assert "evaluate-forecast" in cli.usage()


def test_calibration_split_holds_out_every_kth_entry() -> None:
    from agents.world_model.fit import CalibSplit
    from agents.world_model.fit.config import suite_entries
    from agents.world_model.fit.pipeline import calibration_split

    entries = suite_entries("train", "chain3", limit=5)
    ids = [e.id for e in entries]
    held, train = calibration_split(entries, CalibSplit.entries, 2)
    assert held == {ids[1], ids[3]}
    assert [e.id for e in train] == [ids[0], ids[2], ids[4]]
    held, train = calibration_split(entries, CalibSplit.entries, 4)
    assert held == {ids[3]} and len(train) == 4
    held, train = calibration_split(entries, CalibSplit.replicate, 2)
    assert held == set() and [e.id for e in train] == ids


def test_forecast_package_lists_its_api_once() -> None:
    import importlib
    import inspect

    import agents.world_model.forecast as fc

    for name in fc.__all__:
        obj = getattr(fc, name)
        home = getattr(obj, "__module__", None)
        if home is not None and (inspect.isclass(obj) or inspect.isfunction(obj)):
            assert home.startswith("agents.world_model.forecast."), (name, home)
    # a submodule is never shadowed by a function of the same name
    for sub in ("types", "calibration", "episodes", "rollout", "naive"):
        assert inspect.ismodule(importlib.import_module(f"agents.world_model.forecast.{sub}"))
        assert not hasattr(fc, sub) or inspect.ismodule(getattr(fc, sub))


def test_entry_points_import_no_other_entry_point() -> None:
    import subprocess
    import sys

    code = (
        "import sys, experiments.fit_world_model, experiments.evaluate_forecast; "
        "print(sorted(m for m in sys.modules if m.startswith('experiments.')))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == [
        "['experiments.cli',",
        "'experiments.evaluate_forecast',",
        "'experiments.fit_world_model']",
    ]
