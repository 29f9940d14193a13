"""What one trial of a study runs, and how it reports to Ray Tune.

A trial gets its sampled parameters (``config``: dotted key -> value) and the study's
:class:`StudyContext` (shared by every trial through ``tune.with_parameters``, which puts it
in Ray's object store once). It reports ``rungs`` times; after each report ASHA may stop it.

* ``kind: hpa`` (:func:`hpa_rung`): the HPA with the sampled knobs runs the next chunk of
  the selection runs; each report covers every run so far.
* ``kind: train`` (:func:`train_rung`): ``opsworld train`` with the sampled values, for
  ``rung / rungs`` of ``total_timesteps`` (resuming the previous rung's run dir, so a trial
  trains ``total_timesteps`` in all), then the trained policy runs every selection run.

Every report has ``objective`` (:func:`agents.tune.config.objective`, minimised),
``slo_violation_min``, ``allocated_cost``, ``cost_rel`` (vs the default HPA on the same
runs), ``runs`` and ``rung``, plus, for ``kind: train``, the run's ``eval_mean_reward`` and
``timesteps``. Each report carries a checkpoint (the rung, the run dir, the scores so far),
so a study restored after an interrupt continues a trial at its next rung.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.evaluation.suite import run_one
from agents.tune.config import TrialKind, TuneSpec, objective
from envs.kube.tuned import TunedHPASettings
from envs.scenarios.schema import Scenario

STATE_FILE = "trial_state.json"
"""The checkpoint's one file."""


@dataclass(frozen=True)
class SelectTask:
    """One selection run: suite entry, replicate and simulator seed."""

    entry: str
    replicate: int
    seed: int


@dataclass(frozen=True)
class StudyContext:
    """What every trial of a study needs (sent to the trials once).

    Attributes:
        spec: The study.
        base_train: ``kind: train``: the composed ``opsworld train`` config (plain data).
        runs_dir: Absolute folder of the trials' run dirs (``<runs_dir>/<trial>/rung_<r>``).
        scenarios: Entry id -> scenario of the selection runs.
        tasks: The selection runs, in order.
        reference: The default HPA's (SLO-violation minutes, allocated cost) per task.
    """

    spec: TuneSpec
    base_train: dict[str, Any] | None
    runs_dir: str
    scenarios: dict[str, Scenario]
    tasks: tuple[SelectTask, ...]
    reference: tuple[tuple[float, float], ...]

    def chunks(self) -> list[range]:
        """``kind: hpa``: the task indices of each rung (``rungs`` near-equal chunks)."""
        n, k = len(self.tasks), self.spec.rungs
        bounds = [round(i * n / k) for i in range(k + 1)]
        return [range(bounds[i], bounds[i + 1]) for i in range(k)]


# --------------------------------------------------------------------------------------------
# scoring one selection run


def hpa_settings(config: dict[str, Any]) -> TunedHPASettings:
    """The HPA knobs of a trial's config (the defaults for knobs not searched)."""
    base = TunedHPASettings()
    target = config.get("target_cpu_utilization", base.target_cpu_utilization)
    window = config.get("scale_down_stabilization_s", base.scale_down_stabilization_s)
    return TunedHPASettings(round(float(target)), round(float(window)))


def _make_hpa(settings: TunedHPASettings, scenario: Scenario) -> Any:
    from agents.baselines.tuned import make_hpa

    return make_hpa(settings, scenario)


def score_hpa(
    settings: TunedHPASettings, scenario: Scenario, task: SelectTask, fidelity: str
) -> tuple[float, float]:
    """(SLO-violation minutes, allocated cost) of the HPA with ``settings`` on one run."""
    run = run_one(
        task.entry,
        scenario,
        task.replicate,
        task.seed,
        fidelity,
        functools.partial(_make_hpa, settings, scenario),
    )
    return run.score.slo_violation_min, run.score.allocated_cost


def reference_task(
    shared: tuple[dict[str, Scenario], str], task: SelectTask
) -> tuple[float, float]:
    """The default HPA's score on one selection run (a :func:`parallel_map` task)."""
    scenarios, fidelity = shared
    return score_hpa(TunedHPASettings(), scenarios[task.entry], task, fidelity)


def score_run_dir(
    run_dir: str, scenario: Scenario, task: SelectTask, fidelity: str
) -> tuple[float, float]:
    """(SLO-violation minutes, allocated cost) of a trained run dir's policy on one run."""
    from agents.evaluation.evaluate import build_policy, resolve_policy

    spec = resolve_policy(run_dir)
    run = run_one(
        task.entry,
        scenario,
        task.replicate,
        task.seed,
        fidelity,
        functools.partial(build_policy, spec, scenario),
    )
    return run.score.slo_violation_min, run.score.allocated_cost


# --------------------------------------------------------------------------------------------
# one rung


def set_dotted(conf: dict[str, Any], key: str, value: Any) -> None:
    """``conf[a][b][c] = value`` for ``key = "a.b.c"`` (creating missing levels)."""
    parts = key.split(".")
    node = conf
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = plain(value)


def plain(value: Any) -> Any:
    """A sampled value as plain Python (NumPy scalars become ``int``/``float``)."""
    if hasattr(value, "item") and not isinstance(value, list | dict | str):
        return value.item()
    return value


def rung_config(
    base: dict[str, Any], config: dict[str, Any], rung: int, rungs: int, out: str, prev: str | None
) -> dict[str, Any]:
    """The ``opsworld train`` config of one rung of a ``kind: train`` trial."""
    conf = copy.deepcopy(base)
    for key, value in config.items():
        set_dotted(conf, key, value)
    total = int(conf["total_timesteps"])
    conf["total_timesteps"] = max(1, math.ceil(total * rung / rungs))
    conf["out"] = out
    conf["resume"] = prev
    conf["progress_bar"] = False
    return conf


def train_rung(
    ctx: StudyContext, config: dict[str, Any], rung: int, trial_dir: Path, prev: str | None
) -> tuple[str, dict[str, Any]]:
    """Train one rung; return its run dir and ``metrics.json`` figures."""
    from agents.trainers import train

    assert ctx.base_train is not None
    out = str(trial_dir / f"rung_{rung}")
    conf = rung_config(ctx.base_train, config, rung, ctx.spec.rungs, out, prev)
    return out, train(conf)


def summarize_scores(
    ctx: StudyContext, scores: list[tuple[float, float]], indices: list[int]
) -> dict[str, float]:
    """The report's figures over the scored runs ``indices`` (same order as ``scores``)."""
    slo = statistics.fmean(s[0] for s in scores)
    cost = statistics.fmean(s[1] for s in scores)
    ref = statistics.fmean(ctx.reference[i][1] for i in indices)
    return {
        "objective": objective(slo, cost, ref, ctx.spec.select),
        "slo_violation_min": slo,
        "allocated_cost": cost,
        "cost_rel": cost / ref if ref > 0 else math.inf,
        "runs": float(len(scores)),
    }


def run_trial(config: dict[str, Any], ctx: StudyContext) -> None:
    """The Ray Tune trainable: ``rungs`` reports, resuming from the trial's checkpoint."""
    from ray import tune

    state: dict[str, Any] = {"rung": 0, "run_dir": None, "scores": []}
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as folder:
            state = json.loads((Path(folder) / STATE_FILE).read_text(encoding="utf-8"))
    trial_dir = Path(ctx.runs_dir) / tune.get_context().get_trial_id()
    fidelity = ctx.spec.select.fidelity
    chunks = ctx.chunks()
    scores: list[tuple[float, float]] = [(float(a), float(b)) for a, b in state["scores"]]
    run_dir: str | None = state["run_dir"]
    for rung in range(int(state["rung"]) + 1, ctx.spec.rungs + 1):
        extra: dict[str, Any] = {}
        if ctx.spec.kind is TrialKind.hpa:
            settings = hpa_settings(config)
            for i in chunks[rung - 1]:
                task = ctx.tasks[i]
                scores.append(score_hpa(settings, ctx.scenarios[task.entry], task, fidelity))
            indices = list(range(len(scores)))
        else:
            run_dir, metrics = train_rung(ctx, config, rung, trial_dir, run_dir)
            scores = [
                score_run_dir(run_dir, ctx.scenarios[t.entry], t, fidelity) for t in ctx.tasks
            ]
            indices = list(range(len(ctx.tasks)))
            extra = {
                "eval_mean_reward": metrics.get("eval_mean_reward"),
                "timesteps": metrics.get("timesteps"),
            }
        report = {**summarize_scores(ctx, scores, indices), "rung": rung, **extra}
        with tempfile.TemporaryDirectory() as folder:
            saved = {"rung": rung, "run_dir": run_dir, "scores": [list(s) for s in scores]}
            (Path(folder) / STATE_FILE).write_text(json.dumps(saved), encoding="utf-8")
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))
