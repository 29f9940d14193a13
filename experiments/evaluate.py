"""``opsworld evaluate``: score one or more policies on a scenario suite, in parallel.

``opsworld evaluate policy=hpa suite=holdout seeds=3 out=runs/eval`` runs the policy on every
entry of the suite x ``seeds`` replicates and writes per-policy results, a side-by-side
summary, a Pareto plot and timelines to ``out`` (see :mod:`agents.evaluation.evaluate`, which
does the work; ``docs/evaluation.md``). ``policy`` is a built-in name (the policy registry,
:data:`agents.registry.POLICIES`; knobs from ``configs/policy/<name>.yaml``) or an
``opsworld train`` run dir (trusted dirs only: SB3 zips hold pickles); ``policies=[a,b]``
evaluates several.

This module is the command's schema (:class:`EvaluateConfig`) and its Hydra entry point.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from agents.evaluation.evaluate import (
    PolicySpec,
    build_policy,
    load_policy_config,
    plot_pareto,
    resolve_policy,
    run_policy,
    summary_markdown,
    write_timelines,
)
from agents.evaluation.evaluate import evaluate as evaluate_policies
from agents.evaluation.fidelity import spot_check_evaluation
from agents.run_config import Fidelity
from experiments.cli import (
    CONFIG_DIR,
    EXIT_USAGE,
    ConfigError,
    register_help_resolver,
    structured_config,
)

__all__ = [
    "SCHEMA",
    "EvaluateConfig",
    "PolicySpec",
    "build_policy",
    "evaluate",
    "load_policy_config",
    "main",
    "plot_pareto",
    "resolve_policy",
    "run_policy",
    "summary_markdown",
    "write_timelines",
]


@dataclass
class EvaluateConfig:
    """Schema of ``configs/evaluate.yaml``; a wrong key or type fails at composition.

    Attributes:
        policy: A built-in policy name or an ``opsworld train`` run dir (trusted only).
        policies: Several of those; when non-empty it replaces ``policy``.
        suite: ``train``, ``holdout`` or a suite YAML path.
        seeds: Replicates per entry (replicate indices ``0 .. seeds-1``).
        workers: Worker processes (1: in this process).
        fidelity: Simulator fidelity.
        topology: Evaluate only the entries on this topology (e.g. ``chain3``; None: all). A
            trained policy fits one topology: its observation size depends on it.
        limit: Evaluate only the first ``limit`` entries (None: all).
        timelines: Timeline PNGs per policy (replicate 0 of the first entries).
        weights: Which weights of a trained run dir: ``final`` (``model.zip`` +
            ``vecnormalize.pkl``; Dreamer ``agent.pt``) or ``best`` (the best evaluation
            during training: ``best/best_model.zip`` + ``best/vecnormalize.pkl``; Dreamer
            ``best/agent.pt``). Built-in policies ignore it.
        deterministic: How a trained policy picks its action: True the mode, False a seeded
            sample, None each kind's default (SB3: the mode; Dreamer: the run's
            ``eval.deterministic``). Built-in policies ignore it.
        out: Output folder.
        spot_check: Re-run this many entries (spread over the suite) at both fidelities
            after the evaluation and print their agreement (``docs/fidelity.md``); 0: off.
    """

    policy: str = "static"
    policies: list[str] = field(default_factory=list)
    suite: str = "holdout"
    seeds: int = 1
    workers: int = 2
    fidelity: Fidelity = Fidelity.fluid
    topology: str | None = None
    limit: int | None = None
    timelines: int = 3
    weights: str = "final"
    deterministic: bool | None = None
    out: str = "outputs/evaluate/${now:%Y-%m-%d}/${now:%H-%M-%S}"
    spot_check: int = 0


SCHEMA = EvaluateConfig
"""The config schema (used by the ``opsworld`` dispatcher to check override keys)."""


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (idempotent; call before composing)."""
    register_help_resolver()
    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


def to_config(cfg: DictConfig | EvaluateConfig | Mapping[str, Any]) -> EvaluateConfig:
    """Validate a composed config (or a plain mapping) against :class:`EvaluateConfig`."""
    return structured_config(EvaluateConfig, cfg, "evaluate")


def evaluate(
    cfg: DictConfig | EvaluateConfig | Mapping[str, Any],
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Validate the config and evaluate (:func:`agents.evaluation.evaluate.evaluate`).

    Returns:
        ``{"out": ..., "results": {label: SuiteResult.to_dict()}, "files": [...]}``.

    Raises:
        ConfigError: Before anything runs, naming the field.
    """
    conf = to_config(cfg)
    if conf.spot_check < 0:
        raise ConfigError(f"spot_check={conf.spot_check}: must be >= 0 (0: no spot check)")
    resolved = OmegaConf.to_yaml(OmegaConf.structured(conf), resolve=True)
    result = evaluate_policies(conf, resolved, log)
    if conf.spot_check:
        reports = spot_check_evaluation(conf)
        result["spot_check"] = {f"{r.policy}/{r.scenario}": r.verdict for r in reports}
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except ConfigError as err:
        print(f"opsworld evaluate: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def rewrite_policy_arg(args: Sequence[str]) -> list[str]:
    """``policy=X`` -> ``policies=['X']``.

    ``configs/policy/`` is a Hydra config group, so Hydra would read ``policy=X`` as a group
    choice (and fail: this config has no ``policy`` group in its defaults list).
    """
    out = []
    for a in args:
        if a.startswith("policy="):
            value = a.split("=", 1)[1].replace("\\", "\\\\").replace("'", "\\'")
            a = f"policies=['{value}']"
        out.append(a)
    return out


def main() -> None:
    """Console entry: register the schemas, then let Hydra parse ``sys.argv``."""
    register_configs()
    sys.argv = [sys.argv[0], *rewrite_policy_arg(sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()
