"""The residual env around tuned_runbook: exact no-op, masks with cooldowns, budgets."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.registry import make_policy
from agents.residual import (
    KEEP,
    NOOP_TARGET,
    VETO,
    Multipliers,
    ResidualController,
    ResidualEnv,
    ResidualPolicy,
    dual_step,
    episode_gaps,
)
from agents.rollout import rollout
from envs.core.actions import Restart, Rollback, ShedLoad
from envs.scenarios.scoring import score_episode
from envs.scenarios.suites import load_suite
from envs.sim.simulator import Simulator


def _entry(entry_id: str) -> Any:
    return next(e for e in load_suite("train").entries if e.id == entry_id)


@pytest.mark.parametrize("entry_id", ["chain3-crash-loop-api", "chain3-flash-crowd"])
def test_noop_policy_reproduces_tuned_runbook_exactly(entry_id: str) -> None:
    entry = _entry(entry_id)
    sc, seed = entry.scenario, entry.run_seed(0)
    rules = rollout(Simulator(sc, fidelity="fluid", seed=seed), make_policy("tuned_runbook", sc))
    residual = rollout(Simulator(sc, fidelity="fluid", seed=seed), ResidualPolicy(sc))
    assert rules.actions and residual.actions == rules.actions
    assert len(residual.frames) == len(rules.frames)
    for a, b in zip(rules.frames, residual.frames, strict=True):
        assert a.t == b.t
        np.testing.assert_array_equal(a.values, b.values)


def test_env_noop_episode_is_tuned_runbook_and_its_return_is_minus_the_slo() -> None:
    entry = _entry("chain3-crash-loop-api")
    sc = entry.scenario
    env = ResidualEnv(scenario=sc, multipliers=(2.0, 0.5))
    _, info = env.reset(seed=3)
    rules = rollout(
        Simulator(sc, fidelity="fluid", seed=info["sim_seed"]), make_policy("tuned_runbook", sc)
    )
    applied: list[str] = []
    total, slo, done = 0.0, 0.0, False
    while not done:
        assert env.observation_space.contains(env.observe_state())
        _, r, _, done, step = env.step(env.noop_action())
        applied += step["actions"]
        total += r
        slo += step["reward_components"]["slo_violation"]
    assert applied == [repr(a) for _, a in rules.actions]
    rec = step["residual_episode"]
    assert rec["steps"] == 160 == rec["ref_steps"]
    assert (rec["cost"], rec["disruption"]) == (rec["ref_cost"], rec["ref_disruption"])
    assert episode_gaps(rec) == (0.0, 0.0)
    assert total == pytest.approx(-slo, abs=1e-9)  # budgets met exactly: only the SLO is left


def test_dual_step_by_hand() -> None:
    lam = Multipliers(cost=1.0, disruption=0.1)
    # mean cost gap (0.2 - 0.1) / 2 = 0.05 -> 1 + 5 * 0.05; mean disruption gap 0.02 -> 0.1 + 0.1
    new = dual_step(lam, [0.2, -0.1], [0.01, 0.03], lr_cost=5.0, lr_disruption=5.0)
    assert new.cost == pytest.approx(1.25, abs=1e-12)
    assert new.disruption == pytest.approx(0.2, abs=1e-12)
    # projection onto [0, cap]
    low = dual_step(Multipliers(0.1, 0.3), [-1.0], [-0.5], 1.0, 0.2)
    assert low.cost == 0.0 and low.disruption == pytest.approx(0.2, abs=1e-12)
    assert dual_step(Multipliers(9.0, 0.0), [3.0], [], 1.0, 1.0, cap=10.0) == Multipliers(10.0, 0.0)
    with pytest.raises(ValueError, match="lr_cost"):
        dual_step(lam, [0.1], [0.1], -1.0, 1.0)
    rec = {
        "steps": 4.0,
        "slo": 1.0,
        "cost": 6.0,
        "disruption": 3.0,
        "ref_steps": 4.0,
        "ref_slo": 0.0,
        "ref_cost": 4.0,
        "ref_disruption": 1.0,
    }
    assert episode_gaps(rec) == (0.5, 0.5)


def _controller() -> tuple[ResidualController, Any]:
    entry = _entry("chain3-bad-deploy-api")
    return ResidualController(entry.scenario), entry


def test_masks_cover_cooldowns_versions_shed_and_veto() -> None:
    ctrl, entry = _controller()
    sim = Simulator(entry.scenario, fidelity="fluid", seed=entry.run_seed(0))
    frame = sim.reset()
    state = ctrl.observe(frame, ctrl.reset())
    n = len(ctrl.services)
    free = 5 * n
    masks = ctrl.masks(state)
    assert masks.shape == (free + 2 + 2 * n + 3,) and masks[:free].all()
    rem = masks[free:]
    assert rem[KEEP] and not rem[VETO]  # nothing to veto at t = 0
    assert all(rem[2 + 2 * s] for s in range(n))  # restarts: no cooldown yet
    assert not any(rem[3 + 2 * s] for s in range(n))  # version 0: nothing to roll back to
    assert not rem[2 + 2 * n] and rem[3 + 2 * n] and rem[4 + 2 * n]  # shed 0 is in force

    # the agent restarts service 1: masked for 600 s, then valid again
    action = np.array([NOOP_TARGET] * n + [2 + 2 * 1])
    acts, state, info = ctrl.decide(state, action)
    assert Restart(ctrl.services[1]) in acts and not info["masked_out"]
    t0 = frame.t
    while True:
        frames = sim.step(acts)
        state = ctrl.observe(frames[-1], state)
        masks = ctrl.masks(state)
        if frames[-1].t - t0 >= 600.0 - 1e-9:
            assert masks[free + 2 + 2 * 1]
            break
        assert not masks[free + 2 + 2 * 1] and masks[free + 2]
        acts, state, _ = ctrl.decide(state, ctrl.noop())
    # a masked choice is a no-op: same actions as the no-op
    state = replace(state, last_restart_t=(frames[-1].t,) * n)
    assert not ctrl.masks(state)[free + 2]
    masked = ctrl.decide(state, np.array([NOOP_TARGET] * n + [2]))
    noop = ctrl.decide(state, ctrl.noop())
    assert masked[2]["masked_out"] and masked[0] == noop[0]


def test_veto_drops_the_rules_remediations_and_targets_offset_the_hpa() -> None:
    entry = _entry("chain3-crash-loop-api")
    ctrl = ResidualController(entry.scenario)
    sim = Simulator(entry.scenario, fidelity="fluid", seed=entry.run_seed(0))
    state = ctrl.observe(sim.reset(), ctrl.reset())
    n = len(ctrl.services)
    vetoed = None
    while not sim.done:
        assert state.preview is not None
        proposed = state.preview[0]
        if any(isinstance(a, Restart | Rollback | ShedLoad) for a in proposed):
            assert ctrl.masks(state)[5 * n + VETO]
            acts, _, _ = ctrl.decide(state, np.array([NOOP_TARGET] * n + [VETO]))
            vetoed = (proposed, acts)
            break
        acts, state, _ = ctrl.decide(state, ctrl.noop())
        state = ctrl.observe(sim.step(acts)[-1], state)
    assert vetoed is not None, "the rules never remediated the crash loop"
    proposed, acts = vetoed
    assert not any(isinstance(a, Restart | Rollback) for a in acts)
    assert [a for a in proposed if not isinstance(a, Restart | Rollback | ShedLoad)] == acts
    assert ctrl.targets(np.array([0, 2, 4, KEEP])) == {
        ctrl.services[0]: 30,
        ctrl.services[2]: 70,
    }
    assert ctrl.targets(ctrl.noop()) == {}


def test_residual_env_rejects_dict_observations_and_bad_actions() -> None:
    with pytest.raises(ValueError, match="obs='box'"):
        ResidualEnv(scenario="chain3", obs="dict")
    env = ResidualEnv(scenario="chain3", reference=False)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="not in"):
        env.step(np.array([9, 0, 0, 0]))
    with pytest.raises(ValueError, match="multipliers"):
        env.set_multipliers(-1.0, 0.0)


def test_train_and_evaluate_a_residual_policy(tmp_path: Path) -> None:
    """A seconds-long MaskablePPO run: multipliers move by the dual step; the run evaluates."""
    from agents.sb3.config import config_from_mapping
    from agents.sb3.policy import SB3Policy
    from agents.sb3.train import train_agent

    conf = config_from_mapping(
        {
            "agent": {"algo": "maskable_ppo", "n_steps": 64, "batch_size": 32, "n_epochs": 1},
            "env": {"name": "residual", "max_episode_steps": 16},
            "logger": {"kind": "none"},
            "scenario": "chain3",
            "total_timesteps": 128,
            "n_envs": 1,
            "eval": {"freq": 0, "episodes": 1},
            "checkpoint_freq": 0,
            "progress_bar": False,
            "out": str(tmp_path / "run"),
        }
    )
    metrics = train_agent(conf)
    history = metrics["lagrange"]["history"]
    assert [h[0] for h in history] == [64, 128]  # one dual step per rollout (4 episodes each)
    assert metrics["lagrange"]["final"] == list(history[-1][1:])
    assert all(h[1] >= 0 and h[2] >= 0 for h in history)
    policy = SB3Policy(tmp_path / "run")
    entry = _entry("chain3-crash-loop-api")
    per_entry = policy.for_scenario(entry.scenario)
    assert per_entry.residual is not None and per_entry.residual.scenario is entry.scenario
    result = rollout(Simulator(entry.scenario, fidelity="fluid", seed=1), per_entry)
    assert len(result.frames) == 161
    assert math.isfinite(score_episode(result).allocated_cost)
    from agents.bundle import BundleError
    from agents.bundle_export import export_run

    with pytest.raises(BundleError, match="env=residual"):
        export_run(tmp_path / "run", tmp_path / "bundle")


def test_an_added_shed_is_lifted_by_the_rules_once_healthy() -> None:
    env = ResidualEnv(scenario="chain3", reference=False)
    env.reset(seed=0)
    n = len(env.services)
    shed = []
    for i in range(40):
        action = env.noop_action()
        if i == 5:
            action = np.array([NOOP_TARGET] * n + [2 + 2 * n + 2])  # shed 0.5
        _, _, _, _, info = env.step(action)
        shed.append(env.frame.cluster_value("shed_fraction"))
        if i == 5:
            assert info["actions"][-1] == repr(ShedLoad(0.5))
    # healthy chain3: the overload rule lifts it in steps of 0.25, each after at least 60 s
    # (4 decisions) of the entry's error rate net of shedding within 1%; how long that takes
    # depends on the shed counts' noise (docs/queueing.md, "Shedding noise"): 9 and 6
    # decisions here
    assert shed[:5] == [0.0] * 5 and shed[5] == 0.5
    runs = [(f, len(list(g))) for f, g in itertools.groupby(shed[5:])]
    assert [f for f, _ in runs] == [0.5, 0.25, 0.0]
    assert all(k >= 4 for _, k in runs[:2])


def test_record_external_makes_the_rules_own_an_action() -> None:
    ctrl, _ = _controller()
    rules = ctrl.runbook
    state = ctrl.reset().runbook
    name = ctrl.services[1]
    after = rules.record_external(state, Restart(name), 100.0)
    assert after.last_action_t == {f"restart:{name}": 100.0, f"remediate:{name}": 100.0}
    rolled = rules.record_external(state, Rollback(name), 50.0)
    assert rolled.revisions == {name: -1} and rolled.last_action_t[f"rollback:{name}"] == 50.0
    shed = rules.record_external(state, ShedLoad(0.25), 10.0)
    assert (shed.shed, shed.shed_changed_t, shed.shed_released) == (0.25, 10.0, False)
    lifted = rules.record_external(shed, ShedLoad(0.0), 20.0)
    assert (lifted.shed, lifted.shed_released) == (0.0, True)
