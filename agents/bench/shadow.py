"""Benchmark suite ``shadow``: shadow mode's tick latency at 40 services and replay speed.

* **tick latency** (``tick_p50_s``, ``tick_p99_s``): ``opsworld exporter``'s library runs
  ``mesh40`` (40 services) in wall-clock time, a Prometheus scrapes it every second, and the
  shadow loop (an HPA bundle for mesh40, in process) ticks every ``interval_s``: each tick
  is the 17 instant queries of ``configs/queries/kube.yaml``, the policy and guard, the audit
  record and the metrics, as :attr:`AuditRecord.latency_s` measures it (queries ->
  recommendation -> record);
* **replay speed** (``replay_ticks_per_s``): ``replay_hours`` of mesh40 simulated at fluid
  fidelity, written as OpenMetrics, backfilled with ``promtool``, served by Prometheus and
  replayed by the shadow loop (range queries 240 steps at a time), ticks per wall second.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from agents.bench.config import BenchConfig
from agents.bundle_export import export_baseline
from agents.policy import StaticPolicy
from agents.rollout import rollout
from agents.run_config import RunConfigError as ConfigError
from agents.shadow.audit import AuditRecord, AuditWriter
from agents.shadow.deciders import bundle_decider
from agents.shadow.loop import ShadowLoop
from agents.shadow.metrics import ShadowMetrics
from envs.live.exporter import LiveSimulation, serve
from envs.live.openmetrics import write_openmetrics
from envs.live.profile import load_profile
from envs.live.prometheus import PrometheusSource
from envs.live.promserver import backfill, start_prometheus
from envs.scenarios.loader import load_scenario
from envs.sim.simulator import Simulator

NAMESPACE = "bench"


def _loop(bundle: Path, url: str, work: Path, window: str) -> ShadowLoop:
    decider = bundle_decider(bundle)
    profile = load_profile("kube").with_variables(namespace=NAMESPACE, window=window)
    source = PrometheusSource(url, profile, decider.spec.services, timeout_s=10.0, retries=0)
    return ShadowLoop(decider, source, AuditWriter(work / "audit.jsonl"), ShadowMetrics(NAMESPACE))


def tick_latency(conf: BenchConfig, work: Path, bundle: Path, log: Console) -> dict[str, Any]:
    """Live ticks against Prometheus scraping the exporter; latency percentiles."""
    c = conf.shadow
    sizes = c.quick if conf.quick else c.full
    sc = load_scenario(c.scenario, {"scrape_interval_s": 1.0, "decision_interval_s": 15.0})
    live = LiveSimulation(Simulator(sc), StaticPolicy(), speed=1.0, namespace=NAMESPACE)
    exporter = serve(live)
    prom = start_prometheus(work / "prom-live")
    try:
        prom.set_targets({"exporter": [f"127.0.0.1:{exporter.port}"]})
        prom.wait_for(f'kube_deployment_status_replicas_ready{{namespace="{NAMESPACE}"}}')
        log.print(f"shadow: {c.scenario} exporter scraped; warming up {c.warmup_s:g} s")
        time.sleep(c.warmup_s)
        loop = _loop(bundle, prom.url, work / "live", "15s")
        loop.run_live(c.interval_s, ticks=1)  # warm-up tick (imports, first connections)
        records: list[AuditRecord] = []
        loop.on_record = records.append
        loop.run_live(c.interval_s, ticks=sizes.latency_ticks)
        loop.close()
    finally:
        prom.stop()
        exporter.close()
    lat = np.asarray([r.latency_s for r in records])
    missing = [r.missing_fraction for r in records]
    return {
        "tick_p50_s": float(np.percentile(lat, 50)),
        "tick_p99_s": float(np.percentile(lat, 99)),
        "ticks": len(lat),
        "services": len(sc.topology.services),
        "mean_missing_fraction": float(np.mean(missing)),
        "queries_per_tick": len(loop.source.profile.services)
        + len(loop.source.profile.cluster)
        + 1,
    }


def replay_speed(conf: BenchConfig, work: Path, bundle: Path, log: Console) -> dict[str, Any]:
    """Backfill ``replay_hours`` of history and replay it through the shadow loop."""
    c = conf.shadow
    sizes = c.quick if conf.quick else c.full
    horizon = sizes.replay_hours * 3600.0
    sc = load_scenario(
        c.scenario, {"horizon_s": horizon, "scrape_interval_s": c.replay_step_s, "seed": conf.seed}
    )
    sim = Simulator(sc)
    frames = rollout(sim, StaticPolicy()).frames
    start = float(int(time.time() - horizon - 120))
    om = write_openmetrics(frames, sim.services, work / "history.om", start, namespace=NAMESPACE)
    t = time.perf_counter()
    backfill(om, work / "tsdb")
    backfill_s = time.perf_counter() - t
    prom = start_prometheus(work / "prom-replay", data_dir=work / "tsdb")
    try:
        loop = _loop(bundle, prom.url, work / "replay", "1m")
        log.print(f"shadow: replaying {sizes.replay_hours:g} h of {c.scenario}")
        t = time.perf_counter()
        stats = loop.run_replay(start + 120, start + horizon, c.replay_step_s)
        replay_s = time.perf_counter() - t
        loop.close()
    finally:
        prom.stop()
    return {
        "replay_ticks": stats.ticks,
        "replay_s": replay_s,
        "replay_ticks_per_s": stats.ticks / replay_s,
        "replay_errors": stats.errors,
        "backfill_s": backfill_s,
        "openmetrics_mb": om.stat().st_size / 1e6,
        "replay_agreement": stats.agreement,
    }


def run_shadow_suite(conf: BenchConfig, log: Console) -> dict[str, Any]:
    """Both parts; figures, targets and details for :func:`agents.bench.runner.run_bench`."""
    c = conf.shadow
    sizes = c.quick if conf.quick else c.full
    if sizes.latency_ticks < 2 or not sizes.replay_hours > 0 or not c.interval_s > 0:
        raise ConfigError(
            "shadow: latency_ticks must be >= 2, replay_hours > 0 and interval_s > 0; got "
            f"{sizes.latency_ticks}, {sizes.replay_hours}, {c.interval_s}"
        )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per query otherwise
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="opsworld-bench-shadow-") as tmp:
        work = Path(tmp)
        bundle = export_baseline("hpa", load_scenario(c.scenario), work / "bundle")
        live = tick_latency(conf, work, bundle, log)
        replay = replay_speed(conf, work, bundle, log)
    figures = {
        "tick_p50_s": live["tick_p50_s"],
        "tick_p99_s": live["tick_p99_s"],
        "replay_ticks_per_s": replay["replay_ticks_per_s"],
    }
    return {
        "figures": figures,
        "targets": {
            "tick_p99_s": c.target_tick_p99_s,
            "replay_ticks_per_s": c.target_replay_ticks_per_s,
        },
        "lower_is_better": ["tick_p50_s", "tick_p99_s"],
        "details": {
            "live": live,
            "replay": replay,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg()[0],
        },
        "method": (
            f"Tick latency: {live['ticks']} live ticks of the shadow loop every {c.interval_s:g} s "
            f"({live['services']} services of {c.scenario}, HPA bundle in process, "
            f"{live['queries_per_tick']} instant queries per tick against Prometheus scraping the "
            "simulator exporter at 1 s); latency = queries -> recommendation -> audit record. "
            f"Replay: {sizes.replay_hours:g} h of {c.scenario} backfilled with promtool, "
            f"{replay['replay_ticks']} ticks at {c.replay_step_s:g} s steps, range queries 240 "
            "steps at a time."
        ),
    }
