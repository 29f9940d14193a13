"""The safety guard: exact interventions, config errors, fallback, breaker, and properties."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.baselines.hpa import HPAConfig, HPAPolicy
from agents.guard import (
    DISRUPTIVE_KINDS,
    Guard,
    GuardConfig,
    GuardedPolicy,
    GuardState,
    guard_config,
)
from agents.rollout import rollout
from envs.core.actions import (
    Action,
    DrainNode,
    Noop,
    Restart,
    Rollback,
    Scale,
    SetHPATarget,
    ShedLoad,
)
from envs.core.spec import ControlSpec
from envs.core.telemetry import (
    CLUSTER_FIELDS,
    COUNTER_FIELDS,
    FIELD_INDEX,
    LATENCY_BUCKETS_S,
    SERVICE_FIELDS,
    Telemetry,
    make_frame,
)
from envs.gym.codec import control_spec
from envs.scenarios.loader import load_scenario
from envs.sim.simulator import Simulator

SERVICES = ("a", "b", "c")
SPEC = ControlSpec(
    services=SERVICES,
    replicas_min=(1, 1, 2),
    replicas_max=(10, 20, 8),
    replicas_initial=(2, 3, 4),
    n_nodes=3,
)


def frame(
    t: float,
    desired: tuple[float, ...] = (2, 3, 4),
    observed: bool = True,
    cpu_util: float = 0.5,
) -> Telemetry:
    """A frame with every field at a plain value (or all NaN when not ``observed``)."""
    values = np.full((len(SERVICES), len(SERVICE_FIELDS)), np.nan if not observed else 1.0)
    if observed:
        values[:, FIELD_INDEX["cpu_util"]] = cpu_util
        values[:, FIELD_INDEX["cpu_usage"]] = cpu_util * np.asarray(desired)
        values[:, FIELD_INDEX["cpu_request"]] = np.asarray(desired, dtype=float)
        values[:, FIELD_INDEX["replicas_ready"]] = desired
        values[:, FIELD_INDEX["replicas_starting"]] = 0
        values[:, FIELD_INDEX["replicas_pending"]] = 0
    values[:, FIELD_INDEX["replicas_desired"]] = desired
    cluster = np.zeros(len(CLUSTER_FIELDS))
    return make_frame(
        t,
        SERVICES,
        values,
        np.zeros((len(SERVICES), len(COUNTER_FIELDS))),
        np.zeros(len(SERVICES)),
        np.zeros((len(SERVICES), len(LATENCY_BUCKETS_S))),
        cluster,
    )


def hold(**kw: Any) -> Guard:
    return Guard(GuardConfig(fallback="hold", **kw), SPEC)


def rules(verdict: Any) -> list[str]:
    return [i.rule for i in verdict.interventions]


# ------------------------------------------------------------------------------ config


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"guard\.max_stpe: Extra inputs"):
        guard_config({"max_stpe": 3})
    with pytest.raises(ValueError, match=r"guard\.max_step: Input should be greater"):
        guard_config({"max_step": 0})
    with pytest.raises(ValueError, match=r"cooldown_s: unknown action kinds \['scale'\]"):
        guard_config({"cooldown_s": {"scale": 10}})
    with pytest.raises(ValueError, match=r"hpa_target_min \(80\) must be <= hpa_target_max"):
        guard_config({"hpa_target_min": 80, "hpa_target_max": 50})
    with pytest.raises(ValueError, match=r"guard\.fallback: Input should be 'hpa' or 'hold'"):
        guard_config({"fallback": "static"})
    with pytest.raises(ValueError, match=r"guard.replicas_max: unknown services \['zz'\]"):
        Guard(GuardConfig(replicas_max={"zz": 3}), SPEC)
    with pytest.raises(ValueError, match=r"service 'c' has no valid replica count"):
        Guard(GuardConfig(replicas_max={"c": 1}), SPEC)
    assert guard_config(None) == GuardConfig()


# ------------------------------------------------------------------------------ clamps


def test_scale_clamps_bounds_step_and_surge_exactly() -> None:
    guard = hold(max_step=3, max_surge=5, replicas_max={"a": 6})
    state = guard.reset()
    acts: list[Action] = [Scale("a", 50), Scale("b", 9), Scale("c", 0)]
    verdict, state = guard.check(frame(0.0), acts, state)
    # a: 50 -> bounds [1, 6] -> 6 -> step from 2: 5; b: 3 -> 9 step 6; surge left 5-3=2 -> 5
    # c: 0 -> bounds [2, 8] -> 2 (step 2 <= 3)
    assert verdict.actions == [Scale("a", 5), Scale("b", 5), Scale("c", 2)]
    assert rules(verdict) == [
        "replica_bounds",
        "max_step",
        "max_step",
        "max_surge",
        "replica_bounds",
    ]
    assert verdict.source == "policy"
    assert state.desired == (5, 5, 2)
    reasons = [i.reason for i in verdict.interventions]
    assert reasons[0] == "50 replicas outside [1, 6] -> 6"
    assert reasons[3] == "+3 replicas with +3 already this decision exceeds max_surge 5 -> 5"


def test_a_clamp_to_the_current_count_drops_the_action_and_noops_vanish() -> None:
    guard = hold()
    verdict, _ = guard.check(frame(0.0, desired=(2, 3, 2)), [Noop(), Scale("c", 1)], guard.reset())
    assert verdict.actions == []
    assert rules(verdict) == ["replica_bounds"]
    assert verdict.interventions[0].after is None


def test_current_count_outside_bounds_goes_to_the_nearest_bound() -> None:
    guard = hold(max_step=1)
    verdict, _ = guard.check(frame(0.0, desired=(2, 30, 4)), [Scale("b", 25)], guard.reset())
    assert verdict.actions == [Scale("b", 20)]
    assert rules(verdict) == ["replica_bounds"]


def test_hpa_targets_shedding_duplicates_and_unknown_targets() -> None:
    guard = hold(hpa_target_min=40, hpa_target_max=80, max_shed_fraction=0.3)
    acts: list[Action] = [
        SetHPATarget("a", 10),
        SetHPATarget("a", 60),
        SetHPATarget("b", 95),
        ShedLoad(0.9),
        Restart("zz"),
        Scale("zz", 3),
    ]
    verdict, state = guard.check(frame(0.0), acts, guard.reset())
    assert verdict.actions == [SetHPATarget("a", 40), SetHPATarget("b", 80), ShedLoad(0.3)]
    assert rules(verdict) == [
        "hpa_target_bounds",
        "duplicate",
        "hpa_target_bounds",
        "shed_limit",
        "unknown_target",
        "unknown_target",
    ]
    assert state.shed_fraction == 0.3


# ------------------------------------------------------------------------------ rates


def test_cooldown_per_target_and_cluster_rate_limit() -> None:
    guard = hold(cooldown_s={"restart": 300.0}, max_disruptive=2, rate_window_s=1000.0)
    state = guard.reset()
    v, state = guard.check(frame(0.0), [Restart("a")], state)
    assert v.actions == [Restart("a")]
    v, state = guard.check(frame(100.0), [Restart("a"), Restart("b")], state)
    assert v.actions == [Restart("b")]
    assert rules(v) == ["cooldown"]
    assert v.interventions[0].reason == "restart on a 100.0 s after the last one (cooldown 300.0 s)"
    v, state = guard.check(frame(400.0), [Restart("a")], state)
    assert v.actions == []
    assert rules(v) == ["rate_limit"]
    v, state = guard.check(frame(1001.0), [Restart("a"), Rollback("c")], state)
    assert v.actions == [Restart("a")]  # the t=0 restart left the window; b's did not
    assert rules(v) == ["rate_limit"]


def test_shedding_less_is_never_limited() -> None:
    guard = hold(cooldown_s={"shed_load": 600.0})
    state = guard.reset()
    v, state = guard.check(frame(0.0), [ShedLoad(0.25)], state)
    assert v.actions == [ShedLoad(0.25)]
    v, state = guard.check(frame(15.0), [ShedLoad(0.5)], state)
    assert v.actions == [] and rules(v) == ["cooldown"]
    v, state = guard.check(frame(30.0), [ShedLoad(0.0)], state)
    assert v.actions == [ShedLoad(0.0)] and not v.intervened


# ------------------------------------------------------------------------------ fallback


def test_stale_or_missing_telemetry_hands_over_to_the_fallback() -> None:
    guard = hold(stale_after_s=60.0)
    state = guard.reset()
    v, state = guard.check(frame(0.0, observed=False), [Scale("a", 3)], state)
    assert v.source == "fallback" and v.actions == [] and rules(v) == ["stale_telemetry"]
    v, state = guard.check(frame(15.0), [Scale("a", 3)], state)
    assert v.source == "policy" and v.actions == [Scale("a", 3)]
    v, state = guard.check(frame(60.0, observed=False), [Scale("a", 4)], state)
    assert v.source == "policy"  # 45 s without telemetry: still within the threshold
    v, state = guard.check(frame(90.0, observed=False), [Scale("a", 4)], state)
    assert v.source == "fallback" and v.actions == []
    assert "75.0 s ago (limit 60.0 s)" in v.interventions[0].reason
    # a frame that is itself old (a stuck scraper) counts as stale too
    v, state = guard.check(frame(100.0), [Scale("a", 4)], state, now=200.0)
    assert v.source == "fallback"


def test_hpa_fallback_scales_like_the_hpa_within_the_limits() -> None:
    guard = Guard(GuardConfig(fallback="hpa", max_step=2, fallback_cpu_target=50), SPEC)
    hpa = HPAPolicy(HPAConfig.cpu(50, min_replicas=1, max_replicas=20), list(SERVICES))
    state = guard.reset()
    busy = frame(1000.0, cpu_util=1.0)  # twice the target: the HPA doubles
    hpa_actions, _, _ = hpa.act(busy, hpa.reset(1))
    assert hpa_actions == [Scale("a", 4), Scale("b", 6), Scale("c", 8)]
    v, state = guard.check(busy, None, state, error="RuntimeError: boom")
    assert v.source == "fallback"
    assert v.actions == [Scale("a", 4), Scale("b", 5), Scale("c", 6)]
    assert rules(v) == ["inference_error", "max_step", "max_step"]


def test_breaker_opens_after_n_violations_and_stays_open_until_reset() -> None:
    guard = hold(breaker_violations=3, breaker_window_s=100.0, max_step=1, breaker_reset_s=None)
    state = guard.reset()
    for k in range(3):  # out of range (a: at most 10): replica_bounds counts
        v, state = guard.check(frame(15.0 * k), [Scale("a", 99)], state)
        assert v.source == "policy"
    assert rules(v)[-1] == "circuit_breaker" and v.breaker_open
    v, state = guard.check(frame(45.0), [Scale("a", 3)], state)
    assert v.source == "fallback" and v.actions == []
    v, state = guard.check(frame(5000.0), [Scale("a", 3)], state)
    assert v.source == "fallback"  # no auto-reset configured
    state = guard.reset_breaker(state)
    v, state = guard.check(frame(5015.0), [Scale("a", 3)], state)
    assert v.source == "policy" and v.actions == [Scale("a", 3)]


def test_breaker_violations_outside_the_window_do_not_count_and_auto_reset() -> None:
    guard = hold(breaker_violations=2, breaker_window_s=20.0, breaker_reset_s=60.0, max_step=1)
    state = guard.reset()
    v, state = guard.check(frame(0.0), [Scale("a", 99)], state)
    v, state = guard.check(frame(30.0), [Scale("a", 99)], state)
    assert not v.breaker_open  # the first violation left the 20 s window
    v, state = guard.check(frame(40.0), None, state, error="ValueError: nan")
    assert v.breaker_open
    v, state = guard.check(frame(99.0), [Scale("a", 3)], state)
    assert v.source == "fallback"
    v, state = guard.check(frame(100.0), [Scale("a", 3)], state)
    assert v.source == "policy" and not v.breaker_open


def test_pacing_clamps_never_open_the_breaker() -> None:
    """A rule-like policy that scales in big steps, restarts often, repeats itself and sheds
    too much once is paced (max_step, cooldown, duplicate) but never shut out: only the one
    out-of-range shed counts toward the breaker (default limit 5)."""
    guard = hold()
    state = guard.reset()
    seen: set[str] = set()
    for k in range(40):
        big: list[Action] = [
            Scale("a", 10 if k % 2 else 1),
            Scale("b", 20 if k % 2 else 1),
            Restart("c"),
        ]
        big += [Restart("c")]  # a duplicate
        if k == 7:
            big.append(ShedLoad(0.75))
        v, state = guard.check(frame(15.0 * k), big, state)
        seen |= set(rules(v))
        assert v.source == "policy" and not v.breaker_open, (k, rules(v))
    assert {"max_step", "cooldown", "duplicate", "shed_limit"} <= seen
    assert "circuit_breaker" not in seen
    assert len(state.violation_times) == 0  # the shed at t=105 left the 300 s window


def test_the_breaker_closes_after_reset_s_half_open() -> None:
    """Defaults: open after 5 out-of-range proposals, closed 600 s later; while half-open
    (300 s) one violation re-opens it at once; after that, one violation does not."""
    guard = hold()
    assert guard.config.breaker_reset_s == 600.0
    state = guard.reset()
    for k in range(5):
        v, state = guard.check(frame(15.0 * k), [Scale("a", 99)], state)
    assert v.breaker_open and state.breaker_opened_t == 60.0
    v, state = guard.check(frame(659.0), [Scale("a", 3)], state)
    assert v.source == "fallback"
    v, state = guard.check(frame(660.0), [Scale("a", 3)], state)  # 600 s after opening
    assert v.source == "policy" and not v.breaker_open and v.actions == [Scale("a", 3)]
    assert state.half_open_until == 960.0
    v, state = guard.check(frame(700.0), [Scale("a", 99)], state)
    assert v.breaker_open and rules(v)[-1] == "circuit_breaker"  # half-open: at once
    v, state = guard.check(frame(1300.0), [Scale("a", 3)], state)  # closes again at 1300
    assert v.source == "policy"
    v, state = guard.check(frame(1700.0), [Scale("a", 99)], state)  # half-open ended at 1600
    assert v.source == "policy" and not v.breaker_open and state.half_open_until is None


# ------------------------------------------------------------------------------ properties

services = st.sampled_from([*SERVICES, "zz"])
actions = st.one_of(
    st.builds(Noop),
    st.builds(Scale, services, st.integers(-5, 60)),
    st.builds(Restart, services),
    st.builds(Rollback, services),
    st.builds(ShedLoad, st.floats(-1.0, 2.0)),
    st.builds(DrainNode, st.integers(-1, 4)),
    st.builds(SetHPATarget, services, st.integers(-10, 200)),
)
configs = st.builds(
    GuardConfig,
    max_step=st.integers(1, 6),
    max_surge=st.one_of(st.none(), st.integers(1, 12)),
    max_disruptive=st.integers(1, 4),
    rate_window_s=st.sampled_from([30.0, 120.0, 600.0]),
    cooldown_s=st.fixed_dictionaries(
        {k: st.sampled_from([0.0, 15.0, 60.0, 300.0]) for k in DISRUPTIVE_KINDS}
    ),
    max_shed_fraction=st.sampled_from([0.0, 0.3, 1.0]),
    fallback=st.sampled_from(["hpa", "hold"]),
    breaker_violations=st.integers(1, 6),
)
steps = st.lists(
    st.tuples(
        st.lists(actions, max_size=8),
        st.booleans(),  # telemetry observed
        st.tuples(*[st.integers(0, 25)] * 3),  # desired replicas as the frame reports
        st.booleans(),  # the policy raised
    ),
    min_size=1,
    max_size=25,
)


def check_invariants(
    guard: Guard, before: GuardState, after: GuardState, out: list[Action], now: float
) -> None:
    cfg = guard.config
    keys = [(a.kind, getattr(a, "service", getattr(a, "node", "ingress"))) for a in out]
    assert len(keys) == len(set(keys)), out
    surge = 0
    for a in out:
        assert not isinstance(a, Noop)
        if isinstance(a, Scale):
            lo, hi = guard.bounds[a.service]
            cur = before.desired[SERVICES.index(a.service)]
            assert lo <= a.replicas <= hi
            if lo <= cur <= hi:
                assert abs(a.replicas - cur) <= cfg.max_step
                surge += max(0, a.replicas - cur)
            assert a.replicas != cur
        if isinstance(a, SetHPATarget):
            assert a.service in SERVICES
            assert cfg.hpa_target_min <= a.cpu_target <= cfg.hpa_target_max
        if isinstance(a, ShedLoad):
            assert 0.0 <= a.fraction <= cfg.max_shed_fraction
        if isinstance(a, Restart | Rollback):
            assert a.service in SERVICES
        if isinstance(a, DrainNode):
            assert a.node >= 0
    if cfg.max_surge is not None:
        assert surge <= cfg.max_surge
    # every disruptive action that went out respects its cooldown and the cluster's rate
    went_out = [
        a
        for a in out
        if isinstance(a, Restart | Rollback | DrainNode)
        or (isinstance(a, ShedLoad) and a.fraction > before.shed_fraction)
    ]
    for a in went_out:
        key = (a.kind, getattr(a, "service", None) or f"node/{getattr(a, 'node', '')}")
        if isinstance(a, ShedLoad):
            key = ("shed_load", "ingress")
        prev = before.last_disruptive.get(key)
        assert prev is None or now - prev >= cfg.cooldown_s.get(a.kind, 0.0)
        assert after.last_disruptive[key] == now
    in_window = [t for t in after.disruptive_times if t > now - cfg.rate_window_s]
    assert len(in_window) <= cfg.max_disruptive


@settings(max_examples=150, deadline=None)
@given(cfg=configs, trajectory=steps)
def test_any_policy_output_leaves_every_constraint_satisfied(
    cfg: GuardConfig, trajectory: list[Any]
) -> None:
    guard = Guard(cfg, SPEC)
    state = guard.reset()
    for k, (acts, observed, desired, raised) in enumerate(trajectory):
        now = 15.0 * k
        fr = frame(now, desired=tuple(float(d) for d in desired), observed=observed)
        observed_state = guard._observe(fr, state)
        v, new = guard.check(fr, None if raised else acts, state, error="E" if raised else None)
        check_invariants(guard, observed_state, new, v.actions, now)
        if raised or (not observed and k == 0):
            assert v.source == "fallback"
        if v.source == "fallback" and cfg.fallback == "hold":
            assert v.actions == []
        for i in v.interventions:
            assert i.reason and i.rule
        state = new


def test_guarded_policy_runs_the_simulator_and_reports_every_intervention() -> None:
    sc = load_scenario("chain3", {"horizon_s": 600})
    spec = control_spec(sc)
    guard = Guard(GuardConfig(max_step=1, fallback="hold", breaker_violations=1000), spec)

    class Greedy:
        name = "greedy"

        def reset(self, n: int = 1) -> int:
            return 0

        def act(self, obs: Telemetry, state: int) -> tuple[list[Action], int, dict[str, Any]]:
            if obs.t == 45.0:
                raise RuntimeError("model blew up")
            first = obs.services[0]
            return [*(Scale(s, 99) for s in obs.services), Restart(first)], state + 1, {}

    policy = GuardedPolicy(Greedy(), guard)
    infos: list[dict[str, Any]] = []

    class Recording:
        name = policy.name

        def reset(self, n: int = 1) -> Any:
            return policy.reset(n)

        def act(self, obs: Telemetry, state: Any) -> Any:
            acts, state, info = policy.act(obs, state)
            infos.append(info)
            return acts, state, info

    result = rollout(Simulator(sc), Recording())
    assert len(infos) == 600 // 15
    assert infos[3]["guard"]["interventions"][0]["rule"] == "inference_error"
    restarts = [t for t, a in result.actions if isinstance(a, Restart)]
    # the first frame has no rates yet (stale: hold); then one restart per 300 s cooldown
    assert infos[0]["guard"]["source"] == "fallback"
    assert restarts == [15.0, 315.0]
    for info in infos:
        for a in info["guard_verdict"].actions:
            if isinstance(a, Scale):
                lo, hi = guard.bounds[a.service]
                assert lo <= a.replicas <= hi
    assert infos[3]["proposed"] == [] and infos[4]["proposed"] != []


def test_evaluate_guard_true_wraps_every_policy_and_scores_the_guarded_runs(
    tmp_path: Path,
) -> None:
    """``opsworld evaluate guard=true``: labels get ``-guard`` and each run's score is that
    of ``guard_policy(policy, control_spec(scenario))`` run directly."""
    from agents.evaluation.evaluate import PolicySpec, build_policy, load_policy_config
    from envs.scenarios.scoring import score_episode
    from envs.scenarios.suites import load_suite
    from experiments import evaluate as ev

    base = {"suite": "holdout", "topology": "chain3", "limit": 1, "seeds": 1, "workers": 1}
    ret = ev.evaluate(
        {**base, "policies": ["hpa"], "guard": True, "timelines": 0, "out": str(tmp_path)},
        log=None,
    )
    assert set(ret["results"]) == {"hpa-guard"}
    row = ret["results"]["hpa-guard"]["per_run"][0]
    entry = load_suite("holdout").on_topology("chain3").entries[0]
    spec = PolicySpec("hpa", config=load_policy_config("hpa"), guard=True)
    policy = build_policy(spec, entry.scenario)
    assert isinstance(policy, GuardedPolicy) and policy.name == "hpa+guard"
    direct = score_episode(
        rollout(Simulator(entry.scenario, fidelity="fluid", seed=entry.run_seed(0)), policy)
    )
    assert row["entry"] == entry.id
    assert row["slo_violation_min"] == pytest.approx(direct.slo_violation_min)
    assert row["cost"] == pytest.approx(direct.cost)
    plain = build_policy(PolicySpec("hpa", config=load_policy_config("hpa")), entry.scenario)
    assert not isinstance(plain, GuardedPolicy)
