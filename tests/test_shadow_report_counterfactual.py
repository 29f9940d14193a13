"""The shadow report's simulated counterfactual (agents/evaluation/counterfactual.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from shadow_audit_fixture import SERVICES, Plan, record

from agents.evaluation.counterfactual import (
    CounterfactualSkipped,
    ReplicaSchedulePolicy,
    counterfactual,
    infer_scenario,
)
from envs.core.actions import Scale
from envs.core.telemetry import (
    CLUSTER_FIELDS,
    COUNTER_FIELDS,
    LATENCY_BUCKETS_S,
    SERVICE_FIELDS,
    Telemetry,
    make_frame,
)
from envs.scenarios.loader import load_scenario


def _frame_at(t: float) -> Telemetry:
    """An all-missing frame at time ``t`` (the schedule reads only the time)."""
    n = 2
    return make_frame(
        t,
        ("a", "b"),
        np.full((n, len(SERVICE_FIELDS)), np.nan),
        np.zeros((n, len(COUNTER_FIELDS))),
        np.zeros(n),
        np.zeros((n, len(LATENCY_BUCKETS_S))),
        np.full(len(CLUSTER_FIELDS), np.nan),
    )


def test_infer_scenario_matches_the_service_set() -> None:
    assert infer_scenario(["db", "frontend", "api"]) == "chain3"
    assert infer_scenario(load_scenario("boutique").service_names[::-1]) == "boutique"
    assert infer_scenario(["frontend", "api"]) is None
    assert infer_scenario([]) is None


def test_schedule_policy_scales_only_when_the_count_changes() -> None:
    policy = ReplicaSchedulePolicy(
        "recommended",
        times=[0.0, 15.0, 30.0, 45.0],
        schedule={"a": [2, None, 3, 3], "b": [1, 9, None, 0]},
        bounds={"a": (1, 10), "b": (1, 5)},
        initial={"a": 2, "b": 1},
    )
    assert policy.clamped == 2  # b: 9 -> 5, 0 -> 1
    state = policy.reset()
    seen = []
    for t in (0.0, 15.0, 30.0, 44.9, 45.0, 60.0):
        acts, state, _ = policy.act(_frame_at(t), state)
        seen.append((t, acts))
    assert seen == [
        (0.0, []),
        (15.0, [Scale("b", 5)]),
        (30.0, [Scale("a", 3)]),
        (44.9, []),
        (45.0, [Scale("b", 1)]),
        (60.0, []),
    ]
    assert policy.act(_frame_at(-1.0), policy.reset())[0] == []


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    plan = Plan()
    recs = [record(plan, k) for k in range(plan.n)]
    return counterfactual(recs, None, tmp_path_factory.mktemp("cf"))


def test_replay_csv_is_the_observed_entry_rate_with_gaps_interpolated(result: dict) -> None:
    plan = Plan()
    with open(result["traffic_csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == plan.n
    assert [float(r["t"]) for r in rows] == [k * plan.interval_s for k in range(plan.n)]
    # The gap [350, 355) lies in base traffic: interpolated between 300 and 300.
    assert [float(r["rps"]) for r in rows] == [plan.rps(k) for k in range(plan.n)]


def test_the_simulator_replays_that_traffic(result: dict) -> None:
    plan = Plan()
    for run in result["runs"].values():
        t = np.asarray(run["series"]["t"])
        rps = np.asarray(run["series"]["entry_rps"])
        base = (t > 60) & (t < plan.crowd_start * plan.interval_s - 30)
        crowd = (t > plan.crowd_start * plan.interval_s + 30) & (
            t < plan.crowd_end * plan.interval_s - 30
        )
        assert rps[base] == pytest.approx(300.0, rel=1e-6)
        assert rps[crowd] == pytest.approx(900.0, rel=1e-6)
    assert result["horizon_s"] == plan.n * plan.interval_s


def test_scaling_before_the_flash_crowd_beats_scaling_late(result: dict) -> None:
    """Recommended: every service at 4 from 1 min before the crowd; actual: 7.5 min into it."""
    rec, act = result["runs"]["recommended"], result["runs"]["actual"]
    assert result["label"] == "simulated" and result["scenario"] == "chain3"
    assert rec["slo_violation_min"] < act["slo_violation_min"]
    assert rec["entry_error_rate"] < act["entry_error_rate"]
    # More replicas for longer: more allocated cost (the node bill is the same fixed nodes).
    assert rec["allocated_cost_total"] > act["allocated_cost_total"]
    assert rec["cost_total"] == pytest.approx(act["cost_total"])
    # 3 scale-ups at 196, db up and down at 300/310; actual: 3 scale-ups at 230.
    assert (rec["scale_actions"], act["scale_actions"]) == (5, 3)
    assert result["difference"]["slo_violation_min"] == pytest.approx(
        rec["slo_violation_min"] - act["slo_violation_min"]
    )
    assert any("Open loop" in n for n in result["notes"])


def test_same_schedule_same_outcome(tmp_path: Path) -> None:
    """Recommended == actual everywhere: the two simulated runs are identical."""
    plan = Plan(n=80, crowd_start=20, crowd_end=40, recommended_up=30, actual_up=30,
                db_start=0, db_end=0, gap_start=50, gap_end=52, blocked_tick=-1)  # fmt: skip
    recs = [record(plan, k) for k in range(plan.n)]
    res = counterfactual(recs, "chain3", tmp_path)
    rec, act = res["runs"]["recommended"], res["runs"]["actual"]
    assert json.dumps(rec, sort_keys=True) == json.dumps(act, sort_keys=True)
    assert res["difference"]["slo_violation_min"] == 0.0


def test_skips_say_why(tmp_path: Path) -> None:
    plan = Plan(n=6)
    recs = [record(plan, k) for k in range(plan.n)]
    with pytest.raises(CounterfactualSkipped, match="fewer than two ticks"):
        counterfactual(recs[:1], None, tmp_path)
    with pytest.raises(CounterfactualSkipped, match=r"scenario 'boutique' has no deployment"):
        counterfactual(recs, "boutique", tmp_path)
    odd = [{**r, "services": ["x", "y"]} for r in recs]
    with pytest.raises(CounterfactualSkipped, match=r"match no built-in topology.*scenario="):
        counterfactual(odd, None, tmp_path)
    blind = [{**r, "telemetry": {s: {"rps": None} for s in SERVICES}} for r in recs]
    with pytest.raises(CounterfactualSkipped, match="entry service 'frontend'"):
        counterfactual(blind, None, tmp_path)


def test_the_shadowed_policy_in_closed_loop(tmp_path: Path) -> None:
    """bundle=: the bundle's policy (the HPA here) acts on the replayed traffic itself."""
    from agents.bundle_export import export_baseline
    from experiments.shadow_report import bundle_policy

    plan = Plan()
    recs = [record(plan, k) for k in range(plan.n)]
    folder = export_baseline("hpa", load_scenario("chain3"), tmp_path / "bundle")
    res = counterfactual(recs, "chain3", tmp_path / "cf", policy=bundle_policy(str(folder)))
    assert list(res["runs"]) == ["recommended", "actual", "policy"]
    run = res["runs"]["policy"]
    assert run["policy"] == "hpa+guard"
    # The HPA sees the simulated flash crowd and scales up, then back down; it acts on what
    # it sees, so its run differs from both schedules.
    assert run["scale_actions"] >= 2
    assert run["series"] != res["runs"]["actual"]["series"]
    assert run["series"] != res["runs"]["recommended"]["series"]
    assert any(
        n.startswith("policy: the shadowed policy acting in closed loop") for n in res["notes"]
    )


def test_a_bad_bundle_is_a_config_error(tmp_path: Path) -> None:
    from experiments.cli import ConfigError
    from experiments.shadow_report import bundle_policy

    with pytest.raises(ConfigError, match="bundle="):
        bundle_policy(str(tmp_path / "nope"))
