"""The oracle planner on cloned simulator state (agents/oracle.py): clone fidelity, the
choice rule, a known-good action on an obvious incident, determinism."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from agents.oracle import (
    NOOP,
    Budget,
    CloneError,
    Macro,
    OracleConfig,
    Projection,
    World,
    candidates,
    choose,
    fork_map,
    make_runbook,
    replay,
    run_oracle,
)
from agents.rollout import rollout
from envs.core.actions import DrainNode, Rollback, Scale
from envs.scenarios.loader import load_scenario
from envs.scenarios.schema import Scenario
from envs.scenarios.scoring import EpisodeScore, score_episode
from envs.sim.simulator import Simulator

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the oracle clones by os.fork")


def chain3(*faults: dict, horizon_s: float = 600.0) -> Scenario:
    return load_scenario("chain3", {"faults": list(faults), "horizon_s": horizon_s})


BAD_DEPLOY = {"kind": "bad_deploy", "service": "api", "at_s": 120, "error_rate": 0.5}
CPU_HOG = {"kind": "cpu_hog", "node": 0, "at_s": 120, "slowdown": 5.0}


def trajectory(world: World) -> tuple[list[bytes], list[tuple[float, object]]]:
    """Every frame's arrays as bytes (NaNs compare equal this way) and the action log."""
    frames = [
        b"".join(
            np.ascontiguousarray(a).tobytes()
            for a in (f.values, f.mask, f.counters, f.in_flight, f.histogram, f.cluster)
        )
        + np.float64(f.t).tobytes()
        for f in world.frames
    ]
    return frames, list(world.log)


# --------------------------------------------------------------------------------------------
# cloning


def test_world_without_a_plan_is_tuned_runbook_bit_for_bit() -> None:
    sc = chain3(BAD_DEPLOY)
    world = World(sc, seed=3)
    world.run()
    ref = rollout(Simulator(sc, fidelity="fluid", seed=3), make_runbook(sc))
    assert len(world.frames) == len(ref.frames) == 41
    for a, b in zip(world.frames, ref.frames, strict=True):
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.counters, b.counters)
    assert world.log == ref.actions
    assert world.score() == score_episode(ref)
    assert any(isinstance(a, Rollback) for _, a in world.log)  # the runbook did act


def test_fork_and_replay_clones_give_the_original_future_bit_for_bit() -> None:
    sc = chain3(BAD_DEPLOY)
    world = World(sc, seed=5)
    world.run(until_step=6)
    world.set_plan(Macro("scale", "api", 2, hold=4))  # a deviation in the prefix
    world.run(until_step=12)
    world.set_plan(Macro("hpa_target", "db", 30, hold=6))
    d = world.step_index

    def future(w: World) -> tuple[list[bytes], list[tuple[float, object]]]:
        w.run()
        return trajectory(w)

    forked = fork_map(lambda _: future(world), [0, 1], workers=2)
    replayed = replay(sc, 5, world.plans, d)
    assert replayed.step_index == d
    assert trajectory(replayed) == trajectory(world)  # the replayed prefix is the original's
    original = future(world)  # the original goes on after the clones left
    assert forked[0] == original
    assert forked[1] == original
    assert future(replayed) == original
    assert any(
        isinstance(a, Scale) and a.service == "api" for _, a in world.log[:40]
    )  # the prefix's deviation is in the log


def test_a_clone_changes_nothing_in_the_original() -> None:
    sc = chain3(BAD_DEPLOY)
    world = World(sc, seed=1)
    world.run(until_step=10)
    before = trajectory(world)

    def wander(_: int) -> int:
        world.set_plan(Macro("shed", amount=0.5, hold=3))
        world.run()
        return len(world.frames)

    assert fork_map(wander, [0]) == [41]
    assert trajectory(world) == before
    assert world.step_index == 10


def test_fork_map_keeps_order_and_reports_a_failing_clone() -> None:
    assert fork_map(lambda x: x * x, list(range(7)), workers=3) == [0, 1, 4, 9, 16, 25, 36]

    def boom(x: int) -> int:
        if x == 2:
            raise ValueError("clone 2 broke")
        return x

    with pytest.raises(CloneError, match="clone 2 broke"):
        fork_map(boom, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="workers must be >= 1"):
        fork_map(boom, [0], workers=0)


# --------------------------------------------------------------------------------------------
# the choice


def _score(slo: float, cost: float, disruptive: int) -> EpisodeScore:
    return EpisodeScore(
        scenario="hand",
        seed=0,
        horizon_s=600.0,
        n_faults=1,
        slo_violation_min=slo,
        error_budget_burn=0.0,
        p99_mean_s=None,
        p99_max_s=None,
        cost=cost,
        time_to_mitigate_s=None,
        mitigated=False,
        impacted=True,
        relapsed=None,
        n_actions=disruptive,
        disruptive_actions=disruptive,
        actions_without_fault=0,
        unknown_state_rate=0.0,
        allocated_cost=cost,
    )


def _p(macro: Macro, slo: float, cost: float = 1.0, disruptive: int = 1) -> Projection:
    return Projection(macro, macro is NOOP, _score(slo, cost, disruptive))


def test_choose_keeps_the_noop_when_no_candidate_clears_the_margin() -> None:
    config = OracleConfig(margin_min=0.25, cost_weight=0.0, disruption_weight=0.0)
    budget = Budget(allocated_cost=1.0, disruptive_actions=2, slo_violation_min=3.0)
    hand = [
        _p(NOOP, 3.0),
        _p(Macro("restart", "api"), 2.8),  # 0.2 min better: below the margin
        _p(Macro("scale", "db", 3, hold=8), 0.0, cost=1.2),  # best SLO, over the cost budget
        _p(Macro("veto", hold=8), 1.0, disruptive=3),  # over the disruption budget
    ]
    assert choose(hand, 0, budget, config) == 0
    better = [*hand, _p(Macro("rollback", "api"), 2.7)]  # 0.3 min better: clears it
    assert choose(better, 0, budget, config) == 4
    loose = OracleConfig(margin_min=0.25, cost_weight=0.0, cost_slack=0.25)
    assert choose(hand, 0, budget, loose) == 2  # within a 25 % cost slack it wins
    # an infeasible incumbent gives way to the best feasible candidate at any margin
    assert choose([_p(NOOP, 3.0, cost=2.0), hand[1]], 0, budget, config) == 1


def test_macro_and_config_reject_bad_values() -> None:
    with pytest.raises(ValueError, match=r"Macro\.kind='reboot'"):
        Macro("reboot", "api")
    with pytest.raises(ValueError, match=r"Macro\.service is required"):
        Macro("restart")
    with pytest.raises(ValueError, match="hold must be >= 1"):
        Macro("veto", hold=0)
    with pytest.raises(ValueError, match="every, hold, workers"):
        OracleConfig(every=0)


def test_candidates_read_the_hidden_fault() -> None:
    world = World(chain3(CPU_HOG), seed=0)
    world.run(until_step=9)
    labels = [m.label for m in candidates(world, OracleConfig())]
    assert "drain node0" in labels  # the hogged node, known only from the fault list
    assert "rollback api" not in labels  # nothing deployed since the start: not admissible
    assert "veto x8" in labels
    assert len(labels) == len(set(labels))
    wider = [m.label for m in candidates(world, OracleConfig(extra_holds=(20,)))]
    held = [x for x in labels if x.endswith(" x8")]
    assert set(wider) == set(labels) | {x[: -len("x8")] + "x20" for x in held}


# --------------------------------------------------------------------------------------------
# the oracle


def test_oracle_drains_the_hogged_node_that_the_runbook_cannot_see() -> None:
    sc = chain3(CPU_HOG)
    run = run_oracle(sc, 0)
    ref = rollout(Simulator(sc, fidelity="fluid", seed=0), make_runbook(sc))
    assert run.reference == score_episode(ref)  # the no-op's projection is tuned_runbook's run
    assert not any(isinstance(a, DrainNode) for _, a in ref.actions)
    assert run.choices[0]["macro"] == "drain node0"
    assert run.choices[0]["t"] == 120.0  # at the onset
    assert DrainNode(0) in [a for _, a in run.result.actions]
    assert run.score.slo_violation_min == 0.25
    assert run.reference.slo_violation_min == 0.75
    # the realised episode is the projection last followed, and within the budgets
    assert run.projected is not None
    assert run.projected.score == run.score
    assert run.score.allocated_cost <= run.reference.allocated_cost
    assert run.score.disruptive_actions <= run.reference.disruptive_actions


def test_oracle_is_deterministic_and_never_worse_than_the_runbook() -> None:
    sc = chain3(BAD_DEPLOY)
    config = OracleConfig(every=2, workers=2)
    a = run_oracle(sc, 7, config=config)
    b = run_oracle(sc, 7, config=OracleConfig(every=2, workers=1))
    assert a.score == b.score
    assert a.choices == b.choices
    assert a.clones == b.clones > 0
    assert a.score.slo_violation_min <= a.reference.slo_violation_min
    assert a.score.allocated_cost <= a.reference.allocated_cost + 1e-12
    assert a.score.disruptive_actions <= a.reference.disruptive_actions
    assert a.projected is not None and a.projected.score == a.score


def test_huge_margin_leaves_tuned_runbook_untouched() -> None:
    sc = chain3(CPU_HOG)
    run = run_oracle(sc, 0, config=OracleConfig(margin_min=1e9))
    assert run.choices == []
    assert run.score == run.reference
    assert run.planning_points > 0


# --------------------------------------------------------------------------------------------
# the docs quote the committed study


RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results" / "control" / "oracle"
DOC = Path(__file__).resolve().parents[1] / "docs" / "oracle.md"


STUDIES = sorted(p.parent for p in RESULTS.glob("*/*/headroom.md"))


def test_the_validation_study_is_committed() -> None:
    assert RESULTS / "validation" / "oracle" in STUDIES


@pytest.mark.parametrize("study", STUDIES, ids=[f"{p.parent.name}/{p.name}" for p in STUDIES])
def test_docs_quote_the_headroom_tables(study: Path) -> None:
    page = study / "headroom.md"
    rows = [line for line in page.read_text().splitlines() if line.startswith("| `")][:3]
    assert [r.split(" |")[0] for r in rows] == [
        "| `slo_violation_min`",
        "| `allocated_cost`",
        "| `disruptive_actions`",
    ]
    doc = DOC.read_text()
    for row in rows:
        assert row in doc, f"docs/oracle.md should quote {row!r} from {page}"
    report = json.loads((study / "headroom.json").read_text())
    assert report["upper_bound"] is True
    records = json.loads((study / "results.json").read_text())
    assert records["runs"] == report["entries"] * report["seeds"] == len(records["per_run"])
    reference = json.loads((study.parent / "tuned_runbook" / "results.json").read_text())
    assert [(r["entry"], r["replicate"]) for r in reference["per_run"]] == [
        (r["entry"], r["replicate"]) for r in records["per_run"]
    ]
