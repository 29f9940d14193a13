"""Train an SB3 / sb3-contrib agent on an opsworld env and save a self-contained run dir.

:func:`train_agent` is the library behind ``opsworld train`` (``experiments/train.py`` only
composes the config and calls it). It

1. checks the config (:func:`agents.trainers.validate`, the run schema's one validation
   path) and loads the scenario once
   (:func:`agents.sb3.envs.check_scenario`) before building anything;
2. builds the training envs (``DummyVecEnv`` for one env, ``SubprocVecEnv`` otherwise; each
   env seeded from the run seed through ``SeedSequence``) and a separate evaluation env,
   both under ``VecNormalize`` (observations; rewards only with ``env.normalize_reward``);
3. builds the model from the agent config (or loads a checkpoint with ``resume``);
4. trains with callbacks: ``env/...`` episode metrics, a check that every parameter stays
   finite (``VecCheckNan`` does the same for observations, rewards and actions), checkpoints every
   ``checkpoint_freq`` steps (with their ``VecNormalize`` statistics), periodic evaluation
   (``EvalCallback``, or ``MaskableEvalCallback`` for MaskablePPO) that keeps the best model,
   and the W&B callback with ``logger=wandb``;
5. evaluates the final model and writes the run dir (:class:`RunPaths`).

Seeding: ``seed`` seeds Python, NumPy and torch before the networks are built, the model's
action space (DQN's exploration), and every env (training stream 0, evaluation stream 1 of
``SeedSequence(seed)``); the same config gives the same run on the same machine.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from omegaconf import OmegaConf
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from sb3_contrib.common.maskable.evaluation import evaluate_policy as maskable_evaluate_policy
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import Logger, configure
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import (
    SubprocVecEnv,
    VecNormalize,
    sync_envs_normalization,
    unwrap_vec_normalize,
)

from agents.run_config import ENV_IDS, RunInterrupted, StopRequest, interrupts_held
from agents.sb3.callbacks import (
    EpisodeStatsCallback,
    FiniteParamsCallback,
    LagrangeCallback,
    SaveVecNormalizeCallback,
)
from agents.sb3.config import (
    AGENT_META_FIELDS,
    Activation,
    Algo,
    EnvName,
    LoggerKind,
    SB3AgentConfig,
    SB3ConfigError,
    TrainConfig,
    WandbLoggerConfig,
    policy_name,
)
from agents.sb3.envs import (
    EVAL_STREAM,
    brief_space,
    check_scenario,
    env_seeds,
    make_vec_env,
    scenario_names,
)
from agents.trainers import validate

ALGOS: dict[Algo, type[BaseAlgorithm]] = {
    Algo.ppo: PPO,
    Algo.maskable_ppo: MaskablePPO,
    Algo.dqn: DQN,
    Algo.a2c: A2C,
}
"""``agent.algo`` -> SB3 / sb3-contrib class."""

ACTIVATIONS: dict[Activation, type[torch.nn.Module]] = {
    Activation.tanh: torch.nn.Tanh,
    Activation.relu: torch.nn.ReLU,
}

CHECKPOINT_PREFIX = "model"
"""Checkpoints are ``model_<N>_steps.zip`` and ``model_vecnormalize_<N>_steps.pkl``."""


@dataclass(frozen=True)
class RunPaths:
    """Where a run writes (all under ``out``).

    Attributes:
        out: The run dir.
        model: Final model (SB3 zip).
        vecnormalize: Final ``VecNormalize`` statistics (pickle).
        config: The resolved config of the run.
        metrics: Final figures (see :func:`train_agent`).
        checkpoints: ``model_<N>_steps.zip`` + ``model_vecnormalize_<N>_steps.pkl``.
        best: ``best_model.zip`` + ``vecnormalize.pkl`` of the best evaluation.
        eval: ``evaluations.npz`` of the periodic evaluations.
        logs: SB3 logger output (``progress.csv``, TensorBoard events) and ``wandb/``.
    """

    out: Path
    model: Path
    vecnormalize: Path
    config: Path
    metrics: Path
    checkpoints: Path
    best: Path
    eval: Path
    logs: Path

    @classmethod
    def of(cls, out: str | Path) -> RunPaths:
        """The layout under ``out``."""
        o = Path(out)
        return cls(
            out=o,
            model=o / "model.zip",
            vecnormalize=o / "vecnormalize.pkl",
            config=o / "config.yaml",
            metrics=o / "metrics.json",
            checkpoints=o / "checkpoints",
            best=o / "best",
            eval=o / "eval",
            logs=o / "logs",
        )


def model_kwargs(agent: SB3AgentConfig) -> dict[str, Any]:
    """SB3 constructor kwargs of an agent config (all fields but :data:`AGENT_META_FIELDS`)."""
    kwargs = {
        f.name: getattr(agent, f.name) for f in fields(agent) if f.name not in AGENT_META_FIELDS
    }
    kwargs["policy_kwargs"] = {
        "net_arch": list(agent.net_arch),
        "activation_fn": ACTIVATIONS[agent.activation],
    }
    return kwargs


def build_model(conf: TrainConfig, env: VecNormalize) -> BaseAlgorithm:
    """A fresh model of ``conf.agent`` on ``env`` (torch seeded by the caller)."""
    cls = ALGOS[conf.agent.algo]
    return cls(
        policy_name(conf),
        env,
        verbose=conf.verbose,
        device=conf.device,
        seed=None,  # seeded by train_agent: SB3's seed would re-seed env i with seed + i
        **model_kwargs(conf.agent),
    )


def noop_bias(model: BaseAlgorithm, env: VecNormalize, bias: float) -> None:
    """Add ``bias`` to the no-op's logit in every dimension of a residual policy's actions.

    The residual env's no-op (:meth:`agents.residual.ResidualController.noop`) is
    ``tuned_runbook``; a fresh policy would otherwise adjust it uniformly at random.
    """
    from gymnasium import spaces

    noop = np.asarray(env.env_method("noop_action", indices=[0])[0])
    space = model.action_space
    net = getattr(model.policy, "action_net", None)
    if not isinstance(space, spaces.MultiDiscrete) or not isinstance(net, torch.nn.Linear):
        raise SB3ConfigError(
            f"env.residual.noop_bias={bias}: needs a MultiDiscrete actor with a linear head "
            "(agent=ppo|maskable_ppo|a2c); set env.residual.noop_bias=0"
        )
    offsets = np.concatenate([[0], np.cumsum(space.nvec)[:-1]])
    with torch.no_grad():
        for off, k in zip(offsets.tolist(), noop.tolist(), strict=True):
            net.bias[int(off) + int(k)] += bias


def resume_files(path: str | Path) -> tuple[Path, Path]:
    """``(model zip, VecNormalize pickle)`` of a checkpoint or of a finished run dir.

    Raises:
        SB3ConfigError: When either file is missing.
    """
    p = Path(path)
    if p.is_dir():
        model, stats = p / "model.zip", p / "vecnormalize.pkl"
    else:
        model = p
        name = p.name
        prefix = f"{CHECKPOINT_PREFIX}_"
        if not (name.startswith(prefix) and name.endswith("_steps.zip")):
            raise SB3ConfigError(
                f"resume={path}: expected a checkpoint named {CHECKPOINT_PREFIX}_<N>_steps.zip "
                "or a run dir"
            )
        steps = name[len(prefix) : -len(".zip")]
        stats = p.with_name(f"{CHECKPOINT_PREFIX}_vecnormalize_{steps}.pkl")
    for f in (model, stats):
        if not f.is_file():
            raise SB3ConfigError(f"resume={path}: {f} is missing")
    if not zipfile.is_zipfile(model):
        raise SB3ConfigError(
            f"resume={path}: {model.name} is damaged or truncated (not a complete zip file); "
            "resume from another checkpoint in checkpoints/ or retrain"
        )
    return model, stats


def _load_for_resume(
    conf: TrainConfig, files: tuple[Path, Path], train_env: VecNormalize
) -> tuple[VecNormalize, BaseAlgorithm]:
    """The checkpoint's statistics (still updating) over ``train_env``'s envs, and its model."""
    venv = train_env.venv
    try:
        stats = VecNormalize.load(str(files[1]), venv)
        # set_venv checks only observation shapes and keeps the pickled spaces: compare
        if (stats.observation_space, stats.action_space) != (
            venv.observation_space,
            venv.action_space,
        ):
            saved = f"{brief_space(stats.observation_space)}, {brief_space(stats.action_space)}"
            here = f"{brief_space(venv.observation_space)}, {brief_space(venv.action_space)}"
            raise ValueError(f"{files[1].name} was saved for {saved}; this env has {here}")
        stats.training, stats.norm_reward = True, conf.env.normalize_reward
        model = ALGOS[conf.agent.algo].load(files[0], env=stats, device=conf.device)
    except (ValueError, KeyError, TypeError, AssertionError) as err:
        raise SB3ConfigError(
            f"resume={conf.resume}: cannot continue it as agent={conf.agent.algo} on "
            f"env={conf.env.name}, scenario={conf.scenario} ({type(err).__name__}: "
            f"{str(err)[:300]}); "
            "resume with the agent, env and scenario of the run that wrote it"
        ) from None
    return stats, model


def make_logger(conf: TrainConfig, paths: RunPaths) -> Logger:
    """SB3 logger of ``conf.logger`` (``stdout`` added when ``verbose >= 1``)."""
    formats = {
        LoggerKind.none: [],
        LoggerKind.csv: ["csv"],
        LoggerKind.tensorboard: ["tensorboard"],
        LoggerKind.wandb: ["tensorboard"],  # W&B syncs the TensorBoard files
    }[conf.logger.kind]
    if conf.verbose >= 1:
        formats = ["stdout", *formats]
    if not formats:
        return Logger(folder=None, output_formats=[])
    return configure(str(paths.logs), formats)


def _start_wandb(conf: TrainConfig, paths: RunPaths, config: Mapping[str, Any]) -> Any:
    import wandb  # only logger=wandb needs it (keeps `import wandb` off the default path)

    lc = conf.logger
    assert isinstance(lc, WandbLoggerConfig)
    paths.logs.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=lc.project,
        entity=lc.entity,
        group=lc.group,
        name=lc.name,
        tags=list(lc.tags),
        config=dict(config),
        dir=str(paths.logs),
        mode=lc.mode or os.environ.get("WANDB_MODE", "offline"),  # type: ignore[arg-type]
        sync_tensorboard=True,
        job_type="train",
    )


def _wandb_callback() -> BaseCallback:
    from wandb.integration.sb3 import WandbCallback

    return WandbCallback(verbose=0)


def evaluate(
    model: BaseAlgorithm, env: VecNormalize, episodes: int, deterministic: bool
) -> tuple[float, float]:
    """Mean and std of the episode return over ``episodes`` episodes (masks if masked)."""
    run = maskable_evaluate_policy if isinstance(model, MaskablePPO) else evaluate_policy
    result = run(model, env, n_eval_episodes=episodes, deterministic=deterministic)  # type: ignore[arg-type]
    assert isinstance(result, tuple)  # (mean, std) without return_episode_rewards
    mean, std = result
    return float(np.asarray(mean)), float(np.asarray(std))


class StopCallback(BaseCallback):
    """Ends ``learn`` at the next env step once Ctrl-C asked it to (:class:`StopRequest`)."""

    def __init__(self, stop: StopRequest) -> None:
        super().__init__()
        self.stop = stop

    def _on_step(self) -> bool:
        return not self.stop.requested


def _save_interrupted(
    conf: TrainConfig,
    model: BaseAlgorithm,
    paths: RunPaths,
    episodes: int,
    trained: int,
    train_time: float,
    start: float,
) -> NoReturn:
    """After Ctrl-C: save the model, its statistics, a resumable checkpoint and metrics.

    ``metrics.json`` has ``interrupted: true`` and no final evaluation (``eval_*`` null).

    Raises:
        RunInterrupted: Always, naming what was saved and the checkpoint to resume from.
    """
    steps = int(model.num_timesteps)
    vec_normalize = unwrap_vec_normalize(model.get_env())  # type: ignore[arg-type]
    assert vec_normalize is not None
    checkpoint = paths.checkpoints / f"{CHECKPOINT_PREFIX}_{steps}_steps.zip"
    with interrupts_held():
        model.save(paths.model)
        vec_normalize.save(str(paths.vecnormalize))
        paths.checkpoints.mkdir(parents=True, exist_ok=True)
        model.save(checkpoint)
        vec_normalize.save(
            str(paths.checkpoints / f"{CHECKPOINT_PREFIX}_vecnormalize_{steps}_steps.pkl")
        )
        metrics: dict[str, Any] = {
            "agent": conf.agent.algo.value,
            "env": conf.env.name.value,
            "env_id": ENV_IDS[conf.env.name],
            "scenario": conf.scenario if conf.suite is None else None,
            "suite": conf.suite,
            "topology": conf.topology,
            "seed": conf.seed,
            "timesteps": steps,
            "trained_timesteps": int(trained),
            "train_time_s": train_time,
            "wall_time_s": time.perf_counter() - start,
            "episodes": episodes,
            "eval_mean_reward": None,
            "eval_std_reward": None,
            "interrupted": True,
            "checkpoint": str(checkpoint),
            "resumed_from": str(conf.resume) if conf.resume is not None else None,
            "out": str(paths.out),
        }
        paths.metrics.write_text(json.dumps(metrics, indent=2))
    raise RunInterrupted(
        f"stopped after {steps:,} of {conf.total_timesteps:,} steps; saved model.zip, "
        f"vecnormalize.pkl, metrics.json and {checkpoint.relative_to(paths.out)} in {paths.out}",
        resume=str(checkpoint),
    )


def _show_progress(conf: TrainConfig) -> bool:
    return conf.progress_bar if conf.progress_bar is not None else sys.stdout.isatty()


def train_agent(conf: TrainConfig) -> dict[str, Any]:
    """Train as ``conf`` says and write the run dir; see the module docstring.

    Args:
        conf: A validated config (``agents.sb3.config.config_from_mapping``).

    Returns:
        The figures written to ``metrics.json``: ``agent``, ``env``, ``env_id``,
        ``scenario`` (None with ``suite``), ``suite``, ``topology``, ``scenarios`` (the
        names trained on), ``seed``, ``n_envs``, ``vec_env``, ``timesteps`` (the model's total),
        ``trained_timesteps`` (this call), ``train_time_s``, ``wall_time_s``,
        ``steps_per_s`` (env steps per wall second while learning, updates included),
        ``episodes`` (training episodes finished), ``eval_mean_reward``,
        ``eval_std_reward``, ``eval_episodes``, ``best_eval_mean_reward`` (None without
        periodic evaluation), ``resumed_from`` and ``out``.

    Raises:
        SB3ConfigError: Before anything is built, for a config that cannot work.
    """
    start = time.perf_counter()
    validate(conf)
    check_scenario(conf)
    paths = RunPaths.of(conf.out)
    paths.out.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.structured(conf)
    paths.config.write_text(OmegaConf.to_yaml(resolved))
    resume = resume_files(conf.resume) if conf.resume is not None else None

    threads = torch.get_num_threads()
    if conf.torch_threads is not None:
        torch.set_num_threads(conf.torch_threads)
    set_random_seed(conf.seed)
    train_env = make_vec_env(conf, env_seeds(conf.seed, conf.n_envs), training=True)
    eval_env = make_vec_env(conf, env_seeds(conf.seed, 1, EVAL_STREAM), training=False)
    run = None
    try:
        if resume is not None:
            train_env, model = _load_for_resume(conf, resume, train_env)
        else:
            model = build_model(conf, train_env)
            if conf.env.name == EnvName.residual and conf.env.residual.noop_bias > 0:
                noop_bias(model, train_env, conf.env.residual.noop_bias)
        model.action_space.seed(conf.seed)
        remaining = conf.total_timesteps - model.num_timesteps
        if remaining <= 0:
            raise SB3ConfigError(
                f"resume={conf.resume}: the checkpoint has {model.num_timesteps} steps, "
                f"total_timesteps={conf.total_timesteps}; raise total_timesteps"
            )
        if conf.logger.kind == LoggerKind.wandb:
            # before the SB3 logger: sync_tensorboard patches the TensorBoard writer, which
            # make_logger creates; a writer made earlier would never reach W&B
            run = _start_wandb(conf, paths, OmegaConf.to_container(resolved, resolve=True))  # type: ignore[arg-type]
        model.set_logger(make_logger(conf, paths))
        stats_cb = EpisodeStatsCallback()
        callbacks: list[BaseCallback] = [stats_cb, FiniteParamsCallback()]
        lagrange: LagrangeCallback | None = None
        if conf.env.name == EnvName.residual:  # budgets: one dual step per rollout
            lg = conf.env.residual
            lagrange = LagrangeCallback(
                lg.cost, lg.disruption, lg.lr_cost, lg.lr_disruption, lg.cap
            )
            callbacks.append(lagrange)
        if conf.checkpoint_freq > 0:
            callbacks.append(
                CheckpointCallback(
                    save_freq=max(conf.checkpoint_freq // conf.n_envs, 1),
                    save_path=str(paths.checkpoints),
                    name_prefix=CHECKPOINT_PREFIX,
                    save_vecnormalize=True,
                )
            )
        eval_cb: EvalCallback | None = None
        if conf.eval.freq > 0:
            eval_cls = MaskableEvalCallback if isinstance(model, MaskablePPO) else EvalCallback
            eval_cb = eval_cls(
                eval_env,
                n_eval_episodes=conf.eval.episodes,
                eval_freq=max(conf.eval.freq // conf.n_envs, 1),
                best_model_save_path=str(paths.best),
                log_path=str(paths.eval),
                deterministic=conf.eval.deterministic,
                callback_on_new_best=SaveVecNormalizeCallback(paths.best / "vecnormalize.pkl"),
                verbose=conf.verbose,
            )
            callbacks.append(eval_cb)
        if run is not None:
            callbacks.append(_wandb_callback())

        learn_start = time.perf_counter()
        before = model.num_timesteps
        with StopRequest() as stop:  # Ctrl-C: stop at the next env step, then save (below)
            model.learn(
                total_timesteps=remaining,
                callback=[*callbacks, StopCallback(stop)],
                progress_bar=_show_progress(conf),
                reset_num_timesteps=resume is None,
            )
        train_time = time.perf_counter() - learn_start
        trained = model.num_timesteps - before
        if stop.requested:
            _save_interrupted(conf, model, paths, stats_cb.episodes, trained, train_time, start)

        model.save(paths.model)
        vec_normalize = unwrap_vec_normalize(model.get_env())  # type: ignore[arg-type]
        assert vec_normalize is not None
        vec_normalize.save(str(paths.vecnormalize))
        sync_envs_normalization(vec_normalize, eval_env)
        mean, std = evaluate(model, eval_env, conf.eval.episodes, conf.eval.deterministic)
        best = eval_cb.best_mean_reward if eval_cb is not None else None
        best = float(best) if best is not None and np.isfinite(best) else None
        metrics: dict[str, Any] = {
            "agent": conf.agent.algo.value,
            "env": conf.env.name.value,
            "env_id": ENV_IDS[conf.env.name],
            "scenario": conf.scenario if conf.suite is None else None,
            "suite": conf.suite,
            "topology": conf.topology,
            "scenarios": scenario_names(conf),
            "seed": conf.seed,
            "n_envs": conf.n_envs,
            "vec_env": "subproc" if isinstance(train_env.unwrapped, SubprocVecEnv) else "dummy",
            "timesteps": int(model.num_timesteps),
            "trained_timesteps": int(trained),
            "train_time_s": train_time,
            "wall_time_s": time.perf_counter() - start,
            "steps_per_s": trained / train_time if train_time > 0 else None,
            "episodes": stats_cb.episodes,
            "eval_mean_reward": mean,
            "eval_std_reward": std,
            "eval_episodes": conf.eval.episodes,
            "best_eval_mean_reward": best,
            "resumed_from": str(conf.resume) if conf.resume is not None else None,
            "out": str(paths.out),
        }
        if lagrange is not None:
            metrics["lagrange"] = {
                "final": [lagrange.lam.cost, lagrange.lam.disruption],
                "history": lagrange.history,
            }
        paths.metrics.write_text(json.dumps(metrics, indent=2))
        return metrics
    finally:
        train_env.close()
        eval_env.close()
        if run is not None:
            run.finish()
        torch.set_num_threads(threads)
