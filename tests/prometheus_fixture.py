"""A real Prometheus for the live tests: started on 127.0.0.1, stopped at the end.

``prometheus`` is session-scoped (the first scrape lands ~6 s after start, so one server per
test session, per xdist worker): 1 s scrape and rule-evaluation intervals, a temporary data
directory, targets read from a ``file_sd`` JSON file that tests rewrite with
:meth:`PrometheusServer.set_targets`, and the repository's rule files from
``configs/prometheus/`` loaded. Tests that need it fail loudly (never skip) when it cannot
start: ``make test`` installs Debian's ``prometheus`` package first.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
RULES_DIR = REPO / "configs" / "prometheus"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need(binary: str) -> str:
    """Path of ``binary`` or a failure that says how to install it."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(
            f"{binary} not found: run 'make test' (installs Debian's prometheus package) or "
            "'apt-get install -y --no-install-recommends prometheus'",
            pytrace=False,
        )
    return path


@dataclass
class PrometheusServer:
    """A Prometheus process started by :func:`start_prometheus`."""

    url: str
    data_dir: Path
    config_path: Path
    targets_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10.0))

    def set_targets(self, jobs: dict[str, Sequence[str]]) -> None:
        """Scrape exactly these ``job -> [host:port, ...]`` (atomic file_sd rewrite)."""
        groups = [{"targets": list(t), "labels": {"job": job}} for job, t in jobs.items()]
        tmp = self.targets_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        os.replace(tmp, self.targets_path)

    def api(self, path: str, **params: Any) -> Any:
        """GET ``/api/v1/<path>`` and return ``data`` (raises on an error envelope)."""
        r = self.client.get(f"{self.url}/api/v1/{path}", params=params)
        body = r.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; the result list (vector)."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return list(self.api("query", **params)["result"])

    def wait_for(self, expr: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns a non-empty result; fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no data for {expr!r} after {timeout:g} s; targets: {self.api('targets')}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        """Terminate the process (kill after 10 s)."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_prometheus(
    workdir: Path,
    data_dir: Path | None = None,
    rule_files: Sequence[Path] = (),
    retention: str = "100y",
    timeout: float = 60.0,
) -> PrometheusServer:
    """Start Prometheus on a free 127.0.0.1 port and wait until ``/-/ready`` answers 200.

    Args:
        workdir: Where the config, targets file and log go.
        data_dir: TSDB directory (default ``workdir/data``); pass a backfilled one to read it.
        rule_files: Rule files to load.
        retention: ``--storage.tsdb.retention.time`` (long, so backfilled data stays).
        timeout: Seconds to wait for readiness before failing.
    """
    binary = need("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir or workdir / "data"
    targets = workdir / "targets.json"
    targets.write_text("[]")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": "file",
                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
            }
        ],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={data_dir}",
            f"--storage.tsdb.retention.time={retention}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = PrometheusServer(f"http://127.0.0.1:{port}", data_dir, config_path, targets, log, proc)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited ({proc.returncode}): {log.read_text()[-3000:]}")
        try:
            if server.client.get(f"{server.url}/-/ready").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(
                f"prometheus not ready after {timeout:g} s: {log.read_text()[-3000:]}"
            )
        time.sleep(0.2)


def repo_rule_files() -> list[Path]:
    """The rule files under ``configs/prometheus/`` (``*.rules.yml``)."""
    return sorted(RULES_DIR.glob("*.rules.yml"))


LIVE_NAMESPACE = "live"
"""``namespace`` label of the session's simulator exporter."""
RATE_WINDOW_S = 15.0
"""The rate window the live tests query (the ``scraped`` fixture waits for one full window)."""


@pytest.fixture(scope="session")
def prometheus() -> Iterator[PrometheusServer]:
    """One Prometheus per test session; see the module docstring."""
    need("promtool")
    workdir = Path(tempfile.mkdtemp(prefix="opsworld-prom-"))
    try:
        server = start_prometheus(workdir, rule_files=repo_rule_files())
    except RuntimeError as err:
        pytest.fail(f"could not start Prometheus: {err}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def exporter() -> Iterator[Any]:
    """``opsworld exporter``'s library: chain3, 1 s frames, static replicas, speed 1."""
    from agents.policy import StaticPolicy
    from envs.live.exporter import LiveSimulation, serve
    from envs.scenarios.loader import load_scenario
    from envs.sim.simulator import Simulator

    sc = load_scenario("chain3", {"scrape_interval_s": 1.0, "decision_interval_s": 15.0})
    live = LiveSimulation(Simulator(sc), StaticPolicy(), speed=1.0, namespace=LIVE_NAMESPACE)
    server = serve(live)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def scraped(prometheus: PrometheusServer, exporter: Any) -> PrometheusServer:
    """The session Prometheus scraping the exporter, with one full rate window of data."""
    prometheus.set_targets({"opsworld-exporter": [f"127.0.0.1:{exporter.port}"]})
    prometheus.wait_for(f'kube_deployment_status_replicas_ready{{namespace="{LIVE_NAMESPACE}"}}')
    first = time.monotonic()
    prometheus.wait_for(
        f'namespace_deployment:http_requests:rate5m{{namespace="{LIVE_NAMESPACE}"}}'
    )
    time.sleep(max(0.0, RATE_WINDOW_S + 4 - (time.monotonic() - first)))
    return prometheus
