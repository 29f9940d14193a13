"""Typed run configuration of SB3 training, and the checks that reject bad runs at start.

These dataclasses are the schemas behind the Hydra config groups of ``opsworld train``
(``configs/agent/``, ``configs/env/``, ``configs/logger/`` and ``configs/train.yaml``):
``experiments.train`` registers them in Hydra's ConfigStore, so a wrong key or type fails
at composition naming the field, and :func:`check_config` rejects combinations that cannot
work (DQN on a MultiDiscrete env, MaskablePPO without masks, Dict observations with
``MlpPolicy``, ...) before any env or model is built. :func:`config_from_mapping` rebuilds
a :class:`TrainConfig` from a saved ``config.yaml`` (``agents.sb3.policy`` uses it).

Every agent schema's fields other than :data:`AGENT_META_FIELDS` are passed unchanged to
the SB3 / sb3-contrib constructor, so a field here is exactly the SB3 argument of that name.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class SB3ConfigError(ValueError):
    """A training configuration that cannot work; the message names the field and the fix."""


class Algo(StrEnum):
    """SB3 / sb3-contrib algorithm of the ``agent`` group."""

    ppo = "ppo"
    maskable_ppo = "maskable_ppo"
    dqn = "dqn"
    a2c = "a2c"


class EnvName(StrEnum):
    """Environment of the ``env`` group (see :data:`agents.sb3.envs.ENV_IDS`)."""

    autoscale = "autoscale"
    remediate = "remediate"
    ops = "ops"
    hpa_tune = "hpa_tune"


class ObsKind(StrEnum):
    """Observation layout: flat ``Box`` or one-level ``Dict`` (see ``docs/envs.md``)."""

    box = "box"
    dict = "dict"


class Fidelity(StrEnum):
    """Simulator fidelity the env runs at."""

    fluid = "fluid"
    request = "request"


class LoggerKind(StrEnum):
    """Where SB3's metrics go (the ``logger`` group)."""

    none = "none"
    csv = "csv"
    tensorboard = "tensorboard"
    wandb = "wandb"


class VecEnvKind(StrEnum):
    """Vectorisation: ``auto`` is ``DummyVecEnv`` for one env, ``SubprocVecEnv`` otherwise."""

    auto = "auto"
    dummy = "dummy"
    subproc = "subproc"


class Activation(StrEnum):
    """Hidden-layer activation of the policy and value networks."""

    tanh = "tanh"
    relu = "relu"


POLICIES: tuple[str, ...] = ("MlpPolicy", "MultiInputPolicy")
"""SB3 policy classes that fit opsworld's observations (Box -> Mlp, Dict -> MultiInput)."""


# --------------------------------------------------------------------------- agent group
@dataclass
class AgentConfig:
    """Fields every agent has (``configs/agent/<algo>.yaml``).

    Attributes:
        algo: Which algorithm; set by the group option, not meant to be overridden.
        policy: SB3 policy class name; None picks ``MlpPolicy`` for ``env.obs=box`` and
            ``MultiInputPolicy`` for ``env.obs=dict``.
        learning_rate: Adam (RMSprop for A2C) step size, constant.
        gamma: Discount factor (0.99: a horizon of about 100 decisions, 25 simulated min).
        net_arch: Hidden layer sizes (shared sizes for the policy and value nets).
        activation: Hidden-layer activation.
    """

    algo: Algo = MISSING
    policy: str | None = None
    learning_rate: float = 3e-4
    gamma: float = 0.99
    net_arch: list[int] = field(default_factory=lambda: [128, 128])
    activation: Activation = Activation.tanh


AGENT_META_FIELDS: frozenset[str] = frozenset({"algo", "policy", "net_arch", "activation"})
"""Agent fields that are not plain SB3 constructor arguments."""


@dataclass
class PPOConfig(AgentConfig):
    """``agent=ppo``: SB3 PPO (Box, Discrete and MultiDiscrete actions).

    Attributes:
        n_steps: Steps per env per rollout (a rollout is ``n_steps * n_envs`` steps).
        batch_size: Minibatch size; at most ``n_steps * n_envs``.
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
    n_steps: int = 256
    batch_size: int = 128
    n_epochs: int = 10
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float | None = None
    normalize_advantage: bool = True


@dataclass
class MaskablePPOConfig(PPOConfig):
    """``agent=maskable_ppo``: sb3-contrib MaskablePPO; invalid actions are masked out."""

    algo: Algo = Algo.maskable_ppo


@dataclass
class A2CConfig(AgentConfig):
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
    learning_rate: float = 7e-4
    n_steps: int = 16
    gae_lambda: float = 1.0
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    use_rms_prop: bool = True
    normalize_advantage: bool = False


@dataclass
class DQNConfig(AgentConfig):
    """``agent=dqn``: SB3 DQN (Discrete actions only: ``env=remediate``).

    Attributes:
        learning_rate: Adam step size.
        buffer_size: Replay buffer capacity (transitions).
        learning_starts: Transitions collected before the first update.
        batch_size: Minibatch size.
        tau: Target network soft-update rate (1.0: hard copy).
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
    learning_rate: float = 1e-4
    buffer_size: int = 100_000
    learning_starts: int = 1_000
    batch_size: int = 64
    tau: float = 1.0
    train_freq: int = 4
    gradient_steps: int = 1
    target_update_interval: int = 1_000
    exploration_fraction: float = 0.2
    exploration_initial_eps: float = 1.0
    exploration_final_eps: float = 0.05
    max_grad_norm: float = 10.0


AGENT_SCHEMAS: dict[Algo, type[AgentConfig]] = {
    Algo.ppo: PPOConfig,
    Algo.maskable_ppo: MaskablePPOConfig,
    Algo.dqn: DQNConfig,
    Algo.a2c: A2CConfig,
}


# --------------------------------------------------------------------------- env group
@dataclass
class RewardWeightsConfig:
    """Weights of the reward's penalties (:class:`envs.gym.envs.RewardWeights`)."""

    slo: float = 1.0
    cost: float = 0.2
    disruption: float = 0.05


@dataclass
class EnvConfig:
    """The ``env`` group (``configs/env/<name>.yaml``).

    Attributes:
        name: ``autoscale``, ``remediate``, ``ops`` or ``hpa_tune`` (set by the group option).
        fidelity: Simulator fidelity (``fluid`` is what RL trains on).
        obs: ``box`` or ``dict`` observations (``dict`` needs ``MultiInputPolicy``).
        reward_weights: Reward penalty weights.
        max_episode_steps: Truncate episodes after this many decisions; None keeps the
            registered limit (240) and the scenario's horizon.
        normalize_obs: Normalise observations with running statistics (``VecNormalize``).
        normalize_reward: Also scale rewards by a running return std (``VecNormalize``).
        clip_obs: Clip normalised observations to ``[-clip_obs, clip_obs]``.
    """

    name: EnvName = MISSING
    fidelity: Fidelity = Fidelity.fluid
    obs: ObsKind = ObsKind.box
    reward_weights: RewardWeightsConfig = field(default_factory=RewardWeightsConfig)
    max_episode_steps: int | None = None
    normalize_obs: bool = True
    normalize_reward: bool = False
    clip_obs: float = 10.0


# --------------------------------------------------------------------------- logger group
@dataclass
class LoggerConfig:
    """The ``logger`` group: ``none``, ``csv`` or ``tensorboard`` (files under ``<out>/logs``).

    Attributes:
        kind: Where metrics go (set by the group option).
    """

    kind: LoggerKind = MISSING


@dataclass
class WandbLoggerConfig(LoggerConfig):
    """``logger=wandb``: TensorBoard files synced into a W&B run (offline by default).

    Attributes:
        project: W&B project.
        entity: W&B entity (team or user); None: the default one.
        group: Run group (e.g. one sweep).
        name: Run name; None: W&B's generated name.
        tags: Run tags.
        mode: ``offline``, ``online`` or ``disabled``; None reads ``$WANDB_MODE`` and falls
            back to ``offline`` (no account needed; ``wandb sync`` uploads later).
    """

    kind: LoggerKind = LoggerKind.wandb
    project: str = "opsworld"
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str | None = None


LOGGER_SCHEMAS: dict[LoggerKind, type[LoggerConfig]] = {
    LoggerKind.none: LoggerConfig,
    LoggerKind.csv: LoggerConfig,
    LoggerKind.tensorboard: LoggerConfig,
    LoggerKind.wandb: WandbLoggerConfig,
}


# --------------------------------------------------------------------------- root
@dataclass
class EvalConfig:
    """Evaluation on a separate env (same scenario, its own seeds).

    Attributes:
        freq: Evaluate every this many env steps during training (``EvalCallback``; the
            best model goes to ``<out>/best``); 0 disables it.
        episodes: Episodes per evaluation, and for the final one in ``metrics.json``.
        deterministic: Evaluate the greedy (mode) action.
    """

    freq: int = 20_000
    episodes: int = 5
    deterministic: bool = True


@dataclass
class TrainConfig:
    """Schema of ``configs/train.yaml`` (``opsworld train``).

    Attributes:
        agent: The algorithm and its hyperparameters (group ``agent``).
        env: The environment (group ``env``).
        logger: Where metrics go (group ``logger``).
        scenario: Built-in scenario (``chain3``, ``boutique``, ``mesh40``) or a YAML path;
            unused when ``suite`` is set.
        suite: Train on a scenario suite (``train`` or a suite YAML path) instead of
            ``scenario``: the entries on ``topology``, one drawn per episode.
        topology: With ``suite``: the topology whose entries to train on (``chain3``,
            ``boutique``, ...); a policy fits one topology (its observation size).
        scenario_overrides: Nested overrides of scenario fields, e.g.
            ``scenario_overrides.traffic.noise={cv: 0.1, tau_s: 60}``.
        seed: Run seed: seeds torch, the model, and (through ``SeedSequence``) every env.
        total_timesteps: Env steps to train for (summed over the vectorised envs).
        n_envs: Parallel training envs.
        vec_env: ``auto`` (Dummy for 1 env, Subproc otherwise), ``dummy`` or ``subproc``.
        eval: Evaluation settings.
        checkpoint_freq: Save a checkpoint every this many env steps (0: never).
        progress_bar: tqdm/rich progress bar; None: only when stdout is a terminal.
        verbose: SB3 verbosity (1 prints the metric tables to stdout).
        device: Torch device (``cpu``; small MLPs gain nothing from a GPU).
        torch_threads: Torch intra-op threads; None leaves torch's default.
        resume: Continue from a checkpoint ``.zip`` (``<run>/checkpoints/model_<N>_steps.zip``)
            or a finished run dir, up to ``total_timesteps`` in all.
        out: The run dir (all outputs go there).
        experiment: Name of the experiment overlay applied (set by the overlay).
        debug: Name of the debug overlay applied (set by the overlay).
    """

    agent: AgentConfig = MISSING
    env: EnvConfig = MISSING
    logger: LoggerConfig = MISSING
    scenario: str = "boutique"
    suite: str | None = None
    topology: str | None = None
    scenario_overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    total_timesteps: int = 200_000
    n_envs: int = 4
    vec_env: VecEnvKind = VecEnvKind.auto
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint_freq: int = 50_000
    progress_bar: bool | None = None
    verbose: int = 0
    device: str = "cpu"
    torch_threads: int | None = 1
    resume: str | None = None
    out: str = "outputs/train"
    experiment: str | None = None
    debug: str | None = None


# --------------------------------------------------------------------------- building
def config_from_mapping(cfg: TrainConfig | DictConfig | Mapping[str, Any]) -> TrainConfig:
    """Validate a composed Hydra config, a plain mapping or a saved ``config.yaml``.

    The agent and logger schemas are picked from ``agent.algo`` and ``logger.kind``, so a
    plain mapping with PPO-only keys validates against :class:`PPOConfig`.

    Raises:
        SB3ConfigError: Unknown algorithm or logger, a key that the schema does not have, or
            a value of the wrong type; the message names the field.
    """
    if isinstance(cfg, TrainConfig):
        return cfg
    try:
        node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
        algo = OmegaConf.select(node, "agent.algo", default=None)
        kind = OmegaConf.select(node, "logger.kind", default=LoggerKind.csv.value)
        agent_cls = _choice(AGENT_SCHEMAS, algo, "agent.algo", "agent=<name>")
        logger_cls = _choice(LOGGER_SCHEMAS, kind, "logger.kind", "logger=<name>")
        base = OmegaConf.structured(
            TrainConfig(agent=agent_cls(), env=EnvConfig(), logger=logger_cls())
        )
        obj = OmegaConf.to_object(OmegaConf.merge(base, node))
    except OmegaConfBaseException as err:
        raise SB3ConfigError(f"bad train config: {err}") from None
    assert isinstance(obj, TrainConfig)
    return obj


def _choice(table: Mapping[Any, Any], value: Any, key: str, how: str) -> Any:
    if value is None:
        raise SB3ConfigError(f"{key} is missing; choose one with {how}: {[str(k) for k in table]}")
    for k, v in table.items():
        if str(k) == str(value):
            return v
    raise SB3ConfigError(
        f"{key}={value!r} is not known; use {how} with one of {[str(k) for k in table]}"
    )


def policy_name(conf: TrainConfig) -> str:
    """The SB3 policy class name: ``agent.policy``, or the one that fits ``env.obs``."""
    if conf.agent.policy is not None:
        return conf.agent.policy
    return "MultiInputPolicy" if conf.env.obs == ObsKind.dict else "MlpPolicy"


def check_config(conf: TrainConfig) -> None:
    """Reject a run that cannot work, before anything is built.

    Raises:
        SB3ConfigError: The message names the field(s) and says what to do.
    """
    agent, env = conf.agent, conf.env
    expected = AGENT_SCHEMAS[agent.algo]
    if type(agent) is not expected:
        raise SB3ConfigError(
            f"agent.algo={agent.algo} does not match the agent config "
            f"({type(agent).__name__}); choose the algorithm with agent={agent.algo} "
            "instead of overriding agent.algo"
        )
    if agent.algo == Algo.dqn and env.name != EnvName.remediate:
        raise SB3ConfigError(
            f"agent=dqn needs a Discrete action space, but env={env.name} is MultiDiscrete; "
            "only env=remediate is Discrete: use env=remediate, or agent=ppo|maskable_ppo|a2c"
        )
    if agent.algo == Algo.maskable_ppo and env.name == EnvName.autoscale:
        raise SB3ConfigError(
            "agent=maskable_ppo needs action masks, and env=autoscale has none (every "
            "scaling choice is always valid): use agent=ppo with env=autoscale, or "
            "env=remediate|ops with agent=maskable_ppo"
        )
    policy = policy_name(conf)
    if policy not in POLICIES:
        raise SB3ConfigError(
            f"agent.policy={policy!r} is not usable here; use one of {list(POLICIES)} "
            "or null (picks the one that fits env.obs)"
        )
    if env.obs == ObsKind.dict and policy != "MultiInputPolicy":
        raise SB3ConfigError(
            f"env.obs=dict gives Dict observations, which need agent.policy=MultiInputPolicy "
            f"(got {policy}); set agent.policy=MultiInputPolicy or null, or use env.obs=box"
        )
    if env.obs == ObsKind.box and policy == "MultiInputPolicy":
        raise SB3ConfigError(
            "agent.policy=MultiInputPolicy needs Dict observations: set env.obs=dict, or "
            "agent.policy=MlpPolicy (or null)"
        )
    if conf.suite is not None and conf.topology is None:
        raise SB3ConfigError(
            f"suite={conf.suite} needs topology=<name> (e.g. topology=chain3): a policy fits "
            "one topology, since its observation size depends on the services"
        )
    if conf.topology is not None and conf.suite is None:
        raise SB3ConfigError(
            f"topology={conf.topology} only picks entries of a suite: set suite=train (or a "
            "suite YAML path) too, or drop topology and choose the scenario with scenario=..."
        )
    _positive(conf.total_timesteps, "total_timesteps")
    _positive(conf.n_envs, "n_envs")
    _positive(conf.eval.episodes, "eval.episodes")
    if conf.eval.freq < 0:
        raise SB3ConfigError(f"eval.freq must be >= 0 (0 disables it), got {conf.eval.freq}")
    if conf.checkpoint_freq < 0:
        raise SB3ConfigError(
            f"checkpoint_freq must be >= 0 (0 disables it), got {conf.checkpoint_freq}"
        )
    if conf.torch_threads is not None:
        _positive(conf.torch_threads, "torch_threads")
    if env.max_episode_steps is not None:
        _positive(env.max_episode_steps, "env.max_episode_steps")
    if not agent.net_arch or any(n <= 0 for n in agent.net_arch):
        raise SB3ConfigError(f"agent.net_arch must list positive layer sizes, got {agent.net_arch}")
    if isinstance(agent, PPOConfig | A2CConfig):
        _positive(agent.n_steps, "agent.n_steps")
        rollout = agent.n_steps * conf.n_envs
        if isinstance(agent, PPOConfig):
            if rollout < 2:
                raise SB3ConfigError(
                    f"a PPO rollout of agent.n_steps x n_envs = {rollout} step is too short; "
                    "raise agent.n_steps or n_envs so that it is at least 2"
                )
            if not 1 < agent.batch_size <= rollout:
                raise SB3ConfigError(
                    f"agent.batch_size={agent.batch_size} must be in (1, agent.n_steps x "
                    f"n_envs = {rollout}]; lower agent.batch_size or raise agent.n_steps"
                )
    if isinstance(agent, DQNConfig):
        _positive(agent.buffer_size, "agent.buffer_size")
        _positive(agent.batch_size, "agent.batch_size")
        _positive(agent.train_freq, "agent.train_freq")
    _check_logger_packages(conf.logger)
    if conf.resume is not None and not Path(conf.resume).exists():
        raise SB3ConfigError(
            f"resume={conf.resume}: no such file or folder; give a checkpoint "
            "(<run>/checkpoints/model_<N>_steps.zip) or a finished run dir"
        )


def _positive(value: int, key: str) -> None:
    if value < 1:
        raise SB3ConfigError(f"{key} must be >= 1, got {value}")


def _check_logger_packages(logger: LoggerConfig) -> None:
    needs = {
        LoggerKind.tensorboard: ("tensorboard",),
        LoggerKind.wandb: ("tensorboard", "wandb"),
    }.get(logger.kind, ())
    missing = [p for p in needs if importlib.util.find_spec(p) is None]
    if missing:
        raise SB3ConfigError(
            f"logger={logger.kind} needs the package(s) {missing}, which are not installed: "
            f"pip install {' '.join(missing)} (opsworld's dependencies list them), or use "
            "logger=csv"
        )
