r"""Skill of the graph world model against training time, on ``train:validation`` (issue 17).

``train`` fits one ``wm.arch=graph`` model on saved ``train:fit`` episodes of chain3 and
boutique (:mod:`experiments.wm_graph_collect`'s ``.npz``) with the settings of the issue-17
fits (``size=tiny``, ``seq_len=32``, 20-step overshooting, ``lr=3e-4``; ``--set`` changes
any :class:`~agents.world_model.config.WorldModelConfig` field) and, at every
``--eval-at`` update count, scores the RAW model (no calibration: the question is whether
training moves it above or below persistence) on every ``train:validation`` episode of both
topologies with the evaluation's own scorer
(:func:`~agents.world_model.evaluation.bench.score_forecaster`: median of the draws, MASE
scaled by each series' in-sample naive error). It records per evaluation point the updates,
the training process's CPU seconds (evaluation excluded), wall seconds and the load average,
and the per-entry score sums in ``forecast_report``'s record format; the JSON is rewritten
after every point and ``checkpoint.pt`` after the last::

    nice -n 15 python -m experiments.wm_graph_curve train --label mae_det --seed 0 \
        --set dec_loss=mae dec_stoch=false --eval-at 0 100 250 500 --out runs/curve/mae_det_s0

``report`` pools the runs of each label (one per training seed) at each update count
and, with the persistence and LightGBM records of ``forecast_report`` on the same
episodes, writes the skill at h = 20 per topology and metric with 95 % bootstrap intervals over
entries and seeds (:func:`~agents.world_model.evaluation.summary.summarize`)::

    python -m experiments.wm_graph_curve report runs/curve/*/curve.json \
        --out experiments/results/wm_graph_curve

Episodes: ``collect_histories("train:validation", topology, ["hpa", "runbook"], 1, cache)``,
the episodes ``forecast_report`` scored the baselines on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.world_model.config import ObsLayout, WorldModelConfig
from agents.world_model.data import Collection
from agents.world_model.evaluation.bench import collect_histories, run_record, score_forecaster
from agents.world_model.evaluation.summary import Table, load_records, summarize
from agents.world_model.fit.train import build_trainer, train_world_model
from agents.world_model.forecast import METRICS
from agents.world_model.forecast.forecaster import WorldModelForecaster
from agents.world_model.graph import BoundGraphModel, TopologyGraph
from envs.gym.encoder import ACTION_CLUSTER_FEATURES, ACTION_SERVICE_FEATURES
from envs.scenarios.suites import load_suite

TOPOLOGIES = ("chain3", "boutique")
BASE_CONFIG: dict[str, Any] = {
    "arch": "graph",
    "size": "tiny",
    "batch": 16,
    "seq_len": 32,
    "lr": 3e-4,
    "overshoot": 20,
    "overshoot_stride": 16,
    "overshoot_heads": True,
    "dec_loss": "mse",
    "dec_layers": 1,
    "img_layers": 1,
    "threads": 1,
}
"""The settings of issue 17's first graph fits (docs/forecasting.md), before ``--set``."""
RECORDS = Path("experiments/results/forecast/records")


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: v}`` (bools, ints and floats parsed)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or key not in WorldModelConfig.model_fields:
            raise SystemExit(
                f"--set {item!r}: want field=value with a WorldModelConfig field "
                f"(e.g. dec_loss=mae)"
            )
        out[key] = _value(val)
    return out


def validation_histories(cache: str, topology: str) -> list[Any]:
    """The ``train:validation`` episodes of ``topology`` (hpa and runbook, replicate 0)."""
    return collect_histories("train:validation", topology, ["hpa", "runbook"], 1, cache)


def _load() -> float:
    return os.getloadavg()[0]


def train(args: argparse.Namespace) -> int:
    """Fit with evaluations along the way (see the module docstring)."""
    torch.set_num_threads(1)
    cfg = WorldModelConfig.model_validate({**BASE_CONFIG, **parse_sets(args.set)})
    fit_entries = load_suite("train:fit").entries
    topo_of = {e.id: e.scenario.topology for e in fit_entries}
    data = Collection.load(args.episodes)
    graphs = {
        t: TopologyGraph.from_topology(
            next(e.scenario.topology for e in fit_entries if e.scenario.topology.name == t)
        )
        for t in TOPOLOGIES
    }
    first = graphs[TOPOLOGIES[0]]
    layout = ObsLayout(n_services=first.n_services)
    n_act = len(ACTION_SERVICE_FEATURES) * first.n_services + len(ACTION_CLUSTER_FEATURES)
    trainer = build_trainer(layout, n_act, cfg, args.seed, init=args.init, graph=first)
    bound = trainer.model
    assert isinstance(bound, BoundGraphModel), type(bound)
    models = {t: bound.bind(g) for t, g in graphs.items()}
    groups = [
        (
            models[t],
            [
                ep
                for ep, m in zip(data.episodes, data.meta, strict=True)
                if topo_of[m.entry].name == t
            ],
        )
        for t in TOPOLOGIES
    ]
    val = {t: validation_histories(args.cache, t) for t in TOPOLOGIES}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "label": args.label,
        "seed": args.seed,
        "config": cfg.model_dump(),
        "sets": parse_sets(args.set),
        "episodes": args.episodes,
        "train_episodes": {t: len(g[1]) for t, g in zip(TOPOLOGIES, groups, strict=True)},
        "command": "python -m experiments.wm_graph_curve " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores",
        "n_samples": args.n_samples,
    }
    points: list[dict[str, Any]] = []
    cpu, wall, loads = 0.0, 0.0, []
    if args.init is not None:  # continue an earlier run: its points and its clocks
        prev = json.loads((Path(args.init) / "curve.json").read_text())
        points = list(prev["points"])
        cpu, wall = float(points[-1]["cpu_s"]), float(points[-1]["wall_s"])
        meta["continues"] = prev["meta"]["command"]
    budget = None if args.max_cpu_minutes is None else 60.0 * args.max_cpu_minutes
    for target in sorted(set(args.eval_at)):
        todo = target - trainer.steps
        if todo > 0 and (budget is None or cpu < budget):
            c0, w0 = time.process_time(), time.perf_counter()
            left = float("inf") if budget is None else budget - cpu
            _train_cpu(trainer, groups, todo, args.seed, left)
            cpu += time.process_time() - c0
            wall += time.perf_counter() - w0
            loads.append(_load())
        elif todo > 0:
            break
        records = {}
        e0 = time.perf_counter()
        for t in TOPOLOGIES:
            f = WorldModelForecaster(
                models[t], None, args.label, 20, n_samples=args.n_samples, seed=args.seed
            )
            for m in models.values():
                m.eval()
            scored = score_forecaster(f, val[t], fan=False)
            records[t] = run_record(
                f,
                scored,
                suite="train:validation",
                topology=t,
                seed=args.seed,
                fit_s=cpu,
                settings={"updates": trainer.steps, "command": meta["command"]},
            )
        points.append(
            {
                "updates": trainer.steps,
                "cpu_s": round(cpu, 1),
                "wall_s": round(wall, 1),
                "load1": round(float(np.mean(loads)) if loads else _load(), 2),
                "eval_s": round(time.perf_counter() - e0, 1),
                "records": records,
            }
        )
        (out / "curve.json").write_text(json.dumps({"meta": meta, "points": points}))
        trainer.save(out / "checkpoint.pt")
        print(
            f"{args.label} s{args.seed}: {trainer.steps} updates, cpu {cpu:.0f} s, "
            f"wall {wall:.0f} s, load {points[-1]['load1']}, eval {points[-1]['eval_s']} s "
            + _brief(records),
            flush=True,
        )
    return 0


def _train_cpu(
    trainer: Any, groups: list[tuple[Any, list[Any]]], updates: int, seed: int, cpu_left: float
) -> None:
    """``updates`` updates in chunks of 50, stopping once ``cpu_left`` CPU seconds are used."""
    c0 = time.process_time()
    done = 0
    while done < updates and time.process_time() - c0 < cpu_left:
        n = min(50, updates - done)
        train_world_model(trainer, [], n, seed, None, n, groups=groups)
        done += n


def _mase_h(record: dict[str, Any], metric: str, step: int) -> float:
    i = record["steps"].index(step)
    w = record["windows"].index("all")
    sums = np.sum([np.asarray(e["metrics"][metric])[w, i] for e in record["entries"].values()], 0)
    return float(sums[0] / sums[1]) if sums[1] else float("nan")


def _brief(records: dict[str, Any]) -> str:
    parts = []
    for t, r in records.items():
        parts.append(t + " " + " ".join(f"{m}={_mase_h(r, m, 20):.2f}" for m in METRICS))
    return "| MASE h20: " + "; ".join(parts)


def report(args: argparse.Namespace) -> int:
    """Pool the runs per label and update count; skills with intervals (module docstring)."""
    runs = [json.loads(Path(p).read_text()) for p in args.runs]
    baselines = [
        r
        for r in load_records(args.records)
        if r["suite"] == "train:validation" and r["forecaster"] in ("persistence", "lightgbm")
    ]
    labels = sorted({r["meta"]["label"] for r in runs})
    rows: list[dict[str, Any]] = []
    for label in labels:
        mine = [r for r in runs if r["meta"]["label"] == label]
        counts = sorted({p["updates"] for r in mine for p in r["points"]})
        for u in counts:
            have = [(r, p) for r in mine for p in r["points"] if p["updates"] == u]
            pts = [p for _, p in have]
            row: dict[str, Any] = {
                "label": label,
                "seeds": [r["meta"]["seed"] for r, _ in have],
                "updates": [p["updates"] for p in pts],
                "cpu_s": [p["cpu_s"] for p in pts],
                "wall_s": [p["wall_s"] for p in pts],
                "load1": [p["load1"] for p in pts],
                "skill": {},
            }
            for t in TOPOLOGIES:
                recs = [p["records"][t] for p in pts] + [b for b in baselines if b["topology"] == t]
                s = summarize(Table(recs), n_boot=args.n_boot)
                pers = [b for b in recs if b["forecaster"] != "lightgbm"]
                sp = summarize(Table(pers), n_boot=args.n_boot)  # persistence the only baseline
                row["skill"][t] = {}
                row.setdefault("ratio_by_step", {})[t] = {
                    m: {
                        st: sp["mase"]["all"][m][st][label][0]
                        / sp["mase"]["all"][m][st]["persistence"][0]
                        for st in sp["mase"]["all"][m]
                    }
                    for m in METRICS
                }
                for m in METRICS:
                    sk = s["skill"]["all"][m]["20"]
                    mase = s["mase"]["all"][m]["20"]
                    row["skill"][t][m] = {
                        "mase": mase[label],
                        "persistence": mase["persistence"][0],
                        "lightgbm": mase["lightgbm"][0],
                        "best": sk["best"],
                        "skill_best": sk[label],
                        "skill_persistence": sp["skill"]["all"][m]["20"][label],
                    }
            rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python -m experiments.wm_graph_curve report " + " ".join(sys.argv[2:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "runs": {f"{r['meta']['label']}_s{r['meta']['seed']}": r["meta"] for r in runs},
        "notes": list(args.note),
    }
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


def _cell(x: list[float]) -> str:
    lo, hi = x[1] * 100, x[2] * 100
    return f"{x[0] * 100:+.0f}% [{lo:+.0f}, {hi:+.0f}]"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The curve as tables (one row per label and evaluation point)."""
    lines = [
        "# Graph world model: skill against training time (train:validation, h = 20)",
        "",
        f"Made by `{meta['command']}` ({meta['date']}) from the runs below; the baselines are "
        "`forecast_report`'s records on the same episodes.",
        "",
    ]
    for name, m in sorted(meta["runs"].items()):
        lines.append(f"- `{name}`: `{m['command']}` ({m['date']}; {m['machine']})")
    lines += ["", *meta.get("notes", [])] if meta.get("notes") else []
    lines += [
        "",
        "Raw model (no calibration), median of "
        f"{next(iter(meta['runs'].values()))['n_samples']} draws, MASE at h = 20 (5 min), all "
        "windows, pooled over entries and seeds; skill = 1 - MASE / MASE of persistence "
        "(`vs pers`) or of the best baseline (`vs best`, LightGBM unless named); 95 % "
        "bootstrap intervals over entries and seeds. CPU s: the training process's CPU "
        "seconds (evaluations excluded), mean over seeds; load: 1-minute load average of the "
        "2-core machine during training.",
        "",
    ]
    for t in TOPOLOGIES:
        lines += [
            f"## {t}",
            "",
            "| config | seeds | updates | CPU s | load | "
            + " | ".join(f"{m} vs pers | {m} vs best" for m in METRICS)
            + " |",
            "|---|---:|---:|---:|---:|" + "---:|---:|" * len(METRICS),
        ]
        for r in rows:
            cells = []
            for m in METRICS:
                c = r["skill"][t][m]
                best = "" if c["best"] == "lightgbm" else f" ({c['best']})"
                cells += [_cell(c["skill_persistence"]), _cell(c["skill_best"]) + best]
            lines.append(
                f"| {r['label']} | {len(r['seeds'])} | {np.mean(r['updates']):.0f} | "
                f"{np.mean(r['cpu_s']):.0f} | "
                f"{np.mean(r['load1']):.1f} | " + " | ".join(cells) + " |"
            )
        lines.append("")
    lines += [
        "## MASE of the raw model / MASE of persistence, by horizon (all windows)",
        "",
        "Steps of 15 s; below 1: better than persistence.",
        "",
        "| config | updates | topology | "
        + " | ".join(f"{m} h=1, 4, 10, 20" for m in METRICS)
        + " |",
        "|---|---:|---|" + "---|" * len(METRICS),
    ]
    for r in rows:
        for t in TOPOLOGIES:
            by = r["ratio_by_step"][t]
            cells = [", ".join(f"{v:.3f}" for v in by[m].values()) for m in METRICS]
            lines.append(
                f"| {r['label']} | {np.mean(r['updates']):.0f} | {t} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``train`` or ``report``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--label", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--set", nargs="*", default=[], help="WorldModelConfig field=value")
    t.add_argument("--episodes", default="runs/train_fit_episodes.npz")
    t.add_argument("--cache", default="runs/forecast_cache")
    t.add_argument("--eval-at", type=int, nargs="+", default=[0, 100, 250, 500])
    t.add_argument("--max-cpu-minutes", type=float, default=None)
    t.add_argument("--n-samples", type=int, default=32)
    t.add_argument("--out", required=True)
    t.add_argument(
        "--init", default=None, help="a run folder to continue (checkpoint.pt, curve.json)"
    )
    r = sub.add_parser("report")
    r.add_argument("runs", nargs="+", help="curve.json files")
    r.add_argument("--records", default=str(RECORDS))
    r.add_argument("--n-boot", type=int, default=1000)
    r.add_argument("--out", default="experiments/results/wm_graph_curve")
    r.add_argument("--note", nargs="*", default=[], help="lines of text added under the runs")
    args = p.parse_args(argv)
    return train(args) if args.cmd == "train" else report(args)


if __name__ == "__main__":
    raise SystemExit(main())
