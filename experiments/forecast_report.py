r"""Forecasts against strong baselines: runs, and every table and figure of forecast.md.

``experiments/results/forecast.md``; issue 17, under the protocol of ``docs/protocol.md``.

Score (fits the learning forecasters on ``train:fit`` episodes of chain3 and boutique, then
forecasts every episode of each suite split and topology; one JSON per (suite, topology,
forecaster, seed) under ``<results>/records/``)::

    python -m experiments.forecast_report score --forecasters persistence seasonal drift ets \\
        lightgbm --seeds 0 1 2 --suites train:validation holdout \\
        --topologies chain3 boutique mesh40

World models (one fit folder per training seed; ``model`` raw, ``model_cal`` calibrated)::

    python -m experiments.forecast_report score --forecasters model model_cal \\
        --models runs/wm_s0 runs/wm_s1 runs/wm_s2 --suites holdout

Report (reads only ``<results>/records/*.json``; writes ``<results>/summary.json``, the figures
``<results>/*.png`` and the tables into ``--out`` between :data:`START` and :data:`END`)::

    python -m experiments.forecast_report report

Episodes are cached in ``--cache`` (default ``runs/forecast_cache``): they do not depend on
any forecaster.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.run_config import RunConfigError
from agents.world_model.evaluation.bench import (
    collect_histories,
    fan_data,
    merge_scored,
    run_record,
    score_forecaster,
)
from agents.world_model.evaluation.config import model_on
from agents.world_model.evaluation.summary import BASELINES, Table, load_records, summarize
from agents.world_model.forecast.baselines import Drift, Persistence, SeasonalNaive
from agents.world_model.forecast.boosted import LightGBMDirect
from agents.world_model.forecast.forecaster import Forecaster, WorldModelForecaster
from agents.world_model.forecast.stats import StatsForecastBaseline

RESULTS = Path("experiments/results/forecast")
REPORT = Path("experiments/results/forecast.md")
START = "<!-- forecast-report:start -->"
END = "<!-- forecast-report:end -->"
"""Markers in ``--out`` between which :func:`report` writes the generated tables."""
TRAIN_TOPOLOGIES = ("chain3", "boutique")
"""Topologies of the ``train:fit`` episodes the learning baselines are fitted on."""
METRIC_UNITS = {"p99": "s", "rps": "rps", "error_rate": "", "replicas_ready": "pods"}


def make_forecaster(name: str, seed: int, horizon: int) -> Forecaster:
    """A baseline by name (``lightgbm`` takes the training seed)."""
    if name == "persistence":
        return Persistence(horizon=horizon)
    if name == "seasonal":
        return SeasonalNaive(horizon=horizon)
    if name == "drift":
        return Drift(horizon=horizon)
    if name == "ets":
        return StatsForecastBaseline("ets", horizon=horizon, window=60)
    if name == "arima":
        return StatsForecastBaseline("arima", horizon=horizon, window=40)
    if name == "lightgbm":
        return LightGBMDirect(horizon=horizon, seed=seed)
    raise SystemExit(
        f"--forecasters: unknown {name!r}; one of {', '.join(BASELINES)}, model, model_cal"
    )


def score(args: argparse.Namespace) -> None:
    """Fit and score every requested forecaster (see the module docstring)."""
    runs = Path(args.results) / "records"
    runs.mkdir(parents=True, exist_ok=True)
    train: list[Any] | None = None

    def train_eps() -> list[Any]:
        nonlocal train
        if train is None:
            train = [
                ep
                for t in TRAIN_TOPOLOGIES
                for ep in collect_histories(
                    "train:fit",
                    t,
                    args.behaviours,
                    args.train_replicates,
                    args.cache,
                    limit=args.train_limit,
                )
            ]
        return train

    wm_names = [n for n in args.forecasters if n in ("model", "model_cal")]
    if wm_names and not args.models:
        raise SystemExit("--forecasters model/model_cal need --models (one fit folder per seed)")
    # (names, seed, model folder): a model's raw and calibrated forecasts share one pass
    model_seeds = args.model_seeds or list(range(len(args.models)))
    if len(model_seeds) != len(args.models):
        raise SystemExit(
            f"--model-seeds: {len(model_seeds)} seeds for {len(args.models)} --models: one each"
        )
    jobs: list[tuple[list[str], int, str | None]] = [
        (wm_names, k, d) for k, d in zip(model_seeds, args.models, strict=True) if wm_names
    ]
    for name in args.forecasters:
        if name not in ("model", "model_cal"):
            jobs += [([name], s, None) for s in (args.seeds if name == "lightgbm" else [0])]
    settings = {
        "behaviours": list(args.behaviours),
        "replicates": args.replicates,
        "train_replicates": args.train_replicates,
        "every": args.every,
        "warmup": args.warmup,
        "limit": args.limit,
        "train_limit": args.train_limit,
        "n_samples": args.n_samples,
        "command": "python -m experiments.forecast_report " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    for names, seed, model_dir in jobs:
        t0 = time.perf_counter()
        fit: Any = None
        if model_dir is None:
            fitted = {names[0]: make_forecaster(names[0], seed, args.horizon).fit(train_eps())}
        else:
            from agents.world_model.fit import load_fit

            fit = load_fit(model_dir)
        fit_s = time.perf_counter() - t0
        print(f"{'+'.join(names)} seed {seed}: fitted in {fit_s:.1f} s", flush=True)
        for suite in args.suites:
            for topo in args.topologies:
                try:
                    eps = collect_histories(
                        suite, topo, args.behaviours, args.replicates, args.cache, limit=args.limit
                    )
                except ValueError as e:  # e.g. train:validation has no mesh40 entry
                    print(f"  skip {suite}/{topo}: {e}")
                    continue
                if fit is not None:
                    try:
                        model = model_on(fit, eps[0].scenario)
                    except RunConfigError as e:  # a flat model on another topology
                        print(f"  skip {suite}/{topo}: {e}")
                        continue
                    shared: dict[Any, Any] = {}
                    fitted = {
                        n: WorldModelForecaster(
                            model,
                            fit.calibration if n == "model_cal" else None,
                            n,
                            int(fit.spec["forecast"]["horizon"]),
                            n_samples=args.n_samples,
                            seed=seed,
                            shared=shared,
                        )
                        for n in names
                    }
                t1 = time.perf_counter()
                scored = score_all(list(fitted.values()), eps, args.warmup, args.every)
                for name, f in fitted.items():
                    rec = run_record(
                        f,
                        scored[name],
                        suite=suite,
                        topology=topo,
                        seed=seed,
                        fit_s=fit_s,
                        settings={**settings, "model": model_dir},
                    )
                    out = runs / f"{suite.replace(':', '-')}_{topo}_{name}_s{seed}.json"
                    out.write_text(json.dumps(rec, separators=(",", ":")))
                    print(
                        f"  {suite}/{topo}: {len(eps)} episodes, {scored[name]['origins']} "
                        f"origins, {time.perf_counter() - t1:.1f} s -> {out}",
                        flush=True,
                    )


def score_all(
    forecasters: list[Forecaster], eps: list[Any], warmup: int, every: int
) -> dict[str, dict[str, Any]]:
    """:func:`score_forecaster` of each forecaster, episode by episode in step.

    In step, so that adapters sharing a memo of one model's raw forecasts imagine each
    episode once.
    """
    parts: dict[str, list[dict[str, Any]]] = {f.name: [] for f in forecasters}
    for ep in eps:
        for f in forecasters:
            parts[f.name].append(score_forecaster(f, [ep], warmup=warmup, every=every, fan=False))
    out = {}
    for f in forecasters:
        merged = merge_scored(parts[f.name])
        merged["fan"] = fan_data(f, eps)
        out[f.name] = merged
    return out


# ------------------------------------------------------------------------------- report


def _ci(x: Sequence[float], pct: bool = False, digits: int = 3) -> str:
    est, lo, hi = x
    if est is None or (isinstance(est, float) and math.isnan(est)):
        return "-"
    if pct:
        return f"{100 * est:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"
    return f"{est:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"


def _tables(suite: str, topo: str, s: dict[str, Any], horizon_step: int) -> list[str]:
    st = str(horizon_step)
    fs = list(s["seeds"])
    lines = [f"### {suite} / {topo}", ""]
    lines.append(
        f"{s['entries']} entries"
        + (
            f" ({len(s['left_out'])} left out: not scored by every forecaster)"
            if s.get("left_out")
            else ""
        )
        + "; seeds per forecaster: "
        + ", ".join(f"`{f}` {len(v)}" for f, v in s["seeds"].items())
        + "; flat series (left out of MASE) at h=20: "
        + ", ".join(f"{m} {100 * v:.0f}%" for m, v in s["flat"].items())
        + "."
    )
    for window in ("all", "steady", "incident"):
        lines += [
            "",
            f"**{window}** windows, h = {horizon_step} (5 min): MASE, and skill vs the best "
            "baseline (named)"
            + (
                f"; events: {s['events'][window][0]:.0f} of {s['events'][window][1]:.0f} origins"
                if s.get("events")
                else ""
            ),
            "",
            "| forecaster | " + " | ".join(f"MASE {m}" for m in s["mase"][window]) + " |",
            "|---|" + "---:|" * len(s["mase"][window]),
        ]
        for f in fs:
            lines.append(
                f"| `{f}` | "
                + " | ".join(_ci(s["mase"][window][m][st][f]) for m in s["mase"][window])
                + " |"
            )
        lines.append(
            "| best baseline | "
            + " | ".join(f"`{s['skill'][window][m][st]['best']}`" for m in s["mase"][window])
            + " |"
        )
        for f in fs:
            if f in BASELINES:
                continue
            lines.append(
                f"| skill `{f}` | "
                + " | ".join(_ci(s["skill"][window][m][st][f], pct=True) for m in s["mase"][window])
                + " |"
            )
    lines += [
        "",
        f"All windows, h = {horizon_step}: CRPS (raw units) and 90 % interval coverage",
        "",
        "| forecaster | "
        + " | ".join(f"CRPS {m}" for m in s["crps"]["all"])
        + " | "
        + " | ".join(f"cov90 {m}" for m in s["cov90"]["all"])
        + " |",
        "|---|" + "---:|" * (2 * len(s["crps"]["all"])),
    ]
    for f in fs:
        lines.append(
            f"| `{f}` | "
            + " | ".join(_ci(s["crps"]["all"][m][st][f]) for m in s["crps"]["all"])
            + " | "
            + " | ".join(_ci(s["cov90"]["all"][m][st][f], digits=2) for m in s["cov90"]["all"])
            + " |"
        )
    lines += [
        "",
        "Brier score of P(SLO violation within 5 min)",
        "",
        "| forecaster | all | steady | incident |",
        "|---|---:|---:|---:|",
    ]
    for f in s["brier"]["all"]:
        if f in SAME_VIOLATION:
            continue
        label = (
            f"`{f}`" if f != "persistence" else "`naive` (persistence, seasonal, drift, ets, arima)"
        )
        lines.append(
            f"| {label} | "
            + " | ".join(_ci(s["brier"][w][f]) for w in ("all", "steady", "incident"))
            + " |"
        )
    return [*lines, ""]


SAME_VIOLATION = ("seasonal", "drift", "ets", "arima")
"""Baselines whose violation probability is persistence's (the naive one): shown once."""
TARGET_METRICS = ("p99", "error_rate", "replicas_ready")
"""Metrics of the issue's skill target."""


def _targets(summaries: dict[str, Any]) -> list[str]:
    """The issue-17 targets per holdout topology, for every non-baseline forecaster."""
    lines = [
        "### Targets (holdout, h = 20 = 5 min, all windows)",
        "",
        "Skill = 1 - MASE / MASE of the best baseline (target >= 30 %); coverage of the 90 % "
        "interval (target 85-95 %); Brier score of P(SLO violation within 5 min) (target "
        "<= 0.05 and below the best baseline's).",
        "",
        "| topology | forecaster | "
        + " | ".join(f"skill {m}" for m in TARGET_METRICS)
        + " | "
        + " | ".join(f"cov90 {m}" for m in TARGET_METRICS)
        + " | Brier | best baseline Brier |",
        "|---|---|" + "---:|" * (2 * len(TARGET_METRICS) + 2),
    ]
    for key, s in summaries.items():
        suite, topo = key.split("|")
        if suite != "holdout":
            continue
        learned = [f for f in s["seeds"] if f not in BASELINES]
        base_b = {f: v for f, v in s["brier"]["all"].items() if f in BASELINES}
        best_b = min(base_b, key=lambda f: base_b[f][0]) if base_b else None
        for f in learned or ["(no model scored)"]:
            if f not in s["seeds"]:
                lines.append(f"| {topo} | {f} |" + " - |" * (2 * len(TARGET_METRICS) + 2))
                continue
            sk = [_ci(s["skill"]["all"][m]["20"][f], pct=True) for m in TARGET_METRICS]
            cov = [_ci(s["cov90"]["all"][m]["20"][f], digits=2) for m in TARGET_METRICS]
            br = _ci(s["brier"]["all"][f]) if f in s["brier"]["all"] else "-"
            bb = f"`{best_b}` {_ci(base_b[best_b])}" if best_b else "-"
            lines.append(f"| {topo} | `{f}` | " + " | ".join([*sk, *cov, br, bb]) + " |")
    return [*lines, ""]


def _plots(
    results: Path, groups: dict[tuple[str, str], list[dict[str, Any]]], summaries: dict[str, Any]
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for (suite, topo), recs in sorted(groups.items()):
        if suite != "holdout":
            continue
        fans = [
            (r["forecaster"], r["fan"])
            for r in recs
            if r.get("fan")
            and r["seed"] == min(x["seed"] for x in recs if x["forecaster"] == r["forecaster"])
        ]
        if not fans:
            continue
        order = {b: i for i, b in enumerate(BASELINES)}
        fans.sort(key=lambda nf: (order.get(nf[0], len(order)), nf[0]))
        fig, axes = plt.subplots(
            1, len(fans), figsize=(3.2 * len(fans), 3.0), sharey=True, squeeze=False
        )
        for ax, (name, fan) in zip(axes[0], fans, strict=True):
            lo, hi = fan["rows"]
            dt_min = fan["dt_s"] / 60.0
            x = (np.arange(lo, hi) - fan["onset_row"]) * dt_min
            truth = np.array([np.nan if v is None else v for v in fan["truth"]])
            ax.plot(x, truth, color="black", lw=1.0)
            for o, q in zip(fan["origins"], fan["fan"], strict=True):
                q = np.asarray(q)  # [Q, H]
                xs = (o + np.arange(1, q.shape[1] + 1) - fan["onset_row"]) * dt_min
                ax.fill_between(xs, q[0], q[-1], alpha=0.25, color="tab:blue", lw=0)
                ax.fill_between(xs, q[1], q[-2], alpha=0.35, color="tab:blue", lw=0)
                ax.plot(xs, q[len(q) // 2], color="tab:blue", lw=0.8)
            ax.axvline(0.0, color="tab:red", lw=0.6, ls="--")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("minutes from fault onset", fontsize=8)
        axes[0][0].set_ylabel(f"p99 (s), {fans[0][1]['service']}", fontsize=8)
        fig.suptitle(
            f"{topo}: {fans[0][1]['entry']} ({fans[0][1]['behaviour']}), 5/25/50/75/95 %",
            fontsize=9,
        )
        fig.tight_layout()
        path = results / f"fan_{topo}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made.append(path.name)
    for key, s in sorted(summaries.items()):
        if not s.get("reliability"):
            continue
        fig, ax = plt.subplots(figsize=(3.6, 3.4))
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls="--")
        for f, bins in s["reliability"].items():
            if f in SAME_VIOLATION:
                continue
            pts = [(b[0], b[1]) for b in bins if b[0] is not None]
            if pts:
                ax.plot(
                    *zip(*pts, strict=True),
                    marker="o",
                    ms=3,
                    lw=1.0,
                    label="naive" if f == "persistence" else f,
                )
        ax.set_xlabel("forecast P(violation within 5 min)", fontsize=8)
        ax.set_ylabel("observed frequency", fontsize=8)
        ax.set_title(key.replace("|", " / "), fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = results / f"reliability_{key.replace('|', '_').replace(':', '-')}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made.append(path.name)
    return made


def _rounded(x: Any) -> Any:
    """Floats to 4 significant digits (NaN: None), recursively."""
    if isinstance(x, dict):
        return {str(k): _rounded(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_rounded(v) for v in x]
    if isinstance(x, float):
        return None if math.isnan(x) else float(f"{x:.4g}")
    return x


def report(args: argparse.Namespace) -> None:
    """Rebuild ``summary.json``, the figures and the tables from the run records."""
    results = Path(args.results)
    records = load_records(results / "records")
    if not records:
        raise SystemExit(f"no run records under {results / 'records'}; run 'score' first")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["suite"], r["topology"]), []).append(r)
    summaries, lines = {}, []
    order = {"train:validation": 0, "holdout": 1}
    topo_order = {"chain3": 0, "boutique": 1, "mesh40": 2}
    for suite, topo in sorted(groups, key=lambda k: (order.get(k[0], 9), topo_order.get(k[1], 9))):
        s = summarize(Table(groups[(suite, topo)]), n_boot=args.n_boot)
        summaries[f"{suite}|{topo}"] = s
        lines += _tables(suite, topo, s, 20)
    lines = _targets(summaries) + lines
    made = _plots(results, groups, summaries)
    (results / "summary.json").write_text(json.dumps(_rounded(summaries), separators=(",", ":")))
    machine = (
        f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    )
    cost = [
        "",
        "Cost per forecaster (fit seconds; predict seconds per origin, mean over runs):",
        "",
    ]
    cost += ["| forecaster | fit s | predict ms / origin |", "|---|---:|---:|"]
    by_f: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_f.setdefault(r["forecaster"], []).append(r)
    for f, rs in sorted(by_f.items()):
        per = 1000 * sum(r["predict_s"] for r in rs) / max(1, sum(r["origins"] for r in rs))
        cost.append(f"| `{f}` | {np.mean([r['fit_s'] for r in rs]):.0f} | {per:.1f} |")
    figs = [f"![{m}](forecast/{m})" for m in made]
    block = "\n".join(
        [
            START,
            f"_Generated by `python -m experiments.forecast_report report` ({machine})._",
            "",
            *lines,
            *cost,
            "",
            *figs,
            END,
        ]
    )
    out = Path(args.out)
    text = out.read_text() if out.exists() else ""
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text = text + ("\n" if text else "") + block + "\n"
    out.write_text(text)
    print(f"wrote {out}, {results / 'summary.json'} and {len(made)} figures")


def main(argv: Sequence[str] | None = None) -> None:
    """``score`` or ``report`` (see the module docstring)."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    sc = sub.add_parser("score", help="fit and score forecasters, one JSON per run")
    sc.add_argument("--forecasters", nargs="+", required=True)
    sc.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    sc.add_argument("--models", nargs="*", default=[])
    sc.add_argument(
        "--model-seeds", nargs="*", type=int, default=[], help="training seed of each --models"
    )
    sc.add_argument("--suites", nargs="+", default=["train:validation", "holdout"])
    sc.add_argument("--topologies", nargs="+", default=["chain3", "boutique", "mesh40"])
    sc.add_argument("--behaviours", nargs="+", default=["hpa", "runbook"])
    sc.add_argument("--replicates", type=int, default=3)
    sc.add_argument("--train-replicates", type=int, default=1)
    sc.add_argument("--every", type=int, default=8)
    sc.add_argument("--warmup", type=int, default=20)
    sc.add_argument("--horizon", type=int, default=20)
    sc.add_argument("--n-samples", type=int, default=64)
    sc.add_argument("--limit", type=int, default=None, help="first entries per topology")
    sc.add_argument("--train-limit", type=int, default=None, help="first train:fit entries")
    sc.add_argument("--cache", default="runs/forecast_cache")
    sc.add_argument("--results", default=str(RESULTS))
    rp = sub.add_parser("report", help="tables and figures from the run records")
    rp.add_argument("--results", default=str(RESULTS))
    rp.add_argument("--out", default=str(REPORT))
    rp.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    if args.cmd == "score":
        score(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
