"""SB3 agent schemas (``agent=ppo|maskable_ppo|dqn|a2c``) and their run checks.

The run keys every agent shares (``env``, ``logger``, ``eval``, ``seed``, ...) are
:class:`agents.run_config.RunConfig`; this module adds the SB3 agents' group nodes. They are
registered in Hydra's ConfigStore with the other agents (:func:`agents.trainers.register_configs`),
so a wrong key or type fails at composition naming the field; value ranges are declared with
:func:`~agents.run_config.bounded` and checked by :func:`agents.run_config.check_values`, and
:meth:`SB3AgentConfig.check` rejects combinations that cannot work (DQN on a MultiDiscrete env,
MaskablePPO without masks, Dict observations with ``MlpPolicy``, ...) before any env or model
is built. :func:`config_from_mapping` validates a composed config or a saved ``config.yaml``
(``agents.sb3.policy`` uses it).

Every agent schema's fields other than :data:`AGENT_META_FIELDS` are passed unchanged to
the SB3 / sb3-contrib constructor, so a field here is exactly the SB3 argument of that name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from omegaconf import MISSING, DictConfig

from agents.run_config import (
    LOGGER_SCHEMAS,
    AgentConfig,
    Algo,
    EnvConfig,
    EnvName,
    EvalConfig,
    Fidelity,
    LoggerConfig,
    LoggerKind,
    ObsKind,
    RewardWeightsConfig,
    RunConfig,
    RunConfigError,
    VecEnvKind,
    WandbLoggerConfig,
    bounded,
)

SB3ConfigError = RunConfigError
"""A training configuration that cannot work (the run schema's error; the old name)."""


class Activation(StrEnum):
    """Hidden-layer activation of the policy and value networks."""

    tanh = "tanh"
    relu = "relu"


POLICIES: tuple[str, ...] = ("MlpPolicy", "MultiInputPolicy")
"""SB3 policy classes that fit opsworld's observations (Box -> Mlp, Dict -> MultiInput)."""


# --------------------------------------------------------------------------- agent group
@dataclass
class SB3AgentConfig(AgentConfig):
    """Fields every SB3 agent has (``configs/agent/<algo>.yaml``).

    Attributes:
        algo: Which algorithm; set by the group option, not meant to be overridden.
        policy: SB3 policy class name; None picks ``MlpPolicy`` for ``env.obs=box`` and
            ``MultiInputPolicy`` for ``env.obs=dict``.
        learning_rate: Adam (RMSprop for A2C) step size, constant; > 0.
        gamma: Discount factor in (0, 1] (0.99: a horizon of about 100 decisions, 25
            simulated min).
        net_arch: Hidden layer sizes (shared sizes for the policy and value nets).
        activation: Hidden-layer activation.
    """

    policy: str | None = None
    learning_rate: float = bounded(3e-4, gt=0)
    gamma: float = bounded(0.99, gt=0, le=1)
    net_arch: list[int] = bounded([128, 128], ge=1, nonempty=True)
    activation: Activation = Activation.tanh

    def check(self, run: RunConfig) -> None:
        """Reject SB3 agent/env/policy combinations that cannot work.

        Raises:
            RunConfigError: The message names the field(s) and says what to do.
        """
        env = run.env
        if run.vec_env == VecEnvKind.batched and (
            env.name != EnvName.autoscale
            or env.fidelity != Fidelity.fluid
            or env.obs != ObsKind.box
        ):
            raise RunConfigError(
                f"vec_env=batched runs env=autoscale at env.fidelity=fluid with env.obs=box "
                f"(envs.gym.batched.BatchedAutoscaleEnv), got env={env.name}, "
                f"env.fidelity={env.fidelity}, env.obs={env.obs}: use vec_env=auto, dummy or "
                "subproc for this env"
            )
        expected = AGENT_SCHEMAS.get(self.algo)
        if type(self) is not expected:
            raise RunConfigError(
                f"agent.algo={self.algo} does not match the agent config "
                f"({type(self).__name__}); choose the algorithm with agent={self.algo} "
                "instead of overriding agent.algo"
            )
        policy = policy_name(run)
        if policy not in POLICIES:
            raise RunConfigError(
                f"agent.policy={policy!r} is not usable here; use one of {list(POLICIES)} "
                "or null (picks the one that fits env.obs)"
            )
        if env.obs == ObsKind.dict and policy != "MultiInputPolicy":
            raise RunConfigError(
                f"env.obs=dict gives Dict observations, which need agent.policy=MultiInputPolicy "
                f"(got {policy}); set agent.policy=MultiInputPolicy or null, or use env.obs=box"
            )
        if env.obs == ObsKind.box and policy == "MultiInputPolicy":
            raise RunConfigError(
                "agent.policy=MultiInputPolicy needs Dict observations: set env.obs=dict, or "
                "agent.policy=MlpPolicy (or null)"
            )


AGENT_META_FIELDS: frozenset[str] = frozenset({"algo", "policy", "net_arch", "activation"})
"""Agent fields that are not plain SB3 constructor arguments."""


@dataclass
class PPOConfig(SB3AgentConfig):
    """``agent=ppo``: SB3 PPO (Box, Discrete and MultiDiscrete actions).

    Attributes:
        n_steps: Steps per env per rollout (a rollout is ``n_steps * n_envs`` steps).
        batch_size: Minibatch size; in (1, ``n_steps * n_envs``].
        n_epochs: Passes over each rollout.
        gae_lambda: GAE lambda.
        clip_range: PPO clipping of the probability ratio.
        ent_coef: Entropy bonus (keeps the many-dimensional MultiDiscrete actions exploring).
        vf_coef: Value-loss weight.
        max_grad_norm: Gradient clipping.
        target_kl: Stop an update's epochs early beyond this KL; None: never.
        normalize_advantage: Normalise advantages per minibatch.
    """

    algo: Algo = Algo.ppo
    n_steps: int = bounded(256, ge=1)
    batch_size: int = bounded(128, gt=1)
    n_epochs: int = bounded(10, ge=1)
    gae_lambda: float = bounded(0.95, ge=0, le=1)
    clip_range: float = bounded(0.2, gt=0)
    ent_coef: float = bounded(0.01, ge=0)
    vf_coef: float = bounded(0.5, ge=0)
    max_grad_norm: float = bounded(0.5, gt=0)
    target_kl: float | None = bounded(None, gt=0)
    normalize_advantage: bool = True

    def check(self, run: RunConfig) -> None:
        """:meth:`SB3AgentConfig.check`, the rollout size, and MaskablePPO's masks."""
        super().check(run)
        rollout = self.n_steps * run.n_envs
        if rollout < 2:
            raise RunConfigError(
                f"a PPO rollout of agent.n_steps x n_envs = {rollout} step is too short; "
                "raise agent.n_steps or n_envs so that it is at least 2"
            )
        if self.batch_size > rollout:
            raise RunConfigError(
                f"agent.batch_size={self.batch_size} must be in (1, agent.n_steps x "
                f"n_envs = {rollout}]; lower agent.batch_size or raise agent.n_steps"
            )
        if run.env.name == EnvName.residual and run.env.obs != ObsKind.box:
            raise RunConfigError(
                f"env=residual observes a box only (got env.obs={run.env.obs}): set env.obs=box"
            )
        if self.algo == Algo.maskable_ppo and run.env.name == EnvName.autoscale:
            raise RunConfigError(
                "agent=maskable_ppo needs action masks, and env=autoscale has none (every "
                "scaling choice is always valid): use agent=ppo with env=autoscale, or "
                "env=remediate|ops with agent=maskable_ppo"
            )


@dataclass
class MaskablePPOConfig(PPOConfig):
    """``agent=maskable_ppo``: sb3-contrib MaskablePPO; invalid actions are masked out."""

    algo: Algo = Algo.maskable_ppo


@dataclass
class A2CConfig(SB3AgentConfig):
    """``agent=a2c``: SB3 A2C.

    Attributes:
        learning_rate: RMSprop step size (A2C's usual 7e-4).
        n_steps: Steps per env per update.
        gae_lambda: GAE lambda (1.0: plain n-step returns).
        ent_coef: Entropy bonus.
        vf_coef: Value-loss weight.
        max_grad_norm: Gradient clipping.
        use_rms_prop: RMSprop (A2C paper) instead of Adam.
        normalize_advantage: Normalise advantages.
    """

    algo: Algo = Algo.a2c
    learning_rate: float = bounded(7e-4, gt=0)
    n_steps: int = bounded(16, ge=1)
    gae_lambda: float = bounded(1.0, ge=0, le=1)
    ent_coef: float = bounded(0.01, ge=0)
    vf_coef: float = bounded(0.5, ge=0)
    max_grad_norm: float = bounded(0.5, gt=0)
    use_rms_prop: bool = True
    normalize_advantage: bool = False


@dataclass
class DQNConfig(SB3AgentConfig):
    """``agent=dqn``: SB3 DQN (Discrete actions only: ``env=remediate``).

    Attributes:
        learning_rate: Adam step size.
        buffer_size: Replay buffer capacity (transitions).
        learning_starts: Transitions collected before the first update.
        batch_size: Minibatch size.
        tau: Target network soft-update rate in (0, 1] (1.0: hard copy).
        train_freq: Env steps between updates.
        gradient_steps: Gradient steps per update.
        target_update_interval: Env steps between target-network updates.
        exploration_fraction: Share of training over which epsilon decays.
        exploration_initial_eps: Epsilon at the start.
        exploration_final_eps: Epsilon after the decay.
        max_grad_norm: Gradient clipping.
    """

    algo: Algo = Algo.dqn
    activation: Activation = Activation.relu
    learning_rate: float = bounded(1e-4, gt=0)
    buffer_size: int = bounded(100_000, ge=1)
    learning_starts: int = bounded(1_000, ge=0)
    batch_size: int = bounded(64, ge=1)
    tau: float = bounded(1.0, gt=0, le=1)
    train_freq: int = bounded(4, ge=1)
    gradient_steps: int = bounded(1, ge=1)
    target_update_interval: int = bounded(1_000, ge=1)
    exploration_fraction: float = bounded(0.2, ge=0, le=1)
    exploration_initial_eps: float = bounded(1.0, ge=0, le=1)
    exploration_final_eps: float = bounded(0.05, ge=0, le=1)
    max_grad_norm: float = bounded(10.0, gt=0)

    def check(self, run: RunConfig) -> None:
        """:meth:`SB3AgentConfig.check`, and DQN's Discrete action space."""
        super().check(run)
        if run.env.name != EnvName.remediate:
            raise RunConfigError(
                f"agent=dqn needs a Discrete action space, but env={run.env.name} is "
                "MultiDiscrete; only env=remediate is Discrete: use env=remediate, or "
                "agent=ppo|maskable_ppo|a2c"
            )


@dataclass
class TrainConfig(RunConfig):
    """An SB3 run: the run schema (:class:`RunConfig`) with an SB3 agent."""

    agent: SB3AgentConfig = MISSING


AGENT_SCHEMAS: dict[Algo, type[SB3AgentConfig]] = {
    Algo.ppo: PPOConfig,
    Algo.maskable_ppo: MaskablePPOConfig,
    Algo.dqn: DQNConfig,
    Algo.a2c: A2CConfig,
}
"""The SB3 agents' schemas (the trainer registry, :data:`agents.trainers.TRAINERS`, lists
them with Dreamer's)."""


def config_from_mapping(cfg: RunConfig | DictConfig | Mapping[str, Any]) -> TrainConfig:
    """Validate a composed config, a plain mapping or a saved ``config.yaml`` of an SB3 run.

    :func:`agents.trainers.to_run_config` for an SB3 agent (the one validation path).

    Raises:
        RunConfigError: Unknown algorithm or logger, a key that the schema does not have, a
            value of the wrong type or out of range, or a combination that cannot work; the
            message names the field.
    """
    from agents.trainers import to_run_config

    conf = to_run_config(cfg)
    if not isinstance(conf, TrainConfig):
        raise RunConfigError(
            f"agent.algo={conf.agent.algo}: not an SB3 agent; use one of "
            f"{[str(a) for a in AGENT_SCHEMAS]}"
        )
    return conf


def policy_name(conf: RunConfig) -> str:
    """The SB3 policy class name: ``agent.policy``, or the one that fits ``env.obs``."""
    agent = conf.agent
    assert isinstance(agent, SB3AgentConfig), type(agent)
    if agent.policy is not None:
        return agent.policy
    return "MultiInputPolicy" if conf.env.obs == ObsKind.dict else "MlpPolicy"


def check_config(conf: RunConfig) -> None:
    """All checks of an SB3 run (what :func:`config_from_mapping` runs; for built configs).

    Raises:
        RunConfigError: The message names the field(s) and says what to do.
    """
    from agents.trainers import validate

    validate(conf)


__all__ = [
    "AGENT_META_FIELDS",
    "AGENT_SCHEMAS",
    "LOGGER_SCHEMAS",
    "POLICIES",
    "A2CConfig",
    "Activation",
    "AgentConfig",
    "Algo",
    "DQNConfig",
    "EnvConfig",
    "EnvName",
    "EvalConfig",
    "Fidelity",
    "LoggerConfig",
    "LoggerKind",
    "MaskablePPOConfig",
    "ObsKind",
    "PPOConfig",
    "RewardWeightsConfig",
    "RunConfig",
    "SB3AgentConfig",
    "SB3ConfigError",
    "TrainConfig",
    "VecEnvKind",
    "WandbLoggerConfig",
    "check_config",
    "config_from_mapping",
    "policy_name",
]
