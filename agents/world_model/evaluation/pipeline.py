"""``opsworld evaluate-forecast`` as a library call: score a fitted model's forecasts.

:func:`evaluate_forecast` runs every entry of ``suite`` on the model's topology under
``behaviours`` x ``seeds`` (:func:`~agents.world_model.evaluation.scoring.score_tasks`, in
``workers`` processes), pools the scores (:mod:`~agents.world_model.evaluation.aggregate`)
and writes to ``out``: ``metrics.json``, ``forecast.md``
(:mod:`~agents.world_model.evaluation.report`), ``mae.png``, ``crps.png``, ``coverage.png``,
``reliability.png``, ``examples/*.png`` (:mod:`~agents.world_model.evaluation.plots`) and
``config.yaml``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from agents.evaluation.simulate import json_default
from agents.world_model.evaluation.aggregate import aggregate
from agents.world_model.evaluation.config import (
    EvaluateForecastConfig,
    EvaluationSetup,
    setup,
)
from agents.world_model.evaluation.plots import (
    plot_coverage,
    plot_example,
    plot_reliability,
    plot_vs_horizon,
)
from agents.world_model.evaluation.report import markdown
from agents.world_model.evaluation.scoring import EpisodeScores, ScoreTask, score_tasks


def score_tasks_of(conf: EvaluateForecastConfig, ev: EvaluationSetup) -> list[ScoreTask]:
    """One task per (entry, behaviour, replicate), in that order."""
    model_dir = str(Path(ev.model_dir).resolve())
    return [
        ScoreTask(
            model_dir,
            e.id,
            e.scenario,
            b,
            k,
            e.run_seed(k),
            conf.fidelity.value,
            ev.horizon,
            conf.warmup,
            conf.every,
            conf.n_samples,
            conf.seed,
            conf.threads,
        )
        for e in ev.entries
        for b in conf.behaviours
        for k in range(conf.seeds)
    ]


def report_header(
    conf: EvaluateForecastConfig,
    ev: EvaluationSetup,
    results: Sequence[EpisodeScores],
    wall_s: float,
) -> dict[str, Any]:
    """The settings that head ``metrics.json`` and ``forecast.md``."""
    summary = json.loads((Path(ev.model_dir) / "summary.json").read_text())
    return {
        "suite": conf.suite,
        "topology": ev.topology,
        "model": ev.model_dir,
        "model_summary": (
            f"{ev.fit.model.cfg.size}, {summary.get('updates')} updates in "
            f"{summary.get('train_wall_s', 0.0):.0f} s on {summary.get('episodes')} episodes"
        ),
        "episodes": len(results),
        "entries": len(ev.entries),
        "behaviours": list(conf.behaviours),
        "seeds": conf.seeds,
        "every": conf.every,
        "warmup": conf.warmup,
        "dt_s": float(ev.entries[0].scenario.decision_interval_s),
        "n_samples": conf.n_samples,
        "wall_s": wall_s,
    }


def write_plots(
    conf: EvaluateForecastConfig, ev: EvaluationSetup, agg: dict[str, Any], out: Path
) -> list[Path]:
    """The four summary figures (not the fan charts)."""
    dt = float(ev.entries[0].scenario.decision_interval_s)
    title = f"{conf.suite} / {ev.topology}"
    return [
        plot_vs_horizon(agg, "mae", f"MAE vs horizon ({title})", out / "mae.png", dt),
        plot_vs_horizon(agg, "crps", f"CRPS vs horizon ({title})", out / "crps.png", dt),
        plot_coverage(agg, f"interval coverage ({title})", out / "coverage.png", dt),
        plot_reliability(
            agg,
            f"P(SLO violation within {ev.horizon * dt / 60:.0f} min)",
            out / "reliability.png",
        ),
    ]


def evaluate_forecast(
    conf: EvaluateForecastConfig, log: Callable[[str], None] | None = print
) -> dict[str, Any]:
    """Score the model's forecasts and write the outputs of the module docstring.

    Args:
        conf: The run config (checked here before anything runs).
        log: Where progress lines and the tables go (None: nowhere).

    Returns:
        ``{"out": ..., "metrics": <metrics.json>, "files": [...]}``.

    Raises:
        agents.run_config.RunConfigError: Before anything runs, naming the field.
    """
    ev = setup(conf)
    out = Path(conf.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(conf), resolve=True))
    show = sys.stderr.isatty() if conf.progress is None else conf.progress
    tasks = score_tasks_of(conf, ev)
    if log is not None:
        log(
            f"evaluate-forecast: {len(tasks)} episodes ({len(ev.entries)} {conf.suite} entries "
            f"on {ev.topology} x {list(conf.behaviours)} x {conf.seeds} seeds), "
            f"horizon {ev.horizon}"
        )
    start = time.perf_counter()
    results = score_tasks(tasks, conf.workers, show)
    wall = time.perf_counter() - start
    agg = aggregate(results, ev.services)
    header = report_header(conf, ev, results, wall)
    metrics = {
        **header,
        "horizon": ev.horizon,
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
    files = [out / "metrics.json", *write_plots(conf, ev, agg, out)]
    text = markdown(agg, header, ev.horizon)
    for e in ev.entries[: conf.examples]:
        path = out / "examples" / f"{e.id}.png"
        files.append(plot_example(ev.fit, e, conf.behaviours[0], conf, ev.horizon, path))
        text += f"\n![{e.id}](examples/{e.id}.png)\n"
    (out / "forecast.md").write_text(text)
    files.append(out / "forecast.md")
    if log is not None:
        log(text.split("## SLO")[0][-1500:])
        log(f"wrote {len(files)} files to {out}")
    return {"out": str(out), "metrics": metrics, "files": [str(f) for f in files]}
