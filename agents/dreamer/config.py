"""Settings of a Dreamer run: the ``agent=dreamer`` group node of the one run schema.

``opsworld train agent=dreamer`` composes ``configs/train.yaml`` like every agent: a Dreamer
run is an :class:`agents.run_config.RunConfig` (``scenario``, ``suite``/``topology``,
``seed``, ``total_timesteps``, ``n_envs``, ``eval``, ``checkpoint_freq``, ``logger``, ``env``,
``resume``, ``out``, ...) whose ``agent`` is a :class:`DreamerAgentConfig`. The dataclass is
registered in Hydra's ConfigStore as ``schema/agent/dreamer``, so a misspelt Dreamer key fails
at composition like a misspelt PPO key; value ranges are declared with
:func:`~agents.run_config.bounded` and checked on the one validation path
(:func:`agents.trainers.to_run_config`), and :meth:`DreamerAgentConfig.check` rejects
combinations Dreamer cannot run (``env.obs=dict``, ...). :func:`dreamer_config` is that path
for a Dreamer run.

Keys of the run schema that only SB3 uses (``vec_env``; the ``VecNormalize`` knobs of
``env``) are accepted and ignored: Dreamer steps its envs in this process and reads the
encoder's symlog'd observations as they are (a non-default ``vec_env`` warns).

Defaults follow DreamerV3 (Hafner et al. 2023; danijar/dreamerv3 ``configs.yaml``): horizon
15, discount 0.997 (a horizon of 333 decisions), lambda 0.95, actor entropy 3e-4, 1% unimix,
two-hot critic over 255 bins with a slow critic (EMA 0.02) as regulariser, 5-95th
percentile return normalisation (EMA rate 0.01, scale at least 1), batches of 16 x 64 and
``train_ratio`` 32 replayed steps per env step. The networks are much smaller than the
paper's (the observation is a vector of a few hundred numbers and the machine a CPU).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from agents.run_config import (
    AgentConfig,
    Algo,
    EnvName,
    ObsKind,
    RunConfig,
    RunConfigError,
    VecEnvKind,
    bounded,
)

if TYPE_CHECKING:
    from agents.world_model.config import WorldModelConfig


class Size(StrEnum):
    """World-model preset and actor/critic width (:data:`agents.world_model.config.SIZES`)."""

    tiny = "tiny"
    small = "small"


class PrefillPolicy(StrEnum):
    """``agent.prefill_policy``: ``random`` or a behaviour of the policy registry."""

    random = "random"
    static = "static"
    hpa = "hpa"
    tuned_hpa = "tuned_hpa"
    runbook = "runbook"


PREFILL_POLICIES: tuple[str, ...] = tuple(p.value for p in PrefillPolicy)
"""Behaviours that can fill the replay before the first update (``agent.prefill_policy``);
every name but ``random`` is a policy of :data:`agents.registry.POLICIES`."""

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

WM_DEFAULTS: dict[str, Any] = {"dec_beta": 1.0}
"""WorldModelConfig fields whose Dreamer default differs from the world model's own
(``agent.world_model`` overrides them). ``dec_beta: 1``: the decoder's beta-NLL (Seitzer et
al. 2022). With the plain Gaussian NLL (beta 0) the online model did not learn what the
actions do: the decoder shrinks the std of the values it already predicts toward
``min_std``, their ``1 / std**2`` gradients (norms of 400-2600 against a clip of 100) drown
the rest, the posterior carries under one nat (the free bits) and every prediction is the
replay's average (on random episodes of the learning test's task, after 1,000 updates: the
replica counts decoded no better than their mean, reward R^2 0.00; with beta 1, 0.56 after
800). docs/dreamer.md#learning-test has the end-to-end figures."""

DreamerConfigError = RunConfigError
"""A Dreamer run configuration that cannot work (the run schema's error; the old name)."""


@dataclass
class DreamerAgentConfig(AgentConfig):
    """The ``agent`` group of a Dreamer run (``configs/agent/dreamer.yaml``).

    Attributes:
        algo: Always ``dreamer`` (set by the group option; it routes ``opsworld train``).
        size: World-model preset (``tiny`` or ``small``, :data:`agents.world_model.config.SIZES`)
            and the actor/critic width (:data:`AC_UNITS`).
        world_model: Overrides of :class:`~agents.world_model.config.WorldModelConfig`
            fields (e.g. ``{deter: 128}``) and of :data:`WM_DEFAULTS`; ``batch``,
            ``seq_len``, ``lr``, ``bins`` and ``unimix`` come from this group's keys instead.
        net_arch: Hidden layers of the actor and of the critic; None: the size's.
        horizon: Imagination horizon H (decisions).
        discount: Discount per decision (0.997: a horizon of about 333 decisions).
        return_lambda: Lambda of the lambda-returns.
        entropy: Actor entropy bonus (scaled like the normalised advantages).
        unimix: Uniform share mixed into every action categorical and world-model latent.
        bins: Two-hot bins of the critic (and of the reward head); odd (a bin at zero).
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

    algo: Algo = Algo.dreamer
    size: Size = Size.tiny
    world_model: dict[str, Any] = field(default_factory=dict)
    net_arch: list[int] | None = bounded(None, ge=1, nonempty=True)
    horizon: int = bounded(15, ge=1)
    discount: float = bounded(0.997, gt=0, le=1)
    return_lambda: float = bounded(0.95, gt=0, le=1)
    entropy: float = bounded(3e-4, ge=0)
    unimix: float = bounded(0.01, ge=0, lt=1)
    bins: int = bounded(255, ge=1, odd=True)
    train_ratio: float = bounded(32.0, gt=0)
    batch: int = bounded(16, ge=1)
    seq_len: int = bounded(64, ge=1)
    imag_starts: int | None = bounded(256, ge=1)
    model_lr: float = bounded(1e-4, gt=0)
    actor_lr: float = bounded(3e-5, gt=0)
    critic_lr: float = bounded(3e-5, gt=0)
    adam_eps: float = bounded(1e-5, gt=0)
    grad_clip: float = bounded(100.0, gt=0)
    slow_critic_rate: float = bounded(0.02, gt=0, lt=1)
    slow_reg: float = bounded(1.0, ge=0)
    slow_target: bool = False
    retnorm_rate: float = bounded(0.01, gt=0, lt=1)
    retnorm_low: float = bounded(5.0, ge=0, le=100)
    retnorm_high: float = bounded(95.0, ge=0, le=100)
    retnorm_limit: float = bounded(1.0, gt=0)
    prefill: int = bounded(1000, ge=0)
    prefill_policy: PrefillPolicy = PrefillPolicy.random
    noop_prob: float | None = bounded(None, gt=0, lt=1)
    pretrain: int = bounded(0, ge=0)
    replay_capacity: int = bounded(1_000_000, ge=1)
    log_every: int = bounded(1000, ge=1)
    max_minutes: float | None = bounded(None, gt=0)

    def check(self, run: RunConfig) -> None:
        """Combinations Dreamer cannot run (after the value ranges are checked).

        Raises:
            RunConfigError: Naming the field(s) and the fix.
        """
        if self.retnorm_low >= self.retnorm_high:
            raise RunConfigError(
                f"agent.retnorm_low={self.retnorm_low}, agent.retnorm_high={self.retnorm_high}: "
                "need low < high"
            )
        owned = sorted(set(OWNED_BY_AGENT) & set(self.world_model))
        if owned:
            raise RunConfigError(
                f"agent.world_model.{owned[0]}: set agent.{OWNED_BY_AGENT[owned[0]]} instead "
                "(the agent group owns it)"
            )
        from pydantic import ValidationError

        try:
            self.world_model_config()
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            msg = first["msg"].removeprefix("Value error, ")
            raise RunConfigError(f"agent.world_model.{where}: {msg}") from None
        if run.env.obs != ObsKind.box:
            raise RunConfigError(
                f"env.obs={run.env.obs}: Dreamer's world model reads the flat observation; "
                "use env.obs=box"
            )
        if run.env.name == EnvName.residual:
            raise RunConfigError(
                "env=residual: Dreamer's driver and imagination do not run the runbook's "
                "residual decision yet; use agent=maskable_ppo with env=residual"
            )
        if run.env.name == EnvName.autoscale and self.noop_prob is not None:
            raise RunConfigError(
                f"agent.noop_prob={self.noop_prob}: env=autoscale has no remediation "
                "dimension; leave it null"
            )
        if run.env.name == EnvName.hpa_tune and self.prefill_policy != PrefillPolicy.random:
            raise RunConfigError(
                f"agent.prefill_policy={self.prefill_policy}: env=hpa_tune acts through "
                "the HPA's targets, and a baseline's replica actions are no choice of that "
                "action space (the replay would record features the actor cannot take); use "
                "agent.prefill_policy=random"
            )
        if run.vec_env != VecEnvKind.auto:
            warnings.warn(
                f"vec_env={run.vec_env} is an SB3 setting; agent=dreamer ignores it",
                stacklevel=2,
            )

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
        from agents.world_model.config import WorldModelConfig

        return WorldModelConfig.preset(
            self.size.value,
            **{
                **WM_DEFAULTS,
                **self.world_model,
                "batch": self.batch,
                "seq_len": self.seq_len,
                "lr": self.model_lr,
                "bins": self.bins,
                "unimix": self.unimix,
            },
        )


@dataclass
class DreamerTrainConfig(RunConfig):
    """A whole Dreamer run: the run schema (:class:`RunConfig`) with a Dreamer agent.

    The keys mean what they mean for every agent; for Dreamer ``total_timesteps`` counts env
    steps of training (prefill included), ``n_envs`` envs are stepped in lockstep in this
    process, ``checkpoint_freq`` writes ``checkpoints/step_<N>/`` (networks, optimisers,
    replay, RNG states: an exact resume), and ``resume`` takes such a folder or a run dir.
    """

    agent: DreamerAgentConfig = field(default_factory=DreamerAgentConfig)


def dreamer_config(cfg: Any) -> DreamerTrainConfig:
    """Validate a Dreamer run: a composed config, a mapping or a saved ``config.yaml``'s content.

    :func:`agents.trainers.to_run_config` (the one validation path) for ``agent=dreamer``;
    a mapping without ``agent.algo`` is read as a Dreamer run.

    Raises:
        RunConfigError: Naming the first bad field (dotted) and why.
    """
    from agents.trainers import to_run_config

    if isinstance(cfg, dict) and isinstance(cfg.get("agent", {}), dict):
        cfg = {**cfg, "agent": {"algo": "dreamer", **cfg.get("agent", {})}}
    conf = to_run_config(cfg)
    if not isinstance(conf, DreamerTrainConfig):
        raise RunConfigError(f"agent.algo={conf.agent.algo}: not agent=dreamer")
    return conf
