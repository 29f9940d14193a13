"""Dreamer bundles: export, load without SB3 or the simulator, serve, forecast and explain.

A tiny Dreamer run (``debug=default``, 60 steps, chain3 ``env=ops``) is trained once
per module, exported, and served over real HTTP on 127.0.0.1 (uvicorn started by the test).
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from test_bundle import LOAD, _cli
from test_serving import (
    ENTRIES,
    REPO,
    Server,
    action_json,
    infer,
    start_server,
    train_run,
)

from agents.bundle import MANIFEST, SUMS, WEIGHTS, BundleError, load_bundle
from agents.bundle_dreamer import STEP_INPUTS, STEP_ONNX, STEP_OUTPUTS, DreamerBundlePolicy
from agents.bundle_export import export_run, record_frames
from agents.dreamer.policy import DreamerPolicy
from agents.guard import Guard, GuardedPolicy
from agents.serving.schemas import frame_json
from envs.core.telemetry import Telemetry
from envs.gym.codec import control_spec
from envs.scenarios.suites import load_suite

DREAMER = ("agent=dreamer", "total_timesteps=60", "eval.episodes=1")


@pytest.fixture(scope="module")
def dreamer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(run dir, bundle)`` of a tiny chain3 ``env=ops`` Dreamer run."""
    base = tmp_path_factory.mktemp("dreamer")
    run = train_run(base / "run", *DREAMER, "env=ops")
    return run, export_run(run, base / "bundle")


@pytest.fixture(scope="module")
def server(
    dreamer: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    srv = start_server(dreamer[1], tmp_path_factory.mktemp("log") / "serve.log")
    yield srv
    srv.stop()


def recorded(run: Path, entry_id: str) -> tuple[DreamerPolicy, list[Telemetry]]:
    """The in-process policy (mode) and the frames of a holdout episode it acts in."""
    policy = DreamerPolicy(run, deterministic=True)
    entry = next(e for e in load_suite("holdout").entries if e.id == entry_id)
    holder: Any = type("Holder", (), {})()
    holder.scenario, holder.reset, holder.act = entry.scenario, policy.reset, policy.act
    return policy, record_frames(holder, 10_000, seed=entry.run_seed(0))


# ------------------------------------------------------------------------------ the bundle


def test_dreamer_bundle_files_manifest_and_parity(dreamer: tuple[Path, Path]) -> None:
    _, bundle = dreamer
    assert sorted(p.name for p in bundle.iterdir()) == sorted(
        [MANIFEST, SUMS, WEIGHTS, STEP_ONNX]
    )  # no pickle, no .onnx.data side file
    m = json.loads((bundle / MANIFEST).read_text())
    assert m["kind"] == "dreamer" and m["algorithm"] == "dreamer"
    assert m["model_version"].startswith("dreamer-")
    parity = m["parity"]
    assert parity["random_samples"] == 512 and parity["rollout_steps"] == 50
    assert parity["random_mismatches"] == parity["random_carry_mismatches"] == 0
    assert parity["onnx_mismatches"] == 0
    assert parity["rollout_mismatches"] == {"torch": 0, "onnx": 0}
    wm = m["network"]["world_model"]
    rs = m["recurrent_state"]["inputs"]
    assert rs["deter"]["shape"] == ["batch", wm["deter"]]
    assert rs["stoch"]["shape"] == ["batch", wm["stoch"], wm["classes"]]
    assert rs["prev_action"]["shape"] == ["batch", m["action"]["feature_size"]]
    assert rs["is_first"]["initial"] == 1.0 and rs["deter"]["initial"] == 0.0
    assert m["recurrent_state"]["next"] == {"deter": "deter_next", "stoch": "stoch_next"}
    # the ONNX step's inputs and outputs are those the manifest names, batch axis dynamic
    session = ort.InferenceSession(str(bundle / STEP_ONNX), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(STEP_INPUTS)
    assert [o.name for o in session.get_outputs()] == list(STEP_OUTPUTS)
    for i in session.get_inputs():
        assert isinstance(i.shape[0], str), i  # symbolic: any batch size
        assert list(i.shape[1:]) == m["network"]["inputs"][i.name][1:]


def test_the_onnx_step_runs_a_batch_of_streams_as_one_stream_each(
    dreamer: tuple[Path, Path],
) -> None:
    """Batch 5 in one call gives what 5 calls of batch 1 give (no traced batch size)."""
    _, bundle = dreamer
    policy = load_bundle(bundle, backend="onnx").policy
    assert isinstance(policy, DreamerBundlePolicy)
    rng = np.random.default_rng(3)
    m = policy.manifest
    wm = m["network"]["world_model"]
    n = 5
    stoch = np.zeros((n, wm["stoch"], wm["classes"]), np.float32)
    stoch[
        np.arange(n)[:, None],
        np.arange(wm["stoch"]),
        rng.integers(0, wm["classes"], (n, wm["stoch"])),
    ] = 1
    feed = {
        "obs": rng.normal(size=(n, m["observation"]["size"])).astype(np.float32),
        "is_first": np.array([1, 0, 0, 1, 0], np.float32),
        "deter": rng.uniform(-1, 1, (n, wm["deter"])).astype(np.float32),
        "stoch": stoch,
        "prev_action": rng.normal(size=(n, m["action"]["feature_size"])).astype(np.float32),
        "mask": np.ones((n, m["action"]["mask_size"]), bool),
    }
    action, deter, _ = policy.run(feed)
    assert action.shape == (n, len(m["action"]["nvec"])) and deter.shape == (n, wm["deter"])
    for i in range(n):
        one = policy.run({k: v[i : i + 1] for k, v in feed.items()})
        np.testing.assert_array_equal(one[0][0], action[i])
        np.testing.assert_allclose(one[1][0], deter[i], rtol=0, atol=1e-6)


def test_dreamer_bundles_decide_without_sb3_or_the_simulator(
    dreamer: tuple[Path, Path], tmp_path: Path
) -> None:
    run, bundle = dreamer
    policy = DreamerPolicy(run, deterministic=True)
    frames = record_frames(policy, 40, seed=11)
    path = tmp_path / "frames.pkl"
    path.write_bytes(pickle.dumps(frames))
    state, acts = policy.reset(1), []
    for frame in frames:
        actions, state, _ = policy.act(frame, state)
        acts.append([repr(a) for a in actions])
    jobs = [(b, str(bundle), b, str(path)) for b in ("onnx", "torch")]
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, json.dumps(jobs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"onnx": acts, "torch": acts}


def test_a_tampered_dreamer_bundle_is_refused_naming_the_file(
    dreamer: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bundle = dreamer
    flipped = Path(shutil.copytree(bundle, tmp_path / "flip"))
    data = bytearray((flipped / STEP_ONNX).read_bytes())
    data[len(data) // 2] ^= 0x01
    (flipped / STEP_ONNX).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{STEP_ONNX}: SHA-256 differs from SHA256SUMS"):
        load_bundle(flipped)
    missing = Path(shutil.copytree(bundle, tmp_path / "missing"))
    (missing / STEP_ONNX).unlink()
    with pytest.raises(BundleError, match=rf"{STEP_ONNX}: listed in SHA256SUMS but missing"):
        load_bundle(missing)


# ------------------------------------------------------------------------------ serving


def test_served_dreamer_decisions_equal_the_in_process_policy_on_holdout_episodes(
    dreamer: tuple[Path, Path], server: Server
) -> None:
    """Bit-equal actions over whole holdout episodes; forecast and explain calls in between
    leave the stream's state alone."""
    run, bundle = dreamer
    meta = httpx.get(f"{server.url}/v2/models/{server.name}").json()
    assert meta["algorithm"] == "dreamer" and meta["backend"] == "onnx"
    for k, entry_id in enumerate(ENTRIES):
        policy, frames = recorded(run, entry_id)
        assert len(frames) >= 120
        guarded = GuardedPolicy(
            policy, Guard(load_bundle(bundle).guard, control_spec(policy.scenario))
        )
        s_plain, s_guarded = policy.reset(1), guarded.reset(1)
        stream = f"dreamer-{entry_id}-{k}"
        acted = 0
        for i, frame in enumerate(frames):
            expect, s_plain, _ = policy.act(frame, s_plain)
            expect_guarded, s_guarded, _ = guarded.act(frame, s_guarded)
            r = infer(server, {"stream_id": stream, "frames": [frame_json(frame)]})
            assert r.status_code == 200, r.text
            got = r.json()
            assert got["proposed"] == [action_json(a) for a in expect], (entry_id, i)
            assert got["actions"] == [action_json(a) for a in expect_guarded]
            acted += bool(expect)
            if i % 40 == 1:  # side-effect free: the next decisions still match
                body = {"stream_id": stream, "horizon": 3, "samples": 4}
                assert (
                    httpx.post(
                        f"{server.url}/v2/models/{server.name}/forecast", json=body
                    ).status_code
                    == 200
                )
                assert (
                    httpx.post(
                        f"{server.url}/v2/models/{server.name}/explain", json=body
                    ).status_code
                    == 200
                )
        assert acted > 0


def forecast(server: Server, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{server.name}/forecast", json=body, timeout=60)


def test_forecast_quantiles_are_shaped_ordered_clipped_and_repeatable(
    dreamer: tuple[Path, Path], server: Server
) -> None:
    run, _ = dreamer
    _, frames = recorded(run, ENTRIES[1])
    window = [frame_json(f) for f in frames[:30]]
    r = infer(server, {"stream_id": "fc", "frames": window, "reset": True})
    assert r.status_code == 200 and r.json()["decisions"] == 30
    body = {"stream_id": "fc", "horizon": 6, "samples": 32, "quantiles": [0.05, 0.5, 0.95]}
    got = forecast(server, body).json()
    assert got["t"] == frames[29].t and got["horizon"] == 6 and got["samples"] == 32
    services = got["services"]
    assert services == list(frames[0].services)
    for metric in ("p99", "rps", "error_rate", "replicas"):
        q = np.array(got[metric])
        assert q.shape == (6, len(services), 3), metric
        assert np.isfinite(q).all() and (q >= 0).all(), metric
        assert (np.diff(q, axis=-1) >= 0).all(), metric  # quantiles ascend
    assert (np.array(got["error_rate"]) <= 1.0).all()
    assert 0.0 <= got["p_violation"] <= 1.0
    assert forecast(server, body).json() == got  # same state, same seed: same answer
    other = forecast(server, {**body, "seed": 1}).json()
    assert other["p99"] != got["p99"]
    # newer frames in the request are filtered on a copy: the stream itself does not move
    ahead = forecast(server, {**body, "frames": [frame_json(f) for f in frames[30:33]]}).json()
    assert ahead["t"] == frames[32].t
    assert forecast(server, body).json()["t"] == frames[29].t


def test_explain_compares_every_candidate_from_the_stream_state(
    dreamer: tuple[Path, Path], server: Server
) -> None:
    run, _ = dreamer
    _, frames = recorded(run, ENTRIES[0])
    infer(
        server, {"stream_id": "ex", "frames": [frame_json(f) for f in frames[:20]], "reset": True}
    )
    url = f"{server.url}/v2/models/{server.name}/explain"
    got = httpx.post(url, json={"stream_id": "ex", "horizon": 4, "samples": 8}).json()
    plan = got["plan"]
    labels = [c["label"] for c in plan["candidates"]]
    assert labels[0] == "noop" and len(labels) > 3
    assert any(label.startswith("restart ") for label in labels)
    assert plan["horizon"] == 4 and plan["samples"] == 8
    scores = [c["score"] for c in plan["candidates"]]
    assert plan["best"] == int(np.argmax(scores)) and plan["chosen"] == labels[plan["best"]]
    for c in plan["candidates"]:
        assert 0.0 <= c["p_violation"] <= 1.0
        assert all(0.0 <= e <= 1.0 for e in c["error_rate"])
        assert np.array(c["p99_s"]).shape == (len(plan["services"]), 3)
    assert got["explanation"].startswith("Chosen: **") and "| candidate |" in got["explanation"]


def test_world_model_routes_answer_json_errors(server: Server, tmp_path: Path) -> None:
    fresh = forecast(server, {"stream_id": "never-seen"})
    assert fresh.status_code == 422 and "has seen no frame" in fresh.json()["reason"]
    bad = forecast(server, {"stream_id": "x", "quantiles": [0.9, 0.1]})
    assert bad.status_code == 422 and "quantiles must increase" in bad.json()["reason"]
    huge = forecast(server, {"stream_id": "x", "horizon": 10_000})
    assert huge.status_code == 422 and huge.json()["reason"].startswith("body.horizon")
    infer(server, {"stream_id": "budget", "frames": [{"t": 0.0, "services": {}}]})
    url = f"{server.url}/v2/models/{server.name}/explain"
    costly = httpx.post(url, json={"stream_id": "budget", "samples": 64, "horizon": 64})
    assert costly.status_code == 422 and "at most 2048" in costly.json()["reason"]


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_on_the_world_model_routes(server: Server) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    infer(server, {"stream_id": "default", "frames": [{"t": 0.0, "services": {}}]})
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    calls: list[int] = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        if not operation.path.endswith(("/forecast", "/explain", "/infer")):
            continue

        @settings(
            max_examples=150,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call(base_url=server.url, timeout=60)
            calls.append(response.status_code)
            assert response.status_code < 500, (case.path, case.body, response.text)
            if response.status_code >= 400:
                body = response.json()
                assert body["error"] and body["reason"]

        check()
    assert len(calls) >= 400, len(calls)
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200


def test_bundles_without_a_world_model_answer_404_with_a_reason(tmp_path: Path) -> None:
    from agents.bundle_export import export_baseline
    from envs.scenarios.loader import load_scenario

    bundle = export_baseline("hpa", load_scenario("chain3"), tmp_path / "hpa")
    srv = start_server(bundle, tmp_path / "hpa.log")
    try:
        infer(srv, {"stream_id": "s", "frames": [{"t": 0.0, "services": {}}]})
        for route in ("forecast", "explain"):
            r = httpx.post(f"{srv.url}/v2/models/{srv.name}/{route}", json={"stream_id": "s"})
            assert r.status_code == 404, r.text
            assert "carries no world model" in r.json()["reason"]
    finally:
        srv.stop()


def test_cli_exports_the_best_weights_and_verifies_the_step(
    dreamer: tuple[Path, Path], tmp_path: Path
) -> None:
    run, bundle = dreamer
    out = tmp_path / "best"
    proc = _cli("export", f"run={run}", f"out={out}", "weights=best", "parity_samples=64")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / MANIFEST).read_text())
    assert m["source"]["weights"] == "best/agent.pt" and m["parity"]["random_samples"] == 64
    proc = _cli("verify", str(bundle))
    assert proc.returncode == 0, proc.stderr
    assert "onnx step parity (512 random inputs and carries, 0 mismatches)" in proc.stdout


# ------------------------------------------------------------------------------ shadow mode


def test_shadow_mode_records_the_world_model_forecast(dreamer: tuple[Path, Path]) -> None:
    """A Dreamer bundle in shadow mode forecasts with every decision (the audit's format)."""
    from agents.shadow.deciders import ForecastingPolicy, bundle_decider

    run, bundle = dreamer
    decider = bundle_decider(bundle)
    assert isinstance(decider.policy, ForecastingPolicy)
    inner = load_bundle(bundle).policy
    _, frames = recorded(run, ENTRIES[0])
    state, plain = decider.policy.reset(1), inner.reset(1)
    for frame in frames[:5]:
        actions, state, info = decider.policy.act(frame, state)
        same, plain, _ = inner.act(frame, plain)
        assert actions == same  # forecasting changes no decision
    fc = info["forecast"]
    assert list(fc) == list(decider.spec.services)
    for fields in fc.values():
        assert set(fields) == {"p99", "rps", "error_rate", "replicas_ready"}
        for q in fields.values():
            assert 0.0 <= q["q05"] <= q["q50"] <= q["q95"]
            assert q["horizon_s"] == 20 * 15.0  # 20 decision steps of 15 s
    _, _, again = decider.policy.act(frames[0], decider.policy.reset(1))
    _, _, first = ForecastingPolicy(inner, decider.spec.services, 15.0).act(
        frames[0], inner.reset(1)
    )
    assert again["forecast"] == first["forecast"]  # seeded: the same frame, the same forecast


def test_shadow_compares_the_online_forecast_error_with_the_bundles_held_out_error(
    dreamer: tuple[Path, Path], tmp_path: Path
) -> None:
    from agents.shadow.audit import AuditWriter
    from agents.shadow.deciders import bundle_decider
    from agents.shadow.loop import FORECAST_ERROR_FLOOR, ShadowLoop
    from envs.live.profile import load_profile
    from envs.live.prometheus import PrometheusSource

    decider = bundle_decider(dreamer[1])
    ref = decider.forecast_reference
    assert ref is not None and ref["horizon_steps"] == 20
    assert ref["count"]["replicas_ready"] > 0 and ref["mae"]["replicas_ready"] >= 0.0
    services = decider.spec.services
    source = PrometheusSource("http://127.0.0.1:9", load_profile("kube"), services)  # unused
    loop = ShadowLoop(
        decider, source, AuditWriter(tmp_path / "audit.jsonl"), drift_window=3, drift_min_samples=3
    )
    base = max(ref["mae"]["replicas_ready"], FORECAST_ERROR_FLOOR)
    reasons: list[str] = []
    assert loop._forecast_drift(None, {services[0]: base}, reasons) is None  # too few yet
    same = loop._forecast_drift(None, {services[1]: base, services[2]: base}, reasons)
    assert same is not None and same["forecast_error"]["ratio"] == pytest.approx(1.0)
    assert same["retrain_recommended"] is False and reasons == []
    worse = loop._forecast_drift(None, {s: 3 * base for s in services}, reasons)  # window: 3
    assert worse is not None and worse["forecast_error"]["ratio"] == pytest.approx(3.0)
    assert worse["retrain_recommended"] is True
    assert len(reasons) == 1 and reasons[0].startswith("retrain recommended: replica forecast")
