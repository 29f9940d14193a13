"""Fault injection: every fault kind's symptom signature and mitigation, at both fidelities.

Each fault runs on ``chain3`` (``frontend -> api -> db``, 300 rps, entry SLO p99 <= 0.25 s and
error rate <= 1%) with its onset at ``ONSET`` = 65 s, between the scrapes at 60 and 75 s, so
the frames up to 60 s are the clean baseline and every frame from 75 s on is after onset.
For every kind the tests check, at ``fidelity="fluid"`` and ``"request"``:

* **signature**: the documented symptoms appear after onset and not before;
* **mitigation**: the documented action, taken by a scripted policy at a fixed time, brings
  the entry SLO back for several scrapes, and the fault record's ``end`` (the end of its
  *cause*) is set, except where the cause is documented to outlive the mitigation;
* **no-op**: under :class:`agents.policy.StaticPolicy` the symptoms are still there at the
  horizon, or, for self-healing faults, they heal by themselves in the documented time.

Runs are seeded (seed 0), so every assertion is deterministic; the thresholds still leave
wide margins so that a small model change does not flip them. ``docs/incidents.md`` states
the catalogue these tests hold the simulator to. Known defects are ``xfail(strict=True)``
tests whose ``reason`` names the defect and its fix.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest

from agents.policy import ScriptedPolicy, StaticPolicy
from agents.rollout import rollout
from envs.core.actions import Action, DrainNode, Restart, Rollback, Scale, ShedLoad
from envs.core.telemetry import Telemetry
from envs.scenarios.loader import ScenarioError, load_scenario
from envs.scenarios.schema import FAULT_KINDS, Fault, Scenario
from envs.sim.faults import FaultRecord
from envs.sim.simulator import SimResult, Simulator

FIDELITIES = ("fluid", "request")
ONSET = 65.0
"""Fault onset: between the scrapes at 60 and 75 s."""
HEADROOM = {
    "topology.services.api.replicas.initial": 4,
    "topology.services.db.replicas.initial": 4,
}
"""chain3 with twice the api and db pods: a 3x flash crowd overloads only the frontend."""


# ------------------------------------------------------------------------------ helpers


@dataclass
class Run:
    """One simulated run and views of its frames."""

    result: SimResult

    @property
    def scenario(self) -> Scenario:
        return self.result.scenario

    @property
    def frames(self) -> list[Telemetry]:
        return self.result.frames

    @property
    def records(self) -> list[FaultRecord]:
        return self.result.faults

    @property
    def t(self) -> np.ndarray:
        return np.array([f.t for f in self.frames])

    def col(self, field: str, service: str = "frontend") -> np.ndarray:
        """One gauge of one service over the run (NaN where missing)."""
        i = self.frames[0].services.index(service)
        return np.array([f[field][i] for f in self.frames])

    def at(self, t: float, field: str, service: str = "frontend") -> float:
        """One gauge of one service in the frame scraped at ``t``."""
        return float(self.col(field, service)[self._index(t)])

    def window(self, lo: float, hi: float) -> np.ndarray:
        """Mask of the frames with ``lo <= t <= hi``."""
        return (self.t >= lo - 1e-9) & (self.t <= hi + 1e-9)

    def slo_ok(self) -> np.ndarray:
        """Per frame: the entry met its SLO (p99 and error rate); a missing value fails."""
        slo = self.scenario.effective_slos()["frontend"]
        p99 = self.col("p99")
        err = self.col("error_rate")
        with np.errstate(invalid="ignore"):
            return (p99 <= slo.p99_latency_s) & (err <= slo.error_rate)

    def baseline(self, field: str, service: str = "frontend") -> float:
        """Median of a gauge over the clean frames before onset (t = 15 .. 60 s)."""
        return float(np.median(self.col(field, service)[self.window(15, ONSET - 1)]))

    def _index(self, t: float) -> int:
        hits = np.flatnonzero(np.abs(self.t - t) < 1e-9)
        assert hits.size == 1, f"no frame at t = {t}"
        return int(hits[0])


def chain3(fidelity: str, horizon: float, faults: list[dict[str, Any]], **over: Any) -> Scenario:
    """The built-in chain3 with ``faults``, a short horizon and dotted-key overrides."""
    return load_scenario(
        "chain3", {"horizon_s": horizon, "fidelity": fidelity, "faults": faults, **over}
    )


def simulate(sc: Scenario, script: Mapping[float, Sequence[Action]] | None = None) -> Run:
    """Run ``sc`` under the scripted policy (no script: the static no-op policy)."""
    policy = ScriptedPolicy(script) if script else StaticPolicy()
    return Run(rollout(Simulator(sc), policy))


def assert_clean_before_onset(run: Run) -> None:
    """Frames before onset meet the SLO and show no restart, OOM kill or pending pod."""
    pre = run.window(1, ONSET - 1)
    assert pre.sum() >= 4
    assert run.slo_ok()[pre].all(), "SLO broken before the fault's onset"
    for svc in run.scenario.service_names:
        for field in ("restarts", "oom_kills", "replicas_pending", "deploy_version"):
            assert (run.col(field, svc)[pre] == 0).all(), f"{svc}.{field} before onset"


def assert_recovered(run: Run, by: float, frames: int = 4) -> None:
    """The entry SLO holds in every frame from ``by`` to the horizon, ``frames`` at least."""
    after = run.window(by, run.scenario.horizon_s)
    assert after.sum() >= frames, "too few frames after recovery to judge it"
    ok = run.slo_ok()
    bad = run.t[after & ~ok]
    assert bad.size == 0, f"entry SLO still broken at t = {bad.tolist()}"


def assert_broken_throughout(run: Run, lo: float) -> None:
    """The entry SLO is broken in every frame from ``lo`` to the horizon."""
    span = run.window(lo, run.scenario.horizon_s)
    assert span.sum() >= 3
    ok = run.t[span & run.slo_ok()]
    assert ok.size == 0, f"entry SLO met (symptoms gone) at t = {ok.tolist()}"


# --------------------------------------------------------------------- cached runs
# Runs are cached per worker process (pytest-xdist): the telemetry tests share the clean run.

_CRASH_LOOP = [
    {"kind": "pod_crash", "service": "api", "at_s": ONSET, "pods": 2, "crash_loop": True}
]
_LEAK = [{"kind": "memory_leak", "service": "api", "at_s": ONSET, "leak_mb_per_s": 8.0}]
_HOG = [{"kind": "cpu_hog", "node": 0, "at_s": ONSET, "slowdown": 4.0}]
_BAD = [{"kind": "bad_deploy", "service": "api", "at_s": ONSET, "error_rate": 0.3}]
_SLOW = [{"kind": "slow_dependency", "service": "api", "at_s": ONSET, "latency_factor": 3.0}]
_STORM = [{"kind": "retry_storm", "service": "api", "at_s": ONSET, "trigger_s": 30.0}]
_NET = [
    {
        "kind": "network",
        "src": "frontend",
        "dst": "api",
        "at_s": ONSET,
        "loss": 0.3,
        "delay_s": 0.05,
    }
]
_FLASH = [{"kind": "flash_crowd", "at_s": ONSET, "factor": 3.0, "ramp_s": 15.0, "duration_s": 90.0}]


def _misconfig(mode: str) -> list[dict[str, Any]]:
    return [{"kind": "misconfiguration", "service": "api", "at_s": ONSET, "mode": mode}]


def _telemetry(mode: str) -> list[dict[str, Any]]:
    spec: dict[str, Any] = {"kind": "telemetry", "mode": mode, "at_s": ONSET, "duration_s": 45.0}
    if mode == "missing_service":
        spec["service"] = "api"
    return [spec]


@functools.cache
def clean_run(fidelity: str, horizon: float) -> Run:
    """chain3 without faults (the reference for telemetry faults)."""
    return simulate(chain3(fidelity, horizon, []))


# ------------------------------------------------------------------------------ pod_crash


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_single_pod_crash_dips_and_heals_by_itself(fidelity: str) -> None:
    run = simulate(chain3(fidelity, 180, [{"kind": "pod_crash", "service": "api", "at_s": ONSET}]))
    assert_clean_before_onset(run)
    # signature: one restart, one ready pod fewer, latency up while the survivor serves alone
    assert run.at(75, "restarts", "api") == 1
    assert run.at(75, "replicas_ready", "api") == 1
    assert run.at(75, "p99", "api") > 1.3 * run.baseline("p99", "api")
    # self-healing: the container restarts after its 10 s back-off and half a start-up
    assert (run.col("replicas_ready", "api")[run.window(105, 180)] == 2).all()
    assert run.col("restarts", "api")[-1] == 1
    rec = run.records[0]
    assert rec.kind == "pod_crash" and rec.target == "api" and rec.onset == ONSET
    assert rec.end is not None and ONSET < rec.end <= 105
    # one pod of two is absorbed: the entry SLO holds throughout
    assert run.slo_ok()[1:].all()


@functools.cache
def _crash_loop(fidelity: str, mitigated: bool) -> Run:
    sc = chain3(fidelity, 240 if mitigated else 300, _CRASH_LOOP)
    return simulate(sc, {150: [Restart("api")]} if mitigated else None)


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_crash_loop_signature_persists_under_noop(fidelity: str) -> None:
    run = _crash_loop(fidelity, False)
    assert_clean_before_onset(run)
    restarts = run.col("restarts", "api")
    assert np.all(np.diff(restarts) >= 0)
    assert restarts[run.window(75, 75)][0] >= 2  # both pods crashed at onset
    # CrashLoopBackOff: 10 s doubling; a constant 10 s back-off would restart each pod about
    # every 25 s (back-off + half start-up + run_s), about 18 restarts by 300 s
    assert 6 <= restarts[-1] <= 12
    first = run.at(180, "restarts", "api") - run.at(60, "restarts", "api")
    second = run.at(300, "restarts", "api") - run.at(180, "restarts", "api")
    assert second < first, "restarts should slow down as the back-off doubles"
    # ready pods down, most of the time none; the entry fails
    ready = run.col("replicas_ready", "api")[run.window(75, 300)]
    assert ready.min() == 0 and ready.mean() < 1.0
    err = run.col("error_rate")[run.window(75, 300)]
    assert np.mean(err > 0.5) >= 0.6
    # no-op does not end it: still failing at the horizon, cause still active
    assert run.at(285, "error_rate") > 0.5 and run.at(300, "error_rate") > 0.5
    assert run.records[0].end is None


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_crash_loop_ends_with_restart(fidelity: str) -> None:
    run = _crash_loop(fidelity, True)
    rec = run.records[0]
    assert rec.end is not None and 150 < rec.end <= 180
    assert_recovered(run, by=195)
    assert (run.col("replicas_ready", "api")[run.window(195, 240)] == 2).all()
    settled = run.col("restarts", "api")[run.window(180, 240)]
    assert (settled == settled[0]).all(), "the replaced pods must not crash"


# ---------------------------------------------------------------------------- memory_leak


@functools.cache
def _leak(fidelity: str, mitigated: bool) -> Run:
    sc = chain3(fidelity, 300 if mitigated else 330, _LEAK)
    return simulate(sc, {210: [Rollback("api")]} if mitigated else None)


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_memory_leak_signature_persists_under_noop(fidelity: str) -> None:
    run = _leak(fidelity, False)
    assert_clean_before_onset(run)
    assert (run.col("deploy_version", "api")[run.window(75, 330)] == 1).all()
    # memory climbs toward the limit (2 pods x 512 MB) ...
    mem = run.col("memory_usage_mb", "api")
    base = run.baseline("memory_usage_mb", "api")
    assert np.nanmax(mem[run.window(75, 145)]) > 3 * base
    assert np.all(np.diff(mem[run.window(105, 135)]) > 0)
    # ... then OOM kills, each one a container restart, with errors while pods are down
    oom = run.col("oom_kills", "api")
    assert oom[run.window(75, 135)].max() == 0
    np.testing.assert_array_equal(oom, run.col("restarts", "api"))
    assert oom[-1] >= 5
    assert run.col("error_rate")[run.window(145, 330)].max() > 0.3
    # no-op does not end it: the OOM kills go on and the SLO keeps breaking to the end
    assert run.at(330, "oom_kills", "api") > run.at(225, "oom_kills", "api")
    assert not run.slo_ok()[run.window(240, 330)].all()
    assert run.records[0].end is None


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_memory_leak_ends_with_rollback(fidelity: str) -> None:
    run = _leak(fidelity, True)
    rec = run.records[0]
    assert rec.end is not None and 210 < rec.end <= 240
    assert_recovered(run, by=255)
    late = run.window(255, 300)
    assert (run.col("deploy_version", "api")[late] == 0).all()
    oom = run.col("oom_kills", "api")[late]
    assert (oom == oom[0]).all()
    mem = run.col("memory_usage_mb", "api")[late]
    assert np.all(mem < 1.2 * run.baseline("memory_usage_mb", "api"))


# -------------------------------------------------------------------------------- cpu_hog


@functools.cache
def _hog(fidelity: str, mitigated: bool) -> Run:
    return simulate(chain3(fidelity, 240, _HOG), {150: [DrainNode(0)]} if mitigated else None)


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_cpu_hog_signature_persists_under_noop(fidelity: str) -> None:
    run = _hog(fidelity, False)
    assert_clean_before_onset(run)
    # node 0 runs a frontend and an api pod: the api, 2.5x slower on average, saturates
    assert run.at(75, "p99", "api") > 2 * run.baseline("p99", "api")
    assert (run.col("cpu_util", "api")[run.window(90, 240)] > 0.95).all()
    assert run.baseline("cpu_util", "api") < 0.6
    assert (run.col("error_rate")[run.window(90, 240)] > 0.5).all()
    # no pod is lost: it is a slowdown, not an outage
    assert (run.col("replicas_ready", "api") == 2).all()
    assert_broken_throughout(run, 75)
    assert run.records[0].end is None


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_cpu_hog_ends_with_drain_node(fidelity: str) -> None:
    run = _hog(fidelity, True)
    rec = run.records[0]
    assert rec.end is not None and 150 < rec.end <= 180
    assert_recovered(run, by=180)
    assert (run.col("cpu_util", "api")[run.window(195, 240)] < 0.6).all()


# ----------------------------------------------------------------------------- bad_deploy


@functools.cache
def _bad(fidelity: str, mitigated: bool) -> Run:
    sc = chain3(fidelity, 270, _BAD)
    return simulate(sc, {150: [Rollback("api")]} if mitigated else None)


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_bad_deploy_signature_persists_under_noop(fidelity: str) -> None:
    run = _bad(fidelity, False)
    assert_clean_before_onset(run)
    assert (run.col("deploy_version", "api")[run.window(75, 270)] == 1).all()
    # once rolled out the api fails 30% of its attempts; the frontend retries once: ~9%
    api_err = run.col("error_rate", "api")[run.window(120, 270)]
    assert np.all((api_err > 0.2) & (api_err < 0.4))
    entry_err = run.col("error_rate")[run.window(120, 270)]
    assert np.all((entry_err > 0.04) & (entry_err < 0.15))
    assert_broken_throughout(run, 120)
    assert run.records[0].end is None


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_bad_deploy_ends_with_rollback(fidelity: str) -> None:
    run = _bad(fidelity, True)
    rec = run.records[0]
    assert rec.end is not None and 150 < rec.end <= 225
    assert (run.col("deploy_version", "api")[run.window(165, 270)] == 0).all()
    assert_recovered(run, by=225)


# ------------------------------------------------------------------------ slow_dependency


@functools.cache
def _slow(fidelity: str, mitigated: bool) -> Run:
    sc = chain3(fidelity, 285, _SLOW)
    return simulate(sc, {150: [Scale("api", 8)]} if mitigated else None)


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_slow_dependency_signature_persists_under_noop(fidelity: str) -> None:
    run = _slow(fidelity, False)
    assert_clean_before_onset(run)
    # the slow service saturates and its callers time out (api timeout_s = 0.3 s) ...
    assert (run.col("cpu_util", "api")[run.window(90, 285)] > 0.95).all()
    api_p99 = run.col("p99", "api")[run.window(75, 285)]
    assert np.all(api_p99 > 2 * run.baseline("p99", "api"))
    assert np.all(api_p99 <= 0.3 + 1e-9)  # a timed-out attempt records the timeout
    assert (run.col("error_rate", "api")[run.window(90, 285)] > 0.5).all()
    # ... so the entry fails; the service itself is up
    assert (run.col("error_rate")[run.window(90, 285)] > 0.5).all()
    assert (run.col("replicas_ready", "api") == 2).all()
    assert_broken_throughout(run, 75)
    assert run.records[0].end is None


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_slow_dependency_symptoms_end_with_scale_out(fidelity: str) -> None:
    run = _slow(fidelity, True)
    assert_recovered(run, by=225)
    # the cause is still there (the api is still 3x slower; its p99 stays above normal) and
    # the record stays open: scaling hides the fault, it does not remove it
    assert (run.col("p99", "api")[run.window(240, 285)] > 1.5 * run.baseline("p99", "api")).all()
    assert run.records[0].end is None


# ---------------------------------------------------------------------------- retry_storm


@functools.cache
def _storm(fidelity: str, variant: str) -> Run:
    if variant == "trigger_only":  # the same 5x slowdown for trigger_s, no retry-policy change
        trigger = [
            {
                "kind": "slow_dependency",
                "service": "api",
                "at_s": ONSET,
                "latency_factor": 5.0,
                "duration_s": 30.0,
            }
        ]
        return simulate(chain3(fidelity, 210, trigger))
    if variant == "noop":
        return simulate(chain3(fidelity, 210, _STORM))
    return simulate(chain3(fidelity, 270, _STORM), {150: [ShedLoad(0.9)], 195: [ShedLoad(0.0)]})


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_retry_storm_outlives_its_trigger_where_the_trigger_alone_recovers(fidelity: str) -> None:
    storm = _storm(fidelity, "noop")
    alone = _storm(fidelity, "trigger_only")
    assert_clean_before_onset(storm)
    trigger_end = ONSET + 30
    # both break the SLO while the trigger lasts
    assert not storm.slo_ok()[storm.window(75, 90)].any()
    assert not alone.slo_ok()[alone.window(75, 90)].any()
    # the trigger alone recovers within half a minute of its end (retries: 1 at 0.3 s) ...
    assert_recovered(alone, by=trigger_end + 30)
    assert alone.records[0].end == trigger_end
    # ... the storm (retries: 4 at 0.1 s) stays overloaded long after the slowdown is gone
    assert_broken_throughout(storm, trigger_end)
    amplification = storm.col("rps", "api") / storm.col("rps")
    assert (amplification[storm.window(120, 210)] > 2.5).all()
    assert (alone.col("rps", "api") / alone.col("rps"))[alone.window(135, 210)].max() < 1.1
    assert (storm.col("cpu_util", "api")[storm.window(120, 210)] > 0.9).all()
    assert storm.records[0].end is None


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_retry_storm_ends_with_load_shedding(fidelity: str) -> None:
    run = _storm(fidelity, "shed")
    assert not run.slo_ok()[run.window(120, 150)].any()
    # shedding 90% for 45 s drains the retries; after shedding stops, the SLO holds
    # shed requests still arrive (and count as dropped): what the service serves drops
    assert (run.col("throughput")[run.window(180, 195)] < 0.2 * run.baseline("rps")).all()
    # shed requests are errors too: the SLO is broken while shedding and holds once it stops
    assert not run.slo_ok()[run.window(165, 195)].any()
    assert_recovered(run, by=225, frames=4)
    assert (run.col("rps")[run.window(225, 270)] > 0.9 * run.baseline("rps")).all()
    # the aggressive client policy (the cause) is still in force: the record stays open
    assert run.records[0].end is None


def test_retry_storm_duration_within_trigger_still_ends() -> None:
    # A duration shorter than the trigger ends the whole cause (slowdown and retry policy).
    faults = [
        {
            "kind": "retry_storm",
            "service": "api",
            "at_s": ONSET,
            "trigger_s": 60.0,
            "duration_s": 30.0,
        }
    ]
    run = simulate(chain3("fluid", 240, faults))
    assert run.records[0].end == ONSET + 30
    assert_recovered(run, by=150)


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "bad_deploy", "service": "api", "error_rate": 0.3},
        {"kind": "memory_leak", "service": "api", "leak_mb_per_s": 8.0},
        {"kind": "misconfiguration", "service": "api", "mode": "scale_to_zero"},
        {"kind": "misconfiguration", "service": "api", "mode": "cpu_limit"},
    ],
    ids=["bad_deploy", "memory_leak", "scale_to_zero", "cpu_limit"],
)
def test_duration_of_a_deploy_borne_fault_ends_its_cause(fault: dict[str, Any]) -> None:
    # Either duration_s is refused for kinds whose cause cannot lapse by itself, or the
    # cause is undone when it lapses; a record that closes on a cause still running is wrong.
    spec = {**fault, "at_s": ONSET, "duration_s": 60.0}
    try:
        sc = chain3("fluid", 360, [spec])
    except ScenarioError as err:
        assert "duration_s" in str(err)
        return
    run = simulate(sc)
    assert run.records[0].end == ONSET + 60
    assert_recovered(run, by=ONSET + 60 + 120)


# --------------------------------------------------------------------------- node_failure


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_node_failure_with_spare_capacity_heals_by_itself(fidelity: str) -> None:
    run = simulate(chain3(fidelity, 180, [{"kind": "node_failure", "node": 0, "at_s": ONSET}]))
    assert_clean_before_onset(run)
    # node 0 held a frontend and an api pod: both lost, recreated elsewhere at once (this
    # seed draws start-up times of 24 s for the frontend's and 7 s for the api's)
    assert run.at(75, "replicas_ready", "frontend") == 1
    assert run.at(75, "replicas_starting", "frontend") == 1
    assert run.at(75, "restarts", "frontend") == 0  # lost pods are replaced, not restarted
    assert run.at(75, "p99") > 1.3 * run.baseline("p99")
    assert run.frames[-1].cluster_value("nodes_ready") == 2
    assert (run.col("replicas_pending", "api") == 0).all()
    # heals after a pod start-up (about 20 s) without any action
    for svc in run.scenario.service_names:
        assert (run.col("replicas_ready", svc)[run.window(105, 180)] == 2).all()
    rec = run.records[0]
    assert rec.target == "node0" and rec.end is not None and ONSET < rec.end <= 105
    assert run.slo_ok()[1:].all()  # one pod of two lost per service: absorbed


FULL = {"cluster.node_cpu": 1.5}
"""Three 1.5-core nodes: chain3's six pods fill them (no room for a replacement)."""


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_node_failure_in_a_full_cluster_leaves_pods_pending(fidelity: str) -> None:
    run = simulate(
        chain3(fidelity, 180, [{"kind": "node_failure", "node": 0, "at_s": ONSET}], **FULL)
    )
    assert_clean_before_onset(run)
    after = run.window(75, 180)
    for svc in ("frontend", "api"):
        assert (run.col("replicas_pending", svc)[after] == 1).all()
        assert (run.col("replicas_ready", svc)[after] == 1).all()
    assert all(f.cluster_value("pods_unschedulable") == 2 for f in run.frames if f.t >= 75)
    assert (run.col("p99")[after] > 1.3 * run.baseline("p99")).all()
    assert run.records[0].end is None  # nothing frees capacity under no-op


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_node_failure_in_a_full_cluster_heals_once_the_autoscaler_adds_a_node(
    fidelity: str,
) -> None:
    over = {**FULL, "cluster.node_startup_s": 30.0, "cluster.autoscaler": {"enabled": True}}
    run = simulate(
        chain3(fidelity, 210, [{"kind": "node_failure", "node": 0, "at_s": ONSET}], **over)
    )
    assert run.at(75, "replicas_pending", "api") == 1
    assert max(f.cluster_value("nodes_provisioning") for f in run.frames) == 1
    # poll (10 s) + scale_up_delay_s (10 s) + node_startup_s (30 s) + pod start-up (~20 s)
    rec = run.records[0]
    assert rec.end is not None and 120 <= rec.end <= 165
    for svc in run.scenario.service_names:
        assert (run.col("replicas_ready", svc)[run.window(165, 210)] == 2).all()
    assert_recovered(run, by=150)


# -------------------------------------------------------------------------------- network


@functools.cache
def _net(fidelity: str, mitigated: bool) -> Run:
    sc = chain3(fidelity, 240, _NET)
    return simulate(sc, {150: [Restart("frontend")]} if mitigated else None)


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_network_fault_signature_persists_under_noop(fidelity: str) -> None:
    run = _net(fidelity, False)
    assert_clean_before_onset(run)
    span = run.window(90, 240)
    # 30% of frontend -> api calls are lost (counted as failed api attempts); one retry
    # leaves ~9% failing at the entry; the 50 ms delay shows in the entry's latency
    api_err = run.col("error_rate", "api")[span]
    assert np.all((api_err > 0.2) & (api_err < 0.4))
    entry_err = run.col("error_rate")[span]
    assert np.all((entry_err > 0.05) & (entry_err < 0.15))
    assert (run.col("p99")[span] > run.baseline("p99") + 0.04).all()
    # only that edge: db is untouched
    assert (run.col("error_rate", "db")[span] < 1e-3).all()
    assert (run.col("p99", "db")[span] < 1.3 * run.baseline("p99", "db")).all()
    assert_broken_throughout(run, 75)
    assert run.records[0].target == "frontend->api" and run.records[0].end is None


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_network_fault_ends_with_restart_of_the_caller(fidelity: str) -> None:
    run = _net(fidelity, True)
    rec = run.records[0]
    assert rec.end is not None and 150 < rec.end <= 210
    assert_recovered(run, by=210, frames=3)


@pytest.mark.parametrize(
    "fidelity",
    [
        "fluid",
        "request",
    ],
)
def test_network_fault_with_duration_heals_by_itself(fidelity: str) -> None:
    faults = [{**_NET[0], "duration_s": 45.0}]
    run = simulate(chain3(fidelity, 195, faults))
    assert not run.slo_ok()[run.window(90, 105)].any()
    assert run.records[0].end == ONSET + 45
    assert_recovered(run, by=135)


# ----------------------------------------------------------------------- misconfiguration


@functools.cache
def _misconfig_run(fidelity: str, mode: str, mitigated: bool) -> Run:
    plan: dict[str, tuple[float, float, Action]] = {
        "scale_to_zero": (120, 225, Scale("api", 2)),
        "memory_limit": (180, 300, Rollback("api")),
        "cpu_limit": (150, 270, Rollback("api")),
    }
    at, horizon, action = plan[mode]
    sc = chain3(fidelity, horizon, _misconfig(mode))
    return simulate(sc, {at: [action]} if mitigated else None)


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_misconfig_scale_to_zero_signature_persists_under_noop(fidelity: str) -> None:
    run = _misconfig_run(fidelity, "scale_to_zero", False)
    assert_clean_before_onset(run)
    after = run.window(75, 225)
    assert (run.col("replicas_desired", "api")[after] == 0).all()
    assert (run.col("replicas_ready", "api")[after] == 0).all()
    assert (run.col("error_rate")[run.window(90, 225)] > 0.99).all()
    assert run.records[0].end is None


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_misconfig_scale_to_zero_ends_with_scale_up(fidelity: str) -> None:
    run = _misconfig_run(fidelity, "scale_to_zero", True)
    rec = run.records[0]
    assert rec.end is not None and 120 < rec.end <= 165
    assert_recovered(run, by=180)


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_misconfig_memory_limit_signature_persists_under_noop(fidelity: str) -> None:
    run = _misconfig_run(fidelity, "memory_limit", False)
    assert_clean_before_onset(run)
    assert (run.col("deploy_version", "api")[run.window(75, 300)] == 1).all()
    # the new pods cannot start within their limit: OOM-killed right after every start
    oom = run.col("oom_kills", "api")
    np.testing.assert_array_equal(oom, run.col("restarts", "api"))
    assert run.at(180, "oom_kills", "api") >= 3
    assert run.at(300, "oom_kills", "api") > run.at(195, "oom_kills", "api")
    ready = run.col("replicas_ready", "api")[run.window(105, 300)]
    assert ready.mean() < 2 and ready.max() <= 2
    # one old pod keeps serving alone (maxUnavailable 0): latency up
    assert (run.col("p99", "api")[run.window(105, 300)] > 1.3 * run.baseline("p99", "api")).all()
    assert run.records[0].end is None


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_misconfig_memory_limit_ends_with_rollback(fidelity: str) -> None:
    run = _misconfig_run(fidelity, "memory_limit", True)
    rec = run.records[0]
    assert rec.end is not None and 180 < rec.end <= 225
    late = run.window(240, 300)
    assert (run.col("replicas_ready", "api")[late] == 2).all()
    oom = run.col("oom_kills", "api")[late]
    assert (oom == oom[0]).all()
    assert_recovered(run, by=240)


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_misconfig_cpu_limit_signature_persists_under_noop(fidelity: str) -> None:
    run = _misconfig_run(fidelity, "cpu_limit", False)
    assert_clean_before_onset(run)
    # throttled to 0.3x its request: the api serves 3.3x slower and saturates
    span = run.window(120, 270)
    assert (run.col("cpu_util", "api")[span] > 0.95).all()
    assert (run.col("p99", "api")[span] > 2 * run.baseline("p99", "api")).all()
    assert (run.col("replicas_ready", "api") == 2).all()
    assert_broken_throughout(run, 120)
    assert run.records[0].end is None


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_misconfig_cpu_limit_ends_with_rollback(fidelity: str) -> None:
    run = _misconfig_run(fidelity, "cpu_limit", True)
    rec = run.records[0]
    assert rec.end is not None and 150 < rec.end <= 225
    assert_recovered(run, by=240, frames=3)


# ---------------------------------------------------------------------------- flash_crowd


@functools.cache
def _flash(fidelity: str, mitigated: bool) -> Run:
    sc = chain3(fidelity, 180 if mitigated else 240, _FLASH, **HEADROOM)
    return simulate(sc, {90: [Scale("frontend", 6)]} if mitigated else None)


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_flash_crowd_overloads_then_heals_after_its_duration(fidelity: str) -> None:
    run = _flash(fidelity, False)
    assert_clean_before_onset(run)
    base = run.baseline("rps")
    # 3x within the 15 s ramp (the first full frame after it)
    assert run.at(90, "rps") > 2.7 * base
    # the frontend (2 pods x 2 slots) overflows its queue: drops at the entry, latency up
    span = run.window(90, 150)
    assert (run.col("error_rate")[span] > 0.05).all()
    assert (run.col("p99")[span] > 2 * run.baseline("p99")).all()
    assert (run.col("backlog")[span] > 50).all()
    # the cause ends at at_s + duration_s; the ramp down takes ramp_s more; then it heals
    assert run.records[0].end == ONSET + 90
    assert_recovered(run, by=180)
    assert (run.col("rps")[run.window(195, 240)] < 1.1 * base).all()


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_flash_crowd_ends_with_scale_out(fidelity: str) -> None:
    run = _flash(fidelity, True)
    # the crowd is still there, now served: 6 frontends carry 3x traffic within the SLO
    assert (run.col("rps")[run.window(105, 150)] > 2.7 * run.baseline("rps")).all()
    assert (run.col("replicas_ready", "frontend")[run.window(120, 180)] == 6).all()
    assert_recovered(run, by=120)


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_transient_overload_without_retry_change_recovers_at_both_fidelities(
    fidelity: str,
) -> None:
    faults = [
        {"kind": "flash_crowd", "at_s": ONSET, "factor": 2.0, "ramp_s": 30.0, "duration_s": 60.0}
    ]
    run = simulate(chain3(fidelity, 285, faults))
    assert not run.slo_ok()[run.window(135, 150)].any()  # db collapsed during the crowd
    assert run.records[0].end == ONSET + 60
    assert_recovered(run, by=240)


# ------------------------------------------------------------------------------ telemetry


TELEMETRY_H = 135.0
TELEMETRY_WINDOW = (75.0, 105.0)
"""Scrapes inside the 65-110 s window of the telemetry faults."""


def _telemetry_pair(fidelity: str, mode: str) -> tuple[Run, Run]:
    run = simulate(chain3(fidelity, TELEMETRY_H, _telemetry(mode)))
    clean = clean_run(fidelity, TELEMETRY_H)
    # the cluster itself is untouched: counters and histograms are the ground truth
    for a, b in zip(run.frames, clean.frames, strict=True):
        np.testing.assert_array_equal(a.counters, b.counters)
        np.testing.assert_array_equal(a.histogram, b.histogram)
        np.testing.assert_array_equal(a.in_flight, b.in_flight)
        assert np.isfinite(a.counters).all()
    # outside the window the gauges are exactly the clean ones (it heals by itself)
    outside = ~run.window(*TELEMETRY_WINDOW)
    for k in np.flatnonzero(outside):
        np.testing.assert_array_equal(run.frames[k].values, clean.frames[k].values)
        np.testing.assert_array_equal(run.frames[k].mask, clean.frames[k].mask)
    rec = run.records[0]
    assert rec.kind == "telemetry" and rec.end == ONSET + 45
    return run, clean


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_telemetry_gap_masks_every_gauge(fidelity: str) -> None:
    run, _ = _telemetry_pair(fidelity, "gap")
    inside = np.flatnonzero(run.window(*TELEMETRY_WINDOW))
    assert inside.size == 3
    for k in inside:
        f = run.frames[k]
        assert np.isnan(f.values).all() and not f.mask.any()
        assert np.isnan(f.cluster).all() and not f.cluster_mask.any()
        assert not (f.values == 0).any()  # missing is never zero


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_telemetry_delay_repeats_older_frames(fidelity: str) -> None:
    run, clean = _telemetry_pair(fidelity, "delay")
    for k in np.flatnonzero(run.window(*TELEMETRY_WINDOW)):
        # delay_scrapes = 2: the frame at t shows what was scraped at t - 30 s
        np.testing.assert_array_equal(run.frames[k].values, clean.frames[k - 2].values)
        assert run.frames[k].t == clean.frames[k].t
    assert not np.array_equal(run.frames[5].values, clean.frames[5].values, equal_nan=True)


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_telemetry_noise_perturbs_gauges_only(fidelity: str) -> None:
    run, clean = _telemetry_pair(fidelity, "noise")
    noisy = ("rps", "p99", "cpu_util", "memory_usage_mb")
    exact = ("replicas_ready", "restarts", "deploy_version", "replicas_desired")
    for k in np.flatnonzero(run.window(*TELEMETRY_WINDOW)):
        a, b = run.frames[k], clean.frames[k]
        for field in noisy:
            assert not np.allclose(a[field], b[field]), field
            ratio = a[field] / b[field]
            assert np.all((ratio > 0.2) & (ratio < 5)), field  # multiplicative, cv 0.3
        for field in exact:
            np.testing.assert_array_equal(a[field], b[field])


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_telemetry_missing_service_blanks_exactly_that_row(fidelity: str) -> None:
    run, clean = _telemetry_pair(fidelity, "missing_service")
    api = run.frames[0].services.index("api")
    for k in np.flatnonzero(run.window(*TELEMETRY_WINDOW)):
        a, b = run.frames[k], clean.frames[k]
        assert np.isnan(a.values[api]).all() and not a.mask[api].any()
        others = [i for i in range(len(a.services)) if i != api]
        np.testing.assert_array_equal(a.values[others], b.values[others])
        np.testing.assert_array_equal(a.cluster, b.cluster)


# ------------------------------------------------------------------ several faults at once


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_overlapping_bad_deploy_and_flash_crowd(fidelity: str) -> None:
    faults = [_BAD[0], {**_FLASH[0], "at_s": 80.0, "duration_s": 300.0}]
    sc = chain3(fidelity, 255, faults, **HEADROOM)
    run = simulate(sc, {135: [Rollback("api"), Scale("frontend", 6)]})
    assert_clean_before_onset(run)
    # both signatures at once: a new api version failing 30%, and 3x traffic
    assert run.at(105, "deploy_version", "api") == 1
    assert run.at(120, "rps") > 2.7 * run.baseline("rps")
    assert run.at(120, "error_rate", "api") > 0.2
    assert not run.slo_ok()[run.window(120, 135)].any()
    # each record tracks its own cause: the rollback ends one, the crowd goes on
    deploy, crowd = run.records
    assert (deploy.kind, crowd.kind) == ("bad_deploy", "flash_crowd")
    assert deploy.end is not None and 135 < deploy.end <= 210
    assert crowd.end is None
    # rollback + scale-out together bring the SLO back under the crowd
    assert (run.col("rps")[run.window(225, 255)] > 2.7 * run.baseline("rps")).all()
    assert_recovered(run, by=225, frames=3)


# -------------------------------------------------------------------- validation, seeding


@pytest.mark.parametrize(
    ("fault", "field"),
    [
        ({"kind": "bad_deploy", "service": "nope"}, "faults.0.service"),
        ({"kind": "memory_leak", "service": "nope"}, "faults.0.service"),
        ({"kind": "network", "src": "frontend", "dst": "nope"}, "faults.0.dst"),
        ({"kind": "network", "src": "nope", "dst": "api"}, "faults.0.src"),
        ({"kind": "network", "src": "frontend", "dst": "db"}, "faults.0"),
        ({"kind": "node_failure", "node": 3}, "faults.0.node"),
        ({"kind": "cpu_hog", "node": 9}, "faults.0.node"),
        ({"kind": "telemetry", "mode": "missing_service"}, "faults.0.service"),
        ({"kind": "telemetry", "mode": "missing_service", "service": "nope"}, "faults.0.service"),
        (
            {"kind": "bad_deploy", "service": "api", "error_rate": 2},
            "faults.0.bad_deploy.error_rate",
        ),
        ({"kind": "meteor_strike"}, "faults.0"),
    ],
)
def test_fault_at_unknown_target_fails_validation_naming_the_field(
    fault: dict[str, Any], field: str
) -> None:
    with pytest.raises(ScenarioError) as err:
        load_scenario("chain3", {"faults": [{"at_s": 10.0, **fault}]})
    assert len(err.value.problems) == 1
    assert f"scenario field '{field}'" in err.value.problems[0]


def test_fault_after_the_horizon_fails_validation() -> None:
    with pytest.raises(ScenarioError, match=r"faults\.0\.at_s.*not before the horizon"):
        load_scenario("chain3", {"horizon_s": 100, "faults": [{**_BAD[0], "at_s": 100.0}]})


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_same_seed_gives_identical_frames_with_faults(fidelity: str) -> None:
    faults = [
        {"kind": "pod_crash", "service": "db", "at_s": 20.0, "crash_loop": True},
        {**_NET[0], "at_s": 30.0},
        {"kind": "telemetry", "mode": "noise", "at_s": 40.0, "duration_s": 60.0},
    ]
    sc = chain3(fidelity, 120, faults)
    a, b = simulate(sc), simulate(sc)
    assert len(a.frames) == len(b.frames)
    for fa, fb in zip(a.frames, b.frames, strict=True):
        assert fa.t == fb.t
        np.testing.assert_array_equal(fa.values, fb.values)
        np.testing.assert_array_equal(fa.counters, fb.counters)
        np.testing.assert_array_equal(fa.histogram, fb.histogram)
        np.testing.assert_array_equal(fa.cluster, fb.cluster)
    assert a.records == b.records
    c = simulate(chain3(fidelity, 45, faults[:1], seed=1))
    assert not np.array_equal(a.frames[3].counters, c.frames[3].counters)


# ------------------------------------------------------------------------ the figure script


def test_incident_plots_entry_point_writes_pngs(tmp_path: Any) -> None:
    from experiments import incident_plots

    incident_plots.main(["--out", str(tmp_path), "--only", "bad_deploy,telemetry"])
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["bad_deploy.png", "telemetry.png"]
    for name in written:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kinds = {d.kind for d in incident_plots.DEMOS} | {"telemetry"}
    assert kinds == set(FAULT_KINDS), "every fault kind needs a figure"


DOCS = Path(__file__).resolve().parent.parent / "docs" / "incidents.md"


def _doc_default(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def test_incidents_doc_parameter_tables_match_the_schema() -> None:
    text = DOCS.read_text()
    common = {"kind", "at_s", "duration_s"}
    for model in get_args(get_args(Fault)[0]):
        kind = model.model_fields["kind"].default
        section = text.split(f"\n## {kind}\n", 1)[1].split("\n## ", 1)[0]
        section = section.replace("\\|", "/")  # escaped pipes inside a cell
        rows = dict(re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|", section, re.M))
        fields = {
            name: info
            for name, info in model.model_fields.items()
            if name not in common or (name == "duration_s" and info.default is not None)
        }
        assert set(rows) == set(fields), f"{kind}: table rows {sorted(rows)}"
        for name, info in fields.items():
            cell = rows[name].strip()
            want = "**required**" if info.is_required() else f"`{_doc_default(info.default)}`"
            assert cell == want, f"{kind}.{name}: docs say {cell}, schema {want}"
        assert f"img/incidents/{kind}" in section, f"{kind}: no figure"
