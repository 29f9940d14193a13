"""The telemetry-only action codec: belief vs the control plane, decoding, and serving
trained SB3 and Dreamer policies with the simulator package blocked."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig

from agents.rollout import rollout
from envs.core.actions import Action, DrainNode, Restart, Rollback, Scale, SetHPATarget, ShedLoad
from envs.core.spec import ControlSpec
from envs.core.telemetry import Telemetry
from envs.gym.codec import (
    LAYOUTS,
    SCALE_DELTAS,
    SHED_LEVELS,
    ActionCodec,
    ControlBelief,
    control_spec,
)
from envs.gym.envs import ClusterOpsEnv, RemediateEnv
from envs.scenarios.loader import load_scenario
from envs.sim.control import NodeState
from envs.sim.simulator import Simulator
from experiments import train as train_mod
from experiments.cli import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
# chain3 with a bad deploy of api (rollback becomes valid) and a one-minute telemetry gap
INCIDENT = {
    "horizon_s": 300,
    "faults": [
        {"kind": "bad_deploy", "service": "api", "at_s": 45, "error_rate": 0.3},
        {"kind": "telemetry", "mode": "gap", "at_s": 120, "duration_s": 60},
    ],
}
SPEC = ControlSpec(("a", "b"), (1, 2), (4, 6), (2, 3), n_nodes=3)


def _truth(env: ClusterOpsEnv | RemediateEnv) -> dict[str, Any]:
    """What the env read from the control plane before the codec (the old decode's inputs)."""
    cp = env._sim.engine.cp
    return {
        "desired": tuple(cp.desired),
        "rollback": [bool(h) for h in cp.history],
        "shed": cp.shed_fraction,
        "nodes": [
            n < len(cp.nodes) and cp.nodes[n].state == NodeState.READY for n in range(env.n_nodes)
        ],
    }


def _believed(env: ClusterOpsEnv | RemediateEnv) -> dict[str, Any]:
    b = env.belief
    return {
        "desired": b.desired,
        "rollback": [b.can_rollback(s) for s in range(len(env.services))],
        "shed": b.shed_fraction,
        "nodes": [b.drainable(n, env.n_nodes) for n in range(env.n_nodes)],
    }


@pytest.mark.parametrize("env_cls", [RemediateEnv, ClusterOpsEnv])
def test_belief_is_the_control_plane_along_random_trajectories(env_cls: type) -> None:
    """Outside a telemetry gap the belief holds what the control plane holds, so the masks
    and decoded actions are those the env computed from the control plane before."""
    env = env_cls(scenario="chain3", scenario_overrides={**INCIDENT, "horizon_s": 600})
    env.reset(seed=3)
    env.action_space.seed(3)
    rng = np.random.default_rng(3)
    seen_rollback = seen_drain = seen_gap = False
    done = False
    while not done:
        gap = bool(np.isnan(env.frame["replicas_desired"]).all())
        seen_gap |= gap
        truth, mine = _truth(env), _believed(env)
        if not gap:
            assert mine == truth, env.frame.t
        else:  # the belief keeps the last values and follows the env's own actions
            assert mine["desired"] == truth["desired"] and mine["nodes"] == truth["nodes"]
        seen_rollback |= mine["rollback"][1]
        a = env.action_space.sample()
        if rng.random() < 0.2:  # roll back api, or drain node 1, now and then
            k = 2 + 3 * 1 if rng.random() < 0.5 else env.n_remediations - env.n_nodes + 1
            a = k if env_cls is RemediateEnv else np.array([*a[:-1], k])
        _, _, _, done, info = env.step(a)
        seen_drain |= any("DrainNode" in x for x in info["actions"])
        assert "refused" not in info  # nothing the belief allowed was refused here
    assert seen_rollback and seen_drain and seen_gap


def test_belief_through_a_gap_follows_its_own_actions() -> None:
    sim = Simulator(load_scenario("chain3", INCIDENT))
    codec = ActionCodec("cluster_ops", control_spec(sim.scenario))
    belief = ControlBelief.initial(codec.spec).observe(sim.reset())
    assert belief.nodes_at_start == 3 and belief.desired == (2, 2, 2)
    gap_seen = False
    while not sim.done:
        frames = sim.step([])
        for f in frames:
            belief = belief.observe(f)
        if np.isnan(frames[-1]["replicas_desired"]).all():
            gap_seen = True
            assert belief.deploy_version[1] == 1  # api's deploy at 45 s, seen before the gap
            assert codec.remediation_mask(belief)[1 + 3 * 1 + 1]  # rollback api stays valid
            moved = belief.after([Scale("api", 4), ShedLoad(0.25), Rollback("db")], sim.services)
            assert moved.desired == (2, 4, 2) and moved.shed_fraction == 0.25
            assert math.isnan(moved.deploy_version[2]) and not moved.can_rollback(2)
            assert moved.last_action_t[1] == belief.t == frames[-1].t
    assert gap_seen


def test_drains_count_only_start_nodes_not_drained_by_the_controller() -> None:
    belief = ControlBelief.initial(SPEC)
    codec = ActionCodec("remediate", SPEC)
    nodes = slice(codec.n_remediations - 3, None)
    assert codec.remediation_mask(belief)[nodes].all()  # before any frame: the spec's nodes
    belief = belief.after([DrainNode(1)], SPEC.services)
    assert codec.remediation_mask(belief)[nodes].tolist() == [True, False, True]
    off = ActionCodec("remediate", SPEC, allow_drain=False)
    assert not off.remediation_mask(belief)[nodes].any()


def test_refused_actions_are_not_applied_or_counted() -> None:
    env = RemediateEnv(scenario="chain3", scenario_overrides={"horizon_s": 120})
    env.reset(seed=0)
    env.sim.engine.cp.fail_node(0)  # type: ignore[union-attr]  # telemetry cannot say which
    drain0 = env.n_remediations - env.n_nodes
    assert env.action_masks()[drain0]  # the belief cannot know node 0 is gone
    _, _, _, _, info = env.step(drain0)
    assert info["actions"] == [] and info["reward_components"]["disruption"] == 0.0
    assert info["refused"] == [
        "DrainNode(node=0, kind='drain_node'): drain_node 0: no such ready node; "
        "ready nodes are [1, 2]"
    ]


@settings(max_examples=60, deadline=None)
@given(
    layout=st.sampled_from(LAYOUTS),
    desired=st.tuples(st.integers(1, 4), st.integers(2, 6)),
    version=st.tuples(st.sampled_from([0.0, 1.0, math.nan]), st.sampled_from([0.0, 2.0])),
    shed=st.sampled_from(SHED_LEVELS),
    data=st.data(),
)
def test_decoded_actions_respect_bounds_and_masks(
    layout: str,
    desired: tuple[int, int],
    version: tuple[float, float],
    shed: float,
    data: st.DataObject,
) -> None:
    codec = ActionCodec(layout, SPEC)
    belief = ControlBelief.initial(SPEC)
    belief = ControlBelief(
        0.0, desired, (2.0, 3.0), version, shed, 3.0, frozenset(), (-math.inf,) * 2
    )
    space = codec.action_space()
    space.seed(data.draw(st.integers(0, 2**16)))
    action = space.sample()
    masks = codec.masks(belief)
    assert masks.shape == (sum(codec.nvec),)
    hpa = [Scale("a", 3)] if layout == "hpa_tune" else []
    acts: list[Action] = codec.decode(action, belief, hpa)
    for a in acts:
        if isinstance(a, Scale):
            s = SPEC.services.index(a.service)
            assert SPEC.replicas_min[s] <= a.replicas <= SPEC.replicas_max[s]
            assert a.replicas != desired[s] or layout == "hpa_tune"
        if isinstance(a, Rollback):
            assert belief.can_rollback(SPEC.services.index(a.service))
        if isinstance(a, ShedLoad):
            assert a.fraction != shed
    if codec.masked_out(action, masks):  # a masked remediation is a no-op
        without = np.array(action).reshape(-1).copy()
        without[-1] = 0
        plain = int(without[0]) if layout == "remediate" else without
        assert acts == codec.decode(plain, belief, hpa)
    assert len([a for a in acts if isinstance(a, Restart | Rollback | ShedLoad)]) <= 1
    # keep-everything (autoscale) decodes to nothing
    if layout == "autoscale":
        assert codec.decode(np.full(2, SCALE_DELTAS.index(0)), belief) == []
    # features of the choice = onehot @ feature_matrix
    feats = codec.choice_features(action)
    assert feats.shape == (codec.action_encoder.size,)


def test_codec_rejects_bad_layouts_and_specs() -> None:
    with pytest.raises(ValueError, match="layout must be one of"):
        ActionCodec("scale_all", SPEC)
    with pytest.raises(ValueError, match=r"service 'a' has replicas min 1, initial 5, max 4"):
        ControlSpec(("a",), (1,), (4,), (5,), n_nodes=1)
    with pytest.raises(ValueError, match="replicas_max has 1 entries for 2 services"):
        ControlSpec(("a", "b"), (1, 1), (4,), (2, 2), n_nodes=1)


# --------------------------------------------------------------------------- serving


class Recorder:
    """A policy that records the frames it decided on and its actions."""

    def __init__(self, policy: Any) -> None:
        self.policy, self.name = policy, policy.name
        self.frames: list[Telemetry] = []
        self.actions: list[list[str]] = []

    def reset(self, n: int = 1) -> Any:
        return self.policy.reset(n)

    def act(self, obs: Telemetry, state: Any) -> tuple[list[Action], Any, dict[str, Any]]:
        actions, state, info = self.policy.act(obs, state)
        self.frames.append(obs)
        self.actions.append([repr(a) for a in actions])
        return actions, state, info


@pytest.fixture(scope="module")
def composer() -> Iterator[Callable[..., DictConfig]]:
    train_mod.register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield lambda *o: compose(config_name="train", overrides=list(o))
    GlobalHydra.instance().clear()


# Run in a fresh interpreter: any import of envs.sim (or below it) raises.
SERVE = r"""
import importlib.abc, json, pickle, sys

class BlockSim(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "envs.sim" or name.startswith("envs.sim."):
            raise ImportError(f"blocked: {name} (a policy must not need the simulator)")
        return None

sys.meta_path.insert(0, BlockSim())
from agents.dreamer.policy import DreamerPolicy
from agents.sb3.policy import SB3Policy

out = {}
for kind, run, frames in json.loads(sys.argv[1]):
    policy = SB3Policy(run) if kind == "sb3" else DreamerPolicy(run)
    with open(frames, "rb") as fh:
        recorded = pickle.load(fh)
    state, acts = policy.reset(1), []
    for frame in recorded:
        actions, state, _ = policy.act(frame, state)
        acts.append([repr(a) for a in actions])
    out[kind] = acts
assert not [m for m in sys.modules if m == "envs.sim" or m.startswith("envs.sim.")]
print(json.dumps(out))
"""


def test_trained_policies_decide_on_recorded_telemetry_without_the_simulator(
    composer: Callable[..., DictConfig], tmp_path: Path
) -> None:
    """SB3 and Dreamer policies load and decide with envs.sim blocked, as in the simulator."""
    sb3_run, dreamer_run = tmp_path / "sb3", tmp_path / "dreamer"
    common = ("debug=default", "logger=none", "eval.freq=0", "env=ops", "scenario=chain3")
    train_mod.train(composer(*common, "agent=maskable_ppo", f"out={sb3_run}"))
    train_mod.train(composer(*common, "agent=dreamer", "total_timesteps=60", f"out={dreamer_run}"))
    from agents.dreamer.policy import DreamerPolicy
    from agents.sb3.policy import SB3Policy

    jobs = []
    expected = {}
    for kind, run, policy in (
        ("sb3", sb3_run, SB3Policy(sb3_run)),
        ("dreamer", dreamer_run, DreamerPolicy(dreamer_run)),
    ):
        rec = Recorder(policy)
        result = rollout(Simulator(load_scenario("chain3", INCIDENT), seed=4), rec)
        assert len(rec.frames) == len(result.decisions) == 20
        frames = tmp_path / f"{kind}.frames.pkl"
        frames.write_bytes(pickle.dumps(rec.frames))
        jobs.append((kind, str(run), str(frames)))
        expected[kind] = rec.actions
    proc = subprocess.run(
        [sys.executable, "-c", SERVE, json.dumps(jobs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert served == expected
    assert any(acts for acts in expected["sb3"]) or any(acts for acts in expected["dreamer"])


def test_dreamer_policy_imports_neither_sb3_nor_the_simulator() -> None:
    code = (
        "import sys, agents.dreamer.policy, agents.dreamer.planner\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('stable_baselines3', "
        "'sb3_contrib') or m.startswith(('agents.sb3', 'envs.sim'))]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_block_itself_bites() -> None:
    """The finder of the serving test does stop an import of the simulator."""
    code = SERVE.split("from agents.dreamer.policy")[0] + "import envs.gym.envs\n"
    code += "envs.gym.envs.RemediateEnv(scenario='chain3').reset(seed=0)\n"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0 and "blocked: envs.sim" in proc.stderr


# --------------------------------------------------------------------------- disruption


def test_env_reward_counts_disruption_as_the_scorer_does() -> None:
    """Item 8 of issue 10: one definition, the same count in the reward and the score."""
    from envs.scenarios.scoring import count_disruptive
    from envs.sim.simulator import SimResult

    env = ClusterOpsEnv(scenario="chain3", scenario_overrides={**INCIDENT, "horizon_s": 600})
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    frames, log, total = [env.frame], [], 0.0
    done = False
    while not done:
        t = env.frame.t
        acts: list[Action] = []
        for s in env.services:  # scale-downs below and above the ready count, restarts, sheds
            r = int(rng.integers(1, 6))
            if rng.random() < 0.3:
                acts.append(Scale(s, r))
        if rng.random() < 0.2:
            acts.append(Restart(env.services[int(rng.integers(3))]))
        if rng.random() < 0.2:
            acts.append(ShedLoad(float(rng.choice([0.0, 0.25]))))
        _, _, _, done, info = env.step_actions(acts)
        assert "refused" not in info
        log += [(t, a) for a in acts]
        frames.append(env.frame)
        total += info["reward_components"]["disruption"]
    result = SimResult(env._sim.scenario, frames, log)
    n = count_disruptive(result)
    assert total == n > 0
    assert 0 < n < len(log)  # some actions (scale-ups, shedding 0) were not disruptive


def test_is_disruptive_table() -> None:
    from envs.core.actions import Noop, is_disruptive

    assert is_disruptive(Restart("a"), 0) and is_disruptive(Rollback("a"), 0)
    assert is_disruptive(DrainNode(0), 0) and is_disruptive(ShedLoad(0.25), 0)
    assert not is_disruptive(ShedLoad(0.0), 0) and not is_disruptive(Noop(), 0)
    assert is_disruptive(Scale("a", 2), 3) and not is_disruptive(Scale("a", 3), 3)
    assert not is_disruptive(Scale("a", 4), 3) and not is_disruptive(SetHPATarget("a", 50), 0)


def test_set_hpa_target_is_validated() -> None:
    from envs.core.actions import InvalidActionError
    from envs.scenarios.validate import validate_action

    sc = load_scenario("chain3")
    assert validate_action(SetHPATarget("api", 60), sc) == SetHPATarget("api", 60)
    with pytest.raises(InvalidActionError, match="set_hpa_target: unknown service 'web'"):
        validate_action(SetHPATarget("web", 60), sc)
    for bad in (0, 101, 50.5, True):
        with pytest.raises(InvalidActionError, match=r"cpu_target must be an int percent"):
            validate_action(SetHPATarget("api", bad), sc)  # type: ignore[arg-type]
