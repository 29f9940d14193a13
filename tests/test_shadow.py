"""Shadow mode: audit records, action inference, drift, the loop against a real Prometheus
(live and replay), the remote policy server (real uvicorn), the CLI, and shadow's /metrics
scraped by Prometheus so that the dashboards' shadow panels return data."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_fixture import LIVE_NAMESPACE, PrometheusServer, free_port
from pydantic import ValidationError

from agents.bundle_export import export_baseline
from agents.shadow.audit import SCHEMA, AuditRecord, AuditWriter, audit_files, read_audit
from agents.shadow.deciders import (
    Decider,
    action_from_dict,
    bundle_decider,
    remote_decider,
)
from agents.shadow.drift import DriftMonitor, psi
from agents.shadow.loop import ShadowLoop, blank_frame, derive_pod_counts
from agents.shadow.metrics import ShadowMetrics
from agents.shadow.observe import ActionObserver
from envs.core.actions import Restart, Scale, SetHPATarget
from envs.core.telemetry import FIELD_INDEX
from envs.gym.encoder import ObsEncoder
from envs.live.dashboards import DASHBOARDS, SHADOW_MARK
from envs.live.profile import load_profile
from envs.live.prometheus import PrometheusSource
from envs.scenarios.loader import load_scenario
from experiments import cli

SERVICES = ("frontend", "api", "db")


def record(tick: int = 0, **kw: Any) -> AuditRecord:
    base: dict[str, Any] = {
        "tick": tick,
        "t": 1000.0 + tick,
        "wall_time": "2026-01-01T00:00:00+00:00",
        "mode": "replay",
        "policy": "baseline/hpa",
        "services": list(SERVICES),
    }
    base.update(kw)
    return AuditRecord(**base)


# ------------------------------------------------------------------------------ audit


def test_record_serialises_the_shared_schema() -> None:
    line = record(telemetry={"api": {"rps": 3.0, "p99": None}}).line()
    data = json.loads(line)
    assert data["schema"] == SCHEMA == "opsworld.shadow.audit/1"
    assert data["actuated"] is False and data["tick"] == 0
    assert data["telemetry"] == {"api": {"rps": 3.0, "p99": None}}
    keys = "t wall_time mode bundle_sha policy model_version services telemetry missing"
    keys += " missing_fraction query_errors raw_actions guarded_actions interventions fallback"
    keys += " recommended_replicas actual_replicas actual_actions forecast drift reasons error"
    for key in [*keys.split(), "latency_s", "actuated"]:
        assert key in data, key
    assert "\n" not in line and "NaN" not in line


def test_record_refuses_nan_telemetry_and_actuation() -> None:
    with pytest.raises(ValidationError, match=r"telemetry.api.rps = nan: write None"):
        record(telemetry={"api": {"rps": math.nan}})
    with pytest.raises(ValidationError):
        record(actuated=True)
    with pytest.raises(ValidationError):
        record(mode="dry-run")


def test_writer_rotates_by_size_and_keeps_n(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    size = len(record().line()) + 1
    with AuditWriter(path, max_bytes=3 * size + 5, keep=2) as w:
        for k in range(10):
            w.write(record(k))
    files = audit_files(path)
    assert [f.name for f in files] == ["audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"]
    assert all(f.stat().st_size <= 3 * size + 5 for f in files)
    ticks = [r["tick"] for r in read_audit(path)]
    # 3 records per file: [0 1 2] [3 4 5] [6 7 8] [9]; the oldest went beyond keep=2
    assert ticks == [3, 4, 5, 6, 7, 8, 9]
    assert w.rotations == 3 and w.written == 10


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(0, 4000), st.integers(1, 6))
def test_rotation_keeps_a_contiguous_tail_of_records(n: int, max_bytes: int, keep: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        with AuditWriter(path, max_bytes=max_bytes, keep=keep) as w:
            for k in range(n):
                w.write(record(k))
        ticks = [r["tick"] for r in read_audit(path)]
        assert ticks == list(range(n - len(ticks), n)) and ticks  # the newest, in order
        assert len(audit_files(path)) <= keep + 1
        if max_bytes == 0 or keep >= n:
            assert len(ticks) == n  # nothing rotated away


def test_writer_rejects_bad_rotation_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep >= 1"):
        AuditWriter(tmp_path / "a.jsonl", keep=0)


# ------------------------------------------------------------------------------ observe


def frame_with(t: float, desired: list[float], restarts: list[float]) -> Any:
    frame = blank_frame(SERVICES, t)
    values, mask = frame.values.copy(), frame.mask.copy()
    for col, vals in (("replicas_desired", desired), ("restarts", restarts)):
        c = FIELD_INDEX[col]
        values[:, c] = vals
        mask[:, c] = ~np.isnan(vals)
    object.__setattr__(frame, "values", values)
    object.__setattr__(frame, "mask", mask)
    return frame


def test_actions_are_inferred_from_consecutive_frames() -> None:
    obs = ActionObserver()
    nan = math.nan
    assert obs.observe(frame_with(0, [2, 2, 2], [0, 0, 0])) == ([], [])
    acts, _ = obs.observe(frame_with(15, [3, 2, nan], [0, 2, 0]))
    assert acts == [
        {"kind": "scale", "service": "frontend", "replicas": 3, "from": 2},
        {"kind": "restart", "service": "api", "count": 2},
    ]
    # a gap infers nothing; the value after the gap compares with the last one seen
    acts, _ = obs.observe(frame_with(30, [3, 2, 1], [0, 2, 0]))
    assert acts == [{"kind": "scale", "service": "db", "replicas": 1, "from": 2}]
    # a counter reset (exporter restarted) is not a restart
    acts, notes = obs.observe(frame_with(45, [3, 2, 1], [0, 0, 0]))
    assert acts == [] and len(notes) == 1 and "api: restart counter fell 2 -> 0" in notes[0]


def test_action_dicts_round_trip() -> None:
    from agents.guard import action_dict

    for a in (Scale("api", 4), Restart("db"), SetHPATarget("api", 60)):
        assert action_from_dict(action_dict(a)) == a
    with pytest.raises(ValueError, match="action kind 'reboot'"):
        action_from_dict({"kind": "reboot"})


# ------------------------------------------------------------------------------ drift


def test_psi_is_small_in_distribution_and_large_after_a_shift() -> None:
    rng = np.random.default_rng(0)
    same = rng.normal(3.0, 2.0, 5000)
    assert psi(same, 3.0, 2.0) < 0.01
    assert psi(same + 2.0, 3.0, 2.0) > 0.25  # a one-std shift
    assert psi(np.full(100, 3.0), 3.0, 2.0) > 1.0  # a constant where training varied


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200), st.floats(-10, 10))
def test_psi_is_never_negative(live: list[float], mean: float) -> None:
    assert psi(np.asarray(live), mean, 1.5) >= 0.0


def reference_from(encoder: ObsEncoder, frames: list[Any], shift: float = 0.0) -> dict[str, Any]:
    enc = np.stack([encoder.encode(f) for f in frames])
    return {
        "obs": {
            "mean": (enc.mean(0) + shift).tolist(),
            "std": enc.std(0).tolist(),
            "count": float(len(frames)),
        }
    }


def test_drift_monitor_flags_shifted_inputs() -> None:
    encoder = ObsEncoder(SERVICES)
    rng = np.random.default_rng(1)
    frames = []
    for k in range(60):
        f = blank_frame(SERVICES, float(k))
        values, mask = f.values.copy(), f.mask.copy()
        values[:, FIELD_INDEX["rps"]] = rng.lognormal(4, 0.3, 3)
        mask[:, FIELD_INDEX["rps"]] = True
        object.__setattr__(f, "values", values)
        object.__setattr__(f, "mask", mask)
        frames.append(f)
    same = DriftMonitor(encoder, reference_from(encoder, frames), min_samples=20, window=60)
    shifted = DriftMonitor(
        encoder, reference_from(encoder, frames, shift=3.0), min_samples=20, window=60
    )
    assert same.report() is None
    for f in frames:
        same.observe(f)
        shifted.observe(f)
    ok, bad = same.report(), shifted.report()
    assert ok is not None and bad is not None
    assert set(ok["psi"]) == {"rps"}  # only features with spread and observed values
    assert ok["psi"]["rps"] < 0.25 and ok["mean_shift"]["rps"] < 1e-5
    assert not ok["retrain_recommended"] and ok["threshold"] == 3.0
    assert bad["psi"]["rps"] > 1.0 and bad["mean_shift"]["rps"] > 3.0
    assert bad["retrain_recommended"]
    # a steady cluster: every live value at the training mean; PSI reads high (one bin),
    # yet nothing the policy has not seen: no retraining
    ref = reference_from(encoder, frames)
    steady = DriftMonitor(encoder, ref, min_samples=20, window=60)
    col = FIELD_INDEX["rps"]
    flat = blank_frame(SERVICES, 0.0)
    values, mask = flat.values.copy(), flat.mask.copy()
    n_feat = len(encoder.service_features)  # the encoded layout: services x features, rps first
    values[:, col] = np.expm1(np.asarray(ref["obs"]["mean"][0 : 3 * n_feat : n_feat]))
    mask[:, col] = True
    object.__setattr__(flat, "values", values)
    object.__setattr__(flat, "mask", mask)
    for _ in range(20):
        steady.observe(flat)
    calm = steady.report()
    assert calm is not None and calm["psi"]["rps"] > 1.0
    assert calm["mean_shift"]["rps"] < 1e-3 and not calm["retrain_recommended"]
    with pytest.raises(ValueError, match=r"feature_reference\.obs has 3 entries"):
        DriftMonitor(encoder, {"obs": {"mean": [0, 0, 0], "std": [1, 1, 1]}})


# ------------------------------------------------------------------------------ the loop


@pytest.fixture(scope="module")
def hpa_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    scenario = load_scenario("chain3", {"scrape_interval_s": 1.0, "decision_interval_s": 15.0})
    return export_baseline("hpa", scenario, tmp_path_factory.mktemp("shadow") / "hpa")


def live_profile() -> Any:
    return load_profile("kube").with_variables(namespace=LIVE_NAMESPACE, window="15s")


def make_loop(
    decider: Decider, url: str, tmp_path: Path, metrics: ShadowMetrics | None = None, **kw: Any
) -> ShadowLoop:
    source = PrometheusSource(url, live_profile(), decider.spec.services, timeout_s=2, retries=0)
    return ShadowLoop(decider, source, AuditWriter(tmp_path / "audit.jsonl"), metrics, **kw)


def test_live_ticks_against_prometheus(
    hpa_bundle: Path, scraped: PrometheusServer, tmp_path: Path
) -> None:
    decider = bundle_decider(hpa_bundle)
    loop = make_loop(decider, scraped.url, tmp_path)
    stats = loop.run_live(0.2, ticks=3)
    loop.close()
    recs = list(read_audit(tmp_path / "audit.jsonl"))
    assert stats.ticks == stats.records == len(recs) == 3
    for k, r in enumerate(recs):
        assert r["tick"] == k and r["mode"] == "live" and r["actuated"] is False
        assert r["bundle_sha"] == decider.bundle_sha and r["policy"] == "baseline/hpa"
        assert r["services"] == list(SERVICES)
        assert r["missing_fraction"] == 0.0 and r["missing"] == {} and r["error"] is None
        assert r["fallback"] is None
        assert r["actual_replicas"] == {s: 2 for s in SERVICES}  # chain3 starts at 2, static
        assert r["recommended_replicas"] == {s: 2 for s in SERVICES}
        assert r["telemetry"]["api"]["replicas_ready"] == 2.0
        assert r["latency_s"] > 0
    assert stats.agreement == 1.0 and stats.compared == 6 and stats.actuations == 0


def test_dead_prometheus_still_records_every_tick_and_falls_back(
    hpa_bundle: Path, tmp_path: Path
) -> None:
    decider = bundle_decider(hpa_bundle)
    loop = make_loop(decider, f"http://127.0.0.1:{free_port()}", tmp_path)
    stats = loop.run_live(0.05, ticks=3)
    loop.close()
    recs = list(read_audit(tmp_path / "audit.jsonl"))
    assert stats.ticks == stats.records == len(recs) == 3 and stats.tick_exceptions == 0
    for r in recs:
        assert r["missing_fraction"] == 1.0 and r["fallback"] == "hpa"
        assert r["actual_replicas"] == {s: None for s in SERVICES}
        assert any("unreachable" in q["reason"] for q in r["query_errors"])
        assert "unreachable (ConnectError" in r["missing"]["api"]["p99"]
        assert any(i["rule"] == "stale_telemetry" for i in r["interventions"])
        assert r["reasons"][0].startswith("all telemetry missing")
    assert stats.fallbacks == {"hpa": 3}


def test_replay_gives_one_record_per_step(
    hpa_bundle: Path, scraped: PrometheusServer, tmp_path: Path
) -> None:
    decider = bundle_decider(hpa_bundle)
    loop = make_loop(decider, scraped.url, tmp_path)
    end = math.floor(time.time()) - 2.0
    stats = loop.run_replay(end - 10, end, 1.0, chunk=4)
    loop.close()
    recs = list(read_audit(tmp_path / "audit.jsonl"))
    assert stats.ticks == len(recs) == 11
    assert [r["t"] for r in recs] == [end - 10 + k for k in range(11)]
    assert all(r["mode"] == "replay" and r["actual_replicas"]["db"] == 2 for r in recs)


def test_a_failing_policy_is_recorded_and_the_breaker_opens(
    hpa_bundle: Path, scraped: PrometheusServer, tmp_path: Path
) -> None:
    class Broken:
        name = "broken"

        def reset(self, n: int = 1) -> Any:
            return None

        def act(self, obs: Any, state: Any) -> Any:
            raise RuntimeError("model exploded")

    decider = bundle_decider(hpa_bundle)
    decider.policy = Broken()
    loop = make_loop(decider, scraped.url, tmp_path)
    stats = loop.run_live(0.05, ticks=6)
    recs = list(read_audit(tmp_path / "audit.jsonl"))
    assert len(recs) == 6 and stats.errors == 6 and stats.tick_exceptions == 0
    assert all("model exploded" in r["error"] and r["fallback"] == "hpa" for r in recs)
    assert recs[3]["breaker_open"] is False and recs[4]["breaker_open"] is True  # 5th error


# ------------------------------------------------------------------------------ server mode


def test_remote_server_mode_and_a_killed_server(
    hpa_bundle: Path, scraped: PrometheusServer, tmp_path: Path
) -> None:
    from test_serving import start_server

    server = start_server(hpa_bundle, tmp_path / "serve.log", token=None)
    try:
        decider = remote_decider(server.url, stream_id="shadow-test", timeout_s=2)
        local = bundle_decider(hpa_bundle)
        assert decider.bundle_sha == local.bundle_sha and decider.policy_name == "remote/hpa"
        assert decider.spec.services == SERVICES
        loop = make_loop(decider, scraped.url, tmp_path)
        loop.run_live(0.05, ticks=2)
        # the command docs/shadow.md shows for server mode
        code = cli.main(
            [
                "shadow",
                f"server={server.url}",
                f"prometheus={scraped.url}",
                f"namespace={LIVE_NAMESPACE}",
                "window=15s",
                "interval_s=0.1",
                "ticks=2",
                f"out={tmp_path / 'cli'}",
            ]
        )
        assert code == 0
        cli_recs = list(read_audit(tmp_path / "cli" / "audit.jsonl"))
        assert [r["policy"] for r in cli_recs] == ["remote/hpa"] * 2
        assert all(r["error"] is None and r["fallback"] is None for r in cli_recs)
    finally:
        server.stop()
    loop.run_live(0.05, ticks=2)  # the server is gone: the loop goes on
    loop.close()
    recs = list(read_audit(tmp_path / "audit.jsonl"))
    assert len(recs) == 4
    assert [r["error"] is None for r in recs] == [True, True, False, False]
    assert recs[0]["fallback"] is None and recs[0]["model_version"].startswith("hpa-")
    assert all(r["fallback"] == "hpa" for r in recs[2:])
    assert all(r["actual_replicas"]["api"] == 2 for r in recs)


# ------------------------------------------------------------------------------ CLI


def test_cli_replay_end_to_end(
    hpa_bundle: Path, scraped: PrometheusServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command docs/live.md shows for replay mode."""
    end = math.floor(time.time()) - 2
    code = cli.main(
        [
            "shadow",
            f"bundle={hpa_bundle}",
            f"prometheus={scraped.url}",
            "queries=kube",
            f"namespace={LIVE_NAMESPACE}",
            "window=15s",
            f"start={end - 5}",
            f"end={end}",
            "step_s=1",
            f"out={tmp_path / 'out'}",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["mode"] == "replay" and summary["ticks"] == summary["records"] == 6
    assert summary["actuations"] == 0 and summary["tick_exceptions"] == 0
    assert len(list(read_audit(tmp_path / "out" / "audit.jsonl"))) == 6
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary


def test_cli_live_end_to_end(
    hpa_bundle: Path, scraped: PrometheusServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command docs/live.md shows for live mode (a few ticks)."""
    code = cli.main(
        [
            "shadow",
            f"bundle={hpa_bundle}",
            f"prometheus={scraped.url}",
            f"namespace={LIVE_NAMESPACE}",
            "window=15s",
            "interval_s=0.2",
            "ticks=2",
            f"metrics_port={free_port()}",
            f"out={tmp_path}",
        ]
    )
    assert code == 0
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["mode"] == "live" and summary["records"] == 2
    assert "shadow metrics on http://127.0.0.1:" in out.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give exactly one of bundle="),
        (["bundle=x", "server=http://127.0.0.1:1"], "give exactly one of bundle="),
        (["bundle=x", "start=0"], "replay needs both start= and end="),
        (["bundle=x", "start=yesterday", "end=1"], "start='yesterday': give Unix seconds"),
        (["bundle=/nonexistent/b"], "bundle refused"),
        (["bundle=x", "interval_s=0"], "interval_s=0.0: must be > 0"),
    ],
)
def test_cli_errors_name_the_option(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["shadow", *args])
    assert exc.value.code == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_cli_unknown_option_suggests_the_close_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["shadow", "bundel=x"]) == cli.EXIT_USAGE
    assert "did you mean 'bundle'" in capsys.readouterr().err


# ------------------------------------------------------------------------------ /metrics


NO_FORECAST = ("_lower", "_upper", "forecast_abs_error")
"""Series only a forecasting policy produces (the shipped bundles do not forecast)."""


def test_shadow_panels_return_data_from_a_running_shadow_loop(
    hpa_bundle: Path, scraped: PrometheusServer, exporter: Any, tmp_path: Path
) -> None:
    from test_live_dashboards import panels, render

    decider = bundle_decider(hpa_bundle)
    decider.encoder = ObsEncoder(SERVICES)
    decider.feature_reference = {
        "obs": {"mean": [0.0] * decider.encoder.size, "std": [1.0] * decider.encoder.size}
    }
    metrics = ShadowMetrics(LIVE_NAMESPACE)
    port = metrics.serve(0)
    loop = make_loop(decider, scraped.url, tmp_path, metrics, drift_min_samples=2, drift_every=1)
    dead = PrometheusSource(f"http://127.0.0.1:{free_port()}", live_profile(), SERVICES, retries=0)
    live_source, loop.source = loop.source, dead
    loop.live_tick()  # a stale tick: the guard intervenes, the fallback decides
    loop.source = live_source
    loop.run_live(0.2, ticks=4)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    labels = f'deployment="api",namespace="{LIVE_NAMESPACE}"'
    assert f"opsworld_shadow_recommended_replicas{{{labels}}} 2.0" in text
    assert 'opsworld_guard_interventions_total{rule="stale_telemetry"} 1.0' in text
    assert f'opsworld_shadow_agreement_ratio{{namespace="{LIVE_NAMESPACE}"}} 1.0' in text
    try:
        scraped.set_targets(
            {"opsworld-exporter": [f"127.0.0.1:{exporter.port}"], "shadow": [f"127.0.0.1:{port}"]}
        )
        scraped.wait_for(f'opsworld_shadow_drift_psi{{namespace="{LIVE_NAMESPACE}"}}')
        time.sleep(2.5)  # a second scrape, so increase() over the range has two samples
        checked = 0
        for key in DASHBOARDS:
            for panel in panels(key):
                if not panel.get("description", "").startswith(SHADOW_MARK):
                    continue
                for target in panel["targets"]:
                    expr = render(target["expr"])
                    if any(s in expr for s in NO_FORECAST):
                        continue
                    assert scraped.query(expr), f"{key}: {panel['title']!r}: no data for {expr}"
                    checked += 1
        assert checked >= 8
    finally:
        scraped.set_targets({"opsworld-exporter": [f"127.0.0.1:{exporter.port}"]})
        loop.close()
        metrics.close()


# ------------------------------------------------------------------------------ pod counts


def test_unexported_pod_counts_are_derived_for_the_decision_only() -> None:
    nan = math.nan
    frame = frame_with(0.0, [3, nan, 2], [0, 0, 0])
    values, mask = frame.values.copy(), frame.mask.copy()
    values[:, FIELD_INDEX["replicas_ready"]] = [2, 2, nan]
    mask[:, FIELD_INDEX["replicas_ready"]] = [True, True, False]
    object.__setattr__(frame, "values", values)
    object.__setattr__(frame, "mask", mask)
    view, derived = derive_pod_counts(frame)
    assert derived == ["frontend"]  # api lacks desired, db lacks ready: nothing implied
    for f in ("replicas_starting", "replicas_pending"):
        c = FIELD_INDEX[f]
        assert view.values[0, c] == 0.0 and view.mask[0, c]
        assert not view.mask[1, c] and not view.mask[2, c]
        assert not frame.mask[0, c]  # the observed frame is untouched


def test_hpa_bundle_recommends_a_scale_from_prometheus(
    scraped: PrometheusServer, tmp_path: Path
) -> None:
    """chain3 runs at about 40-50 % CPU of requests on 2 replicas: an HPA targeting 20 %
    recommends more (bounded by the guard's max_step of 4); without the derived pod counts
    the HPA cannot place its pods and recommends nothing."""
    scenario = load_scenario("chain3", {"scrape_interval_s": 1.0, "decision_interval_s": 15.0})
    bundle = export_baseline("hpa", scenario, tmp_path / "hpa20", target_cpu_utilization=20)
    loop = make_loop(bundle_decider(bundle), scraped.url, tmp_path)
    rec = loop.live_tick()
    assert rec.error is None and rec.fallback is None
    assert all(3 <= (rec.recommended_replicas[s] or 0) <= 6 for s in SERVICES), rec
    assert {a["kind"] for a in rec.guarded_actions} == {"scale"}
    assert any("replicas_starting/replicas_pending = 0" in r for r in rec.reasons)
    blind = make_loop(bundle_decider(bundle), scraped.url, tmp_path / "blind", derive_pods=False)
    assert blind.live_tick().guarded_actions == []
    loop.close()
    blind.close()


# ------------------------------------------------------------------- SB3 bundle, forecasts


@pytest.fixture(scope="module")
def ppo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A debug PPO run on chain3 (autoscale), exported: a bundle with a feature reference."""
    from test_serving import train_run

    from agents.bundle_export import export_run

    base = tmp_path_factory.mktemp("ppo")
    run = train_run(base / "run", "agent=ppo", "env=autoscale")
    return export_run(run, base / "bundle")


def test_sb3_bundle_in_replay_reports_drift(
    ppo_bundle: Path, scraped: PrometheusServer, tmp_path: Path
) -> None:
    decider = bundle_decider(ppo_bundle)
    assert decider.policy_name == "sb3/ppo" and decider.feature_reference is not None
    loop = make_loop(decider, scraped.url, tmp_path, drift_min_samples=4, drift_every=1)
    end = math.floor(time.time()) - 2.0
    loop.run_replay(end - 7, end, 1.0)
    loop.close()
    recs = list(read_audit(tmp_path / "audit.jsonl"))
    assert len(recs) == 8 and all(r["error"] is None for r in recs)
    assert [r["drift"] is None for r in recs] == [True] * 3 + [False] * 5
    drift = recs[-1]["drift"]
    encoder = decider.encoder
    assert set(drift["psi"]) <= set(encoder.service_features) | set(encoder.cluster_features)
    assert "rps" in drift["psi"] and all(v >= 0 for v in drift["psi"].values())
    assert set(drift["mean_shift"]) == set(drift["psi"])
    worst = max(drift["mean_shift"].values())
    assert drift["retrain_recommended"] == (worst > 3.0)
    assert drift["samples"] == 8 and drift["threshold"] == 3.0


def test_forecasts_give_lower_upper_and_realised_error(
    hpa_bundle: Path, scraped: PrometheusServer, tmp_path: Path
) -> None:
    class Forecasting:
        """The HPA bundle's policy plus a replica forecast (q50 = 3, one tick ahead)."""

        def __init__(self, inner: Any) -> None:
            self.inner, self.name = inner, "forecasting"

        def reset(self, n: int = 1) -> Any:
            return self.inner.reset(n)

        def act(self, obs: Any, state: Any) -> Any:
            actions, state, info = self.inner.act(obs, state)
            q = {"q05": 1.0, "q50": 3.0, "q95": 5.0, "horizon_s": 0.05}
            return actions, state, {**info, "forecast": {"api": {"replicas": q}}}

    decider = bundle_decider(hpa_bundle)
    decider.policy = Forecasting(decider.policy)
    metrics = ShadowMetrics(LIVE_NAMESPACE)
    loop = make_loop(decider, scraped.url, tmp_path, metrics)
    first = loop.live_tick()
    time.sleep(0.1)
    second = loop.live_tick()
    loop.close()
    assert first.forecast == {
        "api": {"replicas": {"q05": 1.0, "q50": 3.0, "q95": 5.0, "horizon_s": 0.05}}
    }
    assert second.actual_replicas["api"] == 2
    labels = {"namespace": LIVE_NAMESPACE, "deployment": "api"}
    get = metrics.registry.get_sample_value
    assert get("opsworld_shadow_recommended_replicas_lower", labels) == 1.0
    assert get("opsworld_shadow_recommended_replicas_upper", labels) == 5.0
    assert get("opsworld_shadow_forecast_abs_error", labels) == 1.0  # |2 - 3|


# -------------------------------------------------------------------- failures inside a tick


def test_failures_inside_the_loop_are_recorded_and_it_goes_on(
    hpa_bundle: Path, tmp_path: Path
) -> None:
    from envs.live.prometheus import LiveFrame

    class Broken(PrometheusSource):
        """Raises in replay and returns another cluster's frame live (neither should happen)."""

        def replay(self, start: float, end: float, step_s: float) -> Any:
            raise RuntimeError("disk on fire")

        def frame(self, at: float | None = None) -> LiveFrame:
            return LiveFrame(blank_frame(("x", "y", "z"), 5.0))

    decider = bundle_decider(hpa_bundle)
    source = Broken("http://127.0.0.1:1", live_profile(), decider.spec.services)
    loop = ShadowLoop(decider, source, AuditWriter(tmp_path / "audit.jsonl"))
    stats = loop.run_replay(100.0, 104.0, 2.0)
    loop.live_tick()
    loop.close()
    recs = list(read_audit(tmp_path / "audit.jsonl"))
    assert stats.ticks == len(recs) == 4
    assert [r["t"] for r in recs[:3]] == [100.0, 102.0, 104.0]
    assert all(
        r["missing"]["db"]["rps"].startswith("replay queries failed: RuntimeError")
        for r in recs[:3]
    )
    assert recs[3]["error"].startswith("ValueError: guard: frame services")
    assert recs[3]["actuated"] is False and stats.tick_exceptions == 1
