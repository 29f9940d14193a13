"""Settings of a Dreamer run: the ``agent=dreamer`` group and the run keys it shares.

``opsworld train agent=dreamer`` composes ``configs/train.yaml`` like every agent, so a
Dreamer run has the top-level keys of :class:`agents.sb3.config.TrainConfig` (``scenario``,
``suite``/``topology``, ``seed``, ``total_timesteps``, ``n_envs``, ``eval``, ``checkpoint_freq``,
``logger``, ``env``, ``resume``, ``out``, ...) and its own agent group
(:class:`DreamerAgentConfig`, ``configs/agent/dreamer.yaml``). :func:`dreamer_config` validates
the whole composed tree with pydantic (``extra="forbid"``): a misspelt key or a bad value
fails at start with its dotted name, before any env or network is built.

Keys of :class:`~agents.sb3.config.TrainConfig` that only SB3 uses (``vec_env``; the
``VecNormalize`` knobs of ``env``) are accepted and ignored: Dreamer steps its envs in this
process and reads the encoder's symlog'd observations as they are.

Defaults follow DreamerV3 (Hafner et al. 2023; danijar/dreamerv3 ``configs.yaml``): horizon
15, discount 0.997 (a horizon of 333 decisions), lambda 0.95, actor entropy 3e-4, 1% unimix,
two-hot critic over 255 bins with a slow critic (EMA 0.02) as regulariser, 5-95th
percentile return normalisation (EMA rate 0.01, scale at least 1), batches of 16 x 64 and
``train_ratio`` 32 replayed steps per env step. The networks are much smaller than the
paper's (the observation is a vector of a few hundred numbers and the machine a CPU).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agents.world_model.config import SIZES, Size, WorldModelConfig

PREFILL_POLICIES: tuple[str, ...] = ("random", "static", "hpa", "tuned_hpa", "runbook")
"""Behaviours that can fill the replay before the first update (``agent.prefill_policy``)."""

AC_UNITS: dict[str, list[int]] = {"tiny": [128, 128], "small": [256, 256]}
"""Actor and critic hidden layers of each size (``agent.net_arch: null``)."""

OWNED_BY_AGENT: dict[str, str] = {
    "size": "size",
    "batch": "batch",
    "seq_len": "seq_len",
    "lr": "model_lr",
    "bins": "bins",
    "unimix": "unimix",
}
"""WorldModelConfig fields that the agent group sets (field -> agent key)."""


class DreamerConfigError(ValueError):
    """A Dreamer run configuration that cannot work; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DreamerAgentConfig(_Strict):
    """The ``agent`` group of a Dreamer run (``configs/agent/dreamer.yaml``).

    Attributes:
        algo: Always ``dreamer`` (set by the group option; it routes ``opsworld train``).
        size: World-model preset (``tiny`` or ``small``, :data:`agents.world_model.config.SIZES`)
            and the actor/critic width (:data:`AC_UNITS`).
        world_model: Overrides of :class:`~agents.world_model.config.WorldModelConfig`
            fields (e.g. ``{deter: 128}``); ``batch``, ``seq_len``, ``lr``, ``bins`` and
            ``unimix`` come from this group's keys instead.
        net_arch: Hidden layers of the actor and of the critic; None: the size's.
        horizon: Imagination horizon H (decisions).
        discount: Discount per decision (0.997: a horizon of about 333 decisions).
        return_lambda: Lambda of the lambda-returns.
        entropy: Actor entropy bonus (scaled like the normalised advantages).
        unimix: Uniform share mixed into every action categorical and world-model latent.
        bins: Two-hot bins of the critic (and of the reward head).
        train_ratio: Replayed steps per env step; an update replays ``batch * seq_len``
            steps, so there are ``train_ratio / (batch * seq_len)`` updates per env step.
        batch: Sequences per world-model batch.
        seq_len: Steps per sequence (at most an episode's length).
        imag_starts: Imagine from a random subset of this many of the ``batch * seq_len``
            posterior states (None: all, as DreamerV3; 256 of 1024 makes an update about
            twice as fast on a CPU core).
        model_lr: World-model Adam learning rate.
        actor_lr: Actor Adam learning rate.
        critic_lr: Critic Adam learning rate.
        adam_eps: Adam epsilon of the actor and the critic.
        grad_clip: Gradient-norm clipping of the actor and the critic.
        slow_critic_rate: EMA rate of the slow critic per update.
        slow_reg: Weight of the critic's regulariser toward the slow critic's prediction.
        slow_target: Compute the lambda-returns with the slow critic (else the critic).
        retnorm_rate: EMA rate of the return percentiles.
        retnorm_low: Lower percentile of the return normalisation.
        retnorm_high: Upper percentile of the return normalisation.
        retnorm_limit: Smallest return scale (returns spread less than this are not
            magnified).
        prefill: Env steps collected by ``prefill_policy`` before the first update.
        prefill_policy: ``random`` (uniform over the valid actions) or a baseline
            (``static``, ``hpa``, ``tuned_hpa``, ``runbook``; not with ``env=hpa_tune``).
        noop_prob: Initial probability of the no-op in the remediation dimension (the last
            of Remediate, ClusterOps, HPATune), for the actor (its output bias starts at the
            matching log-odds and then learns freely) and the ``random`` prefill; None:
            uniform (DreamerV3). Uniform over ClusterOps' 16 remediations drains nodes and
            sheds traffic in most steps, so every recorded episode is a broken cluster and
            the world model never sees what a healthy one does.
        pretrain: World-model-only updates on the prefill data when the prefill ends, before
            the actor first acts (the actor cannot learn from a model that has not yet
            learned what actions do); 0: none.
        replay_capacity: Replay capacity in steps (oldest episodes leave first).
        log_every: Env steps between metric dumps.
        max_minutes: Stop training after this many wall-clock minutes of the run (resumed
            runs count their earlier minutes), then evaluate and save as usual; None: run to
            ``total_timesteps``.
    """

    algo: Literal["dreamer"] = "dreamer"
    size: Size = "tiny"
    world_model: dict[str, Any] = Field(default_factory=dict)
    net_arch: list[int] | None = None
    horizon: int = 15
    discount: float = 0.997
    return_lambda: float = 0.95
    entropy: float = 3e-4
    unimix: float = 0.01
    bins: int = 255
    train_ratio: float = 32.0
    batch: int = 16
    seq_len: int = 64
    imag_starts: int | None = 256
    model_lr: float = 1e-4
    actor_lr: float = 3e-5
    critic_lr: float = 3e-5
    adam_eps: float = 1e-5
    grad_clip: float = 100.0
    slow_critic_rate: float = 0.02
    slow_reg: float = 1.0
    slow_target: bool = False
    retnorm_rate: float = 0.01
    retnorm_low: float = 5.0
    retnorm_high: float = 95.0
    retnorm_limit: float = 1.0
    prefill: int = 1000
    prefill_policy: Literal["random", "static", "hpa", "tuned_hpa", "runbook"] = "random"
    noop_prob: float | None = None
    pretrain: int = 0
    replay_capacity: int = 1_000_000
    log_every: int = 1000
    max_minutes: float | None = None

    @model_validator(mode="after")
    def _check(self) -> DreamerAgentConfig:
        for name in ("horizon", "batch", "seq_len", "bins", "replay_capacity", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.bins % 2 == 0:
            raise ValueError(f"bins={self.bins}: use an odd number (a bin at zero)")
        for name in ("discount", "return_lambda"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)}: must be in (0, 1]")
        for name in ("unimix", "slow_critic_rate", "retnorm_rate"):
            if not 0.0 <= getattr(self, name) < 1.0 or (
                name != "unimix" and getattr(self, name) == 0.0
            ):
                raise ValueError(f"{name}={getattr(self, name)}: must be in (0, 1)")
        if not 0.0 <= self.retnorm_low < self.retnorm_high <= 100.0:
            raise ValueError(
                f"retnorm_low={self.retnorm_low}, retnorm_high={self.retnorm_high}: need "
                "0 <= low < high <= 100"
            )
        if self.train_ratio <= 0:
            raise ValueError(f"train_ratio={self.train_ratio}: must be > 0")
        if self.prefill < 0 or self.pretrain < 0:
            raise ValueError(f"prefill={self.prefill}, pretrain={self.pretrain}: must be >= 0")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes={self.max_minutes}: must be > 0 or null")
        if self.noop_prob is not None and not 0.0 < self.noop_prob < 1.0:
            raise ValueError(f"noop_prob={self.noop_prob}: must be in (0, 1) or null")
        if self.imag_starts is not None and self.imag_starts < 1:
            raise ValueError(f"imag_starts={self.imag_starts}: must be >= 1 or null")
        if self.net_arch is not None and (not self.net_arch or min(self.net_arch) < 1):
            raise ValueError(f"net_arch={self.net_arch}: list positive layer sizes, or null")
        owned = sorted(set(OWNED_BY_AGENT) & set(self.world_model))
        if owned:
            raise ValueError(
                f"world_model.{owned[0]}: set agent.{OWNED_BY_AGENT[owned[0]]} instead "
                "(the agent group owns it)"
            )
        try:
            self.world_model_config()
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(
                f"world_model.{where}: {first['msg'].removeprefix('Value error, ')}"
            ) from None
        return self

    @property
    def hidden(self) -> list[int]:
        """Actor and critic hidden layers."""
        return list(self.net_arch) if self.net_arch is not None else list(AC_UNITS[self.size])

    @property
    def updates_per_step(self) -> float:
        """World-model and actor-critic updates per env step."""
        return self.train_ratio / (self.batch * self.seq_len)

    def world_model_config(self) -> WorldModelConfig:
        """The :class:`WorldModelConfig` of this agent (preset, overrides, owned keys)."""
        return WorldModelConfig.preset(
            self.size,
            **{
                **self.world_model,
                "batch": self.batch,
                "seq_len": self.seq_len,
                "lr": self.model_lr,
                "bins": self.bins,
                "unimix": self.unimix,
            },
        )


assert set(SIZES) == set(AC_UNITS)


class RewardWeightsSettings(_Strict):
    """``env.reward_weights`` (see :class:`envs.gym.envs.RewardWeights`)."""

    slo: float = 1.0
    cost: float = 0.2
    disruption: float = 0.05


class EnvSettings(_Strict):
    """``env``: the env group of ``opsworld train`` as Dreamer reads it.

    Attributes:
        name: ``autoscale`` (MultiDiscrete), ``remediate`` (Discrete with masks), ``ops``
            (MultiDiscrete with a masked remediation dimension) or ``hpa_tune`` (per-service
            HPA CPU targets and a masked remediation dimension).
        fidelity: Simulator fidelity.
        obs: Must be ``box``: the world model reads the flat ObsEncoder layout.
        reward_weights: Weights of the reward's components.
        max_episode_steps: Cut episodes at this many decisions (None: the registered 240
            and the scenario's horizon).
        normalize_obs: SB3 only (ignored).
        normalize_reward: SB3 only (ignored).
        clip_obs: SB3 only (ignored).
    """

    name: Literal["autoscale", "remediate", "ops", "hpa_tune"] = "autoscale"
    fidelity: Literal["fluid", "request"] = "fluid"
    obs: Literal["box", "dict"] = "box"
    reward_weights: RewardWeightsSettings = Field(default_factory=RewardWeightsSettings)
    max_episode_steps: int | None = None
    normalize_obs: bool = True
    normalize_reward: bool = False
    clip_obs: float = 10.0

    @model_validator(mode="after")
    def _check(self) -> EnvSettings:
        if self.obs != "box":
            raise ValueError(
                "obs=dict: Dreamer's world model reads the flat observation; use env.obs=box"
            )
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps={self.max_episode_steps}: must be >= 1")
        return self


class LoggerSettings(_Strict):
    """``logger``: ``none``, ``csv``, ``tensorboard`` or ``wandb`` (files under ``<out>/logs``).

    The W&B keys mean what they mean for SB3 runs (``docs/training.md``); ``mode`` None
    reads ``$WANDB_MODE`` and falls back to ``offline``.
    """

    kind: Literal["none", "csv", "tensorboard", "wandb"] = "csv"
    project: str = "opsworld"
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    tags: list[str] = Field(default_factory=list)
    mode: str | None = None


class EvalSettings(_Strict):
    """``eval``: periodic evaluation episodes on a separate env (its own seeds).

    Attributes:
        freq: Env steps between evaluations (0: only the final one).
        episodes: Episodes per evaluation.
        deterministic: Take the actor's mode (else sample).
    """

    freq: int = 20_000
    episodes: int = 5
    deterministic: bool = True


class DreamerTrainConfig(_Strict):
    """A whole Dreamer run (the composed ``configs/train.yaml`` with ``agent=dreamer``).

    The top-level keys mean what they mean in :class:`agents.sb3.config.TrainConfig`;
    differences: ``total_timesteps`` counts env steps of training (prefill included),
    ``n_envs`` envs are stepped in lockstep in this process, ``checkpoint_freq`` writes
    ``checkpoints/step_<N>/`` (networks, optimisers, replay, RNG states: an exact resume),
    and ``resume`` takes such a folder or a finished run dir.
    """

    agent: DreamerAgentConfig = Field(default_factory=DreamerAgentConfig)
    env: EnvSettings = Field(default_factory=EnvSettings)
    logger: LoggerSettings = Field(default_factory=LoggerSettings)
    scenario: str = "boutique"
    suite: str | None = None
    topology: str | None = None
    scenario_overrides: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    total_timesteps: int = 100_000
    n_envs: int = 1
    eval: EvalSettings = Field(default_factory=EvalSettings)
    checkpoint_freq: int = 50_000
    progress_bar: bool | None = None
    verbose: int = 0
    device: str = "cpu"
    torch_threads: int | None = 1
    resume: str | None = None
    out: str = "outputs/train"
    experiment: str | None = None
    debug: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_sb3_only(cls, data: Any) -> Any:
        """Accept (and ignore) the SB3-only top-level keys of the shared train config."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        for key in sorted(set(data) & SB3_ONLY_KEYS):
            value = data.pop(key)
            default = _SB3_DEFAULTS.get(key, _MISSING)
            if default is not _MISSING and value != default:
                warnings.warn(
                    f"{key}={value!r} is an SB3 setting; agent=dreamer ignores it",
                    stacklevel=2,
                )
        return data

    @model_validator(mode="after")
    def _check(self) -> DreamerTrainConfig:
        for name in ("total_timesteps", "n_envs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.eval.freq < 0 or self.eval.episodes < 1:
            raise ValueError(
                f"eval.freq={self.eval.freq}, eval.episodes={self.eval.episodes}: need "
                "freq >= 0 (0: final evaluation only) and episodes >= 1"
            )
        if self.checkpoint_freq < 0:
            raise ValueError(f"checkpoint_freq={self.checkpoint_freq}: must be >= 0 (0: none)")
        if self.suite is not None and self.topology is None:
            raise ValueError(
                f"suite={self.suite} needs topology=<name> (e.g. topology=chain3): a policy fits "
                "one topology"
            )
        if self.topology is not None and self.suite is None:
            raise ValueError(f"topology={self.topology} only picks entries of a suite: set suite")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads={self.torch_threads}: must be >= 1 or null")
        if self.env.name == "autoscale" and self.agent.noop_prob is not None:
            raise ValueError(
                f"agent.noop_prob={self.agent.noop_prob}: env=autoscale has no remediation "
                "dimension; leave it null"
            )
        if self.env.name == "hpa_tune" and self.agent.prefill_policy != "random":
            raise ValueError(
                f"agent.prefill_policy={self.agent.prefill_policy}: env=hpa_tune acts through "
                "the HPA's targets, and a baseline's replica actions are no choice of that "
                "action space (the replay would record features the actor cannot take); use "
                "agent.prefill_policy=random"
            )
        return self


_MISSING = object()
SB3_ONLY_KEYS: frozenset[str] = frozenset({"vec_env"})
"""Top-level keys of the shared train config that Dreamer ignores."""
_SB3_DEFAULTS: dict[str, Any] = {"vec_env": "auto"}


def _field_name(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after",))


def dreamer_config(cfg: Any) -> DreamerTrainConfig:
    """Validate a composed config (DictConfig, mapping or a saved ``config.yaml``'s content).

    Raises:
        DreamerConfigError: Naming the first bad field (dotted) and why.
    """
    if isinstance(cfg, DreamerTrainConfig):
        return cfg
    from omegaconf import DictConfig, OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = dataclasses.asdict(data)
    try:
        return DreamerTrainConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = _field_name(first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = "unknown key for agent=dreamer (see configs/agent/dreamer.yaml, docs/dreamer.md)"
        raise DreamerConfigError(f"{where or 'config'}: {msg}") from None
