"""``opsworld tune``: a hyperparameter study on Ray Tune (Optuna's sampler + ASHA).

``opsworld tune tune=hpa`` (the tuned HPA's knobs), ``tune=ppo`` (PPO hyperparameters) or
``tune=dreamer`` (Dreamer's reward weights and sizes) runs the study of
``configs/tune/<name>.yaml`` (:class:`agents.tune.config.TuneSpec`) and writes to ``out``
the results table and plot, the best configuration as a Hydra file and the command that
copies it into ``configs/`` (:mod:`agents.tune.study`). ``resume=true`` continues an
interrupted study in the same ``out``. Trials are scored on train-suite runs only.

This module is the command's schema (:class:`TuneConfig`) and its Hydra entry point; for
``kind: train`` studies it composes the ``opsworld train`` config the trials start from.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from agents.run_config import LoggerKind, RunConfigError
from agents.tune.config import TrialKind, TuneSpec
from experiments.cli import (
    CONFIG_DIR,
    EXIT_USAGE,
    ConfigError,
    register_help_resolver,
    structured_config,
)


@dataclass
class TuneConfig:
    """Schema of ``configs/tune.yaml``; a wrong key or type fails at composition.

    Attributes:
        tune: The study (group ``tune``: ``hpa``, ``ppo``, ``dreamer``).
        workers: CPUs of a local Ray, one trial each (a cluster from ``RAY_ADDRESS`` brings
            its own).
        logger: The ``logger`` group, as ``opsworld train`` has it: where trials log
            besides Tune's own files (``none``, ``csv``, ``tensorboard`` or ``wandb``), also
            the trials' ``opsworld train`` logger.
        seed: Seed of Optuna's sampler.
        resume: Continue the study already in ``out`` (after an interrupt).
        out: Output folder.
    """

    tune: TuneSpec = field(default_factory=TuneSpec)
    workers: int = 2
    logger: Any = field(default_factory=lambda: {"kind": LoggerKind.csv.value})
    seed: int = 0
    resume: bool = False
    out: str = "outputs/tune/${tune.name}"


SCHEMA = TuneConfig
"""The config schema (used by the ``opsworld`` dispatcher to check override keys)."""


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent; call before composing)."""
    register_help_resolver()
    from agents.trainers import register_configs as register_groups

    register_groups()  # the logger group's schemas
    cs = ConfigStore.instance()
    cs.store(name="tune_schema", node=TuneConfig)
    cs.store(group="schema/tune", name="tune", node=TuneSpec)


def to_config(cfg: DictConfig | TuneConfig | Mapping[str, Any]) -> TuneConfig:
    """Validate a composed config (or a plain mapping) against :class:`TuneConfig`."""
    conf = structured_config(TuneConfig, cfg, "tune")
    if conf.workers < 1:
        raise ConfigError(f"workers={conf.workers}: must be >= 1")
    try:
        conf.tune.check()
    except RunConfigError as err:
        raise ConfigError(str(err)) from None
    return conf


def logger_kind(logger: Any) -> LoggerKind:
    """The ``kind`` of a ``logger`` group node (a dataclass or a mapping).

    Raises:
        ConfigError: An unknown kind, naming ``logger`` and the options.
    """
    kind = logger.get("kind") if isinstance(logger, Mapping) else getattr(logger, "kind", None)
    try:
        return LoggerKind(str(kind))
    except ValueError:
        raise ConfigError(
            f"logger.kind={kind!r}: use logger=<{'|'.join(k.value for k in LoggerKind)}>"
        ) from None


def compose_train(overrides: Sequence[str]) -> dict[str, Any]:
    """The ``opsworld train`` config for ``overrides``, resolved to plain data and validated.

    Raises:
        ConfigError: The overrides do not compose or the run config cannot work.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from agents.multiseed import split_request
    from agents.trainers import to_run_config
    from experiments.train import register_configs as register_train

    register_train()
    try:
        if GlobalHydra.instance().is_initialized():
            cfg = compose(config_name="train", overrides=list(overrides))
        else:
            with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
                cfg = compose(config_name="train", overrides=list(overrides))
        data = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"tune.train {list(overrides)}: {err}") from None
    plain, multi = split_request(data)
    if multi is not None:
        raise ConfigError("tune.train: seeds=[...] is for 'opsworld train'; a trial is one run")
    try:
        to_run_config(plain)
    except RunConfigError as err:
        raise ConfigError(f"tune.train {list(overrides)}: {err}") from None
    assert isinstance(plain, dict)
    return plain


def tune(
    cfg: DictConfig | TuneConfig | Mapping[str, Any], log: Callable[[str], None] | None = print
) -> dict[str, Any]:
    """Validate the config and run the study (:func:`agents.tune.study.run_study`).

    Returns:
        ``{"out", "best", "trials", "files", "interrupted"}``.

    Raises:
        ConfigError: Before anything runs, naming the field.
    """
    from agents.tune.study import run_study

    conf = to_config(cfg)
    logger = logger_kind(conf.logger)
    base = None
    if conf.tune.kind is TrialKind.train:
        base = compose_train([*conf.tune.train, f"logger={logger}"])
    try:
        return run_study(
            conf.tune,
            conf.out,
            base_train=base,
            workers=conf.workers,
            logger=logger,
            seed=conf.seed,
            resume=conf.resume,
            log=log,
        )
    except RunConfigError as err:
        raise ConfigError(str(err)) from None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="tune")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        result = tune(cfg)
    except ConfigError as err:
        print(f"opsworld tune: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    if result["files"]:
        print(f"wrote {len(result['files'])} files to {result['out']}")
        copy = [f for f in result["files"] if f.endswith("COPY.txt")]
        if copy:
            with open(copy[0], encoding="utf-8") as fh:
                print(f"best config: {fh.read().strip()}")


def main() -> None:
    """Console entry: register the schemas, then let Hydra parse ``sys.argv``."""
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
