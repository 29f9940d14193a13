"""Online Dreamer training: collect in the simulator, learn the model, learn to act in it.

Writes a run dir like every ``opsworld train`` run.

:func:`train_dreamer` is what ``opsworld train agent=dreamer`` calls (``experiments/train.py``
hands it the validated run config). The loop is a driver plus clocks
(:mod:`agents.dreamer.driver`): per env step of the ``n_envs`` envs (stepped in lockstep in
this process by the :class:`~agents.dreamer.driver.Driver`), the
:class:`~agents.dreamer.driver.Clocks` say when to update, evaluate, log and checkpoint:

1. **act**: the first ``agent.prefill`` steps follow ``agent.prefill_policy`` (uniform
   random valid actions, the remediation no-op at ``agent.noop_prob`` if set, or a
   baseline), each env finishing its episode; then
   ``agent.pretrain`` world-model-only updates, and each env hands over to the agent's
   online filter and actor (:meth:`~agents.dreamer.agent.DreamerAgent.act`, sampling) at
   its next episode start;
2. **record**: each finished episode goes to the :class:`~agents.world_model.replay.Replay`
   (sequences of ``agent.seq_len`` inside episodes);
3. **learn**: once the replay holds a full sequence, ``train_ratio / (batch * seq_len)``
   updates per env step (world model, then actor-critic; the ``Ratio`` clock);
4. **evaluate** every ``eval.freq`` env steps: ``eval.episodes`` episodes with their own fixed
   seeds (the same ones at every evaluation, so the curve compares like with like), the
   actor's mode; the best weights go to ``best/agent.pt``;
5. **log** every ``agent.log_every`` env steps, **checkpoint** every ``checkpoint_freq``
   (``Every`` clocks; a period missed because ``n_envs`` steps at once is skipped);
6. stop at ``total_timesteps`` or after ``agent.max_minutes`` of wall-clock, whichever comes
   first; evaluate (unless the last evaluation was at this step) and save.

Run dir (``out``): ``config.yaml`` (the resolved, validated config), ``agent.pt`` (final
weights: what :class:`~agents.dreamer.policy.DreamerPolicy` loads), ``best/agent.pt``,
``metrics.json``, ``eval/curve.csv`` and ``eval/evaluations.npz`` (SB3's layout:
``timesteps``, ``results``, ``ep_lengths``; plus ``walltime``), ``logs/`` (``progress.csv``,
TensorBoard events, ``wandb/``), ``checkpoints/step_<N>/`` (``state.pt`` + ``replay.npz``).

Seeding: the run seed derives (``numpy.random.SeedSequence``) the env seeds (stream 0), the
evaluation seeds (stream 1), the replay's sampling generator, the networks' initialisation
and the agent's torch generator. Same config, same machine: same run. A checkpoint holds
the agent (weights, optimisers, generators), the replay (with its generator), the loop's
counters, the clocks and each env's generator state at the start of its episode plus the actions
since; resuming replays those actions in the deterministic simulator, so a resumed run
equals an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import yaml
from omegaconf import OmegaConf

from agents.dreamer.actor_critic import ActionSpec
from agents.dreamer.agent import AgentState, DreamerAgent
from agents.dreamer.config import DreamerConfigError, DreamerTrainConfig, dreamer_config
from agents.dreamer.driver import Clocks, Driver
from agents.dreamer.envs import (
    EpisodeStats,
    Stream,
    episode_limit,
    make_env,
    run_scenarios,
    seeds,
    shortest_episode,
)
from agents.run_config import (
    ENV_IDS,
    RunInterrupted,
    StopRequest,
    WandbLoggerConfig,
    interrupts_held,
)
from agents.world_model.config import ObsLayout
from agents.world_model.replay import Replay
from agents.world_model.rssm import Carry
from envs.core.policy import Policy
from envs.scenarios.schema import Scenario

STATE_FORMAT = "opsworld.dreamer.checkpoint/2"
TRAIN_METRICS: dict[str, str] = {
    "env/ep_reward": "training episode return (sum of rewards)",
    "env/ep_slo_violation": "mean per-step SLO violation of training episodes",
    "env/ep_cost": "mean per-step cost of training episodes (1 = the initial cluster's)",
    "eval/mean_reward": "mean return of the evaluation episodes (actor mode)",
    "eval/slo_violation": "mean per-step SLO violation of the evaluation episodes",
    "eval/cost": "mean per-step cost of the evaluation episodes",
    "wm/loss": "world-model loss (wm/dec, wm/rew, wm/cont, wm/viol, wm/dyn, wm/rep its terms)",
    "actor/loss": "REINFORCE loss with normalised advantages and entropy bonus",
    "actor/entropy": "entropy of the actor's distribution on imagined states (nats)",
    "critic/loss": "two-hot critic loss (returns + slow-critic regulariser)",
    "critic/return_scale": "max(1, P95 - P5) of the lambda-returns (EMA)",
    "imag/reward": "mean predicted reward of imagined steps",
    "time/env_steps_per_s": "env steps per second spent acting and stepping the simulator",
    "time/updates_per_s": "updates (world model + actor-critic) per second spent updating",
    "time/fps": "env steps per wall second, updates included",
    "time/updates": "updates so far",
}
"""The metrics logged (besides every ``wm/``, ``actor/``, ``critic/`` term); docs/dreamer.md."""


@dataclass(frozen=True)
class RunPaths:
    """Where a Dreamer run writes (all under ``out``)."""

    out: Path
    config: Path
    agent: Path
    best: Path
    metrics: Path
    eval: Path
    logs: Path
    checkpoints: Path

    @classmethod
    def of(cls, out: str | Path) -> RunPaths:
        """The layout under ``out``."""
        o = Path(out)
        return cls(
            o,
            o / "config.yaml",
            o / "agent.pt",
            o / "best" / "agent.pt",
            o / "metrics.json",
            o / "eval",
            o / "logs",
            o / "checkpoints",
        )


@dataclass
class Loop:
    """Counters of the training loop (saved in checkpoints).

    The schedule (when to update, evaluate, log, checkpoint) is not here: it is the
    :class:`~agents.dreamer.driver.Clocks`, saved beside this in checkpoints.

    Attributes:
        env_steps: Env steps so far (all envs).
        updates: Updates so far.
        prefill_done: Every env acts with the agent (checkpoints wait for it).
        pretrained: World-model-only updates made after the prefill.
        episodes: Training episodes finished.
        wall_s: Wall seconds of the run before this process (resumed runs).
        act_s: Seconds spent acting and stepping envs.
        update_s: Seconds spent in updates (pretraining excluded).
        pretrain_s: Seconds spent pretraining the world model.
        best: Best evaluation mean return (None before the first).
        curve: Evaluation rows (see ``eval/curve.csv``).
        eval_returns: Per evaluation, the episodes' returns.
        eval_lengths: Per evaluation, the episodes' lengths.
    """

    env_steps: int = 0
    updates: int = 0
    prefill_done: bool = False
    pretrained: int = 0
    episodes: int = 0
    wall_s: float = 0.0
    act_s: float = 0.0
    update_s: float = 0.0
    pretrain_s: float = 0.0
    best: float | None = None
    curve: list[dict[str, float]] = field(default_factory=list)
    eval_returns: list[list[float]] = field(default_factory=list)
    eval_lengths: list[list[int]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# helpers


def config_dict(conf: DreamerTrainConfig) -> dict[str, Any]:
    """The validated config as plain data (enums as their names)."""
    data = OmegaConf.to_container(OmegaConf.structured(conf), enum_to_str=True)
    assert isinstance(data, dict)
    return data  # type: ignore[return-value]


def resolved_yaml(conf: DreamerTrainConfig) -> str:
    """The validated config as YAML (what ``config.yaml`` holds)."""
    return yaml.safe_dump(config_dict(conf), sort_keys=False)


def load_run_config(run_dir: str | Path) -> DreamerTrainConfig:
    """The config of a Dreamer run dir."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {run_dir} an 'opsworld train' run dir?")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    logger = data.get("logger") if isinstance(data, dict) else None
    if isinstance(logger, dict) and logger.get("kind", "csv") != "wandb":
        # runs saved before the one run schema wrote the W&B keys for every logger kind
        data["logger"] = {"kind": logger.get("kind", "csv")}
    return dreamer_config(data)


def build_agent(
    conf: DreamerTrainConfig, scenarios: list[Scenario]
) -> tuple[DreamerAgent, ActionSpec]:
    """The agent of a run config (fresh weights) and its action spec."""
    env = make_env(conf, scenarios)
    spec = ActionSpec.from_env(env)
    layout = ObsLayout.from_encoder(env.encoder)
    return DreamerAgent(layout, spec, conf.agent, conf.seed), spec


class _Logger:
    """SB3's logger (csv / tensorboard; W&B syncs TensorBoard) with ``record_mean``."""

    def __init__(self, conf: DreamerTrainConfig, paths: RunPaths) -> None:
        from stable_baselines3.common.logger import Logger, configure

        self.run: Any = None
        if conf.logger.kind == "wandb":  # first: sync_tensorboard patches the writer below
            import wandb

            lc = conf.logger
            assert isinstance(lc, WandbLoggerConfig)
            paths.logs.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=lc.project,
                entity=lc.entity,
                group=lc.group,
                name=lc.name,
                tags=list(lc.tags),
                config=config_dict(conf),
                dir=str(paths.logs),
                mode=lc.mode or os.environ.get("WANDB_MODE", "offline"),  # type: ignore[arg-type]
                sync_tensorboard=True,
                job_type="train",
            )
        formats = {
            "none": [],
            "csv": ["csv"],
            "tensorboard": ["tensorboard"],
            "wandb": ["tensorboard"],
        }[conf.logger.kind]
        if conf.verbose >= 1:
            formats = ["stdout", *formats]
        self.logger = (
            configure(str(paths.logs), formats)
            if formats
            else Logger(folder=None, output_formats=[])
        )

    def record(self, values: Mapping[str, float], mean: bool = False) -> None:
        for k, v in values.items():
            if mean:
                self.logger.record_mean(k, v)
            else:
                self.logger.record(k, v)

    def dump(self, step: int) -> None:
        self.logger.dump(step)

    def close(self) -> None:
        self.logger.close()
        if self.run is not None:
            self.run.finish()


class _Progress:
    """A rich progress bar over env steps (no-op when hidden)."""

    def __init__(self, show: bool, total: int, done: int) -> None:
        self.bar: Any = None
        if not show:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]dreamer[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.bar.start()
        self.task = self.bar.add_task("train", total=total, completed=done, info="")

    def update(self, done: int, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _behaviour(name: str, scenario: Scenario) -> Policy:
    from agents.registry import make_policy

    return make_policy(name, scenario)


# --------------------------------------------------------------------------------------------
# evaluation


def evaluate_agent(
    agent: DreamerAgent,
    conf: DreamerTrainConfig,
    scenarios: list[Scenario],
    episodes: int,
    deterministic: bool = True,
) -> list[EpisodeStats]:
    """Run ``episodes`` evaluation episodes (fixed seeds, evaluation stream) to the end.

    Deterministic evaluation takes the posterior's and the actor's modes; otherwise draws
    come from a generator seeded by the episode's seed (the same at every evaluation). The
    agent's own generator is not touched, so evaluating does not change the training run.
    """
    out = []
    for s in seeds(conf.seed, episodes, stream=1):
        stream = Stream(make_env(conf, scenarios), s, episode_limit(conf))
        state = agent.initial(1)
        gen = torch.Generator().manual_seed(s)
        while True:
            idx, carry = agent.act(
                stream.obs[None],
                np.array([float(stream.is_first)]),
                state,
                stream.mask()[None] if stream.masked else None,
                deterministic=deterministic,
                generator=gen,
            )
            features, _, stats = stream.step(idx[0])
            state = AgentState(carry, torch.as_tensor(features)[None])
            if stats is not None:
                out.append(stats)
                break
    return out


# --------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(
    folder: Path,
    agent: DreamerAgent,
    replay: Replay,
    loop: Loop,
    clocks: Clocks,
    streams: list[Stream],
    state: AgentState,
) -> Path:
    """Write ``state.pt`` and ``replay.npz`` to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": STATE_FORMAT,
            "agent": agent.state_dict(),
            "loop": asdict(loop),
            "clocks": clocks.state(),
            "streams": [s.state() for s in streams],
            "carry": {"deter": state.carry.deter, "stoch": state.carry.stoch},
            "prev_action": state.prev_action,
        },
        folder / "state.pt",
    )
    replay.save(folder / "replay.npz")
    return folder


def checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint folder of ``resume``: a ``step_<N>`` folder, or a run dir (its latest).

    Raises:
        DreamerConfigError: When there is none.
    """
    p = Path(path)
    if (p / "state.pt").is_file():
        return p
    found = sorted(
        (p / "checkpoints").glob("step_*"),
        key=lambda d: int(d.name.split("_")[1]) if d.name.split("_")[1].isdigit() else -1,
    )
    found = [d for d in found if (d / "state.pt").is_file()]
    if not found:
        raise DreamerConfigError(
            f"resume={path}: neither a checkpoint folder (with state.pt) nor a run dir with "
            "checkpoints/step_<N>/ (train with checkpoint_freq > 0)"
        )
    return found[-1]


# --------------------------------------------------------------------------------------------
# the run


def train_dreamer(cfg: Any) -> dict[str, Any]:
    """Train as ``cfg`` says (a composed ``opsworld train`` config with ``agent=dreamer``).

    Returns:
        The figures written to ``metrics.json`` (keys as an SB3 run's, plus ``updates``,
        ``updates_per_s``, ``env_steps_per_s``, ``eval_slo_violation``, ``eval_cost``).

    Raises:
        DreamerConfigError: Before anything is written, for a config that cannot work.
    """
    start = time.perf_counter()
    conf = dreamer_config(cfg)
    scenarios = run_scenarios(conf)
    ac = conf.agent
    shortest = shortest_episode(conf, scenarios)
    if ac.seq_len > shortest + 1:
        raise DreamerConfigError(
            f"agent.seq_len={ac.seq_len} is longer than the shortest episode ({shortest + 1} "
            "rows): lower agent.seq_len (sequences stay inside episodes) or lengthen episodes"
        )
    if ac.replay_capacity < ac.seq_len:
        raise DreamerConfigError(
            f"agent.replay_capacity={ac.replay_capacity} < agent.seq_len={ac.seq_len}"
        )
    ckpt = checkpoint_dir(conf.resume) if conf.resume is not None else None
    paths = RunPaths.of(conf.out)
    paths.out.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(resolved_yaml(conf), encoding="utf-8")

    threads = torch.get_num_threads()
    if conf.torch_threads is not None:
        torch.set_num_threads(conf.torch_threads)
    logger = _Logger(conf, paths)
    try:
        return _run(conf, scenarios, paths, ckpt, logger, start)
    finally:
        logger.close()
        torch.set_num_threads(threads)


def _run(
    conf: DreamerTrainConfig,
    scenarios: list[Scenario],
    paths: RunPaths,
    ckpt: Path | None,
    logger: _Logger,
    start: float,
) -> dict[str, Any]:
    ac = conf.agent
    n = conf.n_envs
    agent, spec = build_agent(conf, scenarios)
    if conf.torch_threads is not None:  # the world-model trainer sets its own count
        torch.set_num_threads(conf.torch_threads)
    replay = Replay(ac.replay_capacity, ac.seq_len, seed=seeds(conf.seed, 1, stream=2)[0])
    streams = [
        Stream(make_env(conf, scenarios), s, episode_limit(conf)) for s in seeds(conf.seed, n, 0)
    ]
    loop = Loop()
    clocks = Clocks.of(ac, conf.eval.freq, conf.checkpoint_freq)
    state = agent.initial(n)
    if ckpt is not None:
        loop, clocks, state = _restore(ckpt, agent, replay, streams, conf)
    if loop.env_steps >= conf.total_timesteps:
        raise DreamerConfigError(
            f"resume={conf.resume}: the checkpoint has {loop.env_steps} env steps, "
            f"total_timesteps={conf.total_timesteps}; raise total_timesteps"
        )
    driver = Driver(streams, agent, spec, ac, _behaviour, state, [loop.prefill_done] * n)
    sampleable = any(len(e["is_first"]) >= ac.seq_len for e in replay.episodes)
    show = conf.progress_bar if conf.progress_bar is not None else sys.stdout.isatty()
    progress = _Progress(show, conf.total_timesteps, loop.env_steps)
    wall_before, steps_at_start = loop.wall_s, loop.env_steps
    run_start = time.perf_counter()

    def wall() -> float:
        return loop.wall_s + time.perf_counter() - run_start

    try:
        deadline = math.inf if ac.max_minutes is None else 60.0 * ac.max_minutes
        stop = StopRequest()  # Ctrl-C: finish this step, then save (below)
        stop.__enter__()
        while loop.env_steps < conf.total_timesteps and wall() < deadline and not stop.requested:
            t0 = time.perf_counter()
            for episode, stats in driver.step(loop.env_steps):  # act
                replay.add(episode)
                sampleable = sampleable or len(episode["is_first"]) >= ac.seq_len
                loop.episodes += 1
                logger.record(stats.metrics(), mean=True)
            loop.env_steps += n
            loop.prefill_done = driver.all_driven
            loop.act_s += time.perf_counter() - t0
            step = loop.env_steps

            if step >= ac.prefill and sampleable:  # learn
                t1 = time.perf_counter()
                while loop.pretrained < ac.pretrain:  # once, before the agent first acts
                    logger.record(agent.update(replay.sample(ac.batch), actor_critic=False), True)
                    loop.pretrained += 1
                loop.pretrain_s += time.perf_counter() - t1
                t1 = time.perf_counter()
                for _ in range(clocks.train(n)):
                    logger.record(agent.update(replay.sample(ac.batch)), mean=True)
                    loop.updates += 1
                loop.update_s += time.perf_counter() - t1

            if clocks.eval(step):
                _evaluate(agent, conf, scenarios, loop, paths, logger, wall())
            if clocks.log(step) or step >= conf.total_timesteps:
                _dump(logger, loop, wall())
            if loop.prefill_done and clocks.ckpt(step):
                loop.wall_s = wall()
                run_start = time.perf_counter()
                folder = paths.checkpoints / f"step_{step}"
                save_checkpoint(folder, agent, replay, loop, clocks, streams, driver.state)
            ret = loop.curve[-1]["mean_reward"] if loop.curve else math.nan
            progress.update(
                step, f"updates {loop.updates}  eval {ret:.2f}  {_fps(loop):.0f} steps/s"
            )
    finally:
        stop.__exit__()
        progress.close()

    train_time = wall()
    if stop.requested:
        _save_interrupted(
            conf, scenarios, paths, ckpt, agent, replay, loop, clocks, streams, driver
        )
    if not loop.curve or loop.curve[-1]["env_steps"] != loop.env_steps:
        _evaluate(agent, conf, scenarios, loop, paths, logger, train_time)
        _dump(logger, loop, train_time)
    torch.save(agent.weights(), paths.agent)
    if conf.checkpoint_freq > 0:
        folder = paths.checkpoints / f"step_{loop.env_steps}"
        save_checkpoint(folder, agent, replay, loop, clocks, streams, driver.state)
    metrics = _run_metrics(conf, scenarios, loop, ckpt, paths)
    metrics["trained_timesteps"] = loop.env_steps - steps_at_start
    metrics["train_time_s"] = train_time
    metrics["wall_time_s"] = wall_before + time.perf_counter() - start
    paths.metrics.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return metrics


def _save_interrupted(
    conf: DreamerTrainConfig,
    scenarios: list[Scenario],
    paths: RunPaths,
    ckpt: Path | None,
    agent: DreamerAgent,
    replay: Replay,
    loop: Loop,
    clocks: Clocks,
    streams: list[Stream],
    driver: Driver,
) -> NoReturn:
    """After Ctrl-C: save ``agent.pt``, a resumable checkpoint and ``metrics.json``.

    ``metrics.json`` has ``interrupted: true``; its ``eval_*`` figures are the last periodic
    evaluation's (null before the first). No checkpoint before the prefill is done (its
    random behaviour is not part of a checkpoint).

    Raises:
        RunInterrupted: Always, naming what was saved and the checkpoint to resume from.
    """
    folder = paths.checkpoints / f"step_{loop.env_steps}"
    with interrupts_held():
        torch.save(agent.weights(), paths.agent)
        saved = loop.prefill_done
        if saved:
            save_checkpoint(folder, agent, replay, loop, clocks, streams, driver.state)
        none: dict[str, Any] = dict.fromkeys(("mean_reward", "std_reward", "slo_violation", "cost"))
        last = replace(loop, curve=loop.curve or [none])
        metrics = _run_metrics(conf, scenarios, last, ckpt, paths)
        metrics.update(interrupted=True, checkpoint=str(folder) if saved else None)
        paths.metrics.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    what = (
        f"agent.pt, metrics.json and {folder.relative_to(paths.out)}"
        if saved
        else ("agent.pt and metrics.json (no checkpoint: the prefill was not done)")
    )
    raise RunInterrupted(
        f"stopped after {loop.env_steps:,} of {conf.total_timesteps:,} steps; saved {what} "
        f"in {paths.out}",
        resume=str(folder) if saved else None,
    )


def _run_metrics(
    conf: DreamerTrainConfig,
    scenarios: list[Scenario],
    loop: Loop,
    ckpt: Path | None,
    paths: RunPaths,
) -> dict[str, Any]:
    """The figures of ``metrics.json`` (the caller adds the timing ones)."""
    final = loop.curve[-1]
    return {
        "agent": "dreamer",
        "size": conf.agent.size.value,
        "env": conf.env.name.value,
        "env_id": ENV_IDS[conf.env.name],
        "scenario": conf.scenario if conf.suite is None else None,
        "suite": conf.suite,
        "topology": conf.topology,
        "scenarios": [s.name for s in scenarios],
        "seed": conf.seed,
        "n_envs": conf.n_envs,
        "vec_env": "in-process",
        "timesteps": loop.env_steps,
        "trained_timesteps": None,
        "updates": loop.updates,
        "pretrain_updates": loop.pretrained,
        "pretrain_time_s": loop.pretrain_s,
        "train_ratio": conf.agent.train_ratio,
        "train_time_s": None,
        "wall_time_s": None,
        "steps_per_s": _fps(loop),
        "env_steps_per_s": loop.env_steps / loop.act_s if loop.act_s > 0 else None,
        "updates_per_s": loop.updates / loop.update_s if loop.update_s > 0 else None,
        "episodes": loop.episodes,
        "eval_mean_reward": final["mean_reward"],
        "eval_std_reward": final["std_reward"],
        "eval_slo_violation": final["slo_violation"],
        "eval_cost": final["cost"],
        "eval_episodes": conf.eval.episodes,
        "best_eval_mean_reward": loop.best,
        "resumed_from": str(ckpt) if ckpt is not None else None,
        "out": str(paths.out),
    }


def _fps(loop: Loop) -> float:
    total = loop.act_s + loop.update_s + loop.pretrain_s
    return loop.env_steps / total if total > 0 else 0.0


def _evaluate(
    agent: DreamerAgent,
    conf: DreamerTrainConfig,
    scenarios: list[Scenario],
    loop: Loop,
    paths: RunPaths,
    logger: _Logger,
    wall_s: float,
) -> None:
    results = evaluate_agent(agent, conf, scenarios, conf.eval.episodes, conf.eval.deterministic)
    returns = [e.reward for e in results]
    m = [e.metrics() for e in results]
    row = {
        "env_steps": float(loop.env_steps),
        "updates": float(loop.updates),
        "wall_s": wall_s,
        "mean_reward": float(np.mean(returns)),
        "std_reward": float(np.std(returns)),
        "slo_violation": float(np.mean([x["env/ep_slo_violation"] for x in m])),
        "cost": float(np.mean([x["env/ep_cost"] for x in m])),
    }
    loop.curve.append(row)
    loop.eval_returns.append(returns)
    loop.eval_lengths.append([e.length for e in results])
    logger.record(
        {
            "eval/mean_reward": row["mean_reward"],
            "eval/slo_violation": row["slo_violation"],
            "eval/cost": row["cost"],
        }
    )
    if loop.best is None or row["mean_reward"] > loop.best:
        loop.best = row["mean_reward"]
        paths.best.parent.mkdir(parents=True, exist_ok=True)
        torch.save(agent.weights(), paths.best)
    _write_curve(paths, loop)


def _write_curve(paths: RunPaths, loop: Loop) -> None:
    """``eval/curve.csv`` and ``eval/evaluations.npz`` of every evaluation so far."""
    paths.eval.mkdir(parents=True, exist_ok=True)
    with open(paths.eval / "curve.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(loop.curve[0]))
        w.writeheader()
        w.writerows(loop.curve)
    np.savez(
        paths.eval / "evaluations.npz",
        timesteps=np.array([int(r["env_steps"]) for r in loop.curve]),
        walltime=np.array([r["wall_s"] for r in loop.curve]),
        results=np.asarray(loop.eval_returns, dtype=np.float64),
        ep_lengths=np.asarray(loop.eval_lengths, dtype=np.int64),
    )


def _dump(logger: _Logger, loop: Loop, wall_s: float) -> None:
    logger.record(
        {
            "time/env_steps": float(loop.env_steps),
            "time/updates": float(loop.updates),
            "time/wall_s": wall_s,
            "time/fps": _fps(loop),
            "time/env_steps_per_s": loop.env_steps / loop.act_s if loop.act_s > 0 else 0.0,
            "time/updates_per_s": loop.updates / loop.update_s if loop.update_s > 0 else 0.0,
            "time/episodes": float(loop.episodes),
        }
    )
    logger.dump(loop.env_steps)


def _restore(
    folder: Path,
    agent: DreamerAgent,
    replay: Replay,
    streams: list[Stream],
    conf: DreamerTrainConfig,
) -> tuple[Loop, Clocks, AgentState]:
    for name in ("state.pt", "replay.npz"):
        if not zipfile.is_zipfile(folder / name):
            raise DreamerConfigError(
                f"resume={folder}: {name} is damaged or truncated (not a complete file); "
                "resume from another checkpoint (<run>/checkpoints/step_<N>) or retrain"
            )
    try:
        saved = torch.load(folder / "state.pt", weights_only=True)
        if saved.get("format") != STATE_FORMAT:
            raise ValueError(f"format {saved.get('format')!r}, this version reads {STATE_FORMAT}")
        if len(saved["streams"]) != len(streams):
            raise ValueError(f"{len(saved['streams'])} envs, this run has n_envs={len(streams)}")
        agent.load_state_dict(saved["agent"])
        replay.load(folder / "replay.npz")
        for s, st in zip(streams, saved["streams"], strict=True):
            s.restore(st)
        clocks = Clocks.restore(saved["clocks"])
    except (ValueError, KeyError, TypeError, RuntimeError, OSError) as err:
        raise DreamerConfigError(
            f"resume={folder}: cannot continue it with this config ({type(err).__name__}: "
            f"{str(err)[:300]}); resume with the agent, env, scenario and n_envs of its run"
        ) from None
    loop = Loop(**saved["loop"])
    carry = Carry(saved["carry"]["deter"], saved["carry"]["stoch"])
    return loop, clocks, AgentState(carry, saved["prev_action"])
