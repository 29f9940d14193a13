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


class LagrangeCallback(BaseCallback):
    """``env=residual``: one dual-ascent step of the budgets' multipliers per rollout.

    Collects ``info["residual_episode"]`` at the last step of every episode that ends
    during a rollout (at the horizon or cut by ``max_episode_steps``); at the
    rollout's end, moves the multipliers with :func:`agents.residual.dual_step` on those
    episodes' per-step excess cost and disruption over ``tuned_runbook``'s on the same
    episodes (:func:`agents.residual.episode_gaps`), and sets them in every training env
    (``set_multipliers``). A rollout in which no episode ended keeps them. Records
    ``lagrange/lambda_cost``, ``lagrange/lambda_disruption``, ``lagrange/cost_gap``,
    ``lagrange/disruption_gap`` and ``lagrange/slo_gap`` (per step, episode means).

    Args:
        cost: Initial cost multiplier (the envs' own at start).
        disruption: Initial disruption multiplier.
        lr_cost: Step size of the cost multiplier.
        lr_disruption: Step size of the disruption multiplier.
        cap: Upper bound of both multipliers.
    """

    def __init__(
        self,
        cost: float,
        disruption: float,
        lr_cost: float,
        lr_disruption: float,
        cap: float = 100.0,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        from agents.residual import Multipliers

        self.lam = Multipliers(cost, disruption)
        self.lr_cost = lr_cost
        self.lr_disruption = lr_disruption
        self.cap = cap
        self._records: list[dict[str, float]] = []
        self.history: list[tuple[int, float, float]] = []
        """``(num_timesteps, lambda_cost, lambda_disruption)`` after each step that moved."""

    def _on_step(self) -> bool:
        dones = np.asarray(self.locals["dones"], dtype=bool)
        for done, info in zip(dones, self.locals["infos"], strict=True):
            rec = info.get("residual_episode")
            if done and rec is not None:
                self._records.append(rec)
        return True

    def _on_rollout_end(self) -> None:
        from agents.residual import dual_step, episode_gaps

        if not self._records:
            return
        gaps = [episode_gaps(r) for r in self._records]
        slo = [(r["slo"] - r["ref_slo"]) / max(r["steps"], 1.0) for r in self._records]
        self._records = []
        cost_gaps = [g[0] for g in gaps]
        dis_gaps = [g[1] for g in gaps]
        self.lam = dual_step(
            self.lam, cost_gaps, dis_gaps, self.lr_cost, self.lr_disruption, self.cap
        )
        self.training_env.env_method("set_multipliers", self.lam.cost, self.lam.disruption)
        self.history.append((int(self.num_timesteps), self.lam.cost, self.lam.disruption))
        self.logger.record("lagrange/lambda_cost", self.lam.cost)
        self.logger.record("lagrange/lambda_disruption", self.lam.disruption)
        self.logger.record("lagrange/cost_gap", float(np.mean(cost_gaps)))
        self.logger.record("lagrange/disruption_gap", float(np.mean(dis_gaps)))
        self.logger.record("lagrange/slo_gap", float(np.mean(slo)))
