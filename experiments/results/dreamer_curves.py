"""Learning curves of Dreamer and PPO runs: evaluation return vs env steps and vs wall-clock.

``python experiments/results/dreamer_curves.py --dreamer [LABEL=]RUN ... --ppo [LABEL=]RUN ...
--out experiments/results/dreamer_curves.png`` reads each Dreamer run's ``eval/curve.csv``
and each PPO run's ``eval/evaluations.npz`` (SB3's ``EvalCallback``) with the wall-clock of
its evaluations interpolated from ``logs/progress.csv`` (``time/time_elapsed`` against
``time/total_timesteps``), and draws both panels; horizontal lines mark baselines given with
``--baseline NAME=RETURN``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def dreamer_curve(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(env steps, wall seconds, mean return)`` of a Dreamer run's evaluations."""
    with open(run / "eval" / "curve.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    get = lambda k: np.array([float(r[k]) for r in rows])
    return get("env_steps"), get("wall_s"), get("mean_reward")


def ppo_curve(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(env steps, wall seconds, mean return)`` of an SB3 run's evaluations."""
    with np.load(run / "eval" / "evaluations.npz") as d:
        steps, returns = d["timesteps"].astype(float), d["results"].mean(1)
    wall = np.full_like(steps, np.nan)
    progress = run / "logs" / "progress.csv"
    if progress.is_file():
        with open(progress, encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r.get("time/time_elapsed")]
        t = np.array([float(r["time/total_timesteps"]) for r in rows])
        w = np.array([float(r["time/time_elapsed"]) for r in rows])
        if len(t):
            wall = np.interp(steps, t, w)
    return steps, wall, returns


def _labelled(spec: str, default: str) -> tuple[str, Path]:
    """``LABEL=PATH`` or ``PATH`` (labelled ``default``)."""
    label, sep, path = spec.partition("=")
    return (label, Path(path)) if sep else (default, Path(spec))


def plot(
    dreamer: list[str], ppo: list[str], baselines: dict[str, float], out: Path, title: str
) -> Path:
    """Draw both panels and save ``out`` (runs given as ``PATH`` or ``LABEL=PATH``)."""
    fig = Figure(figsize=(12, 4.5))
    ax_steps, ax_wall = fig.subplots(1, 2)
    colors = iter(["tab:blue", "tab:cyan", "tab:purple", "tab:orange", "tab:red", "tab:brown"])
    runs = [("Dreamer", r) for r in dreamer] + [("PPO", r) for r in ppo]
    for kind, spec in runs:
        label, run = _labelled(spec, kind)
        steps, wall, ret = (dreamer_curve if kind == "Dreamer" else ppo_curve)(run)
        color = next(colors)
        ax_steps.plot(steps, ret, "o-", color=color, label=label, ms=3, alpha=0.9)
        ax_wall.plot(wall / 60.0, ret, "o-", color=color, label=label, ms=3, alpha=0.9)
    styles = iter(["--", ":", "-."])
    for name, value in baselines.items():
        ls = next(styles, "--")
        for ax in (ax_steps, ax_wall):
            ax.axhline(value, color="gray", ls=ls, lw=1, label=name)
    ax_steps.set_xscale("log")
    ax_steps.set_xlabel("env steps (log)")
    ax_wall.set_xlabel("wall-clock minutes (2 shared CPU cores)")
    for ax in (ax_steps, ax_wall):
        ax.set_ylabel("evaluation return (mean of episodes)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return out


def main() -> None:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dreamer", nargs="+", default=[], help="PATH or LABEL=PATH")
    p.add_argument("--ppo", nargs="+", default=[], help="PATH or LABEL=PATH")
    p.add_argument("--baseline", action="append", default=[], help="NAME=RETURN")
    p.add_argument("--title", default="chain3 autoscale (demo): evaluation return")
    p.add_argument("--out", type=Path, default=Path("experiments/results/dreamer_curves.png"))
    a = p.parse_args()
    baselines = {k: float(v) for k, v in (b.split("=", 1) for b in a.baseline)}
    print(plot(a.dreamer, a.ppo, baselines, a.out, a.title))


if __name__ == "__main__":
    main()
