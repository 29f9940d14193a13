"""Run a study on Ray Tune (Optuna's sampler + ASHA) and write its results and best config.

:func:`run_study` is ``opsworld tune``'s work:

1. the selection runs (:class:`~agents.tune.config.SelectConfig`: train-suite entries x
   replicates) and the default HPA's score on each (the cost reference of the objective),
   fanned out through :func:`agents.parallel.parallel_map` on Ray;
2. a ``ray.tune.Tuner`` over :func:`agents.tune.trials.run_trial` with ``OptunaSearch``
   (TPE, seeded with ``seed``) and ``ASHAScheduler`` (time unit: the trial's ``rung``), one
   CPU per trial; Tune's experiment folder is ``<out>/study``. With ``resume=True`` and a
   study there, ``Tuner.restore`` continues it (unfinished and errored trials resume from
   their last checkpoint; finished ones are kept) instead of starting anew;
3. ``<out>/results.{csv,md}`` (one row per trial, best first), ``<out>/results.png`` (the
   objective per rung for every trial), ``<out>/best.json`` and the best configuration as a
   Hydra file under ``out`` with the command that copies it into ``configs/``:
   ``kind: hpa`` -> ``<out>/tuned_hpa.yaml`` (for ``configs/policy/tuned_hpa.yaml``);
   ``kind: train`` -> ``<out>/tuned_<name>.yaml``, an ``experiment`` overlay (for
   ``configs/experiment/tuned_<name>.yaml``). Nothing under ``configs/`` is written by a
   study: the copy is a reviewed step.

The best trial is the lowest ``objective`` among the trials that reached the last rung (ASHA
stops the others early on fewer or cheaper runs, so their figures are not comparable).

Trials log to the chosen logger: Tune's own ``result.json``/``progress.csv`` per trial
always, plus ``tensorboard`` (Tune's TensorBoardX callback) or ``wandb`` (W&B callback,
offline unless ``WANDB_MODE`` says otherwise); a ``kind: train`` trial's training run also
uses that logger (``logger=<kind>`` of ``opsworld train``).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.parallel import Backend, ensure_ray, parallel_map
from agents.run_config import LoggerKind, RunConfigError
from agents.tune.config import TrialKind, TuneSpec, param_space
from agents.tune.trials import SelectTask, StudyContext, reference_task, run_trial

EXPERIMENT = "study"
"""Tune's experiment folder name under ``out``."""

REPORT_KEYS: tuple[str, ...] = (
    "objective",
    "slo_violation_min",
    "cost_rel",
    "allocated_cost",
    "runs",
    "rung",
    "eval_mean_reward",
)
"""The reported figures copied into the results table (those a trial reports)."""


def selection(spec: TuneSpec) -> tuple[dict[str, Any], tuple[SelectTask, ...]]:
    """The selection runs' scenarios (entry id -> scenario) and tasks.

    Raises:
        RunConfigError: The suite cannot be loaded, has no entries on ``topology``, is the
            holdout suite, or gives fewer runs than a ``kind: hpa`` study has rungs.
    """
    from envs.scenarios.suites import SuiteError, load_suite

    sel = spec.select
    try:
        suite = load_suite(sel.suite)
        if suite.name == "holdout":
            raise RunConfigError(
                f"tune.select.suite={sel.suite} is the holdout suite: a study selects on the "
                "train suite (train:validation), the holdout suite is for the final evaluation only"
            )
        if sel.topology is not None:
            suite = suite.on_topology(sel.topology)
        if sel.limit is not None:
            suite = suite.subset(first=sel.limit)
    except (SuiteError, OSError) as err:
        raise RunConfigError(f"tune.select: {err}") from None
    tasks = tuple(SelectTask(e.id, k, e.run_seed(k)) for e in suite.entries for k in sel.replicates)
    if spec.kind is TrialKind.hpa and len(tasks) < spec.rungs:
        raise RunConfigError(
            f"tune.select gives {len(tasks)} runs, fewer than tune.rungs={spec.rungs}: "
            "raise select.limit or lower rungs"
        )
    return {e.id: e.scenario for e in suite.entries}, tasks


def logger_callbacks(logger: LoggerKind | str, name: str) -> list[Any]:
    """Tune callbacks for ``logger`` (Tune's JSON and CSV files are always written)."""
    kind = LoggerKind(logger)
    if kind is LoggerKind.tensorboard:
        from ray.tune.logger import TBXLoggerCallback

        return [TBXLoggerCallback()]
    if kind is LoggerKind.wandb:
        from ray.air.integrations.wandb import WandbLoggerCallback

        return [
            WandbLoggerCallback(
                project="opsworld", group=name, mode=os.environ.get("WANDB_MODE", "offline")
            )
        ]
    return []


def run_study(
    spec: TuneSpec,
    out: str | Path,
    *,
    base_train: dict[str, Any] | None = None,
    workers: int = 2,
    logger: LoggerKind | str = LoggerKind.csv,
    seed: int = 0,
    resume: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Run (or resume) the study and write its outputs (module docstring).

    Args:
        spec: The study (checked here).
        out: Output folder (Tune's experiment goes to ``<out>/study``).
        base_train: ``kind: train``: the composed ``opsworld train`` config (plain data).
        workers: CPUs of a local Ray (a cluster from ``RAY_ADDRESS`` brings its own).
        logger: ``none``, ``csv``, ``tensorboard`` or ``wandb``.
        seed: Seed of Optuna's sampler.
        resume: Continue the study in ``<out>/study`` if there is one.
        log: Where progress lines go.

    Returns:
        ``{"out", "best": {...}, "trials": [...], "files": [...], "interrupted": bool}``.

    Raises:
        RunConfigError: A bad study (naming the field) before anything runs.
    """
    spec.check()
    if spec.kind is TrialKind.train and base_train is None:
        raise RunConfigError("tune.kind=train needs the composed 'opsworld train' config")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scenarios, tasks = selection(spec)
    say = log if log is not None else (lambda _: None)
    ensure_ray(workers)
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    say(f"tune {spec.name}: default HPA on {len(tasks)} selection runs (cost reference)")
    reference = parallel_map(
        reference_task,
        list(tasks),
        workers,
        backend=Backend.ray,
        shared=(scenarios, spec.select.fidelity),
    )
    ctx = StudyContext(spec, base_train, str(out / "runs"), scenarios, tasks, tuple(reference))
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), {"cpu": 1})
    path = out / EXPERIMENT
    if resume and tune.Tuner.can_restore(str(path)):
        say(f"tune {spec.name}: resuming the study in {path}")
        tuner = tune.Tuner.restore(
            str(path), trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        if path.exists() and any(path.iterdir()):
            raise RunConfigError(
                f"out={out}: holds a study already; resume=true continues it, or choose another out"
            )
        searcher = OptunaSearch(
            metric="objective",
            mode="min",
            seed=seed,
            points_to_evaluate=[dict(p) for p in spec.points_to_evaluate] or None,
        )
        scheduler = ASHAScheduler(
            time_attr="rung",
            metric="objective",
            mode="min",
            max_t=spec.rungs,
            grace_period=spec.asha.grace_period,
            reduction_factor=spec.asha.reduction_factor,
        )
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=spec.num_samples,
                max_concurrent_trials=spec.max_concurrent,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=str(out),
                callbacks=logger_callbacks(logger, spec.name),
                verbose=0,
            ),
        )
    say(f"tune {spec.name}: {spec.num_samples} trials x {spec.rungs} rungs ({path})")
    grid = tuner.fit()
    trials = trial_rows(grid, spec)
    interrupted = len(trials) < spec.num_samples or any(
        t["status"] not in ("TERMINATED",) for t in trials
    )
    files = write_results(out, spec, trials)
    finished = [t for t in trials if t.get("rung") == spec.rungs and _finite(t.get("objective"))]
    best = min(finished, key=lambda t: t["objective"]) if finished else None
    if best is not None:
        files += write_best(out, spec, best, base_train)
    if interrupted:
        say(
            f"tune {spec.name}: study not finished ({len(trials)} of {spec.num_samples} "
            f"trials, some not terminated): rerun with resume=true out={out}"
        )
    elif best is not None:
        say(f"tune {spec.name}: best {best['params']} objective {best['objective']:.4g}")
    return {
        "out": str(out),
        "best": best,
        "trials": trials,
        "files": [str(f) for f in files],
        "interrupted": interrupted,
    }


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(float(x))


def trial_rows(grid: Any, spec: TuneSpec) -> list[dict[str, Any]]:
    """One row per trial: id, status, parameters, last reported figures, objective per rung."""
    from ray.tune.experiment import Trial

    keys = [p.key for p in spec.space]
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        history: list[float] = []
        try:
            frame = result.metrics_dataframe
            if frame is not None and "objective" in frame:
                history = [float(v) for v in frame["objective"].tolist()]
        except (AttributeError, KeyError):
            history = []
        config = result.config or {}
        status = Trial.TERMINATED if result.error is None else Trial.ERROR
        if not metrics or metrics.get("rung") is None:
            status = Trial.PENDING if result.error is None else Trial.ERROR
        rows.append(
            {
                "trial": metrics.get("trial_id") or Path(str(result.path)).name,
                "status": status,
                "params": {k: _plain(config.get(k)) for k in keys},
                **{k: _plain(metrics.get(k)) for k in REPORT_KEYS if k in metrics},
                "history": history,
            }
        )
    rows.sort(
        key=lambda r: (
            -(r.get("rung") or 0),
            r.get("objective") if _finite(r.get("objective")) else math.inf,
        )
    )
    return rows


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and not isinstance(v, list | dict | str):
        return v.item()
    return v


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_results(out: Path, spec: TuneSpec, trials: list[dict[str, Any]]) -> list[Path]:
    """``results.csv``, ``results.md`` and ``results.png``: every trial, best first."""
    keys = [p.key for p in spec.space]
    figures = [k for k in REPORT_KEYS if any(k in t for t in trials)]
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["trial", "status", *keys, *figures])
        for t in trials:
            writer.writerow(
                [t["trial"], t["status"], *(t["params"][k] for k in keys)]
                + [t.get(k) for k in figures]
            )
    sel = spec.select
    lines = [
        f"# Study `{spec.name}` ({spec.kind} trials)",
        "",
        f"{len(trials)} trials of {spec.num_samples}, {spec.rungs} rungs each (ASHA "
        f"grace period {spec.asha.grace_period}, reduction factor "
        f"{spec.asha.reduction_factor:g}); Optuna TPE sampler. Selection runs: suite "
        f"`{sel.suite}`"
        + (f", topology `{sel.topology}`" if sel.topology else "")
        + (f", first {sel.limit} entries" if sel.limit else "")
        + f", replicates {sel.replicates}, {sel.fidelity} fidelity. Objective (minimised): "
        f"mean SLO-violation minutes + {sel.penalty:g} x max(0, cost_rel - {sel.cost_cap:g}), "
        "cost_rel = mean allocated cost / the default HPA's on the same runs. Best first "
        "(trials that reached the last rung, then those ASHA stopped).",
        "",
        "| trial | status | " + " | ".join(f"`{k}`" for k in keys + figures) + " |",
        "|---|---|" + "---:|" * (len(keys) + len(figures)),
    ]
    for t in trials:
        cells = [_fmt(t["params"][k]) for k in keys] + [_fmt(t.get(k)) for k in figures]
        lines.append(f"| {t['trial']} | {t['status']} | " + " | ".join(cells) + " |")
    lines += ["", "![objective per rung](results.png)", ""]
    (out / "results.md").write_text("\n".join(lines), encoding="utf-8")
    return [out / "results.csv", out / "results.md", plot_results(out / "results.png", trials)]


def plot_results(path: Path, trials: list[dict[str, Any]]) -> Path:
    """The objective after each rung, one line per trial."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for t in trials:
        ys = [y if math.isfinite(y) else math.nan for y in t["history"]]
        if ys:
            ax.plot(range(1, len(ys) + 1), ys, marker="o", label=str(t["trial"]))
    ax.set_xlabel("rung")
    ax.set_ylabel("objective (lower is better)")
    ax.set_title("study: objective per rung (ASHA stops the worst early)")
    ax.grid(True, alpha=0.3)
    if len(trials) <= 12 and any(t["history"] for t in trials):
        ax.legend(fontsize=7, loc="best")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


GROUPS = ("agent", "env", "logger", "debug")
"""``opsworld train`` config groups: an overlay selects them in its defaults list."""


def overlay_yaml(spec: TuneSpec, params: dict[str, Any], objective: float, copy_to: str) -> str:
    """A ``# @package _global_`` experiment overlay: the study's train overrides + the best."""
    import yaml

    groups = []
    values: dict[str, Any] = {}
    for o in spec.train:
        key, _, value = o.lstrip("+").partition("=")
        if key in GROUPS:
            groups.append(f"  - override /{key}: {value}")
        elif key and key != "experiment":
            _set(values, key, yaml.safe_load(value))
    for key, value in params.items():
        _set(values, key, value)
    values["experiment"] = f"tuned_{spec.name}"
    head = [
        "# @package _global_",
        f"# Best trial of `opsworld tune tune={spec.name}` (objective {objective:.4g} on the",
        "# train suite's selection runs; results.md next to this file). Use it with:",
        f"#   cp {copy_to}",
        f"#   opsworld train experiment=tuned_{spec.name}",
    ]
    if groups:
        head += ["defaults:", *groups]
    return "\n".join(head) + "\n\n" + yaml.safe_dump(values, sort_keys=False)


def _set(conf: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = conf
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def write_best(
    out: Path, spec: TuneSpec, best: dict[str, Any], base_train: dict[str, Any] | None
) -> list[Path]:
    """``best.json`` and the best config as a Hydra file (module docstring)."""
    (out / "best.json").write_text(json.dumps(best, indent=2, default=str), encoding="utf-8")
    files = [out / "best.json"]
    if spec.kind is TrialKind.hpa:
        from agents.baselines.tuned import TUNE_SOURCE, write_config
        from agents.tune.trials import hpa_settings

        s = hpa_settings(best["params"])
        row = {
            "target_cpu_utilization": s.target_cpu_utilization,
            "scale_down_stabilization_s": s.scale_down_stabilization_s,
        }
        lines = (out / "results.md").read_text(encoding="utf-8").splitlines()
        table = "\n".join(line for line in lines if line.startswith("|"))
        path = write_config(row, out / "tuned_hpa.yaml", table, source=TUNE_SOURCE)
        copy = f"cp {path} configs/policy/tuned_hpa.yaml"
    else:
        path = out / f"tuned_{spec.name}.yaml"
        copy = f"{path} configs/experiment/tuned_{spec.name}.yaml"
        path.write_text(
            overlay_yaml(spec, best["params"], float(best["objective"]), copy), encoding="utf-8"
        )
        copy = f"cp {copy}"
    (out / "COPY.txt").write_text(copy + "\n", encoding="utf-8")
    return [*files, path, out / "COPY.txt"]
