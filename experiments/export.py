"""``opsworld export``: write a verified policy bundle (:mod:`agents.bundle_export`).

``opsworld export run=<training run dir> out=<dir>`` exports a trained SB3 policy (PPO,
MaskablePPO, A2C, DQN); ``opsworld export policy=<hpa|tuned_hpa|runbook|tuned_runbook>
scenario=<name|path> out=<dir>`` exports a rule baseline as a configuration-only bundle.
``guard.<field>=...`` sets the guard configuration the bundle ships
(:class:`agents.guard.GuardConfig`). ``docs/serving.md`` describes the bundle.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from agents.bundle import BundleError
from agents.bundle_export import export_baseline, export_run
from agents.guard import guard_config
from experiments.cli import CONFIG_DIR, EXIT_USAGE, ConfigError, structured_config


@dataclass
class ExportConfig:
    """Schema of ``configs/export.yaml``.

    Attributes:
        run: An ``opsworld train`` run dir (trusted: its files are pickles).
        policy: A rule baseline instead of ``run``: the ``policy`` config group
            (``configs/policy/<name>.yaml``, as ``opsworld simulate`` takes it), or a name.
        scenario: The scenario a baseline bundle is for (built-in name or YAML path).
        out: The bundle folder (must be empty or absent unless ``force``).
        weights: ``final`` (``model.zip``) or ``best`` (``best/best_model.zip``).
        onnx: Also write ``policy.onnx`` (after the parity check).
        parity_steps: Decisions of the recorded rollout compared in the parity check.
        parity_samples: Random observations and masks compared in the parity check.
        seed: Seed of the parity check's inputs and rollout.
        force: Replace a non-empty ``out``.
        guard: Guard configuration shipped with the bundle (defaults: ``GuardConfig()``).
    """

    run: str | None = None
    policy: Any = None
    scenario: str = "chain3"
    out: str | None = None
    weights: str = "final"
    onnx: bool = True
    parity_steps: int = 50
    parity_samples: int = 512
    seed: int = 0
    force: bool = False
    guard: dict[str, Any] = field(default_factory=dict)


SCHEMA = ExportConfig
"""The config schema (used by the ``opsworld`` dispatcher to check override keys)."""


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent; call before composing).

    The ``policy`` group's files name the policy schemas of ``opsworld simulate``.
    """
    from experiments import simulate

    simulate.register_configs()
    ConfigStore.instance().store(name="export_schema", node=ExportConfig)


def export(cfg: DictConfig | ExportConfig | Mapping[str, Any]) -> Path:
    """Export as ``cfg`` says; returns the bundle folder.

    Raises:
        ConfigError: Neither or both of ``run`` and ``policy``, no ``out``, a bad guard
            config or weights choice, or a bundle error (parity, unsupported run).
    """
    conf = structured_config(ExportConfig, cfg, "export")
    if (conf.run is None) == (conf.policy is None):
        raise ConfigError("give exactly one of run=<training run dir> or policy=<baseline>")
    if not conf.out:
        raise ConfigError("out=<bundle folder> is required")
    if conf.weights not in ("final", "best"):
        raise ConfigError(f"weights={conf.weights!r}: final or best")
    try:
        guard = guard_config(dict(conf.guard))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    command = "opsworld export " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        if conf.run is not None:
            files = (
                ("model.zip", "vecnormalize.pkl")
                if conf.weights == "final"
                else ("best/best_model.zip", "best/vecnormalize.pkl")
            )
            return export_run(
                conf.run,
                conf.out,
                model=files[0],
                vecnormalize=files[1],
                guard=guard,
                onnx=conf.onnx,
                parity_samples=conf.parity_samples,
                parity_steps=conf.parity_steps,
                seed=conf.seed,
                command=command,
                force=conf.force,
            )
        from envs.scenarios.loader import load_scenario

        policy = conf.policy
        name = str(policy.get("name") if isinstance(policy, Mapping) else policy)
        target = policy.get("target_cpu_utilization") if isinstance(policy, Mapping) else None
        return export_baseline(
            name,
            load_scenario(conf.scenario),
            conf.out,
            guard=guard,
            target_cpu_utilization=target,
            command=command,
            force=conf.force,
        )
    except (BundleError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        path = export(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    except ConfigError as err:
        print(f"opsworld export: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    print(f"bundle written: {path}")


def main() -> None:
    """Console entry: register the schema, then let Hydra parse ``sys.argv``."""
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
