"""SB3 callbacks of opsworld training: episode statistics and best-model normalisation.

* :class:`EpisodeStatsCallback` records the ``env/...`` metrics (see ``docs/training.md``)
  from the envs' ``info["reward_components"]`` and ``Monitor``'s episode record;
* :class:`SaveVecNormalizeCallback` saves the ``VecNormalize`` statistics next to the best
  model whenever ``EvalCallback`` finds a new best, so ``best/`` is loadable on its own;
* :class:`FiniteParamsCallback` stops training with context as soon as a network parameter
  is NaN or infinite (a diverged update), instead of training on silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

ENV_METRICS: dict[str, str] = {
    "env/ep_reward": "episode return (sum of rewards, before any reward normalisation)",
    "env/ep_length": "decisions in the episode",
    "env/ep_slo_violation": "mean per-step SLO violation (0 = all SLOs met, 1 = all broken)",
    "env/ep_cost": "mean per-step cost relative to the initial cluster (1 = as expensive)",
    "env/ep_disruptions": "disruptive actions (restart, rollback, drain, shedding) per episode",
    "env/ep_actions_per_step": "simulator actions per decision (0 = the agent held still)",
}
"""The ``env/`` metrics (means over the episodes that ended since the last dump)."""


class EpisodeStatsCallback(BaseCallback):
    """Accumulates reward components per env and records ``env/...`` at episode ends.

    Works for on-policy (PPO, A2C, MaskablePPO) and off-policy (DQN) algorithms: both expose
    ``infos`` and ``dones`` of the last vectorised step in ``self.locals``. Values are
    recorded with ``record_mean`` and written at SB3's next dump.
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self._sums = np.zeros((0, 4))
        self.episodes = 0

    def _init_callback(self) -> None:
        self._sums = np.zeros((self.training_env.num_envs, 4))  # slo, cost, disruption, acts

    def _on_step(self) -> bool:
        infos: list[dict[str, Any]] = self.locals["infos"]
        dones = np.asarray(self.locals["dones"], dtype=bool)
        for i, info in enumerate(infos):
            parts = info.get("reward_components")
            if parts is not None:
                self._sums[i] += (
                    parts["slo_violation"],
                    parts["cost"],
                    parts["disruption"],
                    len(info.get("actions", ())),
                )
            episode = info.get("episode")
            if dones[i] and episode is not None:
                length = max(int(episode["l"]), 1)
                slo, cost, disruption, acts = self._sums[i]
                self.logger.record_mean("env/ep_reward", float(episode["r"]))
                self.logger.record_mean("env/ep_length", float(length))
                self.logger.record_mean("env/ep_slo_violation", slo / length)
                self.logger.record_mean("env/ep_cost", cost / length)
                self.logger.record_mean("env/ep_disruptions", float(disruption))
                self.logger.record_mean("env/ep_actions_per_step", acts / length)
                self._sums[i] = 0.0
                self.episodes += 1
        return True


class SaveVecNormalizeCallback(BaseCallback):
    """Saves the model's ``VecNormalize`` statistics to ``path`` (use as ``on_new_best``).

    Args:
        path: Target file, e.g. ``<out>/best/vecnormalize.pkl``.
    """

    def __init__(self, path: str | Path, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.path = Path(path)

    def _on_step(self) -> bool:
        vec_normalize = self.model.get_vec_normalize_env()
        if vec_normalize is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            vec_normalize.save(str(self.path))
        return True


class NonFiniteError(FloatingPointError):
    """A network parameter became NaN or infinite during training."""


class FiniteParamsCallback(BaseCallback):
    """Checks after every rollout (so after every update) that all parameters are finite.

    Raises:
        NonFiniteError: Naming the parameters and the step count, with a hint.
    """

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        bad = [
            name
            for name, p in self.model.policy.named_parameters()
            if not bool(torch.isfinite(p).all())
        ]
        if bad:
            raise NonFiniteError(
                f"non-finite policy parameters after {self.num_timesteps} env steps: "
                f"{bad[:5]}{' ...' if len(bad) > 5 else ''}; lower agent.learning_rate or "
                "agent.max_grad_norm, or check the rewards (env/... metrics) for outliers"
            )
