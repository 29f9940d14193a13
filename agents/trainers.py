"""One registry of trainers (``agent.algo`` -> schema + training function) and the run check.

:data:`TRAINERS` lists every ``agent=<name>`` option of ``opsworld train``: its group schema
(a dataclass registered in Hydra's ConfigStore as ``schema/agent/<name>``) and the function
that trains it, imported only when a run starts (so ``--help`` stays fast).
:func:`to_run_config` is the one validation path of a run config (see
:mod:`agents.run_config`); :func:`train` validates and dispatches.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agents.dreamer.config import DreamerAgentConfig, DreamerTrainConfig
from agents.run_config import (
    LOGGER_SCHEMAS,
    AgentConfig,
    Algo,
    EnvConfig,
    LoggerKind,
    RunConfig,
    RunConfigError,
    check_run,
    check_values,
    choice,
)
from agents.sb3.config import A2CConfig, DQNConfig, MaskablePPOConfig, PPOConfig, TrainConfig


@dataclass(frozen=True)
class Trainer:
    """One ``agent=<name>`` option.

    Attributes:
        algo: The tag (``agent.algo``).
        schema: The agent group's dataclass.
        run_schema: The run schema with that agent (a :class:`RunConfig` subclass).
        entry: ``module:function`` that trains a validated :class:`RunConfig` and returns
            the figures of ``metrics.json``.
        help: One line for help texts.
    """

    algo: Algo
    schema: type[AgentConfig]
    run_schema: type[RunConfig]
    entry: str
    help: str

    def load(self) -> Callable[[RunConfig], dict[str, Any]]:
        """The training function (imports its stack: SB3 or torch)."""
        module, func = self.entry.split(":")
        fn: Callable[[RunConfig], dict[str, Any]] = getattr(importlib.import_module(module), func)
        return fn


TRAINERS: dict[Algo, Trainer] = {
    t.algo: t
    for t in (
        Trainer(
            Algo.ppo, PPOConfig, TrainConfig, "agents.sb3.train:train_agent", "SB3 PPO (every env)"
        ),
        Trainer(
            Algo.maskable_ppo,
            MaskablePPOConfig,
            TrainConfig,
            "agents.sb3.train:train_agent",
            "sb3-contrib MaskablePPO (remediate, ops, hpa_tune)",
        ),
        Trainer(
            Algo.dqn, DQNConfig, TrainConfig, "agents.sb3.train:train_agent", "SB3 DQN (remediate)"
        ),
        Trainer(
            Algo.a2c, A2CConfig, TrainConfig, "agents.sb3.train:train_agent", "SB3 A2C (every env)"
        ),
        Trainer(
            Algo.dreamer,
            DreamerAgentConfig,
            DreamerTrainConfig,
            "agents.dreamer.train:train_dreamer",
            "Dreamer: world model + actor-critic in imagination",
        ),
    )
}
"""``agent.algo`` -> trainer; each has a ``configs/agent/<name>.yaml``."""


def register_configs() -> None:
    """Register the agent, env and logger group schemas in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from agents.run_config import WandbLoggerConfig

    cs = ConfigStore.instance()
    for t in TRAINERS.values():
        cs.store(group="schema/agent", name=t.algo.value, node=t.schema)
    cs.store(group="schema/env", name="env", node=EnvConfig)
    cs.store(group="schema/logger", name="logger", node=LOGGER_SCHEMAS[LoggerKind.csv])
    cs.store(group="schema/logger", name="wandb", node=WandbLoggerConfig)


def _drop_multiseed_defaults(data: Any) -> None:
    """Remove the multi-seed keys when they ask for nothing (one run), else refuse them."""
    from agents.multiseed import REQUEST_KEYS

    if not isinstance(data, dict):
        return
    seeds = data.pop("seeds", None)
    if seeds:
        raise RunConfigError(
            f"seeds={list(seeds)}: several seeds are trained by `opsworld train` "
            "(agents.multiseed.train_seeds), not by one run; drop seeds or use the command"
        )
    for key in REQUEST_KEYS[1:]:
        data.pop(key, None)


def to_run_config(cfg: RunConfig | Mapping[str, Any]) -> RunConfig:
    """Validate a run config: a composed Hydra config, a plain mapping or a saved ``config.yaml``.

    The agent's schema is picked by ``agent.algo`` (:data:`TRAINERS`) and the logger's by
    ``logger.kind`` (default ``csv``); then structure and types (OmegaConf), value ranges
    (:func:`~agents.run_config.check_values`) and combinations (:func:`validate`).

    Raises:
        RunConfigError: Unknown algorithm or logger, an unknown key, a value of the wrong type
            or out of range, or a combination that cannot work; the message names the field.
    """
    if isinstance(cfg, RunConfig):
        validate(cfg)
        return cfg
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        # a composed config is typed by the composition schema: merge it as plain data
        data = OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
        _drop_multiseed_defaults(data)
        node = OmegaConf.create(data)
        algo = OmegaConf.select(node, "agent.algo", default=None)
        kind = OmegaConf.select(node, "logger.kind", default=LoggerKind.csv.value)
        trainer = choice(TRAINERS, algo, "agent.algo", "agent=<name>")
        logger_cls = choice(LOGGER_SCHEMAS, kind, "logger.kind", "logger=<name>")
        base = OmegaConf.structured(
            trainer.run_schema(agent=trainer.schema(), env=EnvConfig(), logger=logger_cls())
        )
        obj = OmegaConf.to_object(OmegaConf.merge(base, node))
    except OmegaConfBaseException as err:
        raise RunConfigError(f"bad train config: {err}") from None
    assert isinstance(obj, RunConfig)
    validate(obj)
    return obj


def validate(conf: RunConfig) -> None:
    """Value ranges, then the run-level checks, then the agent's combination checks.

    Raises:
        RunConfigError: The first problem, naming the field(s) and the fix.
    """
    check_values(conf)
    check_run(conf)
    conf.agent.check(conf)


def train(cfg: RunConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``cfg`` and train with the trainer of ``agent.algo``.

    Returns:
        The figures written to ``metrics.json``.

    Raises:
        RunConfigError: Before anything runs, for a config that cannot work.
    """
    conf = to_run_config(cfg)
    return TRAINERS[Algo(conf.agent.algo)].load()(conf)
