"""The shared engine (``envs/sim/engine.py``) by exact values, on a scripted data plane.

The scrape turns what a data plane reports (cumulative counters, busy time, quantiles,
histogram deltas) and the control plane's state into a frame of gauges: rates over the
interval, error rate, CPU and memory, SLO violation time, the cumulative histogram and the
cluster's meters. Here the data plane is a script: each scrape reads hand-chosen numbers, so
the gauges are known by hand (no queueing model in between). The cases are
chosen so that each rule shows: an interval with exactly one finished attempt, one with
none, an error rate and a p99 exactly at the SLO (not a violation), a service with one ready
pod and one with none, a telemetry gap, a memory leak, the first frame at t = 0 (no
interval, no rates).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest

from envs.core.actions import Action, Scale, ShedLoad
from envs.core.telemetry import CLUSTER_FIELDS, LATENCY_BUCKETS_S, SERVICE_FIELDS, Telemetry
from envs.scenarios.schema import Scenario
from envs.sim.engine import DataPlaneReading, Engine, make_engine
from envs.sim.fluid import FluidEngine
from envs.sim.request import RequestEngine

NAN = math.nan
B = len(LATENCY_BUCKETS_S)
BACK, FRONT = 0, 1  # service order in the scenario below; the entry is the second one


def _scenario(**updates: Any) -> Scenario:
    """Two services, front -> back, hand-chosen pod specs (every figure distinct)."""
    raw: dict[str, Any] = {
        "name": "scripted",
        "topology": {
            "name": "two",
            "entry": "front",
            "services": [
                {
                    "name": "back",
                    "pod": {
                        "concurrency": 2,
                        "cpu_request": 0.25,
                        "cpu_idle": 0.02,
                        "cpu_full_load": 1.0,
                        "memory_request_mb": 512.0,
                        "memory_limit_mb": 1024.0,
                        "memory_base_mb": 200.0,
                        "memory_per_request_mb": 3.0,
                        "startup": {"mean": 0.25, "cv": 0.0},
                        "termination_grace_s": 0.0,
                    },
                    "replicas": {"initial": 1, "min": 0, "max": 4},
                },
                {
                    "name": "front",
                    "pod": {
                        "concurrency": 4,
                        "cpu_request": 0.5,
                        "cpu_idle": 0.05,
                        "cpu_full_load": 1.5,
                        "memory_request_mb": 256.0,
                        "memory_base_mb": 100.0,
                        "memory_per_request_mb": 2.0,
                        "startup": {"mean": 0.75, "cv": 0.0},
                        "termination_grace_s": 0.0,
                    },
                    "replicas": {"initial": 2, "min": 1, "max": 4},
                },
            ],
            "edges": [{"src": "front", "dst": "back"}],
        },
        "slos": {"front": {"p99_latency_s": 0.5, "error_rate": 0.01}},
        "cluster": {"nodes": 3, "node_startup_s": 0.0},
        "horizon_s": 2.0,
        "scrape_interval_s": 0.5,
        "decision_interval_s": 1.0,
        "actuation_delay_s": 0.0,
    }
    raw.update(updates)
    return Scenario.model_validate(raw)


def _reading(
    counters: list[list[float]],
    in_flight: list[float],
    backlog: list[float],
    busy: list[float],
    quantiles: list[list[float]],
    hist: list[list[float]] | None = None,
) -> DataPlaneReading:
    """``quantiles``: per service ``[p50, p95, p99, mean]``; ``hist``: per service, its
    non-zero bucket deltas from the first bucket on."""
    q = np.array(quantiles, dtype=np.float64)
    h = np.zeros((2, B))
    for s, row in enumerate(hist or [[], []]):
        h[s, : len(row)] = row
    return DataPlaneReading(
        counters=np.array(counters, dtype=np.float64),
        in_flight=np.array(in_flight, dtype=np.float64),
        backlog=np.array(backlog, dtype=np.float64),
        own_busy_s=np.array(busy, dtype=np.float64),
        p50=q[:, 0].copy(),
        p95=q[:, 1].copy(),
        p99=q[:, 2].copy(),
        mean_latency=q[:, 3].copy(),
        hist_delta=h,
    )


_NONE = [NAN, NAN, NAN, NAN]

# One reading per scrape (t = 0, 0.5, 1.0, 1.5, 2.0); services (back, front).
SCRIPT = [
    # t = 0: two arrivals already counted, busy time reported: still no interval, no rates
    _reading([[0, 0, 0, 0], [2, 0, 0, 0]], [0, 2], [0, 1], [0.1, 0.2], [_NONE, _NONE]),
    # back: exactly one finished attempt, which failed; front: error rate exactly at its SLO
    _reading(
        [[1, 0, 1, 0], [102, 99, 1, 0]],
        [0, 2],
        [0, 0],
        [0.3, 0.8],
        [[0.02, 0.04, 0.06, 0.025], [0.1, 0.2, 0.3, 0.12]],
        [[0, 0, 1], [0, 0, 0, 0, 0, 40, 30, 25, 5]],
    ),
    # front: p99 exactly at its SLO
    _reading(
        [[11, 10, 1, 0], [202, 198, 1, 0]],
        [0, 3],
        [0, 1],
        [0.2, 1.0],
        [[0.01, 0.02, 0.03, 0.015], [0.1, 0.3, 0.5, 0.15]],
        [[0, 10], [0, 0, 0, 0, 0, 50, 30, 10, 5, 4]],
    ),
    # back has no ready pod now (scaled to 0) and nothing finished; front's p99 violates
    _reading(
        [[11, 10, 1, 0], [302, 298, 1, 0]],
        [0, 3],
        [0, 0],
        [0.05, 1.2],
        [_NONE, [0.2, 0.5, 0.7, 0.3]],
        [[], [0, 0, 0, 0, 0, 0, 20, 40, 35, 5]],
    ),
    # front: errors (failed and dropped) violate, p99 does not
    _reading(
        [[11, 10, 1, 0], [402, 378, 13, 8]],
        [0, 3],
        [0, 2],
        [0.0, 0.4],
        [_NONE, [0.02, 0.05, 0.1, 0.03]],
        [[], [0, 60, 30]],
    ),
]


class Scripted(Engine):
    """An engine whose data plane reads the next entry of a script at each scrape."""

    fidelity = "scripted"

    def __init__(self, scenario: Scenario, script: list[DataPlaneReading] | None = None) -> None:
        self.script = list(script if script is not None else SCRIPT)
        self.reads: list[float] = []
        self.started = 0
        super().__init__(scenario)

    def before_change(self) -> None:
        pass

    def capacity_changed(self) -> None:
        pass

    def pods_lost(self, service: int, lost_fraction: float) -> None:
        pass

    def set_call_policy(self, service: int, timeout_s: float | None, retries: int) -> None:
        pass

    def _start_data_plane(self) -> None:
        self.started += 1

    def _read_data_plane(self) -> DataPlaneReading:
        self.reads.append(self.now)
        return self.script[len(self.reads) - 1]


def _run(eng: Engine, actions: list[list[Action]]) -> list[Telemetry]:
    frames = [eng.start()]
    for a in actions:
        frames.extend(eng.advance(a))
    return frames


def _col(frames: list[Telemetry], field: str, s: int) -> list[float]:
    return [float(f[field][s]) for f in frames]


def _assert_series(got: list[float], expected: list[float]) -> None:
    np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-12, atol=0.0)


SCALE: list[list[Action]] = [[], [Scale("back", 0), Scale("front", 3), ShedLoad(0.25)]]


def _scripted_frames() -> tuple[Scripted, list[Telemetry]]:
    eng = Scripted(_scenario())
    with warnings.catch_warnings():
        # 0/0 and x/0 are NaN by rule here (no interval, nothing finished, no ready pod):
        # the scrape must not warn about them
        warnings.simplefilter("error")
        frames = _run(eng, SCALE)
    return eng, frames


def test_engine_reads_the_scenario() -> None:
    eng = Scripted(_scenario())
    assert eng.names == ("back", "front")
    assert eng.n == 2
    assert eng.entry == FRONT
    np.testing.assert_array_equal(eng.slo_p99, [NAN, 0.5])
    np.testing.assert_array_equal(eng.slo_err, [NAN, 0.01])
    assert eng.edge_faults == {}
    # no SLO given: the entry gets the default one (0.5 s, 1%)
    default = Scripted(_scenario(slos={}))
    np.testing.assert_array_equal(default.slo_p99, [NAN, 0.5])
    np.testing.assert_array_equal(default.slo_err, [NAN, 0.01])
    other = Scripted(_scenario(slos={"back": {"p99_latency_s": 0.2, "error_rate": 0.05}}))
    np.testing.assert_array_equal(other.slo_p99, [0.2, NAN])
    np.testing.assert_array_equal(other.slo_err, [0.05, NAN])


def test_frames_come_at_every_scrape_and_the_clock_stops_at_each_decision() -> None:
    eng, frames = _scripted_frames()
    assert [f.t for f in frames] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert eng.reads == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert eng.started == 1
    assert eng.now == 2.0
    assert all(f.services == ("back", "front") for f in frames)
    # a horizon that is no multiple of the decision interval: the last decision is short,
    # runs the clock to the horizon, and scrapes nothing past it
    eng = Scripted(_scenario(horizon_s=1.25))
    first = eng.start()
    assert first.t == 0.0
    assert [f.t for f in eng.advance([])] == [0.5, 1.0]
    assert eng.now == 1.0
    assert eng.advance([]) == []
    assert eng.now == 1.25


def test_advance_takes_a_scrape_due_now_without_running_the_clock() -> None:
    """Someone else may have run the clock to a scrape time (a drain past the horizon runs
    ``env`` directly): that scrape is taken at once (SimPy refuses to run to now)."""
    eng = Scripted(_scenario())
    eng.start()
    eng.env.run(until=0.5)
    # the decision runs from now (0.5) for one decision interval
    assert [f.t for f in eng.advance([])] == [0.5, 1.0, 1.5]
    assert eng.reads == [0.0, 0.5, 1.0, 1.5]


def test_rates_and_error_rate_by_hand() -> None:
    _, frames = _scripted_frames()
    # t = 0 has no interval: no rates, even with arrivals and busy time already counted
    _assert_series(_col(frames, "rps", FRONT), [NAN, 200.0, 200.0, 200.0, 200.0])
    _assert_series(_col(frames, "rps", BACK), [NAN, 2.0, 20.0, 0.0, 0.0])
    _assert_series(_col(frames, "throughput", FRONT), [NAN, 198.0, 198.0, 200.0, 160.0])
    _assert_series(_col(frames, "throughput", BACK), [NAN, 0.0, 20.0, 0.0, 0.0])
    # failed + dropped over finished; NaN where nothing finished; one finished attempt counts
    _assert_series(_col(frames, "error_rate", FRONT), [NAN, 0.01, 0.0, 0.0, 0.2])
    _assert_series(_col(frames, "error_rate", BACK), [NAN, 1.0, 0.0, NAN, NAN])
    # burn: error rate over the SLO's allowed rate; back has no SLO
    _assert_series(_col(frames, "error_budget_burn", FRONT), [NAN, 1.0, 0.0, 0.0, 20.0])
    _assert_series(_col(frames, "error_budget_burn", BACK), [NAN] * 5)
    for f, r in zip(frames, SCRIPT, strict=True):
        np.testing.assert_array_equal(f.counters, r.counters)
        np.testing.assert_array_equal(f.in_flight, r.in_flight)
        np.testing.assert_array_equal(f["in_flight"], r.in_flight)
        np.testing.assert_array_equal(f["backlog"], r.backlog)


def test_quantiles_and_histogram_by_hand() -> None:
    _, frames = _scripted_frames()
    for f, r in zip(frames, SCRIPT, strict=True):
        for field in ("p50", "p95", "p99", "mean_latency"):
            np.testing.assert_array_equal(f[field], getattr(r, field))
    # a hand check that the fields are not crossed: front at t = 1.5
    assert [float(frames[3][k][FRONT]) for k in ("p50", "p95", "p99", "mean_latency")] == [
        0.2,
        0.5,
        0.7,
        0.3,
    ]
    # cumulative over time and over buckets (Prometheus `le` buckets)
    total = np.zeros((2, B))
    for f, r in zip(frames, SCRIPT, strict=True):
        total += r.hist_delta
        np.testing.assert_array_equal(f.histogram, np.cumsum(total, axis=1))
    assert frames[-1].histogram.shape == (2, B)
    assert frames[-1].histogram[FRONT, -1] == 100 + 99 + 100 + 90
    assert frames[-1].histogram[FRONT, 5] == 40 + 50 + 60 + 30
    assert frames[-1].histogram[BACK, -1] == 11


def test_cpu_and_memory_by_hand() -> None:
    _, frames = _scripted_frames()
    # usage = ready x idle + busy slots x (full load - idle) / concurrency
    # front, t = 0.5: 2 x 0.05 + (0.8 / 0.5) x 1.45 / 4 = 0.68 cores, 0.68 of 2 x 0.5 cores
    _assert_series(_col(frames, "cpu_usage", FRONT)[:3], [NAN, 0.68, 0.1 + 2.0 * 1.45 / 4])
    # back, t = 0.5: 1 x 0.02 + (0.3 / 0.5) x 0.98 / 2 = 0.314 of 0.25 cores
    _assert_series(_col(frames, "cpu_usage", BACK)[:3], [NAN, 0.314, 0.02 + 0.4 * 0.98 / 2])
    _assert_series(_col(frames, "cpu_util", FRONT)[:2], [NAN, 0.68])
    _assert_series(_col(frames, "cpu_util", BACK), [NAN, 1.256, (0.02 + 0.196) / 0.25, NAN, NAN])
    _assert_series(_col(frames, "cpu_request", BACK), [0.25, 0.25, 0.25, 0.0, 0.0])
    # one ready pod of back: resident 200 MB plus 3 MB per request in flight; none: NaN
    _assert_series(_col(frames, "memory_usage_mb", BACK), [200.0, 200.0, 200.0, NAN, NAN])
    _assert_series(_col(frames, "memory_usage_mb", FRONT)[:3], [204.0, 204.0, 206.0])
    _assert_series(_col(frames, "memory_request_mb", BACK), [512.0, 512.0, 512.0, 0.0, 0.0])
    _assert_series(_col(frames, "memory_request_mb", FRONT)[:3], [512.0] * 3)


def test_replicas_follow_the_control_plane() -> None:
    """Scaled at t = 1: back to 0 at once; front to 3, its new pod ready 0.75 s later."""
    _, frames = _scripted_frames()
    _assert_series(_col(frames, "replicas_desired", BACK), [1, 1, 1, 0, 0])
    _assert_series(_col(frames, "replicas_ready", BACK), [1, 1, 1, 0, 0])
    _assert_series(_col(frames, "replicas_desired", FRONT), [2, 2, 2, 3, 3])
    _assert_series(_col(frames, "replicas_ready", FRONT), [2, 2, 2, 2, 3])
    _assert_series(_col(frames, "replicas_starting", FRONT), [0, 0, 0, 1, 0])
    # front at t = 2: three pods, 3 requests in flight; 0.4 / 0.5 busy slots
    assert frames[4]["memory_usage_mb"][FRONT] == 306.0
    assert frames[4]["cpu_request"][FRONT] == 1.5
    assert frames[4]["cpu_usage"][FRONT] == pytest.approx(0.15 + 0.8 * 1.45 / 4, rel=1e-12)
    assert frames[4]["cpu_util"][FRONT] == pytest.approx((0.15 + 0.29) / 1.5, rel=1e-12)
    for field in ("replicas_pending", "restarts", "oom_kills", "deploy_version"):
        for s in (BACK, FRONT):
            _assert_series(_col(frames, field, s), [0.0] * 5)


def test_slo_violation_time_by_hand() -> None:
    """A violation: p99 above the SLO's or error rate above its budget (at it is fine)."""
    eng, frames = _scripted_frames()
    _assert_series(_col(frames, "slo_violation_s", FRONT), [0.0, 0.0, 0.0, 0.5, 1.0])
    _assert_series(_col(frames, "slo_violation_s", BACK), [NAN] * 5)
    np.testing.assert_array_equal(eng.violation_s, [0.0, 1.0])


def test_mask_and_cluster_meters_by_hand() -> None:
    _, frames = _scripted_frames()
    for f in frames:
        np.testing.assert_array_equal(f.mask, ~np.isnan(f.values))
        assert f.mask.dtype == np.bool_
        assert f.values.shape == (2, len(SERVICE_FIELDS))
        assert f.cluster.shape == (len(CLUSTER_FIELDS),)
        assert f.cluster_mask.dtype == np.bool_ and f.cluster_mask.all()
    assert not frames[0].mask[FRONT, SERVICE_FIELDS.index("rps")]
    assert frames[1].mask[FRONT, SERVICE_FIELDS.index("rps")]
    cost_rate = 3 * 0.384  # three nodes at the default price, no pod surcharge
    core_price = 0.384 / 8.0
    for f in frames[:3]:  # up to the scaling at t = 1: three pods of 1.25 requested cores
        t = f.t
        expected = [3, 0, 0, cost_rate, t / 3600 * cost_rate, 3 * t, 3 * t / 3600, 0.0]
        np.testing.assert_allclose(f.cluster[:8], expected, rtol=1e-12, atol=1e-15)
        assert f.cluster[8] == pytest.approx(1.25 * t / 3600 * core_price, rel=1e-12)
    # after t = 1: back's pod gone at once, front's third pod bound at t = 1; shed a quarter
    last = frames[-1]
    assert last.cluster[CLUSTER_FIELDS.index("pod_seconds")] == pytest.approx(3.0 + 3.0)
    assert last.cluster[CLUSTER_FIELDS.index("shed_fraction")] == 0.25
    assert frames[2].cluster[CLUSTER_FIELDS.index("shed_fraction")] == 0.0
    cores_s = 1.25 * 1.0 + 1.5 * 1.0
    assert last.cluster[8] == pytest.approx(cores_s / 3600 * core_price, rel=1e-12)


def test_a_telemetry_gap_hides_gauges_but_not_the_counters() -> None:
    faults = [
        {"kind": "telemetry", "mode": "gap", "at_s": 1.0, "duration_s": 0.5},
        {"kind": "network", "src": "front", "dst": "back", "at_s": 0.5, "loss": 0.1},
    ]
    eng = Scripted(_scenario(faults=faults))
    frames = _run(eng, [[], []])
    gap = frames[2]
    assert gap.t == 1.0
    assert np.isnan(gap.values).all() and not gap.mask.any()
    assert np.isnan(gap.cluster).all() and not gap.cluster_mask.any()
    # the ground truth stays: counters, in flight and histograms are what the data plane read
    np.testing.assert_array_equal(gap.counters, SCRIPT[2].counters)
    np.testing.assert_array_equal(gap.in_flight, SCRIPT[2].in_flight)
    total = sum((r.hist_delta for r in SCRIPT[:3]), np.zeros((2, B)))
    np.testing.assert_array_equal(gap.histogram, np.cumsum(total, axis=1))
    # before and after the gap, gauges as without it
    plain = _run(Scripted(_scenario()), [[], []])
    for i in (0, 1, 3, 4):
        np.testing.assert_array_equal(frames[i].values, plain[i].values)
        np.testing.assert_array_equal(frames[i].cluster, plain[i].cluster)
    assert frames[3]["rps"][FRONT] == 200.0
    assert eng.faults.records[0].end == 1.5  # the gap's record closes at the first scrape after
    assert eng.faults.records[1].end is None
    assert eng.edge_faults == {(FRONT, BACK): (0.1, 0.05)}


def test_a_memory_leak_shows_in_the_memory_gauge() -> None:
    leak = [{"kind": "memory_leak", "service": "front", "at_s": 0.0, "leak_mb_per_s": 40.0}]
    eng = Scripted(_scenario(faults=leak))
    resident: list[float] = []

    def read() -> DataPlaneReading:
        cp = eng.cp
        total = 0.0
        for uid in sorted(cp.by_service[FRONT]):
            pod = cp.pods[uid]
            if pod.state.name == "READY":
                leak_rate = cp.versions[FRONT][pod.template[0]].leak_mb_per_s
                total += 100.0 + leak_rate * (eng.now - pod.started_t)
        resident.append(total)
        return Scripted._read_data_plane(eng)

    eng._read_data_plane = read  # type: ignore[method-assign]
    frames = _run(eng, [[], []])
    mem = _col(frames, "memory_usage_mb", FRONT)
    expected = [r + 2.0 * float(s.in_flight[FRONT]) for r, s in zip(resident, SCRIPT, strict=True)]
    _assert_series(mem, expected)
    # leaking pods are ready by the end: memory above the idle pods' 100 MB each
    ready = frames[-1]["replicas_ready"][FRONT]
    assert mem[-1] > ready * 100.0 + 2.0 * 3 + 10.0


def test_the_hpa_sees_every_scraped_frame() -> None:
    hpa = {
        "sync_period_s": 0.5,
        "services": ["front"],
        "cpu_initialization_period_s": 0.0,
        "initial_readiness_delay_s": 0.0,
    }
    eng = Scripted(_scenario(autoscaling={"hpa": hpa}))
    frames = _run(eng, [[], []])
    assert eng.cp.hpa is not None
    writes = eng.cp.hpa.writes
    # front's CPU is 0.68 of its request at t = 0.5, within the 10% tolerance of the 70%
    # target (no change); 0.825 at t = 1.0: ceil(2 x 0.825 / 0.70) = 3 pods
    assert writes[0] == (1.0, Scale("front", 3))
    assert frames[-1]["replicas_desired"][FRONT] == 3


def test_same_seed_same_run_with_every_random_stream() -> None:
    """Traffic noise, pod start-up times and telemetry noise: each from the scenario seed."""
    back_pod = {"startup": {"mean": 0.3, "cv": 0.5}}
    updates: dict[str, Any] = {
        "traffic": {"base_rps": 50.0, "noise": {"cv": 0.3, "tau_s": 1.0}},
        "faults": [{"kind": "telemetry", "mode": "noise", "at_s": 0.5, "noise_cv": 0.5}],
    }

    def run(seed: int) -> tuple[np.ndarray, list[float], np.ndarray]:
        sc = _scenario(seed=seed, **updates)
        raw = sc.model_dump()
        raw["topology"]["services"][0]["pod"].update(back_pod)
        eng = Scripted(Scenario.model_validate(raw))
        frames = _run(eng, [[Scale("back", 3)], []])
        starts = [p.started_t for p in eng.cp.pods.values()]
        return np.stack([f.values for f in frames]), starts, eng.traffic.rates

    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    np.testing.assert_array_equal(a[2], b[2])
    assert not np.array_equal(a[0], c[0], equal_nan=True)
    assert a[1] != c[1]
    assert not np.array_equal(a[2], c[2])
    assert len(set(a[1])) > 2  # random start-up times really were drawn


@pytest.mark.parametrize("fidelity", ["fluid", "request"])
def test_real_engines_same_seed_same_frames(fidelity: str) -> None:
    """The data plane's random streams come from the seed too (2 s of noisy traffic)."""

    def run(seed: int) -> np.ndarray:
        traffic = {"base_rps": 200.0, "noise": {"cv": 0.3, "tau_s": 1.0}}
        sc = _scenario(seed=seed, fidelity=fidelity, traffic=traffic)
        raw = sc.model_dump()
        for svc in raw["topology"]["services"]:
            svc["pod"]["service_time"] = {"mean": 0.01, "cv": 1.0}
            svc["pod"]["error_rate"] = 0.05
        frames = _run(make_engine(Scenario.model_validate(raw)), [[], []])
        return np.stack([np.concatenate([f.counters.ravel(), f.values.ravel()]) for f in frames])

    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c, equal_nan=True)


def test_make_engine_picks_the_fidelity() -> None:
    sc = _scenario()
    assert isinstance(make_engine(sc.model_copy(update={"fidelity": "fluid"})), FluidEngine)
    assert isinstance(make_engine(sc.model_copy(update={"fidelity": "request"})), RequestEngine)
    with pytest.raises(ValueError) as err:
        make_engine(sc.model_copy(update={"fidelity": "exact"}))
    assert str(err.value) == "fidelity must be 'fluid' or 'request', got 'exact'"
