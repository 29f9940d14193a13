"""``SB3Policy``: a trained SB3 run dir behind the :class:`agents.policy.Policy` protocol.

``SB3Policy(run_dir)`` reads the run's ``config.yaml``, loads ``model.zip`` with SB3 /
sb3-contrib and the ``VecNormalize`` statistics of ``vecnormalize.pkl`` (frozen:
``training=False``, ``norm_reward=False``), and then, for each Telemetry frame,

1. encodes the frame with the env's :class:`envs.gym.encoder.ObsEncoder` (the same code the
   env used in training) and normalises it with the saved statistics;
2. asks the model for the action (deterministic by default), passing the action masks to
   MaskablePPO;
3. decodes it with the env class's own ``decode`` (no second copy of the action layout).

**No simulator.** The env's ``decode`` and ``action_masks`` read the control plane
(``sim.engine.cp``): desired replicas, rollback history, shed fraction, node states. The
adapter hands them a read-only view built from telemetry alone (:class:`ControlBelief`):

* desired replicas: the frame's ``replicas_desired`` gauge; when it is missing (a telemetry
  gap), the last observed value (at first, the scenario's initial replicas). In the
  simulator the gauge is the control plane's desired count at the scrape, which is where
  the env reads it, so with complete telemetry the decoded actions are the env's exactly
  (``tests/test_train.py`` checks this along real trajectories);
* rollback is valid iff the frame's ``deploy_version`` > 0 (versions only grow by deploys
  and a rollback pops back toward 0, so this is exact); a missing version masks rollback;
* shedding: the frame's ``shed_fraction`` (or the last observed one) masks the level in
  force, as in the env;
* draining: telemetry counts ready nodes but does not say *which* nodes are ready, so by
  default every ``drain node`` choice is masked out (``allow_drain=False``). With
  ``allow_drain=True`` nodes ``0 .. nodes_ready-1`` are assumed ready, which is wrong once
  the cluster autoscaler has removed a lower-numbered node; the simulator then refuses the
  drain (``InvalidActionError``).

As in the env, a choice that the mask rules out becomes a no-op (``info["masked_out"]``).

**HPATune runs** (``env=hpa_tune``): the model picks each service's HPA CPU target and a
remediation; the decision is the env's own :meth:`~envs.gym.envs.HPATuneEnv.decide` (the
HPA reconciles on the frame with those targets), so the stream's state is an
:class:`HPATuneState`: the control belief plus the HPA's state. The HPA's replica bounds
are those of the run's (first) training scenario.

**Trust.** SB3 ``.zip`` files and ``vecnormalize.pkl`` contain pickles, and loading them can
run arbitrary code: only load run dirs you produced or otherwise trust.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from omegaconf import OmegaConf
from sb3_contrib import MaskablePPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from agents.sb3.config import TrainConfig, config_from_mapping
from agents.sb3.envs import brief_space, make_env
from agents.sb3.train import ALGOS
from envs.gym.envs import ClusterEnv, HPATuneEnv
from envs.sim.actions import Action
from envs.sim.cluster import NodeState
from envs.sim.simulator import Simulator
from envs.sim.telemetry import Telemetry


@dataclass(frozen=True)
class ControlBelief:
    """What the adapter knows of the control plane of one stream, from telemetry only.

    Attributes:
        desired: Desired replicas per service (last observed ``replicas_desired``).
        deploy_version: This frame's ``deploy_version`` per service (NaN: unknown).
        shed_fraction: Shed fraction in force (last observed).
        nodes_ready: This frame's ``nodes_ready`` (NaN: unknown).
    """

    desired: tuple[int, ...]
    deploy_version: tuple[float, ...]
    shed_fraction: float
    nodes_ready: float

    @classmethod
    def initial(cls, initial_replicas: Sequence[int]) -> ControlBelief:
        """Before any frame: the scenario's initial replicas, nothing else known."""
        n = len(initial_replicas)
        return cls(tuple(int(r) for r in initial_replicas), (math.nan,) * n, 0.0, math.nan)

    def update(self, frame: Telemetry) -> ControlBelief:
        """The belief after seeing ``frame`` (observed values replace, missing ones keep)."""
        seen = frame["replicas_desired"]
        desired = tuple(
            round(float(v)) if not math.isnan(v) else old
            for v, old in zip(seen, self.desired, strict=True)
        )
        shed = frame.cluster_value("shed_fraction")
        return ControlBelief(
            desired=desired,
            deploy_version=tuple(float(v) for v in frame["deploy_version"]),
            shed_fraction=self.shed_fraction if math.isnan(shed) else shed,
            nodes_ready=frame.cluster_value("nodes_ready"),
        )


@dataclass(frozen=True)
class HPATuneState:
    """State of one stream of an ``env=hpa_tune`` policy.

    Attributes:
        belief: What telemetry says of the control plane (masks, remediation decoding).
        hpa: The HPA's state (:class:`agents.baselines.hpa.HPAState`): recommendations and
            scale events, carried from decision to decision.
    """

    belief: ControlBelief
    hpa: Any


@dataclass(frozen=True)
class _NodeView:
    state: NodeState


@dataclass(frozen=True)
class _ControlPlaneView:
    """The attributes of ``envs.sim.cluster.ControlPlane`` that the env's decode reads."""

    desired: list[int]
    history: list[list[int]]
    shed_fraction: float
    nodes: list[_NodeView]


@dataclass(frozen=True)
class _EngineView:
    cp: _ControlPlaneView


@dataclass(frozen=True)
class _SimulatorView:
    engine: _EngineView


def control_view(belief: ControlBelief, n_nodes: int, allow_drain: bool) -> _SimulatorView:
    """A stand-in for ``env.sim`` built from ``belief`` (see the module docstring)."""
    history = [[0] if v > 0 else [] for v in belief.deploy_version]  # NaN > 0 is False
    ready = 0
    if allow_drain and not math.isnan(belief.nodes_ready):
        ready = min(int(belief.nodes_ready), n_nodes)
    cp = _ControlPlaneView(
        desired=list(belief.desired),
        history=history,
        shed_fraction=belief.shed_fraction,
        nodes=[_NodeView(NodeState.READY)] * ready,
    )
    return _SimulatorView(_EngineView(cp))


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The validated :class:`TrainConfig` saved in ``<run_dir>/config.yaml``."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {run_dir} an 'opsworld train' run dir?")
    return config_from_mapping(OmegaConf.load(path))  # type: ignore[arg-type]


class SB3Policy:
    """A trained SB3 agent as a :class:`agents.policy.Policy`; see the module docstring.

    Only load trusted run dirs: the model and statistics files are pickles.

    Args:
        run_dir: An ``opsworld train`` run dir (``config.yaml``, the model, the statistics).
        model: Model file, relative to ``run_dir`` (``best/best_model.zip`` for the best
            evaluation).
        vecnormalize: Statistics file, relative to ``run_dir`` (``best/vecnormalize.pkl``
            goes with the best model).
        deterministic: Take the mode of the action distribution (else sample).
        allow_drain: Let the policy drain nodes, assuming nodes ``0 .. nodes_ready-1`` are
            the ready ones (see the module docstring); off by default.
        device: Torch device for the model.

    Attributes:
        name: ``sb3-<algo>``.
        config: The run's config.
        env: The (never reset) env whose encoder, masks and decode are used.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        model: str = "model.zip",
        vecnormalize: str = "vecnormalize.pkl",
        deterministic: bool = True,
        allow_drain: bool = False,
        device: str = "cpu",
    ) -> None:
        run = Path(run_dir)
        self.config = load_run_config(run)
        self.name = f"sb3-{self.config.agent.algo.value}"
        self.deterministic = deterministic
        self.allow_drain = allow_drain
        sb3_env = make_env(self.config)
        self.env = cast(ClusterEnv, sb3_env.unwrapped)
        self.vec_normalize = VecNormalize.load(
            str(run / vecnormalize), DummyVecEnv([lambda: sb3_env])
        )
        self.vec_normalize.training = False
        self.vec_normalize.norm_reward = False
        self.model = ALGOS[self.config.agent.algo].load(run / model, device=device)
        if (
            self.model.observation_space != sb3_env.observation_space
            or self.model.action_space != sb3_env.action_space
        ):
            raise ValueError(
                f"{run / model}: its spaces ({brief_space(self.model.observation_space)}, "
                f"{brief_space(self.model.action_space)}) differ from the env of config.yaml "
                f"({brief_space(sb3_env.observation_space)}, {brief_space(sb3_env.action_space)})"
            )
        self._masked = isinstance(self.model, MaskablePPO)
        self._initial = [s.replicas.initial for s in self.env.specs]

    def reset(self, n: int = 1) -> Any:
        """Fresh state (one for ``n == 1``, else a list of ``n``).

        A :class:`ControlBelief`, or an :class:`HPATuneState` for an ``hpa_tune`` run.
        """

        def fresh() -> ControlBelief | HPATuneState:
            belief = ControlBelief.initial(self._initial)
            if isinstance(self.env, HPATuneEnv):
                return HPATuneState(belief, self.env.hpa.reset(1))
            return belief

        return fresh() if n == 1 else [fresh() for _ in range(n)]

    def observe(self, frame: Telemetry) -> Any:
        """The normalised model input for ``frame`` (batch of one)."""
        if self.env.obs_kind == "box":
            obs: Any = self.env.encoder.encode(frame)[None]
        else:
            encoded = self.env.encoder.encode_dict(frame)
            obs = {k: v[None] for k, v in encoded.items()}
        return self.vec_normalize.normalize_obs(obs)

    def action_masks(self, belief: ControlBelief) -> np.ndarray:
        """The env's ``action_masks()`` under ``belief`` (True = valid)."""
        self._bind(belief)
        return self.env.action_masks()

    def decode(self, action: Any, belief: ControlBelief) -> list[Action]:
        """The env's ``decode(action)`` under ``belief``."""
        self._bind(belief)
        return self.env.decode(action)

    def _bind(self, belief: ControlBelief) -> None:
        view = control_view(belief, self.env.n_nodes, self.allow_drain)
        self.env.sim = cast(Simulator, view)  # duck-typed: decode reads only engine.cp

    def act(self, obs: Telemetry, state: Any) -> tuple[list[Action], Any, dict[str, Any]]:
        """Decide on one frame.

        Args:
            obs: The latest telemetry frame of the stream.
            state: This stream's :class:`ControlBelief` (:class:`HPATuneState` for
                ``hpa_tune``), from :meth:`reset` or the last call.

        Returns:
            ``(actions, new_state, info)``; ``info`` has ``action`` (the raw model action),
            ``masked_out`` (the remediation chosen was invalid, so nothing was done) and,
            for masked agents, ``n_valid`` (valid choices).
        """
        tune = state if isinstance(state, HPATuneState) else None
        belief = (tune.belief if tune is not None else cast(ControlBelief, state)).update(obs)
        masks = self.action_masks(belief)
        kwargs: dict[str, Any] = {"deterministic": self.deterministic}
        if self._masked:
            kwargs["action_masks"] = masks[None]
        raw, _ = self.model.predict(self.observe(obs), **kwargs)
        action = np.asarray(raw)[0]
        info: dict[str, Any] = {"action": action.tolist()}
        new_state: ControlBelief | HPATuneState = belief
        if isinstance(self.env, HPATuneEnv):
            if tune is None:
                raise TypeError("an hpa_tune SB3Policy needs the HPATuneState of reset()")
            self._bind(belief)  # masks and remediation decoding read the belief
            actions, hpa, _ = self.env.decide(action, obs, tune.hpa)
            new_state = HPATuneState(belief, hpa)
            info["hpa_targets"] = list(self.env.targets(action).values())
        else:
            actions = self.decode(action, belief)
        info["masked_out"] = self.env.masked_out(action, masks)
        if self._masked:
            info["n_valid"] = int(masks.sum())
        return actions, new_state, info
