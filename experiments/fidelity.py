"""``opsworld fidelity``: how far to trust the fast engine on a scenario.

``opsworld fidelity scenario=boutique policy=hpa seeds=3 workers=2 out=runs/fid`` runs the
scenario at both fidelities for ``seeds`` seeds each (the runs in parallel), compares the
fluid engine with the request level per metric (SLO-violation seconds, failed and dropped
requests, peak-window error rate, p99 per window, recovery time) against the tolerances of
issue 16, prints the table with a verdict per metric and overall, and writes
``fidelity.json``, ``fidelity.md`` and ``fidelity.png`` (error rate and p99 per window, both
engines) to ``out``. :mod:`agents.evaluation.fidelity` does the work; ``docs/fidelity.md``
says what each metric and verdict means.

This module is the command's schema (:class:`FidelityConfig`) and its Hydra entry point;
tests call :func:`fidelity` directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from rich.console import Console

from agents.evaluation.evaluate import PolicySpec, resolve_policy
from agents.evaluation.fidelity import FidelityReport, check_fidelity, print_report, write_report
from agents.registry import PolicyConfig, StaticPolicyConfig, validate_policy
from agents.registry import register_configs as register_policies
from agents.run_config import RunConfigError, prepare_out
from envs.scenarios.loader import ScenarioError, flatten, load_scenario
from experiments.cli import (
    CONFIG_DIR,
    ConfigError,
    fail,
    job_out,
    register_help_resolver,
    structured_config,
)


@dataclass
class FidelityConfig:
    """Schema of ``configs/fidelity.yaml``; a wrong key or type fails at composition.

    Attributes:
        scenario: Built-in scenario name (``chain3``, ``boutique``, ``mesh40``) or a YAML path.
        policy: The built-in policy (config group ``policy``, knobs from
            ``configs/policy/<name>.yaml``, e.g. ``policy=hpa policy.target_utilisation=0.6``).
        run_dir: An ``opsworld train`` run dir to run instead of ``policy`` (trusted only:
            SB3 zips hold pickles).
        seeds: Seeds per fidelity (``seed .. seed + seeds - 1``); 2 or more give a spread.
        workers: Worker processes for the runs (1: in this process).
        seed: First seed; None keeps the scenario's.
        horizon_s: Overrides the scenario's horizon (seconds) when given.
        window_s: Window of the peak error rate and the per-window p99 (seconds).
        out: Output folder; a multirun job writes to ``<out>/<job>``.
        overwrite: Clear a non-empty ``out`` first (a non-empty ``out`` is refused otherwise).
        scenario_overrides: Nested overrides applied to the scenario before validation.
    """

    scenario: str = "chain3"
    policy: PolicyConfig = MISSING
    run_dir: str | None = None
    seeds: int = 3
    workers: int = 2
    seed: int | None = None
    horizon_s: float | None = None
    window_s: float = 60.0
    out: str = "outputs/fidelity/${now:%Y-%m-%d}/${now:%H-%M-%S}-${opsworld_pid:}"
    overwrite: bool = False
    scenario_overrides: dict[str, Any] = field(default_factory=dict)


SCHEMA = FidelityConfig
"""The config schema (used by the ``opsworld`` dispatcher to check override keys)."""


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (idempotent; call before composing)."""
    register_help_resolver()
    ConfigStore.instance().store(name="fidelity_schema", node=FidelityConfig)
    register_policies()


def to_config(cfg: DictConfig | FidelityConfig | Mapping[str, Any]) -> FidelityConfig:
    """Validate a composed config (or a plain mapping); no ``policy`` means ``static``."""
    if isinstance(cfg, FidelityConfig):
        return cfg
    merged = OmegaConf.merge(OmegaConf.structured(FidelityConfig), cfg)
    if OmegaConf.is_missing(merged, "policy"):
        merged.policy = StaticPolicyConfig()
    return structured_config(FidelityConfig, merged, "fidelity")


def fidelity(
    cfg: DictConfig | FidelityConfig | Mapping[str, Any], console: Console | None = None
) -> FidelityReport:
    """Validate the config, run both fidelities, print the table and write the files.

    Returns:
        The report (also written to ``out``).

    Raises:
        ConfigError: Before anything runs, naming the field and the fix.
    """
    conf = to_config(cfg)
    if conf.seeds < 1:
        raise ConfigError(f"seeds={conf.seeds}: must be >= 1 (2 or more give a seed spread)")
    if conf.workers < 1:
        raise ConfigError(f"workers={conf.workers}: must be >= 1 (1 runs in this process)")
    if not conf.window_s > 0:
        raise ConfigError(f"window_s={conf.window_s}: must be > 0 seconds (e.g. 60)")
    try:
        if conf.run_dir is not None:
            spec = resolve_policy(conf.run_dir, key="run_dir")
        else:
            policy = validate_policy(conf.policy)
            spec = PolicySpec(policy.name, config=policy)
    except RunConfigError as err:
        raise ConfigError(str(err)) from None
    overrides = flatten(conf.scenario_overrides)
    if conf.seed is not None:
        overrides["seed"] = conf.seed
    if conf.horizon_s is not None:
        overrides["horizon_s"] = conf.horizon_s
    try:
        scenario = load_scenario(conf.scenario, overrides)
    except ScenarioError as err:
        raise ConfigError(f"scenario={conf.scenario}: {err}") from None
    report = check_fidelity(scenario, spec, conf.seeds, conf.workers, conf.window_s)
    out = Path(conf.out)
    paths = write_report(report, out)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(conf), resolve=True))
    console = console if console is not None else Console()
    print_report(report, console)
    console.print(f"wrote {', '.join(str(p) for p in paths)}")
    return report


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="fidelity")
def _hydra_main(cfg: DictConfig) -> None:
    job_out(cfg)
    try:
        try:
            prepare_out(str(cfg.out), overwrite=bool(cfg.get("overwrite", False)))
        except RunConfigError as err:
            raise ConfigError(str(err)) from None
        fidelity(cfg)
    except ConfigError as err:
        fail("fidelity", err)


def main() -> None:
    """Console entry: register the schema, then let Hydra parse ``sys.argv``."""
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
