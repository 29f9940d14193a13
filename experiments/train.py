"""``opsworld train``: train a Stable-Baselines3 agent on an opsworld env.

``opsworld train agent=ppo env=autoscale scenario=boutique total_timesteps=200000 out=runs/a``
composes ``configs/train.yaml`` with the config groups ``agent/`` (ppo | maskable_ppo | dqn |
a2c), ``env/`` (autoscale | remediate | ops), ``logger/`` (none | csv | tensorboard | wandb),
the overlays ``experiment/`` and ``debug/`` (``debug=default`` runs in seconds), trains,
and writes the run dir (``model.zip``, ``vecnormalize.pkl``, ``config.yaml``,
``metrics.json``, ``checkpoints/``, ``best/``, ``eval/``, ``logs/``); see
``docs/training.md``.

The Hydra entry point only calls :func:`train`, which tests call directly with a composed
config; the work is done by :func:`agents.sb3.train.train_agent`. Sweeps use Hydra's
multirun (``opsworld train -m seed=0,1,2``): each job gets its own run dir
(``<out>/<job number>``) with its resolved config.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from rich.console import Console
from rich.table import Table

from agents.sb3.config import (
    A2CConfig,
    DQNConfig,
    EnvConfig,
    LoggerConfig,
    MaskablePPOConfig,
    PPOConfig,
    SB3ConfigError,
    TrainConfig,
    WandbLoggerConfig,
    config_from_mapping,
)
from agents.sb3.train import train_agent
from experiments.cli import CONFIG_DIR, EXIT_USAGE, ConfigError

SCHEMA = TrainConfig
"""The config schema (used by the ``opsworld`` dispatcher to check override keys)."""


@dataclass
class TrainSchema(TrainConfig):
    """:class:`TrainConfig` as Hydra composes it, with an untyped ``agent`` node.

    Each ``configs/agent/<name>.yaml`` brings its own schema (an SB3 dataclass, or for
    ``agent=dreamer`` the keys of :class:`agents.dreamer.config.DreamerAgentConfig`, which
    pydantic validates when the run starts), so an agent that is not an SB3
    :class:`~agents.sb3.config.AgentConfig` composes too.
    """

    agent: Any = MISSING


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent; call before composing)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainSchema)
    for name, node in (
        ("ppo", PPOConfig),
        ("maskable_ppo", MaskablePPOConfig),
        ("dqn", DQNConfig),
        ("a2c", A2CConfig),
    ):
        cs.store(group="schema/agent", name=name, node=node)
    cs.store(group="schema/env", name="env", node=EnvConfig)
    cs.store(group="schema/logger", name="logger", node=LoggerConfig)
    cs.store(group="schema/logger", name="wandb", node=WandbLoggerConfig)
    from agents.dreamer.config import DreamerAgentConfig

    cs.store(group="schema/agent", name="dreamer", node=DreamerAgentConfig().model_dump())


def _algo(cfg: DictConfig | TrainConfig | Mapping[str, Any]) -> Any:
    if isinstance(cfg, TrainConfig):
        return cfg.agent.algo
    if isinstance(cfg, DictConfig):
        return OmegaConf.select(cfg, "agent.algo", default=None)
    agent = cfg.get("agent")
    return agent.get("algo") if isinstance(agent, Mapping) else None


def to_config(cfg: DictConfig | TrainConfig | Mapping[str, Any]) -> TrainConfig:
    """Validate a composed config (or a plain mapping) against :class:`TrainConfig`.

    Raises:
        ConfigError: A key the schema does not have, or a value of the wrong type.
    """
    try:
        return config_from_mapping(cfg)
    except SB3ConfigError as err:
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
        The figures written to ``metrics.json`` (see :func:`agents.sb3.train.train_agent`).

    Raises:
        ConfigError: Before anything runs, for a config that cannot work; the message names
            the field and what to do.
    """
    if _algo(cfg) == "dreamer":  # agents/dreamer validates and runs it (docs/dreamer.md)
        from agents.dreamer.config import DreamerConfigError
        from agents.dreamer.train import train_dreamer

        try:
            metrics = train_dreamer(cfg)
        except DreamerConfigError as err:
            raise ConfigError(str(err)) from None
    else:
        conf = to_config(cfg)
        try:
            metrics = train_agent(conf)
        except SB3ConfigError as err:
            raise ConfigError(str(err)) from None
    (console if console is not None else Console()).print(_summary_table(metrics))
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:  # each job writes to its own <sweep dir>/<job number>
        with open_dict(cfg):
            cfg.out = hc.runtime.output_dir
    try:
        train(cfg)
    except ConfigError as err:
        print(f"opsworld train: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def main() -> None:
    """Console entry: register the schemas, then let Hydra parse ``sys.argv``."""
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
