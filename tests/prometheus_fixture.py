"""A real Prometheus for the live tests: started on 127.0.0.1, stopped at the end.

``prometheus`` is session-scoped (the first scrape lands ~6 s after start, so one server per
test session, per xdist worker): 1 s scrape and rule-evaluation intervals, a temporary data
directory, targets read from a ``file_sd`` JSON file that tests rewrite with
:meth:`PrometheusServer.set_targets`, and the repository's rule files from
``configs/prometheus/`` loaded. Tests that need it fail loudly (never skip) when it cannot
start: ``make test`` installs Debian's ``prometheus`` package first.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from envs.live.promserver import PrometheusError, PrometheusProcess, binary, free_port
from envs.live.promserver import start_prometheus as _start

PrometheusServer = PrometheusProcess
__all__ = ["PrometheusServer", "free_port", "need", "start_prometheus"]

REPO = Path(__file__).resolve().parent.parent
RULES_DIR = REPO / "configs" / "prometheus"


def need(name: str) -> str:
    """Path of ``prometheus``/``promtool``, or a test failure that says how to install it."""
    try:
        return binary(name)
    except PrometheusError as err:
        pytest.fail(f"{err} (make test installs it)", pytrace=False)


def start_prometheus(workdir: Path, **kw: Any) -> PrometheusServer:
    """:func:`envs.live.promserver.start_prometheus`, failing the test when it cannot start."""
    need("prometheus")
    try:
        return _start(workdir, **kw)
    except PrometheusError as err:
        pytest.fail(f"could not start Prometheus: {err}", pytrace=False)


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
    server = start_prometheus(workdir, rule_files=repo_rule_files())
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
