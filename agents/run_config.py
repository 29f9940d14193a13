"""One run schema for ``opsworld train``: the shared run keys, and the agent as a tagged choice.

``configs/train.yaml`` composes the root :class:`RunConfig` with one option of each group:
``agent`` (``ppo``, ``maskable_ppo``, ``dqn``, ``a2c``, ``dreamer``), ``env`` and ``logger``.
Every group option is backed by a dataclass registered in Hydra's ConfigStore under
``schema/<group>/<name>`` (:func:`agents.trainers.register_configs`), so a misspelt key of any
agent (SB3 or Dreamer) or a value of the wrong type fails at composition with its name.
``agent.algo`` is the tag: it picks the agent's schema and its trainer
(:data:`agents.trainers.TRAINERS`).

Validation has one path, :func:`to_run_config`, used for a composed Hydra config, a plain
mapping and a saved ``config.yaml`` alike:

1. structure and types: OmegaConf merges the input into the structured schema (unknown key,
   wrong type, bad enum value: an error naming the dotted key);
2. values: :func:`check_values` walks the dataclass tree and checks every field declared with
   :func:`bounded` (``agent.gamma`` in ``(0, 1]``, ``agent.learning_rate > 0``, ...), naming the
   dotted key and the allowed range;
3. combinations: the agent schema's :meth:`AgentConfig.check` (DQN only on a Discrete env,
   Dreamer only with box observations, ...) and the run-level checks of :func:`check_run`.

Scenario and suite files are validated by pydantic (``envs.scenarios``) instead: they are
data files with nested unions, not Hydra-composed runs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from omegaconf import MISSING


class RunConfigError(ValueError):
    """A run configuration that cannot work; the message names the field and the fix."""


class Algo(StrEnum):
    """``agent.algo``: the tag of the ``agent`` group (one trainer each)."""

    ppo = "ppo"
    maskable_ppo = "maskable_ppo"
    dqn = "dqn"
    a2c = "a2c"
    dreamer = "dreamer"


class EnvName(StrEnum):
    """Environment of the ``env`` group (see :data:`ENV_IDS`)."""

    autoscale = "autoscale"
    remediate = "remediate"
    ops = "ops"
    hpa_tune = "hpa_tune"
    residual = "residual"


ENV_IDS: dict[EnvName, str] = {
    EnvName.autoscale: "opsworld/Autoscale-v0",
    EnvName.remediate: "opsworld/Remediate-v0",
    EnvName.ops: "opsworld/ClusterOps-v0",
    EnvName.hpa_tune: "opsworld/HPATune-v0",
    EnvName.residual: "opsworld/Residual-v0",  # registered by agents.residual
}
"""``env.name`` -> registered Gymnasium id (``envs.gym.ENV_IDS`` maps the ids to classes)."""


class ObsKind(StrEnum):
    """Observation layout: flat ``Box`` or one-level ``Dict`` (see ``docs/envs.md``)."""

    box = "box"
    dict = "dict"


class Fidelity(StrEnum):
    """Simulator fidelity the env runs at."""

    fluid = "fluid"
    request = "request"


class LoggerKind(StrEnum):
    """Where metrics go (the ``logger`` group)."""

    none = "none"
    csv = "csv"
    tensorboard = "tensorboard"
    wandb = "wandb"


class Format(StrEnum):
    """File format of ``opsworld simulate``'s telemetry table (here: the schema stays light)."""

    parquet = "parquet"
    csv = "csv"
    openmetrics = "openmetrics"  # for promtool backfill (envs/live/openmetrics.py)


class VecEnvKind(StrEnum):
    """SB3 vectorisation.

    ``auto`` is ``DummyVecEnv`` for one env, ``SubprocVecEnv`` otherwise; ``batched``: the
    ``n_envs`` training envs as one batched fluid vector env (``envs.gym.batched``,
    ``env=autoscale`` only; evaluation stays on the scalar env).
    """

    auto = "auto"
    dummy = "dummy"
    subproc = "subproc"
    batched = "batched"


# --------------------------------------------------------------------------- value bounds
@dataclass(frozen=True)
class Bounds:
    """Allowed range of a numeric field (None: unbounded on that side).

    Attributes:
        gt: Exclusive lower bound.
        ge: Inclusive lower bound.
        lt: Exclusive upper bound.
        le: Inclusive upper bound.
        odd: The value must be odd.
        items: Bounds every item of a list field (e.g. positive layer sizes).
        nonempty: A list field must have at least one item.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    odd: bool = False
    nonempty: bool = False

    def describe(self) -> str:
        """The range in interval notation, e.g. ``(0, 1]`` or ``>= 1``."""
        low = self.gt if self.gt is not None else self.ge
        high = self.lt if self.lt is not None else self.le
        if low is not None and high is not None:
            left = "(" if self.gt is not None else "["
            right = ")" if self.lt is not None else "]"
            text = f"in {left}{_num(low)}, {_num(high)}{right}"
        elif low is not None:
            text = f"{'>' if self.gt is not None else '>='} {_num(low)}"
        elif high is not None:
            text = f"{'<' if self.lt is not None else '<='} {_num(high)}"
        else:
            text = "any number"
        return text + (" and odd" if self.odd else "")

    def holds(self, value: float) -> bool:
        """Whether ``value`` is inside the range (NaN never is)."""
        if isinstance(value, float) and math.isnan(value):
            return False
        return (
            (self.gt is None or value > self.gt)
            and (self.ge is None or value >= self.ge)
            and (self.lt is None or value < self.lt)
            and (self.le is None or value <= self.le)
            and (not self.odd or int(value) % 2 == 1)
        )


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def bounded(
    default: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    odd: bool = False,
    nonempty: bool = False,
) -> Any:
    """A dataclass field with a default and the range :func:`check_values` enforces.

    A list default (a layer list) is copied per instance; its items must satisfy the bounds.
    None is always allowed where the field's type allows it (it means "unset").
    """
    meta = {"bounds": Bounds(gt, ge, lt, le, odd, nonempty)}
    if isinstance(default, list):
        items = list(default)
        return field(default_factory=lambda: list(items), metadata=meta)
    return field(default=default, metadata=meta)


def check_values(node: Any, prefix: str = "") -> None:
    """Check every :func:`bounded` field of a dataclass tree.

    Raises:
        RunConfigError: ``<dotted key>=<value>: must be <range>`` for the first bad field.
    """
    for f in fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}{f.name}"
        bounds: Bounds | None = f.metadata.get("bounds")
        if bounds is not None and value is not None:
            if isinstance(value, list | tuple):
                if bounds.nonempty and not value:
                    raise RunConfigError(f"{key}=[]: list at least one value")
                bad = [v for v in value if not bounds.holds(v)]
                if bad:
                    raise RunConfigError(
                        f"{key}={list(value)}: every item must be {bounds.describe()}"
                    )
            elif not bounds.holds(value):
                raise RunConfigError(f"{key}={value}: must be {bounds.describe()}")
        if is_dataclass(value) and not isinstance(value, type):
            check_values(value, f"{key}.")


# --------------------------------------------------------------------------- agent group
@dataclass
class AgentConfig:
    """Base of every agent schema (``configs/agent/<name>.yaml``).

    Attributes:
        algo: The tag: which agent (set by the group option, not meant to be overridden).
    """

    algo: Algo = MISSING

    def check(self, run: RunConfig) -> None:
        """Reject combinations of this agent with the rest of the run (override per agent).

        Raises:
            RunConfigError: Naming the fields and the fix.
        """


# --------------------------------------------------------------------------- env group
@dataclass
class RewardWeightsConfig:
    """Weights of the reward's penalties (:class:`envs.gym.envs.RewardWeights`).

    Each is ``>= 0``: the reward is minus the weighted penalties, so a negative weight would
    reward SLO violations, cost or disruption.
    """

    slo: float = bounded(1.0, ge=0)
    cost: float = bounded(0.2, ge=0)
    disruption: float = bounded(0.05, ge=0)


@dataclass
class ResidualConfig:
    """``env=residual``: the budgets' Lagrange multipliers and the start at the no-op.

    The multipliers start at ``cost`` and ``disruption`` and take one projected
    dual-ascent step per rollout (:func:`agents.residual.dual_step`) with step sizes
    ``lr_cost`` and ``lr_disruption`` on the mean per-step excess over ``tuned_runbook``'s
    cost and disruption on the same episodes, capped at ``cap``. ``noop_bias`` is added to
    the no-op's logit in every action dimension of a fresh SB3 policy, so that training
    starts near ``tuned_runbook`` rather than at uniform random adjustments (0: off).
    Other envs ignore it.
    """

    cost: float = bounded(1.0, ge=0)
    disruption: float = bounded(0.1, ge=0)
    lr_cost: float = bounded(5.0, ge=0)
    lr_disruption: float = bounded(5.0, ge=0)
    cap: float = bounded(100.0, gt=0)
    noop_bias: float = bounded(3.0, ge=0)


@dataclass
class EnvConfig:
    """The ``env`` group (``configs/env/<name>.yaml``).

    Attributes:
        name: ``autoscale``, ``remediate``, ``ops``, ``hpa_tune`` or ``residual`` (set by the
            group option).
        fidelity: Simulator fidelity (``fluid`` is what RL trains on).
        obs: ``box`` or ``dict`` observations (``dict`` needs ``MultiInputPolicy``; Dreamer
            reads ``box`` only).
        reward_weights: Reward penalty weights.
        max_episode_steps: Truncate episodes after this many decisions; None keeps the
            registered limit (240) and the scenario's horizon.
        normalize_obs: SB3: normalise observations with running statistics (``VecNormalize``).
        normalize_reward: SB3: also scale rewards by a running return std (``VecNormalize``).
        clip_obs: SB3: clip normalised observations to ``[-clip_obs, clip_obs]``.
        residual: ``env=residual``: budgets and start (:class:`ResidualConfig`).
    """

    name: EnvName = MISSING
    fidelity: Fidelity = Fidelity.fluid
    obs: ObsKind = ObsKind.box
    reward_weights: RewardWeightsConfig = field(default_factory=RewardWeightsConfig)
    max_episode_steps: int | None = bounded(None, ge=1)
    normalize_obs: bool = True
    normalize_reward: bool = False
    clip_obs: float = bounded(10.0, gt=0)
    residual: ResidualConfig = field(default_factory=ResidualConfig)


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
        freq: Evaluate every this many env steps during training (the best weights go to
            ``<out>/best``); 0: only the final evaluation.
        episodes: Episodes per evaluation, and for the final one in ``metrics.json``.
        deterministic: Evaluate the greedy (mode) action.
    """

    freq: int = bounded(20_000, ge=0)
    episodes: int = bounded(5, ge=1)
    deterministic: bool = True


@dataclass
class RunConfig:
    """Schema of ``configs/train.yaml`` (``opsworld train``), for every agent.

    Attributes:
        agent: The algorithm and its hyperparameters (group ``agent``; ``agent.algo`` tags it).
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
        total_timesteps: Env steps to train for (summed over the envs; Dreamer: prefill
            included).
        n_envs: Parallel training envs (SB3: vectorised; Dreamer: stepped in lockstep in
            this process).
        vec_env: SB3 only: ``auto`` (Dummy for 1 env, Subproc otherwise), ``dummy`` or
            ``subproc``.
        eval: Evaluation settings.
        checkpoint_freq: Save a checkpoint every this many env steps (0: never).
        progress_bar: Progress bar; None: only when stdout is a terminal.
        verbose: 1 prints the metric tables to stdout.
        device: Torch device (``cpu``; small networks gain little from a GPU).
        torch_threads: Torch intra-op threads; None leaves torch's default.
        resume: Continue from a checkpoint (SB3: ``<run>/checkpoints/model_<N>_steps.zip``;
            Dreamer: ``<run>/checkpoints/step_<N>/``) or a finished run dir, up to
            ``total_timesteps`` in all.
        overwrite: Clear a non-empty ``out`` first; without it (or ``resume``) a non-empty
            ``out`` is refused (:func:`prepare_out`).
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
    seed: int = bounded(0, ge=0)
    total_timesteps: int = bounded(200_000, ge=1)
    n_envs: int = bounded(4, ge=1)
    vec_env: VecEnvKind = VecEnvKind.auto
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint_freq: int = bounded(50_000, ge=0)
    progress_bar: bool | None = None
    verbose: int = bounded(0, ge=0)
    device: str = "cpu"
    torch_threads: int | None = bounded(1, ge=1)
    resume: str | None = None
    overwrite: bool = False
    out: str = "outputs/train"
    experiment: str | None = None
    debug: str | None = None


def check_run(conf: RunConfig) -> None:
    """The run-level checks every agent shares (after :func:`check_values`).

    Raises:
        RunConfigError: Naming the field(s) and the fix.
    """
    if conf.suite is not None and conf.topology is None:
        raise RunConfigError(
            f"suite={conf.suite} needs topology=<name> (e.g. topology=chain3): a policy fits "
            "one topology, since its observation size depends on the services"
        )
    if conf.topology is not None and conf.suite is None:
        raise RunConfigError(
            f"topology={conf.topology} only picks entries of a suite: set suite=train (or a "
            "suite YAML path) too, or drop topology and choose the scenario with scenario=..."
        )
    needs = {
        LoggerKind.tensorboard: ("tensorboard",),
        LoggerKind.wandb: ("tensorboard", "wandb"),
    }.get(conf.logger.kind, ())
    missing = [p for p in needs if importlib.util.find_spec(p) is None]
    if missing:
        raise RunConfigError(
            f"logger={conf.logger.kind} needs the package(s) {missing}, which are not "
            f"installed: pip install {' '.join(missing)} (opsworld's dependencies list them), "
            "or use logger=csv"
        )
    if conf.resume is not None and not Path(conf.resume).exists():
        raise RunConfigError(
            f"resume={conf.resume}: no such file or folder; give a checkpoint "
            "(SB3: <run>/checkpoints/model_<N>_steps.zip, Dreamer: <run>/checkpoints/step_<N>) "
            "or a finished run dir"
        )
    if conf.resume is not None:
        saved = resume_algo(conf.resume)
        if saved is not None and saved != str(conf.agent.algo):
            raise RunConfigError(
                f"resume={conf.resume}: the checkpoint was trained with agent={saved}, this run "
                f"has agent={conf.agent.algo}; resume with agent={saved} (or start afresh "
                "without resume)"
            )
    check_device(conf.device)


def resume_algo(resume: str | Path) -> str | None:
    """``agent.algo`` of the run a checkpoint or run dir belongs to (its ``config.yaml``).

    A checkpoint ``<run>/checkpoints/<file or step folder>`` reads ``<run>/config.yaml``, a
    run dir its own. None when there is none or it cannot be read.
    """
    import yaml

    p = Path(resume)
    for folder in (p, p.parent, p.parent.parent):
        path = folder / "config.yaml"
        if path.is_file():
            try:
                algo = yaml.safe_load(path.read_text(encoding="utf-8"))["agent"]["algo"]
            except (OSError, yaml.YAMLError, KeyError, TypeError):
                return None
            return str(algo)
    return None


def check_device(device: str) -> None:
    """Refuse a torch device this machine does not have (``cuda`` without a GPU, ...).

    Raises:
        RunConfigError: Naming ``device`` and the fix.
    """
    kind = device.split(":", 1)[0]
    if kind == "cpu":
        return
    import torch  # only for a non-CPU device

    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if kind not in available:
        raise RunConfigError(f"device={device}: use cpu, cuda, cuda:<index> or mps")
    if not available[kind]:
        raise RunConfigError(
            f"device={device}: no {kind} device on this machine (torch "
            f"{torch.__version__}); use device=cpu"
        )
    if kind == "cuda" and ":" in device:
        index = device.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise RunConfigError(
                f"device={device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                "use cuda:0 .. or device=cpu"
            )


def choice(table: Mapping[Any, Any], value: Any, key: str, how: str) -> Any:
    """``table[value]`` matched by string, or an error that lists the options.

    Raises:
        RunConfigError: ``value`` is None or not a key of ``table``.
    """
    if value is None:
        raise RunConfigError(f"{key} is missing; choose one with {how}: {[str(k) for k in table]}")
    for k, v in table.items():
        if str(k) == str(value):
            return v
    raise RunConfigError(
        f"{key}={value!r} is not known; use {how} with one of {[str(k) for k in table]}"
    )


# --------------------------------------------------------------------------- output folder
HYDRA_DIRS = (".hydra", "multirun.yaml")
"""What Hydra itself writes into a run's ``out`` before the command starts (ignored)."""


def prepare_out(
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: str | None = None,
    can_resume: bool = False,
) -> Path:
    """Check that ``out`` can take a new run, clearing it with ``overwrite``; returns it.

    A new run must not mix its files with an older run's (an old ``telemetry.parquet`` beside
    a new CSV, A2C checkpoints in a PPO run), so a non-empty ``out`` is refused unless
    ``overwrite`` (clear it first) or ``resume`` (the run continues there) says otherwise.
    Hydra's own ``.hydra/`` is ignored.

    Args:
        out: The output folder (the run creates it when missing).
        overwrite: Delete what ``out`` holds first (never the working folder or an ancestor
            of it, the home folder or the file system root).
        resume: The run continues a checkpoint: an existing ``out`` is kept as it is.
        can_resume: The command takes ``resume=`` (the error then offers it).

    Raises:
        RunConfigError: ``out`` is a file, cannot be written, or is not empty.
    """
    import os
    import shutil

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise RunConfigError(f"out={out}: is a file, not a folder; give a folder path")
    if path.is_dir():
        stale = sorted(p.name for p in path.iterdir() if p.name not in HYDRA_DIRS)
        if stale and overwrite:
            here, target = Path.cwd().resolve(), path.resolve()
            if target in (here, *here.parents, Path.home().resolve()):
                raise RunConfigError(
                    f"out={out}: overwrite=true would delete the working, home or root folder; "
                    "give a run folder of its own"
                )
            for name in stale:
                p = path / name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        elif stale and resume is None:
            shown = ", ".join(stale[:4]) + (", ..." if len(stale) > 4 else "")
            also = ", or resume=<checkpoint> to continue a run there" if can_resume else ""
            raise RunConfigError(
                f"out={out}: the folder is not empty ({shown}); give a new out=... or add "
                f"overwrite=true to clear it{also}"
            )
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise RunConfigError(f"out={out}: the folder is not writable; give a writable path")
    return path


# --------------------------------------------------------------------------- interrupts
class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run after what it had was saved; the message says where and how on.

    A :class:`KeyboardInterrupt`, so code that does not know it still stops; the commands
    print the message as one line and exit with status 130.

    Attributes:
        resume: The checkpoint to continue from (``resume=...``), when the run saved one.
    """

    def __init__(self, message: str, resume: str | None = None) -> None:
        super().__init__(message)
        self.resume = resume


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ignore Ctrl-C inside the block (saving after a first Ctrl-C must not be cut short).

    Only in the main thread (where Python handles signals); elsewhere it does nothing.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class StopRequest:
    """While active, a first Ctrl-C only asks the run to stop at its next step boundary.

    The training loops check :attr:`requested` between steps, then save the model, metrics
    and a resumable checkpoint (a half-done step is never saved). A second Ctrl-C raises
    :class:`KeyboardInterrupt` at once. Outside the main thread it does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequest:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
