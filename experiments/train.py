"""``opsworld train``: train an SB3 or Dreamer agent on an opsworld env.

``opsworld train agent=ppo env=autoscale scenario=boutique total_timesteps=200000 out=runs/a``
composes ``configs/train.yaml`` with the config groups ``agent/`` (ppo | maskable_ppo | dqn |
a2c | dreamer), ``env/`` (autoscale | remediate | ops | hpa_tune), ``logger/`` (none | csv |
tensorboard | wandb),
the overlays ``experiment/`` and ``debug/`` (``debug=default`` runs in seconds), trains,
and writes the run dir (``model.zip``, ``vecnormalize.pkl``, ``config.yaml``,
``metrics.json``, ``checkpoints/``, ``best/``, ``eval/``, ``logs/``); see
``docs/training.md``.

The Hydra entry point only calls :func:`train`, which tests call directly with a composed
config; the schema is :class:`agents.run_config.RunConfig` and the work is done by the
trainer of ``agent.algo`` (:data:`agents.trainers.TRAINERS`). Sweeps use Hydra's
multirun (``opsworld train -m seed=0,1,2``): each job gets its own run dir
(``<out>/<job number>``) with its resolved config.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig
from rich.console import Console
from rich.table import Table

from agents.parallel import Backend
from agents.run_config import RunConfig, RunConfigError, RunInterrupted, prepare_out
from experiments.cli import CONFIG_DIR, ConfigError, fail, job_out, register_help_resolver

TrainConfig = RunConfig


@dataclass
class TrainSchema(RunConfig):
    """:class:`RunConfig` as Hydra composes it, with an untyped ``agent`` node.

    Each ``configs/agent/<name>.yaml`` brings its own schema (``schema/agent/<name>``: the
    trainer's dataclass, :data:`agents.trainers.TRAINERS`), so any agent composes and a key
    its schema lacks fails at composition. ``seeds`` (with ``backend`` and ``workers``)
    asks for one run per seed (:mod:`agents.multiseed`); they are not part of a run's config.
    """

    agent: Any = MISSING
    seeds: list[int] = field(default_factory=list)
    backend: Backend = Backend.local
    workers: int | None = None


SCHEMA = TrainSchema
"""The config schema (used by the ``opsworld`` dispatcher to check override keys)."""


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent; call before composing)."""
    register_help_resolver()
    from agents.trainers import register_configs as register_groups

    ConfigStore.instance().store(name="train_schema", node=TrainSchema)
    register_groups()


def to_config(cfg: DictConfig | RunConfig | Mapping[str, Any]) -> RunConfig:
    """Validate a composed config (or a plain mapping): :func:`agents.trainers.to_run_config`.

    Raises:
        ConfigError: An unknown key, a value of the wrong type or out of range, or a
            combination that cannot work; the message names the field.
    """
    from agents.multiseed import split_request
    from agents.trainers import to_run_config

    try:
        run, _ = split_request(cfg)  # seeds / backend / workers are not a run's keys
        return to_run_config(run)
    except RunConfigError as err:
        raise ConfigError(str(err)) from None


def _summary_table(metrics: Mapping[str, Any]) -> Table:
    table = Table(title=f"opsworld train: {metrics['agent']} on {metrics['env_id']}")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    trained_on = metrics["scenario"]
    if metrics.get("suite") is not None:
        n = len(metrics["scenarios"])
        trained_on = f"suite {metrics['suite']}, {metrics['topology']} ({n} scenarios)"
    rows = [
        ("scenario / seed", f"{trained_on} / {metrics['seed']}"),
        ("envs", f"{metrics['n_envs']} ({metrics['vec_env']})"),
        ("timesteps", f"{metrics['timesteps']:,}"),
        ("env steps / s", f"{metrics['steps_per_s']:,.0f}" if metrics["steps_per_s"] else "n/a"),
        ("wall time", f"{metrics['wall_time_s']:.1f} s"),
        (
            "eval reward",
            f"{metrics['eval_mean_reward']:.3f} ± {metrics['eval_std_reward']:.3f} "
            f"({metrics['eval_episodes']} episodes)",
        ),
        ("outputs", str(metrics["out"])),
    ]
    for k, v in rows:
        table.add_row(k, v)
    return table


def train(
    cfg: DictConfig | TrainConfig | Mapping[str, Any], console: Console | None = None
) -> dict[str, Any]:
    """Train as the config says and write the run dir.

    Args:
        cfg: A config composed from ``configs/train.yaml`` (or anything :func:`to_config`
            accepts).
        console: Where the summary table goes (default: stdout).

    Returns:
        The figures written to ``metrics.json`` (see :func:`agents.sb3.train.train_agent`);
        with ``seeds=[...]`` the summary across seeds (:func:`agents.multiseed.summarize`).

    Raises:
        ConfigError: Before anything runs, for a config that cannot work; the message names
            the field and what to do.
        RunInterrupted: After Ctrl-C, once the model, metrics and a checkpoint are saved; the
            message ends with the command that continues the run.
    """
    from agents.multiseed import split_request, train_seeds
    from agents.trainers import train as run_trainer

    try:
        cfg, multi = split_request(cfg)
    except RunConfigError as err:
        raise ConfigError(str(err)) from None
    conf = to_config(cfg)
    check_replay(conf)
    if multi is not None:  # seeds=[...]: one run dir per seed and a summary across them
        try:
            prepare_out(conf.out, overwrite=conf.overwrite, resume=None, can_resume=False)
            summary = train_seeds(conf, multi)
        except RunConfigError as err:
            raise ConfigError(str(err)) from None
        print(f"trained seeds {summary['seeds']}: {conf.out}/seeds_summary.md")
        return summary
    try:
        prepare_out(conf.out, overwrite=conf.overwrite, resume=conf.resume, can_resume=True)
        metrics = run_trainer(conf)
    except RunConfigError as err:
        raise ConfigError(str(err)) from None
    except RunInterrupted as stop:
        if stop.resume is None:
            raise
        again = resume_command(conf, stop.resume)
        raise RunInterrupted(f"{stop}; continue with: {again}", stop.resume) from None
    (console if console is not None else Console()).print(_summary_table(metrics))
    return metrics


def check_replay(conf: RunConfig) -> None:
    """Read the run scenario's replay CSV, if any, before anything is built.

    A bad file would otherwise fail inside the first env (a traceback); suites are checked
    entry by entry when their envs are built.

    Raises:
        ConfigError: Naming the file, the line and the fix.
    """
    if conf.suite is not None:
        return
    from envs.scenarios.loader import ScenarioError, flatten, load_scenario
    from envs.sim.traffic import read_replay_csv

    try:
        scenario = load_scenario(conf.scenario, flatten(dict(conf.scenario_overrides)))
    except ScenarioError:
        return  # the trainer reports it, naming the field
    if scenario.traffic.replay is not None:
        try:
            read_replay_csv(Path(scenario.traffic.replay.path))
        except ValueError as err:
            raise ConfigError(f"scenario={conf.scenario}: {err}") from None


def resume_command(conf: RunConfig, checkpoint: str) -> str:
    """The ``opsworld train`` command line that continues ``conf``'s run from ``checkpoint``.

    The run's own overrides (from Hydra, when it composed the run) with ``resume``, ``out``
    and ``overwrite`` replaced; without Hydra, the agent, env, scenario and step count.
    """
    from hydra.core.hydra_config import HydraConfig

    drop = ("resume=", "out=", "overwrite=", "-m", "--multirun")
    if HydraConfig.initialized():
        given = [a for a in HydraConfig.get().overrides.task if not a.startswith(drop)]
    else:
        given = [
            f"agent={conf.agent.algo}",
            f"env={conf.env.name}",
            f"scenario={conf.scenario}",
            f"total_timesteps={conf.total_timesteps}",
        ]
    words = [*given, f"resume={checkpoint}", f"out={conf.out}"]
    return " ".join(["opsworld", "train", *(shlex.quote(w) for w in words)])


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    job_out(cfg)
    try:
        train(cfg)
    except ConfigError as err:
        fail("train", err)


def main() -> None:
    """Console entry: register the schemas, then let Hydra parse ``sys.argv``."""
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
