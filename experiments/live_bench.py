"""Backfill and replay speed: ``python -m experiments.live_bench [--hours 6] [--out DIR]``.

Simulates ``--hours`` of chain3 (fluid, static replicas, 15 s scrapes), writes it as
OpenMetrics, backfills it with ``promtool tsdb create-blocks-from openmetrics``, starts
Prometheus on the blocks, replays the whole range through ``configs/queries/kube.yaml``
(15 s steps) and times 100 instant frames. Writes ``live_bench.{json,md}`` to ``--out``
(default ``experiments/results/``) with the machine and its load. Quoted in ``docs/live.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agents.policy import StaticPolicy
from agents.rollout import rollout
from envs.live.openmetrics import write_openmetrics
from envs.live.profile import load_profile
from envs.live.prometheus import PrometheusSource
from envs.live.promserver import backfill, binary, start_prometheus
from envs.scenarios.loader import load_scenario
from envs.sim.simulator import Simulator

RESULTS = Path(__file__).resolve().parent / "results"


def bench(hours: float, workdir: Path) -> dict[str, Any]:
    """Run the benchmark in ``workdir``; return the figures."""
    horizon = hours * 3600.0
    load_start = os.getloadavg()[0]
    t = time.perf_counter()
    sim = Simulator(load_scenario("chain3", {"horizon_s": horizon}))
    frames = rollout(sim, StaticPolicy()).frames
    simulate_s = time.perf_counter() - t
    start = float(int(time.time() - horizon - 60))
    t = time.perf_counter()
    om = write_openmetrics(frames, sim.services, workdir / "run.om", start)
    write_s = time.perf_counter() - t
    lines = om.read_text().splitlines()
    samples = sum(1 for ln in lines if not ln.startswith("#"))
    series = len({ln.rsplit(" ", 2)[0] for ln in lines if not ln.startswith("#")})
    t = time.perf_counter()
    backfill(om, workdir / "tsdb")
    backfill_s = time.perf_counter() - t
    prom = start_prometheus(workdir / "prom", data_dir=workdir / "tsdb")
    try:
        profile = load_profile("kube").model_copy(update={"freshness": None})
        source = PrometheusSource(prom.url, profile, sim.services)
        t = time.perf_counter()
        replayed = list(source.replay(start + 60, start + horizon, 15.0))
        replay_s = time.perf_counter() - t
        lat = []
        for k in range(100):
            t = time.perf_counter()
            source.frame(start + 600 + 15 * k)
            lat.append(time.perf_counter() - t)
    finally:
        prom.stop()
    return {
        "hours": hours,
        "series": series,
        "samples": samples,
        "openmetrics_mb": om.stat().st_size / 1e6,
        "simulate_s": simulate_s,
        "write_openmetrics_s": write_s,
        "backfill_s": backfill_s,
        "replay_frames": len(replayed),
        "replay_s": replay_s,
        "replay_frames_per_s": len(replayed) / replay_s,
        "instant_frame_p50_ms": float(np.percentile(lat, 50) * 1e3),
        "instant_frame_p99_ms": float(np.percentile(lat, 99) * 1e3),
        "queries_per_frame": len(profile.services) + len(profile.cluster),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg()[0],
    }


def main() -> None:
    """Parse the arguments, run :func:`bench`, write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="opsworld-live-bench-") as tmp:
        figures = bench(args.hours, Path(tmp))
    result: dict[str, Any] = {
        "command": f"python -m experiments.live_bench --hours {args.hours:g}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "os": platform.platform(),
            "python": platform.python_version(),
            "prometheus": subprocess.run(
                [binary("prometheus"), "--version"], capture_output=True, text=True
            ).stdout.splitlines()[0],
        },
        "figures": figures,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "live_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    f = figures
    md = [
        "# Backfill and replay speed",
        "",
        f"`{result['command']}` on {result['date'][:10]}, {result['machine']['cores']} cores, "
        f"load average {f['load_average_start']:.1f} to {f['load_average_end']:.1f} "
        f"({result['machine']['prometheus']}).",
        "",
        "| step | figure |",
        "|---|---|",
        f"| simulate {f['hours']:g} h of chain3 (fluid) | {f['simulate_s']:.1f} s |",
        f"| write OpenMetrics | {f['write_openmetrics_s']:.1f} s, {f['openmetrics_mb']:.1f} MB, "
        f"{f['series']} series, {f['samples']:,} samples |",
        f"| promtool backfill | {f['backfill_s']:.2f} s |",
        f"| replay through the kube profile (15 s steps) | {f['replay_frames']:,} frames in "
        f"{f['replay_s']:.2f} s ({f['replay_frames_per_s']:.0f} frames/s) |",
        f"| one instant frame ({f['queries_per_frame']} queries) | p50 "
        f"{f['instant_frame_p50_ms']:.1f} ms, p99 {f['instant_frame_p99_ms']:.1f} ms |",
        "",
    ]
    (args.out / "live_bench.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
