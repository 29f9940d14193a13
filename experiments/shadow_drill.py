"""Fault drill of shadow mode: break everything it depends on while it runs, and count.

``python -m experiments.shadow_drill`` starts the simulator exporter (chain3, 1 s scrapes),
a Prometheus scraping it, a loopback fault-injecting proxy in front of that Prometheus
(:class:`FaultProxy`, stdlib only) and ``opsworld serve`` with an HPA bundle, then runs
``opsworld shadow``'s loop in server mode through the proxy, every ``interval_s`` seconds,
while the faults below happen one after the other, each for ``fault_s`` seconds, with
``calm_s`` seconds of normal operation between them:

=====================  ==============================================================
``prometheus_killed``  the Prometheus process is stopped, then started again on its data
``prometheus_5xx``     the proxy answers every query with HTTP 503
``prometheus_timeout`` the proxy holds every query longer than the client's timeout
``nan_series``         every sample value comes back ``NaN``
``empty_series``       every query comes back with an empty result
``stale_series``       the freshness query says the newest sample is an hour old
``exporter_restart``   the exporter stops and a fresh one (counters from zero) takes its port
``server_killed``      the policy server is killed, then started again on its port
=====================  ==============================================================

Figures (``experiments/results/shadow_drill.md`` and ``.json``): ticks, audit records (must
equal ticks), crashes of the loop (0), actuations (0), fallbacks used, and per fault the
ticks during it, the fallback and error ticks, and the time to recover: from the repair to
the first tick that is healthy again (no missing telemetry, no error, the policy deciding).
The bundle's guard uses ``stale_after_s=2`` and ``breaker_reset_s=3`` so that fallbacks
and the breaker act within the drill's seconds-long faults.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from agents.bundle_export import export_baseline
from agents.guard import GuardConfig
from agents.shadow.audit import AuditRecord, AuditWriter, read_audit
from agents.shadow.deciders import remote_decider
from agents.shadow.loop import ShadowLoop
from agents.shadow.metrics import ShadowMetrics
from envs.live.exporter import ExporterServer, LiveSimulation, serve
from envs.live.profile import load_profile
from envs.live.prometheus import PrometheusSource
from envs.live.promserver import PrometheusProcess, free_port, start_prometheus
from envs.scenarios.loader import load_scenario
from envs.sim.simulator import Simulator

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results"
NAMESPACE = "drill"
FAULTS: tuple[str, ...] = (
    "prometheus_killed",
    "prometheus_5xx",
    "prometheus_timeout",
    "nan_series",
    "empty_series",
    "stale_series",
    "exporter_restart",
    "server_killed",
)


# ----------------------------------------------------------------------------- the proxy


class FaultProxy:
    """A loopback HTTP proxy in front of Prometheus' API that injects faults on demand.

    ``mode``: ``pass`` (forward), ``5xx`` (HTTP 503), ``timeout`` (hold ``hold_s`` seconds,
    then forward), ``nan`` (every sample value ``"NaN"``), ``empty`` (every result ``[]``),
    ``stale`` (queries using ``timestamp(`` answer 3600 s), ``down`` (close the connection
    without an answer, as a dead server would). An unreachable upstream also closes the
    connection.

    Args:
        upstream: Prometheus' base URL (change it with :attr:`upstream` after a restart).
        hold_s: How long ``timeout`` holds a request.
    """

    def __init__(self, upstream: str, hold_s: float = 2.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode = "pass"
        self.hold_s = hold_s
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.requests += 1
                proxy.handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._client = httpx.Client(timeout=10.0)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        """Answer one request according to :attr:`mode`."""
        mode = self.mode
        if mode == "down":
            h.close_connection = True
            return
        if mode == "5xx":
            self._send(h, 503, {"status": "error", "error": "injected 503"})
            return
        if mode == "timeout":
            time.sleep(self.hold_s)
        query = parse_qs(urlsplit(h.path).query).get("query", [""])[0]
        if mode == "stale" and "timestamp(" in query:
            now = time.time()
            self._send(
                h,
                200,
                {
                    "status": "success",
                    "data": {
                        "resultType": "vector",
                        "result": [{"metric": {}, "value": [now, "3600"]}],
                    },
                },
            )
            return
        try:
            r = self._client.get(self.upstream + h.path)
        except httpx.HTTPError:
            h.close_connection = True  # the upstream is dead: so are we, as seen from outside
            return
        try:
            body = r.json()
        except ValueError:
            self._send(h, r.status_code, {"status": "error", "error": r.text[:200]})
            return
        if mode in ("nan", "empty") and body.get("status") == "success":
            body = self._rewrite(body, mode)
        self._send(h, r.status_code, body)

    @staticmethod
    def _rewrite(body: dict[str, Any], mode: str) -> dict[str, Any]:
        data = body.get("data", {})
        if data.get("resultType") not in ("vector", "matrix"):
            return body
        if mode == "empty":
            data["result"] = []
            return body
        for series in data.get("result", []):
            if "value" in series:
                series["value"][1] = "NaN"
            for point in series.get("values", []):
                point[1] = "NaN"
        return body

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        try:
            h.send_response(code)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._client.close()


# ----------------------------------------------------------------------------- the parts


def start_exporter(port: int = 0) -> ExporterServer:
    """chain3 at 1 s scrapes, static replicas, in wall-clock time, on ``port``."""
    from agents.policy import StaticPolicy

    sc = load_scenario("chain3", {"scrape_interval_s": 1.0, "decision_interval_s": 15.0})
    live = LiveSimulation(Simulator(sc), StaticPolicy(), speed=1.0, namespace=NAMESPACE)
    return serve(live, port=port)


@dataclass
class PolicyServer:
    """``opsworld serve`` in a subprocess on a fixed port (so it can come back on it)."""

    bundle: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        """Start it and wait until ``/v2/health/ready`` answers 200."""
        code = "import sys; from experiments.cli import main; sys.exit(main(sys.argv[1:]))"
        args = ["serve", f"bundle={self.bundle}", f"port={self.port}"]
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, *args], cwd=REPO, stdout=fh, stderr=fh
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"opsworld serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"opsworld serve not ready: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL it (no graceful shutdown: the drill's fault)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Phase:
    """One fault: when it started and was repaired (monotonic seconds)."""

    name: str
    start: float
    repaired: float = 0.0
    notes: list[str] = field(default_factory=list)


def healthy(rec: AuditRecord) -> bool:
    """A tick with all telemetry, no error, and the policy deciding."""
    return rec.missing_fraction == 0.0 and rec.error is None and rec.fallback is None


# ----------------------------------------------------------------------------- the drill


def run_drill(
    workdir: Path,
    *,
    interval_s: float = 0.5,
    fault_s: float = 4.0,
    calm_s: float = 6.0,
    faults: tuple[str, ...] = FAULTS,
    timeout_s: float = 0.3,
    recover_wait_s: float = 30.0,
) -> dict[str, Any]:
    """Run the drill; the figures (see the module docstring).

    Args:
        workdir: Scratch folder (Prometheus data, bundle, audit, logs).
        interval_s: Seconds between shadow ticks.
        fault_s: Seconds each fault lasts.
        calm_s: Seconds of normal operation after each repair (at least; longer while the
            loop has not recovered, up to ``recover_wait_s``).
        faults: Which faults, in order (a subset of :data:`FAULTS`).
        timeout_s: The shadow client's timeout for Prometheus and the server.
        recover_wait_s: Longest wait for recovery after a repair.
    """
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        raise ValueError(f"unknown faults {unknown}; choose from {list(FAULTS)}")
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    exporter = start_exporter()
    exporter_port = exporter.port
    prom: PrometheusProcess = start_prometheus(workdir / "prometheus")
    prom.set_targets({"exporter": [f"127.0.0.1:{exporter_port}"]})
    proxy = FaultProxy(prom.url, hold_s=timeout_s + 0.5)
    scenario = load_scenario("chain3")
    guard = GuardConfig(stale_after_s=2.0, breaker_reset_s=3.0)
    bundle = export_baseline("hpa", scenario, workdir / "bundle", guard=guard, force=True)
    server = PolicyServer(bundle, free_port(), workdir / "serve.log")
    server.start()
    records: list[tuple[float, AuditRecord]] = []
    audit_path = workdir / "audit.jsonl"
    loop: ShadowLoop | None = None
    thread: threading.Thread | None = None
    stop = threading.Event()
    crashed: list[str] = []
    phases: list[Phase] = []
    try:
        # warm up: one full rate window of data before anything is measured
        prom.wait_for(f'kube_deployment_status_replicas_ready{{namespace="{NAMESPACE}"}}')
        time.sleep(16.0)
        decider = remote_decider(server.url, stream_id="drill", timeout_s=max(timeout_s, 2.0))
        profile = load_profile("kube").with_variables(namespace=NAMESPACE, window="15s")
        source = PrometheusSource(
            proxy.url, profile, decider.spec.services, timeout_s=timeout_s, retries=0
        )
        loop = ShadowLoop(
            decider,
            source,
            AuditWriter(audit_path),
            ShadowMetrics(NAMESPACE),
            # a record counts at its tick's start (a tick of timeouts ends after the repair)
            on_record=lambda r: records.append((time.monotonic() - r.latency_s, r)),
        )

        def run() -> None:
            assert loop is not None
            try:
                loop.run_live(interval_s, stop=stop)
            except BaseException as exc:  # a crash is what the drill counts
                crashed.append(f"{type(exc).__name__}: {exc}")

        thread = threading.Thread(target=run, name="shadow-drill", daemon=True)
        thread.start()
        wait_healthy(records, time.monotonic(), recover_wait_s)
        for name in faults:
            phase = Phase(name, time.monotonic())
            phases.append(phase)
            if name == "prometheus_killed":
                prom.stop()
                time.sleep(fault_s)
                prom = start_prometheus(workdir / "prometheus", data_dir=prom.data_dir)
                prom.set_targets({"exporter": [f"127.0.0.1:{exporter_port}"]})
                proxy.upstream = prom.url
            elif name in (
                "prometheus_5xx",
                "prometheus_timeout",
                "nan_series",
                "empty_series",
                "stale_series",
            ):
                proxy.mode = {
                    "prometheus_5xx": "5xx",
                    "prometheus_timeout": "timeout",
                    "nan_series": "nan",
                    "empty_series": "empty",
                    "stale_series": "stale",
                }[name]
                time.sleep(fault_s)
                proxy.mode = "pass"
            elif name == "exporter_restart":
                exporter.close()
                time.sleep(fault_s)
                exporter = start_exporter(exporter_port)
            elif name == "server_killed":
                server.kill()
                time.sleep(fault_s)
                server.start()
            phase.repaired = time.monotonic()
            time.sleep(calm_s)
            wait_healthy(records, phase.repaired, recover_wait_s)
    finally:
        stop.set()
        if thread is not None:
            thread.join(60)
        if loop is not None:
            loop.close()
        proxy.close()
        server.kill()
        prom.stop()
        exporter.close()
    audit_records = sum(1 for _ in read_audit(audit_path))
    assert loop is not None
    stats = loop.stats
    per_fault = [phase_figures(p, records, phases) for p in phases]
    return {
        "command": "python -m experiments.shadow_drill",
        "settings": {
            "interval_s": interval_s,
            "fault_s": fault_s,
            "calm_s": calm_s,
            "timeout_s": timeout_s,
            "guard": {"stale_after_s": 2.0, "breaker_reset_s": 3.0, "fallback": "hpa"},
            "scenario": "chain3 (1 s scrapes), opsworld serve with an HPA bundle (server mode)",
        },
        "ticks": stats.ticks,
        "audit_records": audit_records,
        "crashes": len(crashed) + int(thread is not None and thread.is_alive()),
        "crash_messages": crashed,
        "tick_exceptions": stats.tick_exceptions,
        "actuations": sum(1 for _, r in records if r.actuated) + stats.actuations,
        "fallback_ticks": dict(stats.fallbacks),
        "error_ticks": stats.errors,
        "interventions": dict(stats.interventions),
        "faults": per_fault,
        "wall_s": round(time.monotonic() - began, 1),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }


def wait_healthy(records: list[tuple[float, AuditRecord]], since: float, limit_s: float) -> None:
    """Wait until a healthy tick made after ``since`` is recorded (or ``limit_s`` passes)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if any(t >= since and healthy(r) for t, r in list(records)):
            return
        time.sleep(0.1)


def phase_figures(
    phase: Phase, records: list[tuple[float, AuditRecord]], phases: list[Phase]
) -> dict[str, Any]:
    """Ticks during the fault, fallbacks and errors, and the time to recover after repair."""
    nxt = [p.start for p in phases if p.start > phase.start]
    end = nxt[0] if nxt else float("inf")
    during = [r for t, r in records if phase.start <= t < phase.repaired]
    after = [(t, r) for t, r in records if phase.repaired <= t < end]
    recovered = next((t for t, r in after if healthy(r)), None)
    affected = [r for r in during if not healthy(r)]
    return {
        "fault": phase.name,
        "duration_s": round(phase.repaired - phase.start, 2),
        "ticks_during": len(during),
        "unhealthy_ticks_during": len(affected),
        "fallback_ticks": sum(1 for t, r in records if phase.start <= t < end and r.fallback),
        "error_ticks": sum(1 for t, r in records if phase.start <= t < end and r.error),
        "max_missing_fraction": max((r.missing_fraction for r in during), default=None),
        "max_tick_latency_s": max((round(r.latency_s, 3) for r in during), default=None),
        "recovered_s": None if recovered is None else round(recovered - phase.repaired, 2),
        "example_reason": next((r.reasons[0] for r in affected if r.reasons), None),
    }


def markdown(result: dict[str, Any]) -> str:
    """The results page."""
    s = result["settings"]
    lines = [
        "# Shadow mode fault drill",
        "",
        f"Command: `{result['command']}` ({result['wall_s']} s wall). Shadow ticks every "
        f"{s['interval_s']} s in server mode through a fault-injecting proxy; each fault lasts "
        f"{s['fault_s']} s; client timeout {s['timeout_s']} s, no retries; guard "
        f"`stale_after_s={s['guard']['stale_after_s']}`, "
        f"`breaker_reset_s={s['guard']['breaker_reset_s']}`, fallback `hpa`. {s['scenario']}.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| ticks | {result['ticks']} |",
        f"| audit records | {result['audit_records']} |",
        f"| crashes | {result['crashes']} |",
        f"| ticks that raised inside the loop (caught, recorded) | {result['tick_exceptions']} |",
        f"| actuations | {result['actuations']} |",
        f"| fallback ticks | {result['fallback_ticks']} |",
        f"| error ticks (inference/transport) | {result['error_ticks']} |",
        f"| guard interventions | {result['interventions']} |",
        "",
        "Per fault (recovered: seconds from the repair to the first healthy tick: all telemetry, "
        "no error, the policy deciding):",
        "",
        "| fault | ticks during | unhealthy | fallback ticks | error ticks | max missing | "
        "slowest tick (s) | recovered (s) | first reason |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in result["faults"]:
        reason = (f["example_reason"] or "").replace("|", "/")[:90]
        lines.append(
            f"| {f['fault']} | {f['ticks_during']} | {f['unhealthy_ticks_during']} | "
            f"{f['fallback_ticks']} | {f['error_ticks']} | {f['max_missing_fraction']} | "
            f"{f['max_tick_latency_s']} | {f['recovered_s']} | {reason} |"
        )
    lines += [
        "",
        f"Machine: {result['machine']['platform']}, Python {result['machine']['python']} "
        "(2 cores shared with other jobs).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.shadow_drill [--out DIR] [--fault-s S]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--interval-s", type=float, default=0.5)
    ap.add_argument("--fault-s", type=float, default=4.0)
    ap.add_argument("--calm-s", type=float, default=6.0)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="opsworld-drill-"))
    try:
        result = run_drill(
            work, interval_s=args.interval_s, fault_s=args.fault_s, calm_s=args.calm_s
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shadow_drill.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "shadow_drill.md").write_text(markdown(result))
    print(json.dumps({k: result[k] for k in ("ticks", "audit_records", "crashes", "actuations")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
