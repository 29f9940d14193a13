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

from agents.parallel import Backend
from agents.run_config import Fidelity, RunConfigError, prepare_out
from experiments.cli import (
    CONFIG_DIR,
    ConfigError,
    fail,
    job_out,
    register_help_resolver,
    structured_config,
)
from experiments.progress import Progress

__all__ = ["SCHEMA", "EvaluateConfig", "evaluate", "main"]

LIBRARY = (
    "PolicySpec",
    "build_policy",
    "load_policy_config",
    "plot_pareto",
    "resolve_policy",
    "run_policy",
    "summary_markdown",
    "write_timelines",
)
"""Names of :mod:`agents.evaluation.evaluate` this module also offers, imported on first use
(``--help`` must not import the simulator)."""


def __getattr__(name: str) -> Any:
    if name in LIBRARY:
        from agents.evaluation import evaluate as library

        return getattr(library, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class EvaluateConfig:
    """Schema of ``configs/evaluate.yaml``; a wrong key or type fails at composition.

    Attributes:
        policy: A built-in policy name or an ``opsworld train`` run dir (trusted only).
        policies: Several of those; when non-empty it replaces ``policy``.
        suite: ``train``, ``holdout`` or a suite YAML path.
        seeds: Replicates per entry (replicate indices ``0 .. seeds-1``).
        workers: Worker processes, or Ray tasks in flight (1: in this process).
        backend: ``local`` (a process pool) or ``ray`` (Ray tasks; a local Ray, or the
            cluster of ``RAY_ADDRESS``; ``docs/scaling.md``).
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
        guard: Put every policy behind the safety guard (default limits; labels get
            ``-guard``): ``guard_policy(policy, control_spec(scenario))``.
        out: Output folder; a multirun job writes to ``<out>/<job>``.
        overwrite: Clear a non-empty ``out`` first (a non-empty ``out`` is refused otherwise).
        spot_check: Re-run this many entries (spread over the suite) at both fidelities
            after the evaluation and print their agreement (``docs/fidelity.md``); 0: off.
    """

    policy: str = "static"
    policies: list[str] = field(default_factory=list)
    suite: str = "holdout"
    seeds: int = 1
    workers: int = 2
    backend: Backend = Backend.local
    fidelity: Fidelity = Fidelity.fluid
    topology: str | None = None
    limit: int | None = None
    timelines: int = 3
    weights: str = "final"
    deterministic: bool | None = None
    guard: bool = False
    out: str = "outputs/evaluate/${now:%Y-%m-%d}/${now:%H-%M-%S}-${opsworld_pid:}"
    overwrite: bool = False
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

    One progress bar over every run of every policy (plain periodic lines when stdout is not
    a terminal, or when ``log`` is not ``print``: then the lines go to ``log``'s stream,
    stdout).

    Returns:
        ``{"out": ..., "results": {label: SuiteResult.to_dict()}, "files": [...],
        "complete": True}``.

    Raises:
        ConfigError: Before anything runs, naming the field.
        RunInterrupted: After Ctrl-C, once the finished policies are written.
    """
    from agents.evaluation.evaluate import evaluate as evaluate_policies

    conf = to_config(cfg)
    if conf.spot_check < 0:
        raise ConfigError(f"spot_check={conf.spot_check}: must be >= 0 (0: no spot check)")
    try:
        prepare_out(conf.out, overwrite=conf.overwrite)
    except RunConfigError as err:
        raise ConfigError(str(err)) from None
    resolved = OmegaConf.to_yaml(OmegaConf.structured(conf), resolve=True)
    bar = Progress("evaluate", 1, "runs", bar=None if log is print else False)

    def progress(done: int, total: int) -> None:
        bar.total = float(total)
        bar.update(done)

    try:
        result = evaluate_policies(conf, resolved, log, progress if log is not None else None)
    finally:
        bar.close()
    if conf.spot_check:
        from agents.evaluation.fidelity import spot_check_evaluation

        reports = spot_check_evaluation(conf)
        result["spot_check"] = {f"{r.policy}/{r.scenario}": r.verdict for r in reports}
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def _hydra_main(cfg: DictConfig) -> None:
    job_out(cfg)
    try:
        evaluate(cfg)
    except ConfigError as err:
        fail("evaluate", err)


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
