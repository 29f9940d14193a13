"""The exporter scraped by a real Prometheus, read back through the query profile.

Tolerances (stated, and why):

* gauges (replicas, CPU requests, memory) equal the frame Prometheus scraped (rel 1e-9);
* ratios of rates over the same window (error rate, mean latency, p50/p95/p99 from the
  histogram) equal the same ratio over the frames at the window's first and last scrape
  (rel 1e-6): both use the same two samples, and ``rate()``'s extrapolation cancels;
* rates (rps, CPU usage) agree with the frames' counter difference within 10 %: Prometheus
  divides by wall time between scrapes and extrapolates to the window's edges, the frames by
  simulated time (1 s frames, 1 s scrapes, 15 s window: up to one frame of 15).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from prometheus_fixture import LIVE_NAMESPACE, RATE_WINDOW_S, PrometheusServer, free_port

from agents.policy import StaticPolicy
from envs.core.telemetry import LATENCY_BUCKETS_S, Telemetry, histogram_quantile
from envs.live.cluster_metrics import ClusterMetrics
from envs.live.exporter import ExporterServer, LiveSimulation
from envs.live.profile import ProfileError, load_profile
from envs.live.prometheus import PrometheusSource, parse_value
from envs.scenarios.loader import load_scenario
from envs.sim.simulator import Simulator

NS = LIVE_NAMESPACE
WINDOW = RATE_WINDOW_S


def frame_at(server: ExporterServer, t: float) -> Telemetry:
    (frame,) = [p.frame for p in server.live.history if p.frame.t == t]
    return frame


def test_metrics_endpoint_serves_cluster_names(exporter: ExporterServer) -> None:
    text = httpx.get(f"{exporter.url}/metrics", timeout=5).text
    for name in (
        "kube_deployment_spec_replicas",
        "kube_deployment_status_replicas_ready",
        "kube_pod_container_status_restarts_total",
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "http_requests_total{",
        "http_request_duration_seconds_bucket{",
        "http_request_duration_seconds_sum",
        "http_request_duration_seconds_count",
        "opsworld_exporter_simulated_seconds",
    ):
        assert name in text, name
    assert 'le="+Inf"' in text and 'code="503"' in text and 'pod="frontend-' in text
    assert f'namespace="{NS}"' in text
    assert exporter.host == "127.0.0.1"


def test_prometheus_telemetry_agrees_with_the_simulator(
    scraped: PrometheusServer, exporter: ExporterServer
) -> None:
    at = time.time() - 1.0
    window = f"{WINDOW:g}s"
    profile = load_profile("kube").with_variables(namespace=NS, window=window)
    source = PrometheusSource(scraped.url, profile, exporter.live.sim.services)
    live = source.frame(at)
    assert live.reasons == {}, live.reasons
    tel = live.telemetry

    def sim_seconds(fn: str) -> float:
        (r,) = scraped.query(f"{fn}(opsworld_exporter_simulated_seconds[{window}])", at)
        return float(r["value"][1])

    t_now = float(scraped.query("opsworld_exporter_simulated_seconds", at)[0]["value"][1])
    t_lo, t_hi = sim_seconds("min_over_time"), sim_seconds("max_over_time")
    assert t_hi == t_now and WINDOW - 3 <= t_hi - t_lo <= WINDOW
    now, lo, hi = frame_at(exporter, t_now), frame_at(exporter, t_lo), frame_at(exporter, t_hi)
    span = t_hi - t_lo
    for s, svc in enumerate(tel.services):
        got = tel.service(svc)
        # gauges: the frame on show at `at`
        for field in ("replicas_ready", "replicas_desired", "cpu_request", "memory_usage_mb"):
            assert got[field] == pytest.approx(now[field][s], rel=1e-9), (svc, field)
        assert got["restarts"] == now["restarts"][s]
        # ratios over the window: exact up to float error
        d = {c: hi.counter(c)[s] - lo.counter(c)[s] for c in ("completed", "failed", "dropped")}
        finished = sum(d.values())
        assert got["error_rate"] == pytest.approx((d["failed"] + d["dropped"]) / finished, abs=1e-9)
        buckets = hi.histogram[s] - lo.histogram[s]
        for q, field in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            want = histogram_quantile(q, np.asarray(LATENCY_BUCKETS_S), buckets)[0]
            assert got[field] == pytest.approx(want, rel=1e-6), (svc, field)
        # rates: within 10 %
        assert got["rps"] == pytest.approx(finished / span, rel=0.10), svc
        cpu = (
            sum(p.frame["cpu_usage"][s] for p in exporter.live.history if t_lo < p.frame.t <= t_hi)
            / span
        )  # cpu_usage is the mean over each 1 s frame
        assert got["cpu_usage"] == pytest.approx(cpu, rel=0.10), svc
        assert got["cpu_util"] == pytest.approx(got["cpu_usage"] / got["cpu_request"], rel=1e-12)
    assert tel.cluster_value("nodes_ready") == now.cluster_value("nodes_ready")
    assert tel.cluster_value("cost_rate_per_hour") == pytest.approx(
        now.cluster_value("cost_rate_per_hour"), rel=1e-9
    )


def test_replay_mode_matches_instant_queries(
    scraped: PrometheusServer, exporter: ExporterServer
) -> None:
    profile = load_profile("kube").with_variables(namespace=NS, window="10s")
    source = PrometheusSource(scraped.url, profile, exporter.live.sim.services)
    end = float(int(time.time()) - 2)
    frames = list(source.replay(end - 4, end, 2.0))
    assert [f.telemetry.t for f in frames] == [end - 4, end - 2, end]
    for f in frames:
        inst = source.frame(f.telemetry.t)
        np.testing.assert_array_equal(f.telemetry.mask, inst.telemetry.mask)
        np.testing.assert_allclose(f.telemetry.values, inst.telemetry.values, rtol=1e-12)


def test_missing_series_is_missing_not_zero(scraped: PrometheusServer) -> None:
    profile = load_profile("kube").with_variables(namespace="no-such-namespace")
    live = PrometheusSource(scraped.url, profile, ("frontend",)).frame()
    assert not live.telemetry.mask.any()
    assert np.isnan(live.telemetry.values).all()
    assert live.reasons["*"].startswith("stale: no recent sample")
    profile = profile.model_copy(update={"freshness": None})
    live = PrometheusSource(scraped.url, profile, ("frontend",)).frame()
    assert live.reasons["frontend/rps"] == "empty result"
    assert np.isnan(live.telemetry["rps"]).all()


def test_dead_prometheus_gives_all_missing_frame_with_reasons() -> None:
    port = free_port()  # nothing listens there
    slept: list[float] = []
    source = PrometheusSource(
        f"http://127.0.0.1:{port}",
        load_profile("kube"),
        ("frontend", "api"),
        timeout_s=1.0,
        retries=2,
        backoff_s=0.1,
        sleep=slept.append,
    )
    live = source.frame()
    assert not live.telemetry.mask.any() and not live.telemetry.cluster_mask.any()
    assert "unreachable" in live.reasons["*"]
    assert slept == [0.1, 0.2]  # one query retried with backoff, then the frame gave up
    frames = list(source.replay(1000.0, 1010.0, 5.0))
    assert len(frames) == 3 and all(not f.telemetry.mask.any() for f in frames)


def test_bad_query_is_a_reason_not_an_exception(scraped: PrometheusServer) -> None:
    raw = load_profile("kube").model_dump()
    raw["services"] = {"rps": "sum by (deployment) (rate(http_requests_total[1m]"}
    raw["freshness"] = None
    live = PrometheusSource(scraped.url, load_profile(raw), ("frontend",)).frame()
    assert live.reasons["frontend/rps"].startswith("bad_data")


def test_profile_validation() -> None:
    raw = load_profile("kube").model_dump()
    with pytest.raises(ProfileError, match="unknown Telemetry service field"):
        load_profile({**raw, "services": {"rpz": "up"}})
    with pytest.raises(ProfileError, match=r"undefined variable\(s\) \['cluster_name'\]"):
        load_profile({**raw, "services": {"rps": 'up{cluster="${cluster_name}"}'}})
    with pytest.raises(ProfileError, match="unknown query profile 'nope'"):
        load_profile("nope")
    with pytest.raises(ProfileError, match="has no variable"):
        load_profile("kube").with_variables(nmespace="x")


def test_parse_value() -> None:
    assert np.isnan(parse_value("NaN"))
    assert parse_value("+Inf") == np.inf and parse_value("-Inf") == -np.inf
    assert parse_value("1e3") == 1000.0


def test_exporter_command_serves_metrics() -> None:
    """``opsworld exporter`` serves /metrics (HPA by default) and announces its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "experiments.cli",
            "exporter",
            "scenario=chain3",
            f"port={port}",
            "speed=5",
            "duration_s=60",
            "namespace=cli",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                break
            except httpx.TransportError:
                time.sleep(0.3)
        assert 'kube_deployment_spec_replicas{deployment="api",namespace="cli"}' in text
        assert 'speed="5"' in text
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert f"metrics on http://127.0.0.1:{port}/metrics" in out


def test_exporter_command_rejects_bad_speed() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "experiments.cli", "exporter", "speed=0", "port=0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "speed=0.0: must be > 0" in done.stderr


class FakeClock:
    """Wall clock that advances only when slept on (the simulation runs instantly)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, dt: float) -> None:
        self.now += dt


def test_faults_play_out_in_wall_clock_time() -> None:
    """Frames go on show at t0 + t / speed; a crash loop, a bad deploy and a scrape gap show
    up in the cluster series as they would on a cluster."""
    sc = load_scenario(
        "chain3",
        {
            "horizon_s": 300.0,
            "faults": [
                {"kind": "pod_crash", "service": "api", "crash_loop": True, "at_s": 30.0},
                {"kind": "bad_deploy", "service": "frontend", "error_rate": 0.3, "at_s": 60.0},
                {"kind": "telemetry", "mode": "gap", "at_s": 200.0, "duration_s": 40.0},
            ],
        },
    )
    clock = FakeClock()
    live = LiveSimulation(Simulator(sc), StaticPolicy(), speed=10.0, clock=clock, sleep=clock.sleep)
    live.run()
    assert live.t0 == 1_000.0 and live.error is None
    assert [p.frame.t for p in live.history] == [15.0 * i for i in range(21)]
    for p in live.history:
        assert p.wall == pytest.approx(live.t0 + p.frame.t / 10.0, abs=1e-9)
    services = live.sim.services
    api, front = services.index("api"), services.index("frontend")
    cm = ClusterMetrics(services)
    hashes, restarts, errors, gap_gauges = set(), [], [], []
    for p in live.history:
        fams = {f.name: f for f in cm.update(p.frame)}
        hashes.update(n.split("-")[1] for n in cm.pod_names("frontend"))
        restarts.append(
            sum(
                v
                for _, lab, v in fams["kube_pod_container_status_restarts"].samples
                if dict(lab)["deployment"] == "api"
            )
            if "kube_pod_container_status_restarts" in fams
            else 0.0
        )
        errors.append(
            sum(
                v
                for _, lab, v in fams["http_requests"].samples
                if dict(lab)["deployment"] == "frontend" and dict(lab)["code"] == "500"
            )
            if "http_requests" in fams
            else 0.0
        )
        if 200.0 < p.frame.t < 240.0:
            gap_gauges.append("kube_deployment_spec_replicas" in fams)
    assert restarts[1] == 0 and max(restarts) > 0  # the crash loop restarts api's containers
    assert live.history[-1].frame["restarts"][api] >= max(restarts)
    assert len(hashes) >= 2  # the bad deploy rolled out a new pod template
    assert errors[3] < 1 and max(errors) > 1000  # and it answers 500s
    assert gap_gauges and not any(gap_gauges)  # no gauge exported during the scrape gap
    assert (
        live.history[-1].frame["deploy_version"][front]
        > live.history[0].frame["deploy_version"][front]
    )


class FaultyFront:
    """A loopback HTTP front for Prometheus that answers 503 (or stalls) for the first
    ``bad`` requests, then forwards to the real Prometheus."""

    def __init__(self, upstream: str, bad: int, mode: str = "503") -> None:
        import http.server
        import threading

        front = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                front.requests += 1
                if front.requests <= bad:
                    if mode == "stall":
                        time.sleep(1.5)
                    body = b'{"status":"error","errorType":"timeout","error":"query timed out"}'
                    self.send_response(503)
                else:
                    r = httpx.get(upstream + self.path, timeout=10)
                    body = r.content
                    self.send_response(r.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)  # a stalled answer's client has given up

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("mode", ["503", "stall"])
def test_retries_ride_out_5xx_and_timeouts(scraped: PrometheusServer, mode: str) -> None:
    raw = load_profile("kube").with_variables(namespace=NS).model_dump()
    raw["services"] = {"replicas_ready": raw["services"]["replicas_ready"]}
    raw["cluster"], raw["freshness"] = {}, None
    profile = load_profile(raw)
    slept: list[float] = []
    front = FaultyFront(scraped.url, bad=2, mode=mode)
    try:
        kw = {"timeout_s": 1.0, "backoff_s": 0.05, "sleep": slept.append}
        live = PrometheusSource(front.url, profile, ("api",), retries=2, **kw).frame()  # type: ignore[arg-type]
        assert live.reasons == {} and live.telemetry["replicas_ready"][0] >= 1
        assert slept == [0.05, 0.1] and front.requests == 3
        front.requests = 0
        live = PrometheusSource(front.url, profile, ("api",), retries=0, **kw).frame()  # type: ignore[arg-type]
        want = "HTTP 503 query timed out" if mode == "503" else "timeout (ReadTimeout)"
        assert live.reasons == {"api/replicas_ready": want}
        assert np.isnan(live.telemetry["replicas_ready"][0])
    finally:
        front.close()


def test_a_timed_out_query_skips_the_rest_of_the_frame(scraped: PrometheusServer) -> None:
    """A Prometheus that stalls costs one query's attempts per frame, not one per query."""
    raw = load_profile("kube").with_variables(namespace=NS).model_dump()
    keep = ["replicas_ready", "replicas_desired", "rps"]
    raw["services"] = {k: raw["services"][k] for k in keep}
    raw["cluster"], raw["freshness"] = {}, None
    profile = load_profile(raw)
    front = FaultyFront(scraped.url, bad=100, mode="stall")
    try:
        kw = {"timeout_s": 0.5, "backoff_s": 0.0, "sleep": lambda _s: None}
        live = PrometheusSource(front.url, profile, ("api",), retries=1, **kw).frame()  # type: ignore[arg-type]
        assert front.requests == 2  # the first query's two attempts; the others are not sent
        assert live.reasons == {f"api/{k}": "timeout (ReadTimeout)" for k in keep}
        assert all(np.isnan(live.telemetry[k][0]) for k in keep)
    finally:
        front.close()
