"""The acting half of Dreamer training: a driver over lockstep envs, and the loop's clocks.

:class:`Driver` steps ``n`` :class:`~agents.dreamer.envs.Stream` s in lockstep, each with the
prefill behaviour until the prefill is over and then with the agent (a stream hands over at
its next episode start), and returns the episodes that finished. It holds no schedule: the
training loop asks its :class:`Clocks` when to update, evaluate, log and checkpoint, as
dreamerv3's ``embodied`` loop does with its ``when`` clocks (``Ratio``, ``Every``).

* :class:`Ratio`: how many updates the new env steps pay for (``train_ratio / (batch *
  seq_len)`` per env step; the fractional rest carries over).
* :class:`Every`: fires at the first step at or past its next due step, then moves the due
  step past the current one (missed periods are skipped, not replayed).

Clocks are small dataclasses, saved in checkpoints as they are (an exact resume).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agents.dreamer.actor_critic import ActionDist, ActionSpec, prior_logits
from agents.dreamer.agent import AgentState, DreamerAgent
from agents.dreamer.config import DreamerAgentConfig, PrefillPolicy
from agents.dreamer.envs import EpisodeStats, Stream
from agents.policy import Policy
from envs.scenarios.schema import Scenario

Episode = dict[str, np.ndarray]


@dataclass
class Ratio:
    """Updates owed per env step: ``ratio`` per step, the fractional rest carried over.

    Attributes:
        ratio: Updates per env step (0: never).
        owed: The fraction of an update owed so far (in [0, 1) between calls).
    """

    ratio: float
    owed: float = 0.0

    def __call__(self, steps: int) -> int:
        """Account for ``steps`` new env steps; return the whole updates now due."""
        self.owed += steps * self.ratio
        due = math.floor(self.owed)
        self.owed -= due  # exact: owed and due are both multiples of owed's ulp
        return due


@dataclass
class Every:
    """Fires once at the first step at or past ``due``, then every ``every`` steps.

    Attributes:
        every: The period in env steps; 0 or less: never.
        due: The next step at which it fires.
    """

    every: int
    due: int

    @classmethod
    def start(cls, every: int, at: int = 0) -> Every:
        """A clock of period ``every`` first due ``every`` steps after ``at``."""
        return cls(every, at + every)

    def __call__(self, step: int) -> bool:
        """Whether it fires at ``step`` (moving ``due`` past ``step`` when it does)."""
        if self.every <= 0 or step < self.due:
            return False
        while self.due <= step:
            self.due += self.every
        return True


@dataclass
class Clocks:
    """When the training loop updates, evaluates, logs and checkpoints.

    Attributes:
        train: Updates per env step (``agent.updates_per_step``), once the replay can be
            sampled and the prefill is over.
        eval: ``eval.freq`` (0: only the final evaluation).
        log: ``agent.log_every``.
        ckpt: ``checkpoint_freq`` (0: none); consulted only once every env follows the agent.
    """

    train: Ratio
    eval: Every
    log: Every
    ckpt: Every

    @classmethod
    def of(cls, agent: DreamerAgentConfig, eval_freq: int, checkpoint_freq: int) -> Clocks:
        """The clocks of a fresh run."""
        return cls(
            Ratio(agent.updates_per_step),
            Every.start(eval_freq),
            Every.start(agent.log_every),
            Every.start(checkpoint_freq),
        )

    def state(self) -> dict[str, dict[str, Any]]:
        """Plain data for a checkpoint."""
        return {
            "train": {"ratio": self.train.ratio, "owed": self.train.owed},
            **{k: {"every": c.every, "due": c.due} for k, c in self._every().items()},
        }

    @classmethod
    def restore(cls, state: dict[str, dict[str, Any]]) -> Clocks:
        """The clocks saved by :meth:`state`."""
        return cls(
            Ratio(**state["train"]),
            Every(**state["eval"]),
            Every(**state["log"]),
            Every(**state["ckpt"]),
        )

    def _every(self) -> dict[str, Every]:
        return {"eval": self.eval, "log": self.log, "ckpt": self.ckpt}


BehaviourFactory = Callable[[str, Scenario], Policy]


@dataclass
class Driver:
    """Steps ``streams`` in lockstep: prefill behaviour first, then the agent.

    Attributes:
        streams: The training envs (each records its episode).
        agent: Acts once a stream is driven; its generator also draws the random prefill.
        spec: The action spec (random prefill actions).
        cfg: The agent settings (``prefill``, ``prefill_policy``, ``noop_prob``).
        behaviour: Builds a baseline behaviour for a scenario (``prefill_policy`` not
            ``random``).
        state: The agent's recurrent state over the streams.
        driven: Per stream, whether it acts with the agent (else the prefill behaviour).
    """

    streams: list[Stream]
    agent: DreamerAgent
    spec: ActionSpec
    cfg: DreamerAgentConfig
    behaviour: BehaviourFactory
    state: AgentState
    driven: list[bool]
    _policies: list[Any] = field(default_factory=list)
    _policy_states: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.streams)
        self._policies = [None] * n
        self._policy_states = [None] * n

    @property
    def n(self) -> int:
        """Number of envs."""
        return len(self.streams)

    @property
    def all_driven(self) -> bool:
        """Every stream acts with the agent (the prefill is over everywhere)."""
        return all(self.driven)

    def step(self, env_steps: int) -> list[tuple[Episode, EpisodeStats]]:
        """One env step of every stream; returns the finished episodes in stream order.

        Args:
            env_steps: Env steps taken so far (a stream hands over to the agent at its first
                episode start once ``env_steps >= prefill``).
        """
        streams, n = self.streams, self.n
        obs = np.stack([s.obs for s in streams])
        first = np.array([float(s.is_first) for s in streams])
        masks = np.stack([s.mask() for s in streams]) if streams[0].masked else None
        reached = env_steps >= self.cfg.prefill
        self.driven = [
            d or (reached and s.is_first) for d, s in zip(self.driven, streams, strict=True)
        ]
        if any(self.driven):
            idx, carry = self.agent.act(obs, first, self.state, masks)
        else:
            carry = self.state.carry
        if not all(self.driven):
            random_idx = self._random_actions(masks, n)
        features, finished = [], []
        for i, s in enumerate(streams):
            if self.driven[i]:
                f, episode, stats = s.step(idx[i])
            elif self.cfg.prefill_policy != PrefillPolicy.random:
                if s.is_first:
                    assert s.env.sim is not None
                    self._policies[i] = self.behaviour(
                        self.cfg.prefill_policy.value, s.env.sim.scenario
                    )
                    self._policy_states[i] = self._policies[i].reset(1)
                acts, self._policy_states[i], _ = self._policies[i].act(
                    s.env.frame, self._policy_states[i]
                )
                f, episode, stats = s.step(sim_actions=acts)
            else:
                f, episode, stats = s.step(random_idx[i])
            features.append(f)
            if episode is not None and stats is not None:
                finished.append((episode, stats))
        self.state = AgentState(carry, torch.as_tensor(np.stack(features)))
        return finished

    def _random_actions(self, masks: np.ndarray | None, n: int) -> np.ndarray:
        """Random valid actions ``[n, dims]`` (drawn even when a baseline prefills).

        Uniform, except the remediation no-op at ``agent.noop_prob`` (:func:`prior_logits`).
        """
        mask = None if masks is None else torch.as_tensor(masks, dtype=torch.bool)
        logits = prior_logits(self.spec, self.cfg.noop_prob).expand(n, self.spec.size)
        dist = ActionDist(logits, self.spec.nvec, 0.0, mask)
        return dist.sample(self.agent.generator).numpy()
