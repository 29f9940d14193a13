"""Start and stop a local Prometheus (Debian's ``prometheus`` 2.42) for tests, demos and benches.

:func:`start_prometheus` writes a config (1 s scrape and rule-evaluation intervals, targets
from a ``file_sd`` JSON file that :meth:`PrometheusProcess.set_targets` rewrites, optional rule
files), starts ``prometheus`` on a free 127.0.0.1 port with its own data directory (or a
backfilled one) and a long retention, and waits for ``/-/ready``. It never touches the
package's system service.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

INSTALL_HINT = (
    "run 'make prometheus' (installs Debian's prometheus package as root) or "
    "'apt-get install -y --no-install-recommends prometheus'"
)


class PrometheusError(RuntimeError):
    """Prometheus is missing, did not start, or answered an error."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary(name: str) -> str:
    """Path of ``prometheus`` or ``promtool``; :class:`PrometheusError` saying how to install."""
    path = shutil.which(name)
    if path is None:
        raise PrometheusError(f"{name} not found: {INSTALL_HINT}")
    return path


def backfill(openmetrics: Path, data_dir: Path) -> None:
    """Turn an OpenMetrics file into TSDB blocks (``promtool tsdb create-blocks-from``).

    Start from an empty ``data_dir``: blocks of an earlier backfill would be served too.

    Raises:
        PrometheusError: ``promtool`` is missing (the message says how to install it).
        subprocess.CalledProcessError: ``promtool`` refused the file.
    """
    subprocess.run(
        [
            binary("promtool"),
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            str(openmetrics),
            str(data_dir),
        ],
        check=True,
        capture_output=True,
    )


@dataclass
class PrometheusProcess:
    """A Prometheus started by :func:`start_prometheus`."""

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
        """GET ``/api/v1/<path>`` and return ``data`` (:class:`PrometheusError` otherwise)."""
        r = self.client.get(f"{self.url}/api/v1/{path}", params=params)
        body = r.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; the result list."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return list(self.api("query", **params)["result"])

    def wait_for(self, expr: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns a non-empty result; raise after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(
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
) -> PrometheusProcess:
    """Start Prometheus on a free 127.0.0.1 port and wait until ``/-/ready`` answers 200.

    Args:
        workdir: Where the config, targets file and log go.
        data_dir: TSDB directory (default ``workdir/data``); pass a backfilled one to read it.
        rule_files: Rule files to load.
        retention: ``--storage.tsdb.retention.time`` (long, so backfilled data stays).
        timeout: Seconds to wait for readiness.

    Raises:
        PrometheusError: Not installed, exited, or not ready in time (with the log's tail).
    """
    exe = binary("prometheus")
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
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                exe,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={data_dir}",
                f"--storage.tsdb.retention.time={retention}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusProcess(
        f"http://127.0.0.1:{port}", data_dir, config_path, targets, log, proc
    )
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            server.stop()
            raise PrometheusError(
                f"prometheus exited ({proc.returncode}): {log.read_text()[-3000:]}"
            )
        try:
            if server.client.get(f"{server.url}/-/ready").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise PrometheusError(
                f"prometheus not ready after {timeout:g} s: {log.read_text()[-3000:]}"
            )
        time.sleep(0.2)
