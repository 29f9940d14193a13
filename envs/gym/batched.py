"""A Gymnasium vector env of ``N`` autoscaling scenarios stepped in one vectorised pass.

:class:`BatchedAutoscaleEnv` is :class:`envs.gym.envs.AutoscaleEnv` (the env PPO trains on
by default, ``configs/train.yaml``: ``env=autoscale``) for ``N`` copies of one scenario family
at once, over the batched fluid core :class:`envs.sim.batched.BatchedFluid`:

* the same spaces: each sub-env's action space is ``MultiDiscrete([5] * S)`` (the replica
  deltas :data:`envs.gym.codec.SCALE_DELTAS`, clamped to the service's bounds) and its
  observation the :class:`envs.gym.encoder.ObsEncoder` layout (``"box"`` only);
* the same reward (:class:`envs.gym.envs.RewardWeights`: SLO violation, allocated cost,
  disruptive scale-downs below the ready replicas);
* the same episode: ``reset`` draws each sub-env's scenario and simulator seed from its own
  generator, as :meth:`AutoscaleEnv.reset` does; sub-env ``i`` reset with the vector seed
  ``s`` uses the generator of ``AutoscaleEnv.reset(seed=row_seeds(s, N)[i])``, so on a
  scenario the batched core fully supports the two run the same episode (``tests/
  test_batched.py`` compares them);
* truncation at the horizon (all sub-envs share it, so they end together), then
  **same-step auto-reset** (``metadata["autoreset_mode"]``): the returned observation is the
  next episode's first, the last one is in ``infos["final_obs"]``.

What the batched core does not simulate (incidents other than flash crowds, the escape from
retry-sustained overload, per-node scheduling, HPAs) is listed in :mod:`envs.sim.batched`;
a scenario that needs one of them is refused with
:class:`~envs.sim.batched.UnsupportedScenarioError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.core.telemetry import CLUSTER_INDEX, FIELD_INDEX
from envs.gym.codec import SCALE_DELTAS, ActionCodec, control_spec
from envs.gym.encoder import BOUND, ObsEncoder, observation_space, symlog, time_features
from envs.gym.envs import RewardWeights
from envs.scenarios.loader import load_scenario
from envs.scenarios.schema import Scenario
from envs.sim.batched import BatchedFluid, check_supported

_DELTAS = np.array(SCALE_DELTAS, dtype=np.int64)


def row_seeds(seed: int, n: int) -> list[int]:
    """The ``n`` sub-env seeds that the vector seed ``seed`` gives (31-bit, independent)."""
    state = np.random.SeedSequence(int(seed)).generate_state(n, dtype=np.uint32)
    return [int(x >> 1) for x in state]


class BatchedAutoscaleEnv(VectorEnv):
    """``N`` :class:`~envs.gym.envs.AutoscaleEnv` sub-envs in one pass; see the module docstring.

    Args:
        num_envs: ``N``.
        scenario: Built-in name, YAML path, :class:`Scenario`, or a list of them (one
            family, :func:`envs.sim.batched.check_supported`); each episode of each sub-env
            draws one uniformly, as the scalar env does.
        reward_weights: :class:`RewardWeights` or a dict of its fields.
        scenario_overrides: Dotted-key overrides applied to named scenarios.
        obs: ``"box"`` (the only layout).
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        num_envs: int = 64,
        scenario: str | Path | Scenario | Sequence[str | Path | Scenario] = "chain3",
        reward_weights: RewardWeights | dict[str, float] | None = None,
        scenario_overrides: dict[str, Any] | None = None,
        obs: str = "box",
    ) -> None:
        if obs != "box":
            raise ValueError(f"obs={obs!r}: the batched env has the 'box' layout only")
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs}: give at least 1")
        specs: list[str | Path | Scenario] = (
            list(scenario) if isinstance(scenario, list | tuple) else [scenario]  # type: ignore[list-item]
        )
        self.scenarios = [
            s if isinstance(s, Scenario) else load_scenario(s, scenario_overrides) for s in specs
        ]
        check_supported(self.scenarios)
        base = self.scenarios[0]
        if isinstance(reward_weights, dict):
            reward_weights = RewardWeights(**reward_weights)
        self.weights = reward_weights or RewardWeights()
        self.num_envs = num_envs
        self.services = tuple(base.service_names)
        self.encoder = ObsEncoder(self.services)
        self.codec = ActionCodec("autoscale", control_spec(base))
        self.single_action_space = self.codec.action_space()
        self.single_observation_space = observation_space(self.encoder, "box")
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.core = BatchedFluid(self.scenarios, num_envs)
        self._cols = np.array([FIELD_INDEX[f] for f in self.encoder.service_features])
        self._ccols = np.array([CLUSTER_INDEX[f] for f in self.encoder.cluster_features])
        self._rngs: list[np.random.Generator] = []
        self._row_seeds: list[int] = []
        self._ready = np.zeros((num_envs, len(self.services)))
        self._last_viol = np.zeros((num_envs, len(self.services)))
        self._last_cost = np.zeros(num_envs)
        self._started = False

    # ------------------------------------------------------------------ gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode in every sub-env.

        ``seed`` seeds the sub-envs' generators (:func:`row_seeds`); without it a first
        reset seeds them from fresh entropy and later resets continue their streams.
        """
        super().reset(seed=seed, options=options)
        n = self.num_envs
        if seed is not None or not self._rngs:
            fresh = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
            base = seed if seed is not None else fresh
            self._row_seeds = row_seeds(base, n)
            self._rngs = [seeding.np_random(s)[0] for s in self._row_seeds]
        obs, info = self._start()
        info["row_seeds"] = np.array(self._row_seeds, dtype=np.int64)
        return obs, info

    def _start(self) -> tuple[np.ndarray, dict[str, Any]]:
        """Draw each sub-env's scenario and seed (as ``AutoscaleEnv.reset``) and start."""
        index, seeds = [], []
        for rng in self._rngs:
            index.append(int(rng.integers(len(self.scenarios))))
            seeds.append(int(rng.integers(2**31 - 1)))
        frame = self.core.reset(seeds, index)
        self._observe_frame(frame.values)
        self._last_viol = self.core.violation_s.copy()
        self._last_cost = np.zeros(self.num_envs)
        self._started = True
        info = {
            "scenario_index": np.array(index, dtype=np.int64),
            "sim_seed": np.array(seeds, dtype=np.int64),
        }
        return self._encode(frame.values, frame.cluster, frame.t), info

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Apply one action per sub-env, run one decision interval, auto-reset at the horizon.

        Raises:
            ValueError: ``actions`` is not ``(num_envs, S)`` integers in ``[0, 4]``.
        """
        if not self._started:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(actions)
        if a.shape != self.action_space.shape or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(
                f"actions: shape {a.shape} dtype {a.dtype}; give integers of shape "
                f"{self.action_space.shape} (one MultiDiscrete([5] * S) action per sub-env)"
            )
        if a.min() < 0 or a.max() >= len(SCALE_DELTAS):
            raise ValueError(
                f"actions: entries must lie in [0, {len(SCALE_DELTAS) - 1}] (SCALE_DELTAS "
                f"index), got min {a.min()} max {a.max()}"
            )
        core = self.core
        desired = core.desired
        target = np.clip(desired + _DELTAS[a], core.r_min, core.r_max)
        changed = target != desired
        disruption = (changed & (target < self._ready)).sum(axis=1).astype(np.float64)
        frame = core.advance(target)
        self._observe_frame(frame.values)
        reward, slo, cost = self._reward(disruption)
        obs = self._encode(frame.values, frame.cluster, frame.t)
        n = self.num_envs
        terminated = np.zeros(n, dtype=bool)
        truncated = np.full(n, core.done)
        info: dict[str, Any] = {
            "t": np.full(n, frame.t),
            "slo_violation": slo,
            "cost": cost,
            "disruption": disruption,
        }
        if core.done:
            final = np.empty(n, dtype=object)
            for i in range(n):
                final[i] = obs[i]
            final_info = {k: v for k, v in info.items()}
            obs, start_info = self._start()
            info.update(
                {
                    "final_obs": final,
                    "_final_obs": np.ones(n, dtype=bool),
                    "final_info": final_info,
                    "_final_info": np.ones(n, dtype=bool),
                    **start_info,
                }
            )
        return obs, reward, terminated, truncated, info

    # ------------------------------------------------------------------ internals
    def _observe_frame(self, values: np.ndarray) -> None:
        ready = values[:, :, FIELD_INDEX["replicas_ready"]]
        self._ready = np.where(np.isnan(ready), self._ready, ready)

    def _reward(self, disruption: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        core = self.core
        dt = core.dt
        viol = core.violation_s
        mask = ~np.isnan(core.slo_p99)
        n_slo = np.maximum(mask.sum(axis=1), 1)
        slo = np.where(mask, viol - self._last_viol, 0.0).sum(axis=1) / (dt * n_slo)
        self._last_viol = viol.copy()
        cost_total = core.allocated_cost()
        cost = (cost_total - self._last_cost) / (core.base_cost_rate * dt / 3600.0)
        self._last_cost = cost_total
        w = self.weights
        reward = -(w.slo * slo + w.cost * cost + w.disruption * disruption)
        return reward, slo, cost

    def _encode(self, values: np.ndarray, cluster: np.ndarray, t: float) -> np.ndarray:
        """:meth:`ObsEncoder.encode` of every row (the same float operations)."""
        raw = values[:, :, self._cols]
        mask = ~np.isnan(raw)
        craw = cluster[:, self._ccols]
        cmask = ~np.isnan(craw)
        vals = np.where(mask, np.clip(symlog(np.nan_to_num(raw)), -BOUND, BOUND), 0.0)
        cvals = np.where(cmask, np.clip(symlog(np.nan_to_num(craw)), -BOUND, BOUND), 0.0)
        n = self.num_envs
        tf = np.broadcast_to(time_features(t), (n, 4))
        return np.concatenate(
            [
                vals.astype(np.float32).reshape(n, -1),
                cvals.astype(np.float32),
                tf,
                mask.astype(np.float32).reshape(n, -1),
                cmask.astype(np.float32),
            ],
            axis=1,
        )
