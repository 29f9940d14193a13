"""``opsworld bench <suite>``: benchmarks with committed results.

``opsworld bench sim|incidents|world_model [quick=true] [repeats=N]`` runs one suite and writes
``<results_dir>/<suite>_bench[_quick].{json,md}`` (the command and the machine included); the
figures and how they are measured are described in :mod:`agents.bench.runner` and the suite
modules under ``agents/bench/``. This module is the command's schema
(:class:`agents.bench.config.BenchConfig`) and its Hydra entry point.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from agents.bench.config import BenchConfig
from agents.bench.runner import run_bench
from agents.bench.sim import bare_simpy_mmc, erlang_c_response, mmc_scenario
from experiments.cli import CONFIG_DIR, EXIT_USAGE, ConfigError, register_help_resolver

__all__ = [
    "SCHEMA",
    "BenchConfig",
    "ConfigError",
    "bare_simpy_mmc",
    "bench",
    "erlang_c_response",
    "main",
    "mmc_scenario",
    "register_configs",
    "to_config",
]


SCHEMA = BenchConfig
"""The config schema (used by the ``opsworld`` dispatcher to check override keys)."""


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (idempotent; call before composing)."""
    register_help_resolver()
    ConfigStore.instance().store(name="bench_schema", node=BenchConfig)


def to_config(cfg: DictConfig | BenchConfig | dict[str, Any]) -> BenchConfig:
    """Validate a composed config (or a plain mapping) against :class:`BenchConfig`."""
    if isinstance(cfg, BenchConfig):
        return cfg
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(BenchConfig), cfg))
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad bench config: {err}") from None
    assert isinstance(obj, BenchConfig)
    if obj.repeats < 1:
        raise ConfigError(f"repeats={obj.repeats}: must be >= 1")
    return obj


def bench(
    cfg: DictConfig | BenchConfig | dict[str, Any], log: Console | None = None
) -> dict[str, Any]:
    """Validate the config and run the suite (:func:`agents.bench.runner.run_bench`).

    Args:
        cfg: A config composed from ``configs/bench.yaml`` (or anything :func:`to_config`
            accepts).
        log: Where progress lines go (default: stderr, so stdout carries only the JSON).
    """
    return run_bench(to_config(cfg), log)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="bench")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        report = bench(cfg)
    except ConfigError as err:
        print(f"opsworld bench: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    print(json.dumps(report))


def main() -> None:
    """Console entry: register the schema, then let Hydra parse ``sys.argv``."""
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
