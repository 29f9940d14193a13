"""The figures of ``opsworld evaluate-forecast``: scores vs horizon, reliability, fan charts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from agents.world_model.data import run_episode
from agents.world_model.evaluation.config import EvaluateForecastConfig, model_on
from agents.world_model.evaluation.scoring import FORECASTERS, LEVELS, VIOLATION_FORECASTERS
from agents.world_model.fit import FittedModel
from agents.world_model.forecast import (
    METRICS,
    UNITS,
    forecast,
    period_steps,
    physical_bounds,
    raw_series,
)
from envs.scenarios.suites import SuiteEntry

_STYLE = {
    "model": ("tab:blue", "-"),
    "model_cal": ("tab:purple", "-"),
    "persistence": ("tab:orange", "-"),
    "seasonal": ("tab:green", "-"),
    "naive": ("tab:orange", "-"),
    "climatology": ("tab:gray", ":"),
}


def plot_vs_horizon(agg: dict[str, Any], stat: str, title: str, path: Path, dt_s: float) -> Path:
    """One panel per metric: ``stat`` against the horizon for every forecaster."""
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
        ax.set_ylabel(f"{stat.upper()} ({UNITS[m]})")
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_coverage(agg: dict[str, Any], title: str, path: Path, dt_s: float) -> Path:
    """Coverage of the 80 % and 90 % intervals against the horizon, per metric."""
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
    entry: SuiteEntry,
    behaviour: str,
    conf: EvaluateForecastConfig,
    horizon: int,
    path: Path,
) -> Path:
    """Fan chart of one forecast of the entry service's metrics.

    The origin is the step nearest one minute after the first fault's onset (the middle of
    the episode without faults).
    """
    sc = entry.scenario
    ep = run_episode(sc, behaviour, entry.run_seed(0), conf.fidelity.value)
    dt = sc.decision_interval_s
    faults = sorted(f.at_s for f in sc.faults)
    onset = faults[0] + 60.0 if faults else sc.horizon_s / 2
    t0 = int(np.clip(round(onset / dt), conf.warmup, len(ep["obs"]) - horizon - 1))
    model = model_on(fit, sc)
    fc = forecast(
        model,
        ep["obs"][: t0 + 1],
        ep["action"][: t0 + 1],
        ep["action"][t0 + 1 : t0 + 1 + horizon],
        services=list(sc.service_names),
        n_samples=conf.n_samples,
        quantiles=LEVELS,
        seed=conf.seed,
        calibration=fit.calibration,
        bounds=physical_bounds(sc),
    )
    s = list(sc.service_names).index(sc.topology.entry)
    period = period_steps(sc)
    fig = Figure(figsize=(11, 7))
    axes = fig.subplots(2, 2)
    back = 40
    for ax, m in zip(axes.ravel(), METRICS, strict=True):
        y = raw_series(ep, model.layout, m)[:, s]
        lo = max(0, t0 - back)
        t_hist = (np.arange(lo, t0 + horizon + 1) - t0) * dt / 60.0
        ax.plot(t_hist, y[lo : t0 + horizon + 1], color="black", lw=1.2, label="observed")
        t_fc = np.arange(1, horizon + 1) * dt / 60.0
        q = fc[m][:, s]
        ax.fill_between(t_fc, q[:, 0], q[:, -1], color="tab:blue", alpha=0.2, label="model 90%")
        ax.fill_between(t_fc, q[:, 1], q[:, -2], color="tab:blue", alpha=0.3, label="model 80%")
        ax.plot(t_fc, q[:, 2], color="tab:blue", label="model median")
        for nf, color in ((fit.persistence, "tab:orange"), (fit.seasonal, "tab:green")):
            pt = nf.point(raw_series(ep, model.layout, m), [t0], period)[0, :, s]
            ax.plot(t_fc, pt, color=color, lw=1, label=nf.kind)
        ax.axvline(0, color="gray", lw=0.8)
        ax.set_title(f"{sc.topology.entry} {m}")
        ax.set_xlabel("minutes from the forecast origin")
        ax.set_ylabel(UNITS[m])
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
