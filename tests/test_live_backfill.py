"""Frames -> cluster series (exact bookkeeping), OpenMetrics text, and a real promtool backfill."""

from __future__ import annotations

import itertools
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_fixture import need, start_prometheus

from agents.policy import StaticPolicy
from agents.rollout import rollout
from envs.core.telemetry import COUNTER_FIELDS, FIELD_INDEX, Telemetry, make_frame
from envs.live.cluster_metrics import HTTP_CODES, MIB, ClusterMetrics
from envs.live.openmetrics import openmetrics_lines, write_openmetrics
from envs.live.profile import load_profile
from envs.live.prometheus import PrometheusSource
from envs.scenarios.loader import load_scenario
from envs.sim.simulator import Simulator

POD_RE = re.compile(r"(.+)-[a-z0-9]{10}-[a-z0-9]{5}")


def run(name: str = "chain3", **overrides: object) -> tuple[Simulator, list[Telemetry]]:
    sc = load_scenario(name, dict(overrides))
    sim = Simulator(sc)
    return sim, rollout(sim, StaticPolicy()).frames


@pytest.fixture(scope="module")
def chain3() -> tuple[Simulator, list[Telemetry]]:
    return run(horizon_s=900)


def samples(fams, name):  # type: ignore[no-untyped-def]
    return [(dict(lab), v) for f in fams for n, lab, v in f.samples if n == name]


def test_series_sum_to_the_frame(chain3: tuple[Simulator, list[Telemetry]]) -> None:
    """Per-pod counters add up to the frame's service counters (what was served while pods ran)."""
    sim, frames = chain3
    cm = ClusterMetrics(sim.services, "shop")
    for frame in frames:
        fams = cm.update(frame)
    last, first = frames[-1], frames[0]
    for s, svc in enumerate(sim.services):

        def total(name: str, code: str | None = None, _svc: str = svc) -> float:
            return sum(
                v
                for lab, v in samples(fams, name)
                if lab.get("deployment") == _svc and (code is None or lab["code"] == code)
            )

        for counter, code in HTTP_CODES.items():
            want = last.counter(counter)[s] - first.counter(counter)[s]
            assert total("http_requests_total", code) == pytest.approx(want, rel=1e-9, abs=1e-9)
        hist = last.histogram[s] - first.histogram[s]
        assert total("http_request_duration_seconds_count") == pytest.approx(hist[-1], rel=1e-9)
        cpu = sum(f["cpu_usage"][s] * (f.t - p.t) for p, f in itertools.pairwise(frames))
        assert total("container_cpu_usage_seconds_total") == pytest.approx(cpu, rel=1e-9)
        mem = last["memory_usage_mb"][s] * MIB
        assert total("container_memory_working_set_bytes") == pytest.approx(mem, rel=1e-9)
        (spec,) = [
            v
            for lab, v in samples(fams, "kube_deployment_spec_replicas")
            if lab["deployment"] == svc
        ]
        assert spec == last["replicas_desired"][s]
        pods = cm.pod_names(svc)
        assert len(pods) == int(last["replicas_ready"][s]) > 0
        for pod in pods:
            m = POD_RE.fullmatch(pod)
            assert m is not None and m.group(1) == svc, pod
    for fam in fams:
        for _, lab, _ in fam.samples:
            assert dict(lab)["namespace"] == "shop"


def test_missing_values_are_absent_not_zero(chain3: tuple[Simulator, list[Telemetry]]) -> None:
    """A NaN in the frame drops that series from the scrape (stale in Prometheus), never 0."""
    sim, frames = chain3
    frame = frames[3]
    values = frame.values.copy()
    values[1, FIELD_INDEX["replicas_desired"]] = np.nan
    values[1, FIELD_INDEX["memory_usage_mb"]] = np.nan
    gap = make_frame(
        frame.t,
        frame.services,
        values,
        frame.counters,
        frame.in_flight,
        frame.histogram,
        frame.cluster,
    )
    cm = ClusterMetrics(sim.services)
    for f in frames[:3]:
        cm.update(f)
    fams = cm.update(gap)
    spec = [lab["deployment"] for lab, _ in samples(fams, "kube_deployment_spec_replicas")]
    assert sorted(spec) == sorted(s for s in sim.services if s != sim.services[1])
    mem = {lab["deployment"] for lab, _ in samples(fams, "container_memory_working_set_bytes")}
    assert sim.services[1] not in mem and mem
    with pytest.raises(ValueError, match="out of order"):
        cm.update(frames[0])


def test_pods_follow_replicas_and_versions(chain3: tuple[Simulator, list[Telemetry]]) -> None:
    sim, frames = chain3
    cm = ClusterMetrics(sim.services)
    cm.update(frames[0])
    before = cm.pod_names("frontend")

    def edited(frame: Telemetry, t: float, **cols: float) -> Telemetry:
        v = frame.values.copy()
        for k, x in cols.items():
            v[0, FIELD_INDEX[k]] = x
        return make_frame(
            t, frame.services, v, frame.counters, frame.in_flight, frame.histogram, frame.cluster
        )

    cm.update(edited(frames[0], 1.0, replicas_ready=len(before) + 2))
    grown = cm.pod_names("frontend")
    assert grown[: len(before)] == before and len(set(grown)) == len(before) + 2
    cm.update(edited(frames[0], 2.0, replicas_ready=1))
    assert cm.pod_names("frontend") == before[:1]
    version = frames[0]["deploy_version"][0] + 1
    cm.update(edited(frames[0], 3.0, replicas_ready=1, deploy_version=version))
    (renamed,) = cm.pod_names("frontend")
    assert renamed != before[0]
    assert renamed.split("-")[1] != before[0].split("-")[1]  # a new pod-template hash


def test_openmetrics_text(chain3: tuple[Simulator, list[Telemetry]]) -> None:
    sim, frames = chain3
    lines = openmetrics_lines(frames, sim.services, 1_700_000_000.0)
    assert lines[-1] == "# EOF" and lines.count("# EOF") == 1
    types = [ln.split()[2] for ln in lines if ln.startswith("# TYPE")]
    assert len(types) == len(set(types))  # each family once
    assert "http_requests" in types and "kube_deployment_spec_replicas" in types
    last_ts: dict[str, float] = {}
    for ln in lines:
        if ln.startswith("#"):
            continue
        series, value, ts = ln.rsplit(" ", 2)
        float(value)
        base = re.sub(r',le="[^"]*"', "", series)
        base = re.sub(r"_(bucket|sum|count)\{", "{", base)
        assert float(ts) >= last_ts.get(base, 0.0), ln
        last_ts[base] = float(ts)
    assert all("_total{" in ln for ln in lines if ln.startswith("http_requests"))
    # same frames, same text: the writer is deterministic
    assert lines == openmetrics_lines(frames, sim.services, 1_700_000_000.0)


def test_promtool_backfill_answers_promql(
    chain3: tuple[Simulator, list[Telemetry]], tmp_path: Path
) -> None:
    """Backfill a run with promtool, start Prometheus on the TSDB, get the simulated rates back."""
    sim, frames = chain3
    promtool = need("promtool")
    horizon = frames[-1].t
    start = float(int(time.time() - horizon - 3600))
    om = write_openmetrics(frames, sim.services, tmp_path / "run.om", start)
    data = tmp_path / "tsdb"
    done = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    prom = start_prometheus(tmp_path / "prom", data_dir=data)
    try:
        front = sim.services.index("frontend")
        for k in (8, 20, len(frames) - 1):
            t_end, t_begin = frames[k].t, frames[k - 4].t  # 4 scrapes = 60 s at 15 s
            assert t_end - t_begin == 60.0
            at = start + t_end
            got = prom.query(
                'sum by (deployment) (rate(http_requests_total{namespace="opsworld"}[1m]))', at
            )
            by_dep = {r["metric"]["deployment"]: float(r["value"][1]) for r in got}
            assert set(by_dep) == set(sim.services)
            finished = [c for c in COUNTER_FIELDS if c != "arrived"]
            for s, svc in enumerate(sim.services):
                want = (
                    sum(frames[k].counter(c)[s] - frames[k - 4].counter(c)[s] for c in finished)
                    / 60.0
                )
                assert by_dep[svc] == pytest.approx(want, rel=1e-6), (svc, k)
            (ready,) = prom.query(
                'kube_deployment_status_replicas_ready{deployment="frontend"}', at
            )
            assert float(ready["value"][1]) == frames[k]["replicas_ready"][front]
        p99 = prom.query(
            "histogram_quantile(0.99, sum by (le, deployment) "
            "(rate(http_request_duration_seconds_bucket[5m])))",
            start + frames[-1].t,
        )
        assert {r["metric"]["deployment"] for r in p99} == set(sim.services)
        assert all(0 < float(r["value"][1]) < 10 for r in p99)
        # replay mode over the backfilled range: one frame per scrape, gauges as simulated
        profile = load_profile("kube").model_copy(update={"freshness": None})
        source = PrometheusSource(prom.url, profile, sim.services)
        replayed = list(source.replay(start + 300, start + 600, 15.0))
        assert [f.telemetry.t for f in replayed] == [start + 300 + 15 * i for i in range(21)]
        by_t = {start + f.t: f for f in frames}
        for live in replayed:
            want = by_t[live.telemetry.t]
            np.testing.assert_array_equal(live.telemetry["replicas_ready"], want["replicas_ready"])
            np.testing.assert_allclose(
                live.telemetry["cpu_request"], want["cpu_request"], rtol=1e-9
            )
            assert np.isfinite(live.telemetry["rps"]).all() and live.reasons == {}
    finally:
        prom.stop()


def test_simulate_format_openmetrics(tmp_path: Path) -> None:
    """``opsworld simulate ... format=openmetrics`` writes metrics.om ending now, with # EOF."""
    from experiments.cli import main

    before = time.time()
    rc = main(
        [
            "simulate",
            "scenario=chain3",
            "horizon_s=120",
            "format=openmetrics",
            "progress=false",
            f"out={tmp_path}",
        ]
    )
    assert rc == 0
    lines = (tmp_path / "metrics.om").read_text().splitlines()
    assert lines[-1] == "# EOF"
    stamps = [float(ln.rsplit(" ", 1)[1]) for ln in lines if not ln.startswith("#")]
    assert max(stamps) - min(stamps) == pytest.approx(120.0)
    assert before - 1 <= max(stamps) <= time.time() + 1
    assert not (tmp_path / "telemetry.parquet").exists()


def test_live_bench_smoke(tmp_path: Path) -> None:
    """experiments/live_bench.py on 15 simulated minutes: every figure present and sane."""
    from experiments.live_bench import bench

    f = bench(0.25, tmp_path)
    assert f["replay_frames"] == (900 - 60) // 15 + 1
    assert f["series"] > 100 and f["samples"] >= f["series"] * 60
    assert f["backfill_s"] > 0 and f["replay_frames_per_s"] > 0
    assert 0 < f["instant_frame_p50_ms"] <= f["instant_frame_p99_ms"]
    assert f["queries_per_frame"] == 16
