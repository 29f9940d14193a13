"""Skill of ``wm.arch=graph`` world models over persistence, per topology (issue 17, model side).

For each fitted model folder (one per training seed) and each suite entry (under the given
behaviours, replicate 0), the calibrated model forecasts ``horizon`` steps from every
``every``-th origin with the actions actually taken as the plan; persistence forecasts the
last known value. Written per (model, topology, entry): the mean absolute error of the
median at the last step (5 minutes) and over all steps, per metric, for both; the 90 %
interval's coverage; the Brier score of the calibrated P(SLO violation within the horizon)
and of the fit's naive violation model. The summary gives, per topology and metric,
``skill = 1 - MAE(model) / MAE(persistence)`` pooled over entries and seeds, with a 95 %
bootstrap interval over entries (seeds averaged inside each resample) and the per-seed
values.

The library scores with all baselines (statsforecast, LightGBM, MASE, CRPS) are
``opsworld evaluate-forecast``'s; this script is the model side's quick check against the
one baseline every forecast must beat.

Usage::

    python -m experiments.wm_graph_skill --models runs/graph_s0 runs/graph_s1 \
        --suite train:validation --out experiments/results/wm_graph_validation
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.world_model.data import Collection, collect
from agents.world_model.fit import load_fit
from agents.world_model.forecast import (
    METRICS,
    NaiveViolation,
    forecast_batch,
    forecast_origins,
    planned_actions,
    raw_series,
)
from agents.world_model.forecast.types import physical_bounds
from agents.world_model.forecast_metrics import brier
from envs.scenarios.suites import load_suite


def _ffill(y: np.ndarray) -> np.ndarray:
    """Forward-fill NaNs along axis 0 (the last known value)."""
    out = y.copy()
    for t in range(1, out.shape[0]):
        miss = np.isnan(out[t])
        out[t, miss] = out[t - 1, miss]
    return out


def score_episode(
    fit: Any, scenario: Any, ep: dict[str, np.ndarray], args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """Errors of the calibrated model and of persistence on one episode."""
    h = args.horizon
    model = fit.model_for(scenario.topology)
    lay = model.layout
    origins = forecast_origins(len(ep["obs"]), h, args.warmup, args.every)
    sf = forecast_batch(
        model,
        ep["obs"],
        ep["action"],
        origins,
        planned_actions(ep, origins, h),
        n_services=lay.n_services,
        n_samples=args.n_samples,
        seed=seed,
        calibration=fit.calibration,
    )
    bounds = physical_bounds(scenario)
    idx = origins[:, None] + np.arange(1, h + 1)[None, :]
    out: dict[str, Any] = {}
    for m in METRICS:
        series = raw_series(ep, lay, m)
        truth = series[idx]  # [B, H, S]
        draws = np.clip(sf.samples[m], 0.0, bounds[m][None, None, None, :])
        q = np.quantile(draws, (0.05, 0.5, 0.95), axis=1)  # [3, B, H, S]
        pers = _ffill(series)[origins][:, None, :]  # [B, 1, S]
        ok = ~np.isnan(truth) & ~np.isnan(np.broadcast_to(pers, truth.shape))
        err_m = np.abs(q[1] - truth)
        err_p = np.abs(pers - truth)
        inside = (q[0] <= truth) & (truth <= q[2])
        out[m] = {
            "mae_model_last": float(err_m[:, -1][ok[:, -1]].mean()),
            "mae_persist_last": float(err_p[:, -1][ok[:, -1]].mean()),
            "mae_model_all": float(err_m[ok].mean()),
            "mae_persist_all": float(err_p[ok].mean()),
            "cov90_last": float(inside[:, -1][ok[:, -1]].mean()),
            "cov90_all": float(inside[ok].mean()),
            "n_last": int(ok[:, -1].sum()),
            "draws_in_range": bool((draws >= 0).all() and (m != "error_rate" or draws.max() <= 1)),
        }
    outcome = NaiveViolation.outcomes(ep["violation"], origins, h)
    out["violation"] = {
        "brier_model": brier(sf.p_violation, outcome),
        "brier_naive": brier(fit.violation.predict(ep["violation"], origins), outcome),
        "base_rate": float(np.mean(outcome)),
        "n": int(outcome.size),
    }
    return out


def summarise(rows: list[dict[str, Any]], n_boot: int = 2000) -> dict[str, Any]:
    """Per topology and metric: pooled skill, a bootstrap interval over entries, per seed."""
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for topo in sorted({r["topology"] for r in rows}):
        mine = [r for r in rows if r["topology"] == topo]
        entries = sorted({r["entry"] for r in mine})
        seeds = sorted({r["model"] for r in mine})
        res: dict[str, Any] = {"entries": len(entries), "seeds": len(seeds)}
        for m in [*METRICS, "violation"]:
            for which in ("last", "all") if m != "violation" else ("",):
                if m == "violation":
                    a_key, b_key = "brier_model", "brier_naive"
                    name = "violation"
                else:
                    a_key, b_key = f"mae_model_{which}", f"mae_persist_{which}"
                    name = f"{m}_{which}"
                # [entry, seed] arrays (mean over behaviours)
                a = np.array(
                    [
                        [
                            np.mean(
                                [r[m][a_key] for r in mine if r["entry"] == e and r["model"] == s]
                            )
                            for s in seeds
                        ]
                        for e in entries
                    ]
                )
                b = np.array(
                    [
                        [
                            np.mean(
                                [r[m][b_key] for r in mine if r["entry"] == e and r["model"] == s]
                            )
                            for s in seeds
                        ]
                        for e in entries
                    ]
                )
                skill = 1.0 - a.sum(0) / b.sum(0)  # per seed, pooled over entries
                boots = []
                for _ in range(n_boot):
                    pick = rng.integers(len(entries), size=len(entries))
                    if b[pick].sum() > 0:  # a resample of error-free entries has no skill
                        boots.append(1.0 - a[pick].sum() / b[pick].sum())
                lo, hi = np.quantile(boots, (0.025, 0.975))
                entry: dict[str, Any] = {
                    "skill": float(1.0 - a.sum() / b.sum()),
                    "ci95": [float(lo), float(hi)],
                    "per_seed": [float(x) for x in skill],
                    "model": float(a.mean()),
                    "baseline": float(b.mean()),
                }
                if m != "violation":
                    cov = np.array([r[m][f"cov90_{which}"] for r in mine])
                    entry["cov90"] = float(cov.mean())
                    entry["in_range"] = all(r[m]["draws_in_range"] for r in mine)
                res[name] = entry
        out[topo] = res
    return out


def training_curve(folder: str) -> list[dict[str, float]]:
    """Skill over persistence on the training batches, from a fit's ``metrics.csv``.

    ``one_step``: ``1 - dec_abs_err / persist_abs_err`` (posterior reconstruction vs the
    previous observation, symlog units; near 1 because the posterior sees the value);
    ``h20``: ``1 - over_abs_err_last / over_persist_abs_err_last`` (20-step prior rollouts vs
    persistence from the rollout's start, the forecasting question).
    """
    import csv

    rows = list(csv.DictReader((Path(folder) / "metrics.csv").open()))
    return [
        {
            "update": float(r["update"]),
            "wall_s": float(r["wall_s"]),
            "one_step": 1.0 - float(r["wm/dec_abs_err"]) / float(r["wm/persist_abs_err"]),
            "h20": 1.0
            - float(r["wm/over_abs_err_last"]) / float(r["wm/over_persist_abs_err_last"]),
        }
        for r in rows
    ]


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    """The summary as a table."""
    lines = [
        f"# Graph world model vs persistence: {meta['suite']}",
        "",
        f"Command: `{meta['command']}`  ",
        *[f"Per-seed run: `{c}`  " for c in meta.get("parts", [])],
        f"Date: {meta['date']}; machine: {meta['machine']}; wall {meta['wall_s']:.0f} s.  ",
        "Skill = 1 - MAE(calibrated model median) / MAE(persistence), raw units, pooled over "
        "entries and seeds; 95 % bootstrap interval over entries; `last` = the 5-minute step "
        "(h = 20), `all` = mean over h = 1..20. cov90 = coverage of the calibrated 90 % "
        "interval. Violation: skill of the Brier score of P(violation within 5 min) over the "
        "fit's naive violation model.",
        "",
        "| topology | target | skill | 95 % CI | per seed | model | persistence | cov90 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for topo, res in summary.items():
        for name, e in res.items():
            if not isinstance(e, dict):
                continue
            seeds = ", ".join(f"{x:+.2f}" for x in e["per_seed"])
            cov = f"{e['cov90']:.2f}" if "cov90" in e else "-"
            lines.append(
                f"| {topo} ({res['entries']} entries) | {name} | {e['skill']:+.3f} | "
                f"[{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}] | {seeds} | {e['model']:.4g} | "
                f"{e['baseline']:.4g} | {cov} |"
            )
    lines += [
        "",
        "Training curves (training batches, all values, symlog units; `h20` = 1 - error of "
        "the 20-step prior rollout / error of persistence from its start):",
        "",
        "| model | update | wall s | h20 skill |",
        "|---|---:|---:|---:|",
    ]
    for name, curve in meta.get("curves", {}).items():
        step = max(1, len(curve) // 6)
        for c in [*curve[::step], curve[-1]] if curve else []:
            lines.append(
                f"| {Path(name).name} | {c['update']:.0f} | {c['wall_s']:.0f} | {c['h20']:+.3f} |"
            )
    return "\n".join(lines) + "\n"


def merge(paths: list[str], out_path: str, argv: list[str] | None) -> int:
    """Summarise the rows of several outputs together (e.g. one run per seed)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    rows = [r for d in parts for r in d["rows"]]
    meta = dict(parts[0]["meta"])
    meta["command"] = "python -m experiments.wm_graph_skill " + " ".join(argv or sys.argv[1:])
    meta["parts"] = [d["meta"]["command"] for d in parts]
    meta["wall_s"] = sum(d["meta"]["wall_s"] for d in parts)
    meta["models"] = {k: v for d in parts for k, v in d["meta"]["models"].items()}
    meta["curves"] = {k: v for d in parts for k, v in d["meta"].get("curves", {}).items()}
    summary = summarise(rows)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1)
    )
    out.with_suffix(".md").write_text(markdown(summary, meta))
    print(markdown(summary, meta))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Score the models on a suite; write ``<out>.json`` and ``<out>.md``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="*", default=[], help="fit-world-model folders")
    p.add_argument("--suite", default="train:validation")
    p.add_argument("--topologies", nargs="*", default=None)
    p.add_argument("--behaviours", nargs="+", default=["hpa", "runbook"])
    p.add_argument("--limit", type=int, default=None, help="first N entries per topology")
    p.add_argument("--horizon", type=int, default=20)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--n-samples", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--cache", default=None, help="folder of episode .npz files (reused when present)"
    )
    p.add_argument(
        "--merge",
        nargs="*",
        default=None,
        help="summarise the rows of these earlier outputs (.json) together instead of scoring",
    )
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out, argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    suite = load_suite(args.suite)
    topos = args.topologies or sorted({e.scenario.topology.name for e in suite.entries})
    fits = {m: load_fit(m) for m in args.models}
    rows: list[dict[str, Any]] = []
    for topo in topos:
        entries = [e for e in suite.entries if e.scenario.topology.name == topo][: args.limit]
        cached = (
            Path(args.cache) / f"{args.suite.replace(':', '_')}_{topo}_{'_'.join(args.behaviours)}"
            f"_{args.limit}.npz"
            if args.cache
            else None
        )
        if cached is not None and cached.exists():
            data = Collection.load(cached)
        else:
            data = collect(entries, args.behaviours, [0], args.workers, progress=False)
            if cached is not None:
                data.save(cached)
        if not fits:
            continue
        scen = {e.id: e.scenario for e in entries}
        for name, fit in fits.items():
            for i, (ep, em) in enumerate(zip(data.episodes, data.meta, strict=True)):
                r = score_episode(fit, scen[em.entry], ep, args, seed=1000 + i)
                rows.append(
                    {
                        "model": name,
                        "topology": topo,
                        "entry": em.entry,
                        "behaviour": em.behaviour,
                        **r,
                    }
                )
            print(f"{topo}: {name} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    meta = {
        "suite": args.suite,
        "command": "python -m experiments.wm_graph_skill " + " ".join(argv or sys.argv[1:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {platform.processor() or ''} 2 cores shared".strip(),
        "wall_s": time.perf_counter() - start,
        "models": {
            m: {k: f.spec["training"][k] for k in ("updates", "train_wall_s", "steps")}
            for m, f in fits.items()
        },
    }
    meta["curves"] = {m: training_curve(m) for m in args.models}
    summary = summarise(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1)
    )
    out.with_suffix(".md").write_text(markdown(summary, meta))
    print(markdown(summary, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
