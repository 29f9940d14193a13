"""``opsworld evaluate-forecast``: score a world model's forecasts against naive forecasts.

``opsworld evaluate-forecast model=runs/wm_chain3 suite=holdout out=runs/fc_chain3`` runs
every entry of ``suite`` on the model's topology under the behaviour policies
``behaviours`` x ``seeds`` (fluid fidelity; in ``workers`` processes). In each episode,
at forecast origins ``t = warmup, warmup + every, ...`` it forecasts the next ``horizon``
steps (default 20 x 15 s = 5 minutes) of p99 latency, rps, error rate and ready replicas
of every service, with the planned actions = the actions the behaviour actually took, by:

* ``model``: :func:`agents.world_model.forecast.forecast_batch` (``n_samples`` futures);
* ``model_cal``: the same draws post-processed by the model's
  :class:`~agents.world_model.forecast.Calibration` (anchor weights and spread multipliers
  fitted on TRAIN episodes);
* ``persistence`` and ``seasonal``: the naive forecasters fitted on TRAIN episodes;

and scores them against what happened: MAE of the median and CRPS (sample CRPS of the
empirical distribution; see :mod:`agents.world_model.forecast_metrics`) per horizon step,
coverage of the central 80 % and 90 % intervals, and for the probability of an SLO
violation within the horizon the Brier score and a reliability diagram (the model against
the naive "violating now?" frequencies and the climatological base rate). Writes to
``out``: ``metrics.json``, ``forecast.md``, ``mae.png``, ``crps.png``, ``coverage.png``,
``reliability.png``, ``examples/*.png`` (fan charts) and ``config.yaml``.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from experiments.cli import CONFIG_DIR, EXIT_USAGE, ConfigError, structured_config
from experiments.fit_world_model import (
    FittedModel,
    check_behaviours,
    load_fit,
    period_steps,
    suite_entries,
)
from experiments.simulate import Fidelity, json_default

FORECASTERS: tuple[str, ...] = ("model", "model_cal", "persistence", "seasonal")
"""Forecasters scored, in table order."""
VIOLATION_FORECASTERS: tuple[str, ...] = ("model", "model_cal", "naive", "climatology")
"""Forecasters of the violation probability."""
TABLE_STEPS: tuple[int, ...] = (1, 5, 10, 20)
"""Horizon steps shown in the Markdown tables."""
LEVELS: tuple[float, ...] = (0.05, 0.1, 0.5, 0.9, 0.95)
"""Quantile levels: the 90 % and 80 % intervals and the median."""


@dataclass
class EvaluateForecastConfig:
    """Schema of ``configs/evaluate_forecast.yaml``; a wrong key or type fails at composition.

    Attributes:
        model: An ``opsworld fit-world-model`` output folder (required).
        suite: Suite to score on (``holdout``, ``train`` or a YAML path).
        topology: Topology to score (None: the model's; another one is refused).
        behaviours: Behaviour policies that run the episodes (and plan the actions).
        seeds: Replicates per entry and behaviour.
        limit: Only the first ``limit`` entries (None: all).
        horizon: Steps forecast (None: the model's ``horizon``; at most it).
        warmup: First forecast origin (rows of history before it).
        every: Steps between forecast origins.
        n_samples: Sampled futures per forecast.
        workers: Processes (1: in this process).
        fidelity: Simulator fidelity.
        seed: Seed of the forecasts' random draws.
        threads: Torch threads per process.
        examples: Fan-chart PNGs (first entries, first behaviour, replicate 0).
        progress: Progress bar (None: when stderr is a terminal).
        out: Output folder.
    """

    model: str | None = None
    suite: str = "holdout"
    topology: str | None = None
    behaviours: list[str] = field(default_factory=lambda: ["hpa", "runbook"])
    seeds: int = 1
    limit: int | None = None
    horizon: int | None = None
    warmup: int = 20
    every: int = 4
    n_samples: int = 64
    workers: int = 2
    fidelity: Fidelity = Fidelity.fluid
    seed: int = 0
    threads: int = 1
    examples: int = 2
    progress: bool | None = None
    out: str = "outputs/evaluate_forecast/${now:%Y-%m-%d}/${now:%H-%M-%S}"


SCHEMA = EvaluateForecastConfig
"""The config schema (used by the ``opsworld`` dispatcher to check override keys)."""


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (idempotent; call before composing)."""
    ConfigStore.instance().store(name="evaluate_forecast_schema", node=EvaluateForecastConfig)


def to_config(
    cfg: DictConfig | EvaluateForecastConfig | Mapping[str, Any],
) -> EvaluateForecastConfig:
    """Validate a composed config (or a plain mapping) against :class:`EvaluateForecastConfig`."""
    return structured_config(EvaluateForecastConfig, cfg, "evaluate-forecast")


# --------------------------------------------------------------------------------------------
# scoring one episode (what a worker runs)


@dataclass(frozen=True)
class ScoreTask:
    """One episode to run and score (picklable).

    Attributes:
        model_dir: The fit-world-model folder.
        entry: Suite entry id.
        scenario: Its scenario.
        behaviour: Behaviour policy.
        replicate: Replicate index.
        seed: Env seed (``entry.run_seed(replicate)``).
        fidelity: Simulator fidelity.
        horizon: H.
        warmup: First origin.
        every: Origin stride.
        n_samples: Draws per forecast.
        forecast_seed: Seed of the draws.
        threads: Torch threads.
    """

    model_dir: str
    entry: str
    scenario: Any
    behaviour: str
    replicate: int
    seed: int
    fidelity: str
    horizon: int
    warmup: int
    every: int
    n_samples: int
    forecast_seed: int
    threads: int


@dataclass
class EpisodeScores:
    """Per-origin scores of one episode.

    Attributes:
        entry: Suite entry id.
        behaviour: Behaviour policy.
        replicate: Replicate index.
        origins: ``[B]`` forecast origins.
        scores: ``[forecaster][metric][stat]`` -> ``[B, H, S]`` with stats ``abs_err``,
            ``crps``, ``in80``, ``in90`` (NaN where the truth is missing).
        p_violation: ``[forecaster]`` -> ``[B]`` probability of a violation within H.
        outcome: ``[B]`` 1.0 where a violation happened within H.
        wall_s: Wall seconds (episode and forecasts).
    """

    entry: str
    behaviour: str
    replicate: int
    origins: np.ndarray
    scores: dict[str, dict[str, dict[str, np.ndarray]]]
    p_violation: dict[str, np.ndarray]
    outcome: np.ndarray
    wall_s: float


_FIT_CACHE: dict[str, FittedModel] = {}


def cached_fit(model_dir: str) -> FittedModel:
    """The fitted model of ``model_dir``, loaded once per process."""
    if model_dir not in _FIT_CACHE:
        _FIT_CACHE[model_dir] = load_fit(model_dir)
    return _FIT_CACHE[model_dir]


def score_draws(draws: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of ``[B, N, H, S]`` draws against ``[B, H, S]`` truths, each ``[B, H, S]``."""
    from agents.world_model.forecast_metrics import abs_error, crps_samples, inside

    x = np.moveaxis(draws, 1, -1)  # [B, H, S, N]
    q = np.quantile(x, LEVELS, axis=-1)  # [Q, B, H, S]
    return {
        "abs_err": abs_error(q[LEVELS.index(0.5)], truth),
        "crps": crps_samples(x, truth),
        "in80": inside(q[LEVELS.index(0.1)], q[LEVELS.index(0.9)], truth),
        "in90": inside(q[LEVELS.index(0.05)], q[LEVELS.index(0.95)], truth),
    }


def score_task(task: ScoreTask) -> EpisodeScores:
    """Run one episode under its behaviour and score every forecaster at every origin."""
    import torch

    from agents.world_model.data import run_episode
    from agents.world_model.forecast import (
        METRICS,
        NaiveViolation,
        forecast_batch,
        forecast_origins,
        planned_actions,
        raw_series,
        truths,
    )

    start = time.perf_counter()
    torch.set_num_threads(task.threads)
    fit = cached_fit(task.model_dir)
    layout = fit.model.layout
    ep = run_episode(task.scenario, task.behaviour, task.seed, task.fidelity)
    origins = forecast_origins(len(ep["obs"]), task.horizon, task.warmup, task.every)
    h = task.horizon
    if origins.size == 0:
        raise ValueError(
            f"entry {task.entry}: {len(ep['obs'])} rows leave no origin for warmup "
            f"{task.warmup} and horizon {h}"
        )
    truth = truths(ep, layout, origins, h)
    sf = forecast_batch(
        fit.model,
        ep["obs"],
        ep["action"],
        origins,
        planned_actions(ep, origins, h),
        n_services=layout.n_services,
        n_samples=task.n_samples,
        seed=task.forecast_seed + task.seed,
    )
    period = period_steps(task.scenario)
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = {f: {} for f in FORECASTERS}
    for m in METRICS:
        raw = sf.samples[m]
        cal = fit.calibration.apply_raw(m, raw, sf.offset[m], sf.decoded[m])
        series = raw_series(ep, layout, m)
        draws = {
            "model": raw,
            "model_cal": cal,
            "persistence": fit.persistence.samples(m, series, origins, period),
            "seasonal": fit.seasonal.samples(m, series, origins, period),
        }
        for f in FORECASTERS:
            scores[f][m] = score_draws(draws[f][:, :, :h], truth[m])
    return EpisodeScores(
        task.entry,
        task.behaviour,
        task.replicate,
        origins,
        scores,
        {
            "model": sf.p_violation,
            "model_cal": fit.calibration.apply_violation(sf.p_violation),
            "naive": fit.violation.predict(ep["violation"], origins),
            "climatology": np.full(origins.size, fit.violation.base_rate),
        },
        NaiveViolation.outcomes(ep["violation"], origins, h),
        time.perf_counter() - start,
    )


def run_tasks(tasks: Sequence[ScoreTask], workers: int, progress: bool) -> list[EpisodeScores]:
    """Score every task (in a spawn pool when ``workers > 1``), in task order."""
    from agents.world_model.data import ProgressBar

    done: dict[int, EpisodeScores] = {}
    with ProgressBar(progress, len(tasks), "forecast") as tick:
        if workers == 1 or len(tasks) == 1:
            for i, t in enumerate(tasks):
                done[i] = score_task(t)
                tick(t.entry)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as pool:
                futures: dict[Future[EpisodeScores], int] = {
                    pool.submit(score_task, t): i for i, t in enumerate(tasks)
                }
                pending = set(futures)
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for fut in finished:
                        failure = fut.exception()
                        if failure is not None:
                            for other in pending:
                                other.cancel()
                            raise failure
                        i = futures[fut]
                        done[i] = fut.result()
                        tick(tasks[i].entry)
    return [done[i] for i in range(len(tasks))]


# --------------------------------------------------------------------------------------------
# aggregation


def _nanmean(a: np.ndarray, axis: Any = None) -> Any:
    """``np.nanmean`` without the all-NaN warning (an all-NaN slice gives NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def aggregate(results: Sequence[EpisodeScores], services: Sequence[str]) -> dict[str, Any]:
    """Pool every origin of every episode into the report's numbers.

    Per forecaster, metric and horizon step: MAE, CRPS and 80 % / 90 % coverage (means over
    origins and services); per service at the last step; the model's MAE skill vs the
    better naive forecaster; Brier scores and reliability bins of the violation probability.
    """
    from agents.world_model.forecast import METRICS
    from agents.world_model.forecast_metrics import brier, reliability

    pooled: dict[str, dict[str, dict[str, np.ndarray]]] = {
        f: {
            m: {
                s: np.concatenate([r.scores[f][m][s] for r in results], 0)
                for s in ("abs_err", "crps", "in80", "in90")
            }
            for m in METRICS
        }
        for f in FORECASTERS
    }
    per_step: dict[str, Any] = {}
    overall: dict[str, Any] = {}
    per_service: dict[str, Any] = {}
    for f in FORECASTERS:
        per_step[f], overall[f], per_service[f] = {}, {}, {}
        for m in METRICS:
            d = pooled[f][m]
            per_step[f][m] = {
                "mae": _nanmean(d["abs_err"], (0, 2)).tolist(),
                "crps": _nanmean(d["crps"], (0, 2)).tolist(),
                "coverage80": _nanmean(d["in80"], (0, 2)).tolist(),
                "coverage90": _nanmean(d["in90"], (0, 2)).tolist(),
            }
            overall[f][m] = {
                "coverage80": float(_nanmean(d["in80"])),
                "coverage90": float(_nanmean(d["in90"])),
                "n": int(np.sum(~np.isnan(d["in90"]))),
            }
            per_service[f][m] = {
                "mae_last": dict(
                    zip(services, _nanmean(d["abs_err"][:, -1], 0).tolist(), strict=True)
                ),
            }
    skill: dict[str, Any] = {}
    for m in METRICS:
        skill[m] = {}
        for k, step in (("last", -1), ("mean", None)):
            model_vals: dict[str, float] = {}
            for f in FORECASTERS:
                v = np.asarray(per_step[f][m]["mae"])
                model_vals[f] = float(v[step]) if step is not None else float(np.nanmean(v))
            best_naive = min(model_vals["persistence"], model_vals["seasonal"])
            skill[m][f"mae_{k}"] = model_vals
            for f in ("model", "model_cal"):
                skill[m][f"mae_skill_{f}_{k}"] = (
                    1.0 - model_vals[f] / best_naive if best_naive > 0 else float("nan")
                )
    outcome = np.concatenate([r.outcome for r in results])
    viol: dict[str, Any] = {"base_rate": float(outcome.mean()), "n": int(outcome.size)}
    for f in VIOLATION_FORECASTERS:
        p = np.concatenate([r.p_violation[f] for r in results])
        viol[f] = {"brier": brier(p, outcome), "reliability": reliability(p, outcome).as_dict()}
    ref = viol["climatology"]["brier"]
    for f in VIOLATION_FORECASTERS:
        viol[f]["brier_skill_vs_climatology"] = 1.0 - viol[f]["brier"] / ref if ref > 0 else None
    return {
        "per_step": per_step,
        "overall": overall,
        "per_service": per_service,
        "skill": skill,
        "violation": viol,
        "origins": int(outcome.size),
        "episodes": len(results),
    }


# --------------------------------------------------------------------------------------------
# outputs

_STYLE = {
    "model": ("tab:blue", "-"),
    "model_cal": ("tab:purple", "-"),
    "persistence": ("tab:orange", "-"),
    "seasonal": ("tab:green", "-"),
    "naive": ("tab:orange", "-"),
    "climatology": ("tab:gray", ":"),
}
_UNITS = {"p99": "s", "rps": "attempts/s", "error_rate": "fraction", "replicas_ready": "pods"}


def plot_vs_horizon(agg: dict[str, Any], stat: str, title: str, path: Path, dt_s: float) -> Path:
    """One panel per metric: ``stat`` against the horizon for every forecaster."""
    from agents.world_model.forecast import METRICS

    fig = Figure(figsize=(11, 7))
    axes = fig.subplots(2, 2)
    for ax, m in zip(axes.ravel(), METRICS, strict=True):
        for f in FORECASTERS:
            v = agg["per_step"][f][m][stat]
            steps = np.arange(1, len(v) + 1) * dt_s / 60.0
            color, ls = _STYLE[f]
            ax.plot(steps, v, color=color, ls=ls, label=f)
        ax.set_title(m)
        ax.set_xlabel("horizon (minutes)")
        ax.set_ylabel(f"{stat.upper()} ({_UNITS[m]})")
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_coverage(agg: dict[str, Any], title: str, path: Path, dt_s: float) -> Path:
    """Coverage of the 80 % and 90 % intervals against the horizon, per metric."""
    from agents.world_model.forecast import METRICS

    fig = Figure(figsize=(11, 7))
    axes = fig.subplots(2, 2)
    for ax, m in zip(axes.ravel(), METRICS, strict=True):
        for f in FORECASTERS:
            color, _ = _STYLE[f]
            for lvl, ls in ((80, ":"), (90, "-")):
                v = agg["per_step"][f][m][f"coverage{lvl}"]
                steps = np.arange(1, len(v) + 1) * dt_s / 60.0
                ax.plot(steps, v, color=color, ls=ls, marker=".", ms=3, label=f"{f} {lvl}%")
        for target in (0.8, 0.9):
            ax.axhline(target, color="black", lw=0.8, alpha=0.5)
        ax.set_ylim(0, 1.02)
        ax.set_title(m)
        ax.set_xlabel("horizon (minutes)")
        ax.set_ylabel("coverage")
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(loc="lower left", fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_reliability(agg: dict[str, Any], title: str, path: Path) -> Path:
    """Reliability diagram of the violation probability (points sized by count)."""
    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls=":", label="perfect")
    for f in VIOLATION_FORECASTERS:
        rel = agg["violation"][f]["reliability"]
        pts = [
            (p, q, c)
            for p, q, c in zip(rel["mean_p"], rel["frequency"], rel["count"], strict=True)
            if p is not None and q is not None and c > 0
        ]
        if not pts:
            continue
        p, q, c = (np.array(x, dtype=float) for x in zip(*pts, strict=True))
        color, ls = _STYLE[f]
        brier = agg["violation"][f]["brier"]
        ax.plot(p, q, color=color, ls=ls, marker="o", label=f"{f} (Brier {brier:.3f})")
        ax.scatter(p, q, s=10 + 200 * c / c.sum(), color=color, alpha=0.4)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("forecast probability of an SLO violation within the horizon")
    ax.set_ylabel("observed frequency")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def plot_example(
    fit: FittedModel,
    entry: Any,
    behaviour: str,
    conf: EvaluateForecastConfig,
    horizon: int,
    path: Path,
) -> Path:
    """Fan chart of one forecast of the entry service's metrics.

    The origin is the step nearest one minute after the first fault's onset (the middle of
    the episode without faults).
    """
    from agents.world_model.data import run_episode
    from agents.world_model.forecast import METRICS, forecast, raw_series

    sc = entry.scenario
    ep = run_episode(sc, behaviour, entry.run_seed(0), conf.fidelity.value)
    dt = sc.decision_interval_s
    faults = sorted(f.at_s for f in sc.faults)
    onset = faults[0] + 60.0 if faults else sc.horizon_s / 2
    t0 = int(np.clip(round(onset / dt), conf.warmup, len(ep["obs"]) - horizon - 1))
    fc = forecast(
        fit.model,
        ep["obs"][: t0 + 1],
        ep["action"][: t0 + 1],
        ep["action"][t0 + 1 : t0 + 1 + horizon],
        services=fit.spec["services"],
        n_samples=conf.n_samples,
        quantiles=LEVELS,
        seed=conf.seed,
        calibration=fit.calibration,
    )
    s = list(fit.spec["services"]).index(sc.topology.entry)
    period = period_steps(sc)
    fig = Figure(figsize=(11, 7))
    axes = fig.subplots(2, 2)
    back = 40
    for ax, m in zip(axes.ravel(), METRICS, strict=True):
        y = raw_series(ep, fit.model.layout, m)[:, s]
        lo = max(0, t0 - back)
        t_hist = (np.arange(lo, t0 + horizon + 1) - t0) * dt / 60.0
        ax.plot(t_hist, y[lo : t0 + horizon + 1], color="black", lw=1.2, label="observed")
        t_fc = np.arange(1, horizon + 1) * dt / 60.0
        q = fc[m][:, s]
        ax.fill_between(t_fc, q[:, 0], q[:, -1], color="tab:blue", alpha=0.2, label="model 90%")
        ax.fill_between(t_fc, q[:, 1], q[:, -2], color="tab:blue", alpha=0.3, label="model 80%")
        ax.plot(t_fc, q[:, 2], color="tab:blue", label="model median")
        for nf, color in ((fit.persistence, "tab:orange"), (fit.seasonal, "tab:green")):
            pt = nf.point(raw_series(ep, fit.model.layout, m), [t0], period)[0, :, s]
            ax.plot(t_fc, pt, color=color, lw=1, label=nf.kind)
        ax.axvline(0, color="gray", lw=0.8)
        ax.set_title(f"{sc.topology.entry} {m}")
        ax.set_xlabel("minutes from the forecast origin")
        ax.set_ylabel(_UNITS[m])
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(loc="best", fontsize=7)
    fig.suptitle(
        f"{entry.id} ({behaviour}): forecast at t = {t0 * dt / 60:.1f} min, "
        f"P(violation within {horizon * dt / 60:.0f} min) = {fc.p_violation:.2f}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _f(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "n/a"
    return f"{v:.{digits}g}"


def markdown(agg: dict[str, Any], header: Mapping[str, Any], horizon: int) -> str:
    """The Markdown report: settings, MAE/CRPS tables, coverage, skill, Brier, plots."""
    from agents.world_model.forecast import METRICS

    steps = [h for h in TABLE_STEPS if h <= horizon]
    lines = [
        f"# Forecasts on suite `{header['suite']}`, topology `{header['topology']}`",
        "",
        f"Model `{header['model']}` ({header['model_summary']}). {header['episodes']} episodes "
        f"({header['entries']} entries x behaviours {header['behaviours']} x {header['seeds']} "
        f"seed(s)), {agg['origins']} forecast origins (every {header['every']} steps after "
        f"{header['warmup']} steps of history), horizon {horizon} steps of "
        f"{header['dt_s']:.0f} s, {header['n_samples']} sampled futures per forecast; "
        f"{header['wall_s']:.0f} s wall.",
        "",
        "Forecasters: `model` (world model, raw), `model_cal` (same draws, anchored towards "
        "the last observation and spread-calibrated, both fitted on TRAIN episodes), "
        "`persistence` (last value), `seasonal` (season: the traffic period "
        "when the history covers it, else the last 5 minutes repeated); naive uncertainty "
        "from TRAIN residual quantiles. MAE of the median; CRPS of the sample distribution; "
        "means over origins and services, raw units.",
        "",
    ]
    for m in METRICS:
        lines += [
            f"## `{m}` ({_UNITS[m]})",
            "",
            "| forecaster | "
            + " | ".join(f"MAE h={h}" for h in steps)
            + " | "
            + " | ".join(f"CRPS h={h}" for h in steps)
            + " | cov80 | cov90 |",
            "|---|" + "---:|" * (2 * len(steps) + 2),
        ]
        for f in FORECASTERS:
            ps = agg["per_step"][f][m]
            ov = agg["overall"][f][m]
            lines.append(
                f"| `{f}` | "
                + " | ".join(_f(ps["mae"][h - 1]) for h in steps)
                + " | "
                + " | ".join(_f(ps["crps"][h - 1]) for h in steps)
                + f" | {_f(ov['coverage80'], 2)} | {_f(ov['coverage90'], 2)} |"
            )
        sk = agg["skill"][m]
        lines += [
            "",
            "MAE skill vs the better naive forecast (positive: better than it): `model` "
            f"{100 * sk['mae_skill_model_last']:.0f}% at h={horizon}, "
            f"{100 * sk['mae_skill_model_mean']:.0f}% averaged over h=1..{horizon}; "
            f"`model_cal` {100 * sk['mae_skill_model_cal_last']:.0f}% at h={horizon}, "
            f"{100 * sk['mae_skill_model_cal_mean']:.0f}% averaged.",
            "",
        ]
    v = agg["violation"]
    lines += [
        "## SLO violation within the horizon",
        "",
        f"Base rate {v['base_rate']:.3f} over {v['n']} origins.",
        "",
        "| forecaster | Brier | Brier skill vs climatology |",
        "|---|---:|---:|",
    ]
    for f in VIOLATION_FORECASTERS:
        lines.append(
            f"| `{f}` | {_f(v[f]['brier'])} | {_f(v[f]['brier_skill_vs_climatology'], 2)} |"
        )
    lines += [
        "",
        "`model_cal`: the model's probability Platt-scaled on TRAIN episodes; "
        "`naive`: the TRAIN frequency of a violation within the horizon given whether the "
        "current step violates; `climatology`: the TRAIN base rate.",
        "",
        "![MAE](mae.png)",
        "",
        "![CRPS](crps.png)",
        "",
        "![coverage](coverage.png)",
        "",
        "![reliability](reliability.png)",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the command


def evaluate_forecast(
    cfg: DictConfig | EvaluateForecastConfig | Mapping[str, Any],
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Score the model's forecasts and write the outputs of the module docstring.

    Returns:
        ``{"out": ..., "metrics": <aggregate>, "files": [...]}``.

    Raises:
        ConfigError: Before anything runs, naming the field.
    """
    conf = to_config(cfg)
    if conf.model is None:
        raise ConfigError("model is required: an 'opsworld fit-world-model' output folder")
    fit = load_fit(conf.model)
    topology = conf.topology or fit.spec["topology"]
    if topology != fit.spec["topology"]:
        raise ConfigError(
            f"topology={topology}: the model was fitted on {fit.spec['topology']!r} "
            "(one world model fits one topology)"
        )
    entries = suite_entries(conf.suite, topology, conf.limit)
    check_behaviours("behaviours", list(conf.behaviours))
    for name, low in (
        ("seeds", 1),
        ("workers", 1),
        ("warmup", 0),
        ("every", 1),
        ("n_samples", 2),
        ("threads", 1),
        ("examples", 0),
    ):
        if getattr(conf, name) < low:
            raise ConfigError(f"{name}={getattr(conf, name)}: must be >= {low}")
    fitted_h = int(fit.spec["forecast"]["horizon"])
    horizon = conf.horizon or fitted_h
    if not 1 <= horizon <= fitted_h:
        raise ConfigError(
            f"horizon={horizon}: must be in [1, {fitted_h}] (the horizon the model's "
            "calibration and naive forecasters were fitted for)"
        )
    services = list(fit.spec["services"])
    if list(entries[0].scenario.service_names) != services:
        raise ConfigError(
            f"suite {conf.suite} topology {topology}: services {entries[0].scenario.service_names}"
            f" differ from the model's {services}"
        )
    out = Path(conf.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(conf), resolve=True))
    show = sys.stderr.isatty() if conf.progress is None else conf.progress
    model_dir = str(Path(conf.model).resolve())
    tasks = [
        ScoreTask(
            model_dir,
            e.id,
            e.scenario,
            b,
            k,
            e.run_seed(k),
            conf.fidelity.value,
            horizon,
            conf.warmup,
            conf.every,
            conf.n_samples,
            conf.seed,
            conf.threads,
        )
        for e in entries
        for b in conf.behaviours
        for k in range(conf.seeds)
    ]
    if log is not None:
        log(
            f"evaluate-forecast: {len(tasks)} episodes ({len(entries)} {conf.suite} entries on "
            f"{topology} x {list(conf.behaviours)} x {conf.seeds} seeds), horizon {horizon}"
        )
    start = time.perf_counter()
    results = run_tasks(tasks, conf.workers, show)
    wall = time.perf_counter() - start
    agg = aggregate(results, services)
    dt = float(entries[0].scenario.decision_interval_s)
    summary = json.loads((Path(conf.model) / "summary.json").read_text())
    header = {
        "suite": conf.suite,
        "topology": topology,
        "model": conf.model,
        "model_summary": (
            f"{fit.model.cfg.size}, {summary.get('updates')} updates in "
            f"{summary.get('train_wall_s', 0.0):.0f} s on {summary.get('episodes')} episodes"
        ),
        "episodes": len(results),
        "entries": len(entries),
        "behaviours": list(conf.behaviours),
        "seeds": conf.seeds,
        "every": conf.every,
        "warmup": conf.warmup,
        "dt_s": dt,
        "n_samples": conf.n_samples,
        "wall_s": wall,
    }
    metrics = {
        **header,
        "horizon": horizon,
        **agg,
        "per_episode": [
            {
                "entry": r.entry,
                "behaviour": r.behaviour,
                "replicate": r.replicate,
                "origins": int(r.origins.size),
                "wall_s": r.wall_s,
            }
            for r in results
        ],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=json_default))
    title = f"{conf.suite} / {topology}"
    files = [
        out / "metrics.json",
        plot_vs_horizon(agg, "mae", f"MAE vs horizon ({title})", out / "mae.png", dt),
        plot_vs_horizon(agg, "crps", f"CRPS vs horizon ({title})", out / "crps.png", dt),
        plot_coverage(agg, f"interval coverage ({title})", out / "coverage.png", dt),
        plot_reliability(
            agg, f"P(SLO violation within {horizon * dt / 60:.0f} min)", out / "reliability.png"
        ),
    ]
    text = markdown(agg, header, horizon)
    for e in entries[: conf.examples]:
        p = plot_example(
            fit, e, conf.behaviours[0], conf, horizon, out / "examples" / f"{e.id}.png"
        )
        files.append(p)
        text += f"\n![{e.id}](examples/{e.id}.png)\n"
    (out / "forecast.md").write_text(text)
    files.append(out / "forecast.md")
    if log is not None:
        log(text.split("## SLO")[0][-1500:])
        log(f"wrote {len(files)} files to {out}")
    return {"out": str(out), "metrics": metrics, "files": [str(f) for f in files]}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate_forecast")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        evaluate_forecast(cfg)
    except ConfigError as err:
        print(f"opsworld evaluate-forecast: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def main() -> None:
    """Console entry: register the schema, then let Hydra parse ``sys.argv``."""
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
