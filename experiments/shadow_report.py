"""``opsworld shadow-report audit=<file> out=<dir>``: report on a shadow run's audit.

Reads the JSON Lines audit of ``opsworld shadow`` (rotations included), computes the
counterfactual in the simulator when a topology matches (``scenario=``; by default the
built-in whose services equal the audit's), and writes ``report.html``, ``report.md`` and
``summary.json`` to ``out``. :mod:`agents.shadow.report` reads and renders;
:mod:`agents.evaluation.counterfactual` simulates; this entry point wires the two (the shadow
side never imports the simulator). Docs: docs/live.md, "Shadow report".
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from agents.bundle import BundleError, load_bundle, spec_from_manifest
from agents.evaluation.counterfactual import CounterfactualSkipped, counterfactual
from agents.guard import guard_policy
from agents.run_config import Fidelity
from agents.shadow.report import AuditError, read_audit, write_report
from envs.core.policy import Policy
from envs.scenarios.loader import ScenarioError
from experiments.cli import CONFIG_DIR, EXIT_USAGE, ConfigError, structured_config

NO_SCENARIO = "none"
"""``scenario=none`` skips the counterfactual."""


@dataclass
class ShadowReportConfig:
    """Schema of ``configs/shadow_report.yaml``.

    Attributes:
        audit: The audit file ``opsworld shadow`` wrote (its rotations ``.1``, ``.2``, ...
            beside it are read too).
        out: Output folder for ``report.html``, ``report.md``, ``summary.json``.
        scenario: Topology for the counterfactual: a built-in name or a scenario YAML; None
            infers the built-in whose services equal the audit's; ``none`` skips it.
        seed: Simulator seed of the counterfactual.
        fidelity: Simulator fidelity of the counterfactual.
        bundle: The shadowed bundle (optional): the counterfactual adds a closed-loop run of
            its policy behind its guard.
    """

    audit: str = MISSING
    out: str = "outputs/shadow_report"
    scenario: str | None = None
    seed: int = 0
    fidelity: Fidelity = Fidelity.fluid
    bundle: str | None = None


SCHEMA = ShadowReportConfig
"""The config schema (used by the ``opsworld`` dispatcher to check override keys)."""


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (idempotent; call before composing)."""
    ConfigStore.instance().store(name="shadow_report_schema", node=ShadowReportConfig)


def bundle_policy(folder: str) -> Policy:
    """The bundle's policy behind its own guard (as shadow mode runs it).

    Raises:
        ConfigError: The bundle fails verification (naming the file).
    """
    try:
        bundle = load_bundle(folder)
    except BundleError as err:
        raise ConfigError(f"bundle={folder}: {err}") from None
    return guard_policy(bundle.policy, spec_from_manifest(bundle.manifest), bundle.guard)


def shadow_report(cfg: DictConfig | ShadowReportConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Read the audit, simulate the counterfactual if possible, write the report.

    Returns:
        ``{"paths": {html, md, json}, "counterfactual": result or {"skipped": why},
        "records": n}``.

    Raises:
        ConfigError: No ``audit`` given, or an unreadable audit (the message names the file).
    """
    if isinstance(cfg, Mapping) and not isinstance(cfg, DictConfig) and "audit" not in cfg:
        raise ConfigError("audit=<the JSON Lines audit of 'opsworld shadow'> is required")
    if isinstance(cfg, DictConfig) and OmegaConf.is_missing(cfg, "audit"):
        raise ConfigError("audit=<the JSON Lines audit of 'opsworld shadow'> is required")
    conf = structured_config(ShadowReportConfig, cfg, "shadow-report")
    try:
        audit = read_audit(conf.audit)
    except AuditError as err:
        raise ConfigError(str(err)) from None
    out = Path(conf.out)
    cf: dict[str, Any]
    if conf.scenario is not None and conf.scenario.lower() == NO_SCENARIO:
        cf = {"skipped": "scenario=none was given"}
    else:
        try:
            cf = counterfactual(
                audit.records,
                conf.scenario,
                out / "counterfactual",
                seed=conf.seed,
                fidelity=str(conf.fidelity),
                policy=bundle_policy(conf.bundle) if conf.bundle else None,
            )
        except CounterfactualSkipped as why:
            cf = {"skipped": str(why)}
        except ScenarioError as err:
            raise ConfigError(f"scenario={conf.scenario}: {err}") from None
    paths = write_report(audit, out, cf)
    return {"paths": paths, "counterfactual": cf, "records": len(audit.records)}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="shadow_report")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        res = shadow_report(cfg)
    except ConfigError as err:
        print(f"opsworld shadow-report: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    cf = res["counterfactual"]
    print(f"{res['records']} audit records")
    if cf.get("skipped"):
        print(f"counterfactual skipped: {cf['skipped']}")
    else:
        for name, run in cf["runs"].items():
            print(
                f"counterfactual (simulated) {name:<11}: {run['slo_violation_min']:.1f} "
                f"SLO-violation min, cost {run['cost_total']:.3f}"
            )
    print(f"Report: {res['paths']['html']}  (+ report.md, summary.json)")


def main() -> None:
    """Console entry: register the schema, then let Hydra parse ``sys.argv``."""
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
