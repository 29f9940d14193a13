"""``DreamerPolicy``: a trained Dreamer run dir as a :class:`envs.core.policy.Policy`.

``DreamerPolicy(run_dir)`` reads the run's ``config.yaml`` (validated by
:func:`agents.dreamer.config.dreamer_config`), builds the run's observation encoder and
:class:`~envs.gym.codec.ActionCodec` from its (first) scenario, and loads ``agent.pt``
(``torch.load`` with ``weights_only=True``: tensors and primitives, no pickled code). No env
and no simulator are built (a test loads it with :mod:`envs.sim` blocked). For each
Telemetry frame:

1. the stream's :class:`~envs.gym.codec.ControlBelief` takes in the frame;
2. the :class:`~envs.gym.encoder.ObsEncoder` encodes the frame (the training code path);
3. the world model's posterior step updates the stream's carry from the frame and the
   features of the previous decision's actions (``is_first`` on the first frame);
4. the actor picks its mode (or samples, ``deterministic=False``), under the codec's action
   mask for the belief (Remediate / ClusterOps / HPATune);
5. the codec decodes the choice under the belief, as the env does (drains are masked
   unless ``allow_drain``: telemetry does not say which nodes are ready; see
   :mod:`agents.sb3.policy`), and the belief moves by the actions taken;
6. :class:`~envs.gym.encoder.ActionEncoder` encodes what was done, for the next posterior
   step.

For an ``env=hpa_tune`` run step 5 is what :meth:`~envs.gym.envs.HPATuneEnv.decide` does:
the tuned HPA reconciles on the frame with the chosen CPU targets, from the stream's HPA
state (kept in :class:`DreamerState`), and the codec adds the remediation; step 6 encodes
the choice (``onehot @ M``), as the env reports it in training.

The state of a stream (:class:`DreamerState`) is explicit: the control belief, the world
model's carry, the previous action's features, whether the next frame is the first and,
for ``hpa_tune``, the HPA's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from agents.baselines.tuned import load_settings, make_hpa
from agents.dreamer.actor_critic import ActionSpec
from agents.dreamer.agent import AgentState, DreamerAgent
from agents.dreamer.envs import ENV_CLASSES, run_scenarios
from agents.dreamer.train import load_run_config
from agents.world_model.config import ObsLayout
from agents.world_model.rssm import Carry
from envs.core.actions import Action
from envs.core.telemetry import Telemetry
from envs.gym.codec import ActionCodec, ControlBelief, control_spec
from envs.gym.encoder import ObsEncoder


@dataclass(frozen=True)
class DreamerState:
    """Recurrent state of one stream.

    Attributes:
        belief: What telemetry says of the control plane (decoding, masks).
        carry: World-model posterior carry (batch of one).
        prev_action: ``[1, A]`` features of the previous decision's actions.
        first: The next frame is the stream's first.
        generator: The stream's own source of draws (sampling policies), seeded at reset.
        hpa: The HPA's state (:class:`agents.baselines.hpa.HPAState`) of an ``hpa_tune``
            run; None otherwise.
    """

    belief: ControlBelief
    carry: Carry
    prev_action: torch.Tensor
    first: bool = True
    generator: torch.Generator | None = None
    hpa: Any = None


class DreamerPolicy:
    """A trained Dreamer agent as a :class:`envs.core.policy.Policy`; see the module docstring.

    Args:
        run_dir: An ``opsworld train agent=dreamer`` run dir (``config.yaml``, ``agent.pt``).
        weights: Weights file relative to ``run_dir`` (``best/agent.pt`` for the best
            evaluation).
        deterministic: Modes of the posterior and of the actor, else samples (as DreamerV3
            evaluates); None: the run's ``eval.deterministic``.
        allow_drain: Let the policy drain nodes (see :mod:`agents.sb3.policy`); off by default.
        seed: Seed of the streams' sampling generators: stream ``i`` of a :meth:`reset`
            draws from ``seed + i``, so an episode's decisions depend on its frames only.
        threads: ``torch.set_num_threads`` for the process (None: leave it). The networks
            run at batch 1, where intra-op threads only add overhead: with torch's default
            of one thread per core a decision took 8x longer on the 2-core VM.

    Attributes:
        name: ``dreamer``.
        config: The run's config.
        scenario: The run's (first) training scenario.
        encoder: The observation encoder of the run's env.
        codec: The action codec of the run's env.
        hpa: The tuned HPA of an ``hpa_tune`` run (None otherwise).
        agent: The world model and actor-critic.
    """

    name = "dreamer"

    def __init__(
        self,
        run_dir: str | Path,
        *,
        weights: str = "agent.pt",
        deterministic: bool | None = None,
        allow_drain: bool = False,
        seed: int = 0,
        threads: int | None = 1,
    ) -> None:
        run = Path(run_dir)
        self.config = load_run_config(run)
        self.seed = seed
        if threads is not None:
            torch.set_num_threads(threads)
        self.scenario = scenario = run_scenarios(self.config)[0]
        self.encoder = ObsEncoder(tuple(scenario.service_names))
        layout = ENV_CLASSES[self.config.env.name].layout
        self.codec = ActionCodec(layout, control_spec(scenario), allow_drain=allow_drain)
        self.hpa: Any = None  # the tuned HPA (an HPAPolicy) of an hpa_tune run
        if layout == "hpa_tune":
            self.hpa = make_hpa(load_settings(), scenario)
        self.spec = ActionSpec.from_codec(self.codec)
        self.agent = DreamerAgent(
            ObsLayout.from_encoder(self.encoder),
            self.spec,
            self.config.agent,
            seed=seed,
            learner=False,
        )
        path = run / weights
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: is {run} a finished Dreamer run?")
        self.agent.load_weights(torch.load(path, weights_only=True))
        self.agent.wm.eval()
        self.deterministic = (
            self.config.eval.deterministic if deterministic is None else deterministic
        )
        self.allow_drain = allow_drain

    def reset(self, n: int = 1) -> DreamerState | list[DreamerState]:
        """Fresh state: one :class:`DreamerState` (``n == 1``) or a list of ``n``."""
        states = [
            DreamerState(
                ControlBelief.initial(self.codec.spec),
                self.agent.wm.initial(1),
                torch.zeros(1, self.spec.feature_size),
                generator=torch.Generator().manual_seed(self.seed + i),
                hpa=self.hpa.reset(1) if self.hpa is not None else None,
            )
            for i in range(n)
        ]
        return states[0] if n == 1 else states

    def action_masks(self, belief: ControlBelief) -> np.ndarray:
        """The codec's masks under ``belief`` (True = valid)."""
        return self.codec.masks(belief)

    def decode(self, index: np.ndarray, belief: ControlBelief) -> list[Action]:
        """The codec's decoding of per-dimension indices under ``belief``.

        Not for ``hpa_tune``: its decision needs the frame and the HPA's state (:meth:`act`).
        """
        return self.codec.decode(self.spec.to_env(index), belief)

    def step(self, obs: Telemetry, state: DreamerState) -> tuple[np.ndarray, Carry, np.ndarray]:
        """Posterior step and actor choice: ``(indices [dims], carry, mask)``.

        ``state.belief`` must already include ``obs`` (:meth:`ControlBelief.observe`).
        """
        belief = state.belief
        mask = self.action_masks(belief)
        idx, carry = self.agent.act(
            self.encoder.encode(obs)[None],
            np.array([float(state.first)]),
            AgentState(state.carry, state.prev_action),
            mask[None] if self.spec.masked else None,
            deterministic=self.deterministic,
            generator=state.generator,
        )
        return idx[0], carry, mask

    def posterior(self, obs: Telemetry, state: DreamerState) -> Carry:
        """The world model's posterior carry after ``obs`` (no actor)."""
        return self.agent.observe(
            self.encoder.encode(obs)[None],
            np.array([float(state.first)]),
            AgentState(state.carry, state.prev_action),
            sample=not self.deterministic,
            generator=state.generator,
        )

    def advance(
        self,
        belief: ControlBelief,
        carry: Carry,
        actions: list[Action],
        generator: torch.Generator | None = None,
        features: np.ndarray | None = None,
        hpa: Any = None,
    ) -> DreamerState:
        """The state after taking ``actions``; their features feed the next posterior step.

        ``features`` replaces the :class:`ActionEncoder` features of ``actions`` (an
        ``hpa_tune`` run feeds the choice's); ``hpa`` is the HPA's state after the step.
        """
        if features is None:
            features = self.codec.action_encoder.encode(actions, belief.desired)
        return DreamerState(
            belief.after(actions, self.codec.services),
            carry,
            torch.as_tensor(features)[None],
            first=False,
            generator=generator,
            hpa=hpa,
        )

    def act(self, obs: Telemetry, state: Any) -> tuple[list[Action], Any, dict[str, Any]]:
        """Decide on one frame.

        Args:
            obs: The latest telemetry frame of the stream.
            state: This stream's :class:`DreamerState` (from :meth:`reset` or the last call).

        Returns:
            ``(actions, new_state, info)``; ``info`` has ``action`` (the indices per
            dimension) and ``masked_out`` (the remediation chosen was invalid: nothing done).
        """
        st = cast(DreamerState, state)
        belief = st.belief.observe(obs)
        st = DreamerState(belief, st.carry, st.prev_action, st.first, st.generator, st.hpa)
        idx, carry, mask = self.step(obs, st)
        choice = self.spec.to_env(idx)
        info: dict[str, Any] = {
            "action": idx.tolist(),
            "masked_out": self.codec.masked_out(choice, mask),
        }
        if self.hpa is not None:
            targets = self.codec.targets(choice)
            scaling, hpa, _ = self.hpa.act(obs, st.hpa, targets)
            actions = self.codec.decode(choice, belief, scaling)
            info["hpa_targets"] = list(targets.values())
            features = self.codec.choice_features(choice)
            return actions, self.advance(belief, carry, actions, st.generator, features, hpa), info
        actions = self.decode(idx, belief)
        return actions, self.advance(belief, carry, actions, st.generator), info
