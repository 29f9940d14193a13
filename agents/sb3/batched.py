"""Stable-Baselines3 over a Gymnasium vector env: :class:`GymVectorToSB3`.

SB3 speaks its own :class:`~stable_baselines3.common.vec_env.VecEnv` API (``step_async`` /
``step_wait``, ``dones``, a list of info dicts, the last observation of a finished episode in
``info["terminal_observation"]``). :class:`GymVectorToSB3` translates a
:class:`gymnasium.vector.VectorEnv` with same-step auto-reset (such as
:class:`envs.gym.batched.BatchedAutoscaleEnv`) into it, so PPO trains on ``N`` batched
sub-envs as it would on ``N`` scalar envs in a ``DummyVecEnv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn


class GymVectorToSB3(VecEnv):
    """An SB3 ``VecEnv`` over a same-step auto-resetting Gymnasium ``VectorEnv``.

    Args:
        venv: The vector env (``metadata["autoreset_mode"]`` must be ``SAME_STEP``).

    Raises:
        ValueError: The vector env auto-resets in another mode.
    """

    def __init__(self, venv: VectorEnv) -> None:
        mode = venv.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"venv.metadata['autoreset_mode'] = {mode!r}: GymVectorToSB3 needs "
                "AutoresetMode.SAME_STEP (SB3 resets a finished env within the same step)"
            )
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        """Reset every sub-env (with the seed given to :meth:`seed`, if any)."""
        seed = self._seeds[0]
        obs, _ = self.venv.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        return np.asarray(obs)

    def step_async(self, actions: np.ndarray) -> None:
        """Remember the actions (the step runs in :meth:`step_wait`)."""
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        """Step the vector env and return SB3's ``(obs, rewards, dones, infos)``."""
        if self._actions is None:
            raise RuntimeError("step_async() must come before step_wait()")
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        self._actions = None
        dones = np.logical_or(terminated, truncated)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        final = info.get("final_obs")
        for i in np.flatnonzero(dones).tolist():
            infos[i]["terminal_observation"] = final[i] if final is not None else obs[i]
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return np.asarray(obs), np.asarray(rewards, dtype=np.float32), dones, infos

    def close(self) -> None:
        """Close the vector env."""
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The vector env's attribute, once per selected sub-env."""
        return [getattr(self.venv, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of the vector env (shared by every sub-env)."""
        setattr(self.venv, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **kwargs: Any
    ) -> list[Any]:
        """Call a method of the vector env once per selected sub-env."""
        fn = getattr(self.venv, method_name)
        return [fn(*method_args, **kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(
        self,
        wrapper_class: type[gym.Wrapper],
        indices: VecEnvIndices = None,
    ) -> list[bool]:
        """Sub-envs are not Gymnasium envs: never wrapped."""
        return [False for _ in self._indices(indices)]

    def _indices(self, indices: VecEnvIndices) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return list(indices)
