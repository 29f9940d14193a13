r"""Why a graph world model forecasts worse than persistence: errors on its training data.

For each model (a ``fit-world-model`` folder or a trainer ``checkpoint.pt``) and each
training topology, on ``--batch`` sequences drawn from the saved ``train:fit`` episodes
(:mod:`experiments.wm_graph_collect`), the prior is rolled 20 steps from the posterior at
step 20 under the actions taken, as a forecast is, and its decoded mean compared with
persistence (the value at the start) in symlog units, the units of the training loss:

* squared and absolute error ratios to persistence at k = 1, 5, 10, 20 steps, with the
  latents sampled (as forecasts draw them) and at their mode;
* the same ratios of the posterior's decode (the ``dec`` term's prediction);
* the 20-step absolute error summed per feature, model and persistence.

A ratio below 1 in squared error but above 1 in absolute error is the signature of a mean
(what a squared-error loss trains) where a median (what MASE scores) was wanted::

    python -m experiments.wm_graph_diagnose runs/graph_s0 runs/curve/mae_det_s0/checkpoint.pt \
        --episodes runs/train_fit_episodes.npz --out experiments/results/wm_graph_diagnosis
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from agents.world_model.data import Collection
from agents.world_model.graph import BoundGraphModel, TopologyGraph
from agents.world_model.replay import Replay
from agents.world_model.trainer import load_model
from envs.scenarios.suites import load_suite

STEPS = (1, 5, 10, 20)
START = 20


def _model(path: str) -> BoundGraphModel:
    p = Path(path)
    if (p / "spec.json").exists():
        from agents.world_model.fit import load_fit

        model = load_fit(p).model
    else:
        model = load_model(p)
    if not isinstance(model, BoundGraphModel):
        raise SystemExit(f"{path}: not a wm.arch=graph model")
    return model


@torch.no_grad()
def diagnose(model: BoundGraphModel, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The ratios and per-feature errors of the module docstring on one batch."""
    lay = model.layout
    gen = torch.Generator().manual_seed(0)
    _, post = model.observe(batch["obs"], batch["action"], batch["is_first"], generator=gen)
    carry = post.carry(START)
    sl = slice(START + 1, START + 21)
    target = batch["obs"][:, sl, lay.values]
    fresh = (batch["is_first"][:, sl].cumsum(1) == 0).float()[..., None]
    mask = batch["obs"][:, sl, lay.mask] * fresh
    pers = carry.last[:, None, :].expand_as(target)
    n = mask.sum((0, 2))
    out: dict[str, Any] = {}
    for name, sample in (("sampled", True), ("mode", False)):
        roll = model.imagine(carry, batch["action"][:, sl], sample=sample, generator=gen)
        mean, _ = model.decode(model.feat(roll))
        em, ep = (mean - target) * mask, (pers - target) * mask
        out[name] = {
            str(k): {
                "mse_ratio": float((em[:, k - 1] ** 2).sum() / (ep[:, k - 1] ** 2).sum()),
                "mae_ratio": float(em[:, k - 1].abs().sum() / ep[:, k - 1].abs().sum()),
                "persistence_mae": float(ep[:, k - 1].abs().sum() / n[k - 1]),
            }
            for k in STEPS
        }
        if sample:
            last_m, last_p = em[:, -1].abs().sum(0), ep[:, -1].abs().sum(0)
            nf, s = lay.n_service_features, lay.n_services
            feats: dict[str, list[float]] = {}
            for i, f in enumerate(lay.service_features):
                idx = [j * nf + i for j in range(s)]
                feats[f] = [float(last_m[idx].sum()), float(last_p[idx].sum())]
            for i, f in enumerate(lay.cluster_features):
                feats[f"cluster/{f}"] = [float(last_m[s * nf + i]), float(last_p[s * nf + i])]
            out["h20_abs_error_by_feature"] = feats
    dec, _ = model.decode(model.feat(post))
    t, m = batch["obs"][..., lay.values], batch["obs"][..., lay.mask]
    out["posterior"] = {
        "mse_ratio": float((((dec - t) ** 2) * m).sum() / (((post.base - t) ** 2) * m).sum()),
        "mae_ratio": float((((dec - t).abs()) * m).sum() / (((post.base - t).abs()) * m).sum()),
    }
    return out


def markdown(res: dict[str, Any], meta: dict[str, Any]) -> str:
    """Tables of :func:`diagnose`'s results."""
    lines = [
        "# Graph world model against persistence on its own training data (issue 17)",
        "",
        f"Made by `{meta['command']}` ({meta['date']}); {meta['batch']} sequences of 41 steps "
        f"per topology from `{meta['episodes']}`, prior rolled from the posterior at step "
        f"{START}; errors in symlog units (the loss's). Ratio = model / persistence "
        "(below 1: better than persistence).",
        "",
        "| model | topology | latents | MSE ratio k=1, 5, 10, 20 | MAE ratio k=1, 5, 10, 20 "
        "| posterior decode MSE / MAE ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, by_topo in res.items():
        for topo, r in by_topo.items():
            for lat in ("sampled", "mode"):
                mse = ", ".join(f"{r[lat][str(k)]['mse_ratio']:.3f}" for k in STEPS)
                mae = ", ".join(f"{r[lat][str(k)]['mae_ratio']:.3f}" for k in STEPS)
                post = f"{r['posterior']['mse_ratio']:.3f} / {r['posterior']['mae_ratio']:.3f}"
                lines.append(f"| {name} | {topo} | {lat} | {mse} | {mae} | {post} |")
    lines += [
        "",
        "20-step absolute error summed over the batch, sampled latents (model / persistence):",
        "",
    ]
    for name, by_topo in res.items():
        for topo, r in by_topo.items():
            cells = ", ".join(
                f"{f} {a:.1f}/{b:.1f}" for f, (a, b) in r["h20_abs_error_by_feature"].items()
            )
            lines.append(f"- {name}, {topo}: {cells}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Diagnose the models; write ``<out>.json`` and ``<out>.md``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="fit folders or checkpoint.pt files")
    p.add_argument("--episodes", default="runs/train_fit_episodes.npz")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", default="experiments/results/wm_graph_diagnosis")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    scen = {e.id: e.scenario for e in load_suite("train:fit").entries}
    data = Collection.load(args.episodes)
    res: dict[str, Any] = {}
    for path in args.models:
        model = _model(path)
        res[path] = {}
        for topo in ("chain3", "boutique"):
            eps = [
                ep
                for ep, m in zip(data.episodes, data.meta, strict=True)
                if scen[m.entry].topology.name == topo
            ]
            graph = TopologyGraph.from_topology(
                next(s.topology for s in scen.values() if s.topology.name == topo)
            )
            rep = Replay(capacity=sum(len(e["obs"]) for e in eps), seq_len=START + 21, seed=1)
            for ep in eps:
                rep.add(ep)
            batch = {
                k: torch.as_tensor(v, dtype=torch.float32)
                for k, v in rep.sample(args.batch).items()
            }
            res[path][topo] = diagnose(model.bind(graph).eval(), batch)
    meta = {
        "command": "python -m experiments.wm_graph_diagnose " + " ".join(argv or sys.argv[1:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "episodes": args.episodes,
        "batch": args.batch,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": res}, indent=1))
    out.with_suffix(".md").write_text(markdown(res, meta))
    print(markdown(res, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
