"""Runbook remediation on chain3: each fault it addresses is remedied (and the SLO
recovers), nothing disruptive happens without a fault or during a telemetry gap, cool-downs
hold, decisions are explained, and runs are deterministic."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from agents.baselines.hpa import HPAConfig, HPAPolicy
from agents.baselines.runbook import RunbookConfig, RunbookPolicy, RunbookState
from agents.policy import StaticPolicy
from agents.rollout import rollout
from envs.core.actions import Action, DrainNode, Restart, Rollback, Scale, ShedLoad
from envs.core.policy import Policy
from envs.core.telemetry import (
    CLUSTER_FIELDS,
    CLUSTER_INDEX,
    COUNTER_FIELDS,
    FIELD_INDEX,
    LATENCY_BUCKETS_S,
    SERVICE_FIELDS,
    Telemetry,
    make_frame,
)
from envs.scenarios.loader import load_scenario
from envs.scenarios.schema import Scenario
from envs.sim.simulator import SimResult, Simulator

DISRUPTIVE = (Restart, Rollback, ShedLoad, DrainNode)


def chain3(*faults: dict[str, Any], horizon_s: float = 1200.0, **overrides: Any) -> Scenario:
    return load_scenario("chain3", {"faults": list(faults), "horizon_s": horizon_s, **overrides})


def run(sc: Scenario, policy: Policy | None = None) -> SimResult:
    return rollout(Simulator(sc), policy if policy is not None else RunbookPolicy(sc))


def violation(result: SimResult) -> float:
    return float(result.summary["slo_violation_s"]["frontend"])


def of_kind(result: SimResult, kind: type) -> list[tuple[float, Action]]:
    return [(t, a) for t, a in result.actions if isinstance(a, kind)]


def series(result: SimResult, field: str, service: str) -> np.ndarray:
    s = result.frames[0].services.index(service)
    return np.array([f[field][s] for f in result.frames])


def violation_after(result: SimResult, t0: float) -> float:
    """Seconds of frontend SLO violation after ``t0``."""
    v = series(result, "slo_violation_s", "frontend")
    times = np.array([f.t for f in result.frames])
    return float(v[-1] - v[times <= t0][-1])


# ---------------------------------------------------------------------------- faults


def test_bad_deploy_rolls_back_and_slo_recovers() -> None:
    sc = chain3({"kind": "bad_deploy", "service": "api", "at_s": 300})
    res = run(sc)
    rollbacks = of_kind(res, Rollback)
    assert [a for _, a in rollbacks] == [Rollback("api")]
    t_rb = rollbacks[0][0]
    assert 300.0 < t_rb <= 420.0
    assert violation_after(res, t_rb + 120.0) == 0.0  # recovered two minutes after
    assert violation(res) < violation(run(sc, StaticPolicy())) / 5
    assert not of_kind(res, Restart) and not of_kind(res, ShedLoad)
    assert res.faults[0].end is not None  # the bad version is gone


def test_crash_loop_is_restarted() -> None:
    sc = chain3({"kind": "pod_crash", "service": "api", "at_s": 300, "crash_loop": True, "pods": 2})
    res = run(sc)
    restarts = of_kind(res, Restart)
    assert [a for _, a in restarts] == [Restart("api")]
    assert restarts[0][0] <= 360.0
    assert not of_kind(res, Rollback)  # nothing was deployed
    assert violation_after(res, restarts[0][0] + 120.0) == 0.0
    ready = series(res, "replicas_ready", "api")
    desired = series(res, "replicas_desired", "api")
    assert ready[-1] == desired[-1]
    assert violation(res) < violation(run(sc, StaticPolicy())) / 5


def test_memory_leak_is_rolled_back() -> None:
    sc = chain3({"kind": "memory_leak", "service": "api", "at_s": 300, "leak_mb_per_s": 3.0})
    res = run(sc)
    rollbacks = of_kind(res, Rollback)
    assert [a for _, a in rollbacks] == [Rollback("api")]
    t_rb = rollbacks[0][0]
    oom = series(res, "oom_kills", "api")
    times = np.array([f.t for f in res.frames])
    assert oom[-1] == oom[times <= t_rb + 120.0][-1]  # no OOM kill once rolled back
    assert violation(res) < violation(run(sc, HPAPolicy(HPAConfig(), sc))) / 5


def test_memory_limit_misconfiguration_is_rolled_back_once() -> None:
    sc = chain3({"kind": "misconfiguration", "service": "api", "at_s": 300, "mode": "memory_limit"})
    res = run(sc)
    assert [a for _, a in res.actions if isinstance(a, DISRUPTIVE)] == [Rollback("api")]
    assert res.faults[0].end is not None


def test_retry_storm_sheds_load_and_the_overload_ends() -> None:
    # db capped at 3 replicas: scaling cannot absorb the retries, so the HPA alone never
    # recovers (metastable), while shedding lets the backlog drain
    sc = chain3(
        {"kind": "retry_storm", "service": "db", "at_s": 300},
        horizon_s=1800.0,
        **{"topology.services.db.replicas.max": 3},
    )
    res = run(sc)
    sheds = [(t, a) for t, a in res.actions if isinstance(a, ShedLoad)]
    assert sheds and sheds[0][1].fraction >= 0.5
    assert sheds[0][0] <= 420.0
    fractions = [a.fraction for _, a in sheds]
    assert fractions[-1] == 0.0  # lifted completely in the end
    drops = [b - a for a, b in itertools.pairwise(fractions) if b < a]
    step = RunbookConfig().shed_release_step
    assert drops and max(-d for d in drops) <= step + 1e-9  # lifted gradually
    # the overload is over: from the first whole scrape interval without shedding the entry
    # meets its SLO to the horizon (when the last step is lifted depends on the noise of the
    # shed counts, docs/queueing.md, "Shedding noise": at 1605 s here)
    entry_err = series(res, "error_rate", "frontend")
    times = np.array([f.t for f in res.frames])
    lifted = sheds[-1][0]
    assert lifted <= sc.horizon_s - 120.0
    assert np.nanmax(entry_err[times >= lifted + 2 * sc.scrape_interval_s]) <= 0.01
    hpa_only = run(sc, HPAPolicy(HPAConfig(), sc))
    assert violation(hpa_only) > 1000.0
    # the HPA alone is still in violation at the horizon, the runbook not after lifting;
    # shed requests count as errors, so the minutes spent shedding are violations too (with
    # the shed counts' noise the runbook sheds for 20 minutes here: 1320 s vs 1500 s)
    assert violation_after(hpa_only, lifted) >= sc.horizon_s - lifted - sc.scrape_interval_s
    assert violation_after(res, lifted + 2 * sc.scrape_interval_s) == 0.0
    assert violation(res) < violation(hpa_only)


def test_scale_to_zero_is_scaled_back() -> None:
    sc = chain3(
        {"kind": "misconfiguration", "service": "api", "at_s": 300, "mode": "scale_to_zero"}
    )
    res = run(sc)
    ups = [(t, a) for t, a in res.actions if isinstance(a, Scale) and a.service == "api"]
    assert ups and ups[0][1] == Scale("api", 2) and ups[0][0] <= 330.0
    assert not [a for _, a in res.actions if isinstance(a, DISRUPTIVE)]
    assert violation(res) <= 60.0
    # the HPA alone does not: Kubernetes disables autoscaling at zero replicas
    assert violation(run(sc, HPAPolicy(HPAConfig(), sc))) > 800.0


def test_flash_crowd_hpa_scales_underneath() -> None:
    sc = chain3({"kind": "flash_crowd", "at_s": 300, "factor": 3.0}, horizon_s=1800.0)
    res = run(sc)
    assert any(isinstance(a, Scale) and a.replicas > 2 for _, a in res.actions)
    assert not of_kind(res, Restart) and not of_kind(res, Rollback)
    # Under the Kubernetes 1.35 HPA (KEP-4951 tolerance) the plain HPA rides this crowd out
    # with 240 s of SLO violation, less than the runbook's 345 s (its load shedding at
    # 450 s costs more than it saves here); under the 1.32 rule the plain HPA took 885 s.
    # The runbook still does far better than no autoscaling at all.
    assert violation(res) < violation(run(sc, StaticPolicy()))


# ---------------------------------------------------------------------------- no harm


def test_fault_free_run_takes_no_disruptive_action() -> None:
    res = run(chain3(horizon_s=1800.0))
    assert res.actions == []  # chain3 sits at 39-51% CPU: within the HPA's band too


@pytest.mark.parametrize("mode", ["gap", "noise", "delay", "missing_service"])
def test_telemetry_faults_take_no_disruptive_action(mode: str) -> None:
    fault: dict[str, Any] = {"kind": "telemetry", "mode": mode, "at_s": 300, "duration_s": 300}
    if mode == "missing_service":
        fault["service"] = "api"
    res = run(chain3(fault))
    assert not [a for _, a in res.actions if isinstance(a, DISRUPTIVE)]


def test_telemetry_gap_holds_then_acts_after_resuming() -> None:
    # a bad deploy during a telemetry gap: nothing while blind, a rollback once frames return
    sc = chain3(
        {"kind": "bad_deploy", "service": "api", "at_s": 300},
        {"kind": "telemetry", "mode": "gap", "at_s": 300, "duration_s": 300},
    )
    pol = RunbookPolicy(sc)
    sim = Simulator(sc)
    frame = sim.reset()
    state = pol.reset()
    held = []
    acted: list[tuple[float, Action]] = []
    while not sim.done:
        actions, state, info = pol.act(frame, state)
        if info["hold"] and info["hold"].startswith("telemetry gap"):
            held.append(frame.t)
            assert actions == []
        acted.extend((frame.t, a) for a in actions)
        frame = sim.step(actions)[-1]
    assert held[0] == 300.0 and held[-1] == 585.0
    rollbacks = [(t, a) for t, a in acted if isinstance(a, Rollback)]
    assert rollbacks and rollbacks[0][0] >= 600.0 + 2 * 15.0


# ---------------------------------------------------------------------------- mechanics


def frame(t: float, services: tuple[str, ...], **fields: list[float]) -> Telemetry:
    values = np.full((len(services), len(SERVICE_FIELDS)), np.nan)
    for name, v in fields.items():
        values[:, FIELD_INDEX[name]] = v
    cluster = np.zeros(len(CLUSTER_FIELDS))
    cluster[CLUSTER_INDEX["nodes_ready"]] = 3
    return make_frame(
        t,
        services,
        values,
        np.zeros((len(services), len(COUNTER_FIELDS))),
        np.zeros(len(services)),
        np.zeros((len(services), len(LATENCY_BUCKETS_S))),
        cluster,
    )


def healthy(t: float, **changes: list[float]) -> Telemetry:
    fields: dict[str, list[float]] = {
        "rps": [300.0, 300.0, 300.0],
        "error_rate": [0.0, 0.0, 0.0],
        "p99": [0.08, 0.07, 0.05],
        "cpu_usage": [0.4, 0.46, 1.0],
        "cpu_request": [1.0, 1.0, 2.0],
        "cpu_util": [0.4, 0.46, 0.5],
        "replicas_desired": [2, 2, 2],
        "replicas_ready": [2, 2, 2],
        "replicas_starting": [0, 0, 0],
        "replicas_pending": [0, 0, 0],
        "restarts": [0, 0, 0],
        "oom_kills": [0, 0, 0],
        "deploy_version": [0, 0, 0],
        "memory_usage_mb": [300, 300, 1000],
        "memory_request_mb": [512, 512, 2048],
    }
    fields.update(changes)
    return frame(t, ("frontend", "api", "db"), **fields)


def drive(pol: RunbookPolicy, frames: list[Telemetry]) -> list[tuple[float, Action, Any]]:
    state = pol.reset()
    out: list[tuple[float, Action, Any]] = []
    for f in frames:
        actions, state, info = pol.act(f, state)
        out.extend((f.t, a, info) for a in actions)
    assert isinstance(state, RunbookState)
    return out


def test_oom_without_a_deploy_restarts_and_adds_a_replica() -> None:
    pol = RunbookPolicy(chain3())
    frames = [healthy(15.0 * k) for k in range(10)]
    frames += [
        healthy(150.0 + 15.0 * k, oom_kills=[0, k, 0], restarts=[0, k, 0]) for k in range(1, 6)
    ]
    acts = drive(pol, frames)
    assert [a for _, a, _ in acts] == [Restart("api"), Scale("api", 3)]
    info = acts[0][2]
    assert info["runbook"][0]["rule"] == "oom"
    assert "no recent deploy" in info["runbook"][0]["why"]


def test_cooldown_prevents_flapping() -> None:
    # restarts keep rising while ready < desired: one restart, then nothing for 600 s
    pol = RunbookPolicy(chain3())
    frames = [healthy(15.0 * k) for k in range(8)]
    frames += [
        healthy(120.0 + 15.0 * k, restarts=[0, 2 * k, 0], replicas_ready=[2, 1, 2])
        for k in range(1, 50)
    ]
    restarts = [t for t, a, _ in drive(pol, frames) if isinstance(a, Restart)]
    assert len(restarts) == 2 and restarts[1] - restarts[0] >= 600.0


def test_every_action_is_explained_and_state_is_explicit() -> None:
    sc = chain3({"kind": "bad_deploy", "service": "api", "at_s": 300}, horizon_s=600.0)
    pol = RunbookPolicy(sc)
    s1, s2 = pol.reset(), pol.reset()
    assert s1 == s2 and isinstance(s1, RunbookState)
    sim = Simulator(sc)
    f = sim.reset()
    state = s1
    taken: list[tuple[float, Action, str]] = []
    while not sim.done:
        actions, state, info = pol.act(f, state)
        disruptive = [a for a in actions if isinstance(a, DISRUPTIVE)]
        assert len(info["runbook"]) >= len(disruptive)
        for d in info["runbook"]:
            assert d["rule"] and d["why"] and d["action"]
        taken += [(sim.now, a, info["runbook"][0]["rule"]) for a in disruptive]
        f = sim.step(actions)[-1]
    # it acts: one rollback of api, three decisions after the bad deploy, by the deploy rule
    assert taken == [(345.0, Rollback("api"), "bad_deploy")]
    assert s1 == pol.reset()  # the initial state was not mutated
    assert isinstance(pol.reset(2), tuple)


def test_deterministic() -> None:
    sc = chain3({"kind": "retry_storm", "service": "db", "at_s": 300})
    a, b = run(sc), run(sc)
    assert a.actions == b.actions and a.summary == b.summary


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="overload_error_rate"):
        RunbookConfig(overload_error_rate=1.5)
    with pytest.raises(ValidationError, match="extra"):
        RunbookConfig(restart_every=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="RunbookState"):
        RunbookPolicy(chain3()).act(healthy(0.0), None)
