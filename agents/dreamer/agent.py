"""The Dreamer agent: world model, its trainer and the actor-critic, acting and learning.

:class:`DreamerAgent` owns

* a :class:`~agents.world_model.model.WorldModel` and its
  :class:`~agents.world_model.trainer.WorldModelTrainer` (Adam, clipping, finite checks);
* an :class:`~agents.dreamer.actor_critic.ActorCritic` over the model's features;
* a torch generator for everything random it does (posterior samples while acting, actor
  samples, imagination, the choice of imagination starts), seeded from the run seed.

:meth:`DreamerAgent.act` is one step of the online filter (posterior update with the
observation and the previous action's features, then the actor); the caller keeps the
:class:`AgentState` (explicit carry). :meth:`DreamerAgent.update` is one world-model step
on a replay batch followed by one actor-critic step on trajectories imagined from that
batch's posterior states (those of the world-model loss).

:meth:`DreamerAgent.state_dict` holds tensors and primitives only (``torch.load`` with
``weights_only=True`` reads it), and restores training exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agents.dreamer.actor_critic import ActionSpec, ActorCritic
from agents.dreamer.config import DreamerAgentConfig
from agents.world_model.config import ObsLayout
from agents.world_model.model import WorldModel
from agents.world_model.rssm import Carry
from agents.world_model.trainer import WorldModelTrainer

AGENT_FORMAT = "opsworld.dreamer/1"


@dataclass
class AgentState:
    """Recurrent state of ``n`` streams while acting.

    Attributes:
        carry: The world model's posterior carry (``deter [n, D]``, ``stoch [n, K, C]``).
        prev_action: ``[n, A]`` features of the actions taken at the previous decision (what
            led to the next observation; zeros before the first).
    """

    carry: Carry
    prev_action: Tensor

    def select(self, index: list[int]) -> AgentState:
        """The state of some streams."""
        return AgentState(
            Carry(self.carry.deter[index], self.carry.stoch[index]), self.prev_action[index]
        )


class DreamerAgent:
    """World model + actor-critic; see the module docstring.

    Args:
        layout: The observation layout (from the env's encoder).
        spec: The action space.
        cfg: Agent settings.
        seed: Seeds the networks' initialisation, the trainer and the agent's generator.
        learner: Build the world model's trainer (False for a policy that only acts).
    """

    def __init__(
        self,
        layout: ObsLayout,
        spec: ActionSpec,
        cfg: DreamerAgentConfig,
        seed: int = 0,
        learner: bool = True,
    ) -> None:
        self.cfg = cfg
        self.spec = spec
        self.layout = layout
        self.wm_cfg = cfg.world_model_config()
        seeds = np.random.SeedSequence([seed, 7]).generate_state(3)
        torch.manual_seed(int(seeds[0]))
        self.wm = WorldModel(layout, spec.feature_size, self.wm_cfg)
        self._trainer = (
            WorldModelTrainer(self.wm, self.wm_cfg, seed=int(seeds[1])) if learner else None
        )
        self.ac = ActorCritic(self.wm_cfg.feat_size, spec, cfg)
        self.generator = torch.Generator().manual_seed(int(seeds[2]))

    @property
    def trainer(self) -> WorldModelTrainer:
        """The world model's trainer (only for a learner)."""
        if self._trainer is None:
            raise RuntimeError("this DreamerAgent was built with learner=False")
        return self._trainer

    # ------------------------------------------------------------------ acting
    def initial(self, n: int = 1) -> AgentState:
        """Fresh state of ``n`` streams."""
        return AgentState(self.wm.initial(n), torch.zeros(n, self.spec.feature_size))

    @torch.no_grad()
    def observe(
        self,
        obs: np.ndarray,
        is_first: np.ndarray,
        state: AgentState,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> Carry:
        """Posterior carry after observing ``obs`` ``[n, O]`` (``is_first`` ``[n]`` resets).

        Draws come from ``generator`` (default: the agent's).
        """
        return self.wm.obs_step(
            state.carry,
            torch.as_tensor(obs, dtype=torch.float32),
            state.prev_action,
            torch.as_tensor(is_first, dtype=torch.float32),
            sample=sample,
            generator=generator or self.generator,
        )

    @torch.no_grad()
    def act(
        self,
        obs: np.ndarray,
        is_first: np.ndarray,
        state: AgentState,
        mask: np.ndarray | None = None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, Carry]:
        """Actions ``[n, dims]`` (indices per dimension) and the posterior carry.

        With ``deterministic`` the posterior and the actor take their modes; otherwise both
        sample from ``generator`` (default: the agent's; DreamerV3 evaluates sampling
        policies too). The caller sets the next :class:`AgentState` from the returned carry
        and the features of what was done.
        """
        gen = generator or self.generator
        carry = self.observe(obs, is_first, state, sample=not deterministic, generator=gen)
        m = None if mask is None else torch.as_tensor(mask, dtype=torch.bool)
        dist = self.ac.actor(self.wm.feat(carry), m)
        action = dist.mode() if deterministic else dist.sample(gen)
        return action.numpy(), carry

    # ------------------------------------------------------------------ learning
    def update(self, batch: dict[str, np.ndarray], actor_critic: bool = True) -> dict[str, float]:
        """One world-model step, then one actor-critic step imagined from the batch.

        ``batch`` holds ``[B, T, ...]`` arrays (the replay's keys). Imagination starts from
        the posterior States the world-model loss was computed on (before the update,
        detached; :meth:`WorldModelTrainer.step_with_states`), as DreamerV3 does, so the
        batch is filtered once. ``actor_critic=False``: the world model only.
        """
        metrics, states = self.trainer.step_with_states(batch)
        if not actor_critic:
            return metrics
        start = states.flatten()
        n = len(start)
        cont = torch.as_tensor(batch["cont"], dtype=torch.float32).reshape(n)
        mask = None
        if "mask" in batch:
            mask = torch.as_tensor(batch["mask"]).reshape(n, -1).bool()
        if self.cfg.imag_starts is not None and self.cfg.imag_starts < n:
            pick = torch.randperm(n, generator=self.generator)[: self.cfg.imag_starts]
            start = Carry(start.deter[pick], start.stoch[pick])
            cont = cont[pick]
            mask = None if mask is None else mask[pick]
        metrics.update(self.ac.update(self.wm, start, mask, cont, generator=self.generator))
        return metrics

    # ------------------------------------------------------------------ state
    def weights(self) -> dict[str, Any]:
        """The networks only (what a policy needs)."""
        return {
            "format": AGENT_FORMAT,
            "world_model": self.wm.state_dict(),
            "actor_critic": self.ac.state_dict(),
            "nvec": list(self.spec.nvec),
            "action_matrix": torch.as_tensor(self.spec.matrix),
        }

    def load_weights(self, state: dict[str, Any]) -> None:
        """Restore :meth:`weights` (refuses another action space)."""
        if state.get("format") != AGENT_FORMAT:
            raise ValueError(f"not a Dreamer agent file (format {state.get('format')!r})")
        if tuple(state["nvec"]) != self.spec.nvec or not np.allclose(
            state["action_matrix"].numpy(), self.spec.matrix
        ):
            raise ValueError(
                f"the saved agent acts in nvec {tuple(state['nvec'])}, this env in "
                f"{self.spec.nvec}: use the env and scenario it was trained on"
            )
        self.wm.load_state_dict(state["world_model"])
        self.ac.load_state_dict(state["actor_critic"])

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimisers, counters and generator states (exact resume)."""
        return {
            **self.weights(),
            "trainer": self.trainer.state_dict(),
            "actor_critic_optim": self.ac.optim_state(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.load_weights(state)
        self.trainer.load_state_dict(state["trainer"])
        self.ac.load_optim_state(state["actor_critic_optim"])
        self.generator.set_state(state["generator"])
