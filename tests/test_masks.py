"""Action masks by value through every vector-env path (issue 15).

chain3 with a bad deploy of ``api`` at 45 s: before it no service has a previous version, so
every rollback is masked; from the first decision after it (t = 60 s) ``api``'s rollback is
valid. The same masks must come out of the env itself, SB3's DummyVecEnv and SubprocVecEnv
(``env_method`` and sb3-contrib's ``get_action_masks``, also under VecNormalize) and
Gymnasium's vector envs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from sb3_contrib.common.maskable.utils import get_action_masks
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize

import envs.gym as og

KW: dict[str, Any] = {
    "scenario": "chain3",
    "scenario_overrides": {
        "horizon_s": 300,
        "faults": [{"kind": "bad_deploy", "service": "api", "at_s": 45, "error_rate": 0.3}],
    },
}
# Remediate-v0 on chain3 (S = 3, 3 initial nodes): no-op; per service restart, rollback,
# scale-up; shed 0 / 0.25 / 0.5; drain node 0..2
BEFORE = np.array([1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1, 1, 1, 1], dtype=bool)
AFTER = BEFORE.copy()
AFTER[1 + 3 * 1 + 1] = True  # api's rollback
N_SCALE = 5 * 3  # ClusterOps-v0's scaling dimensions, all valid


def _remediate() -> gym.Env:
    return og.RemediateEnv(**KW)


def _ops() -> gym.Env:
    return og.ClusterOpsEnv(**KW)


def test_rollback_mask_follows_the_deploy_in_the_env() -> None:
    env = og.RemediateEnv(**KW)
    env.reset(seed=0)
    np.testing.assert_array_equal(env.action_masks(), BEFORE)
    for _ in range(3):  # t = 15, 30, 45: the deploy has not reached the control plane yet
        env.step(0)
        np.testing.assert_array_equal(env.action_masks(), BEFORE)
    env.step(0)  # t = 60
    np.testing.assert_array_equal(env.action_masks(), AFTER)
    # a masked rollback is a no-op; the valid one is a Rollback
    assert env.decode(2) == [] and env.decode(5) != []


def _through(venv: VecEnv) -> tuple[np.ndarray, np.ndarray]:
    venv.seed(0)
    venv.reset()
    before = np.stack(venv.env_method("action_masks"))
    assert before.shape[0] == venv.num_envs
    np.testing.assert_array_equal(get_action_masks(venv), before)
    for _ in range(4):
        venv.step(np.zeros(venv.num_envs, dtype=np.int64))
    after = np.stack(venv.env_method("action_masks"))
    np.testing.assert_array_equal(get_action_masks(venv), after)
    venv.close()
    return before, after


VEC: dict[str, Callable[[list[Callable[[], gym.Env]]], VecEnv]] = {
    "dummy": DummyVecEnv,
    "subproc": SubprocVecEnv,
    "vecnormalize": lambda fns: VecNormalize(DummyVecEnv(fns)),
}


@pytest.mark.parametrize("vec", sorted(VEC))
def test_remediate_masks_through_sb3_vec_envs(vec: str) -> None:
    before, after = _through(VEC[vec]([_remediate, _remediate]))
    np.testing.assert_array_equal(before, np.stack([BEFORE, BEFORE]))
    np.testing.assert_array_equal(after, np.stack([AFTER, AFTER]))


def test_ops_masks_through_subproc_vec_env() -> None:
    venv = SubprocVecEnv([_ops, _ops])
    venv.reset()
    before = np.stack(venv.env_method("action_masks"))
    full = np.concatenate([np.ones(N_SCALE, dtype=bool), BEFORE])
    np.testing.assert_array_equal(before, np.stack([full, full]))
    for _ in range(4):
        venv.step(np.tile(np.array([2, 2, 2, 0]), (2, 1)))
    after = np.stack(venv.env_method("action_masks"))
    full_after = np.concatenate([np.ones(N_SCALE, dtype=bool), AFTER])
    np.testing.assert_array_equal(after, np.stack([full_after, full_after]))
    venv.close()


@pytest.mark.parametrize("vector", ["sync", "async"])
def test_remediate_masks_through_gymnasium_vector_envs(vector: str) -> None:
    cls = gym.vector.SyncVectorEnv if vector == "sync" else gym.vector.AsyncVectorEnv
    venv = cls([_remediate, _remediate])
    venv.reset(seed=[0, 1])
    np.testing.assert_array_equal(np.stack(venv.call("action_masks")), np.stack([BEFORE] * 2))
    for _ in range(4):
        venv.step(np.zeros(2, dtype=np.int64))
    np.testing.assert_array_equal(np.stack(venv.call("action_masks")), np.stack([AFTER] * 2))
    venv.close()
