r"""Choose each training seed's checkpoint of a residual run on ``train:validation``.

``docs/protocol.md``: checkpoints are chosen on the validation split only. For every
``<runs>/seed_<s>/checkpoints/model_<N>_steps.zip`` (and the final ``model.zip``) this

1. makes a run dir of it (``config.yaml`` + the checkpoint's model and ``VecNormalize``
   statistics, under ``<out>/candidates/seed_<s>_<N>``);
2. evaluates every candidate and ``tuned_runbook`` with ``opsworld evaluate`` on the
   validation split (``--suite``, ``--topology``, ``--seeds`` replicates);
3. per seed, picks the candidate with the fewest mean SLO-violation minutes among those whose
   mean allocated cost and mean disruptive actions are at most ``tuned_runbook``'s on the
   same runs (the budgets); when none is within budget, the one with the smallest budget
   excess (reported as such);

and writes ``<out>/selection.json`` and ``<out>/selection.md`` (every candidate's figures,
the pick per seed) and ``<out>/chosen/seed_<s>`` (the chosen run dirs, for ``opsworld
evaluate`` and ``experiments.control_report``)::

    python -m experiments.residual_select --runs runs/residual --out runs/residual_val \\
        --suite train:validation --topology chain3 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_CKPT = re.compile(r"model_(\d+)_steps\.zip$")


def candidates(runs: Path, out: Path) -> dict[str, Path]:
    """Run dirs of every checkpoint and final model: ``seed_<s>_<N>`` -> dir."""
    made: dict[str, Path] = {}
    for run in sorted(runs.glob("seed_*")):
        items: list[tuple[str, Path, Path]] = []
        for ck in sorted((run / "checkpoints").glob("model_*_steps.zip")):
            m = _CKPT.search(ck.name)
            if m:
                stats = ck.with_name(f"model_vecnormalize_{m.group(1)}_steps.pkl")
                items.append((m.group(1), ck, stats))
        if (run / "model.zip").exists():
            items.append(("final", run / "model.zip", run / "vecnormalize.pkl"))
        for tag, model, stats in items:
            d = out / "candidates" / f"{run.name}_{tag}"
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(run / "config.yaml", d / "config.yaml")
            shutil.copy(model, d / "model.zip")
            shutil.copy(stats, d / "vecnormalize.pkl")
            made[d.name] = d
    if not made:
        raise SystemExit(f"error: no seed_*/checkpoints or model.zip under {runs}")
    return made


def summary(results: Path) -> dict[str, float]:
    """Mean SLO minutes, allocated cost and disruptive actions of one ``results.json``."""
    runs = json.loads(results.read_text())["per_run"]
    n = len(runs)
    return {
        "runs": n,
        "slo_violation_min": sum(r["slo_violation_min"] for r in runs) / n,
        "allocated_cost": sum(r["allocated_cost"] for r in runs) / n,
        "disruptive_actions": sum(r["disruptive_actions"] for r in runs) / n,
    }


def pick(rows: dict[str, dict[str, float]], ref: dict[str, float]) -> tuple[str, bool]:
    """The chosen candidate name and whether it is within both budgets."""

    def excess(r: dict[str, float]) -> float:
        return max(0.0, r["allocated_cost"] / ref["allocated_cost"] - 1.0) + max(
            0.0, r["disruptive_actions"] - ref["disruptive_actions"]
        )

    within = [k for k, r in rows.items() if excess(r) <= 1e-12]
    if within:
        return min(within, key=lambda k: rows[k]["slo_violation_min"]), True
    return min(rows, key=lambda k: (excess(rows[k]), rows[k]["slo_violation_min"])), False


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.residual_select``; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m experiments.residual_select")
    parser.add_argument("--runs", required=True, help="multi-seed train output (seed_*/)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--suite", default="train:validation")
    parser.add_argument("--topology", default="chain3")
    parser.add_argument("--seeds", type=int, default=3, help="replicates per entry")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    out = Path(args.out)
    made = candidates(Path(args.runs), out)
    policies = [str(p) for p in made.values()] + ["tuned_runbook"]
    cmd = [
        str(Path(sys.executable).with_name("opsworld")),
        "evaluate",
        f"policies=[{','.join(policies)}]",
        f"suite={args.suite}",
        f"topology={args.topology}",
        f"seeds={args.seeds}",
        f"workers={args.workers}",
        "timelines=0",
        f"out={out / 'eval'}",
    ]
    subprocess.run(cmd, check=True)
    ref = summary(out / "eval" / "tuned_runbook" / "results.json")
    rows = {name: summary(out / "eval" / f"sb3-{name}" / "results.json") for name in made}
    chosen: dict[str, Any] = {}
    by_seed: dict[str, dict[str, dict[str, float]]] = {}
    for name, r in rows.items():
        by_seed.setdefault(name.rsplit("_", 1)[0], {})[name] = r
    for seed, group in sorted(by_seed.items()):
        best, ok = pick(group, ref)
        chosen[seed] = {"candidate": best, "within_budget": ok, **group[best]}
        dest = out / "chosen" / seed
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(made[best], dest)
    record = {"command": " ".join(cmd), "reference": ref, "candidates": rows, "chosen": chosen}
    (out / "selection.json").write_text(json.dumps(record, indent=2))
    lines = [
        f"# Checkpoint choice on `{args.suite}` ({args.topology}, {args.seeds} replicates)",
        "",
        f"`tuned_runbook`: {ref['slo_violation_min']:.3f} SLO min, cost "
        f"{ref['allocated_cost']:.4f}, {ref['disruptive_actions']:.2f} disruptive actions.",
        "",
        "| candidate | SLO min | allocated cost | disruptive actions | chosen |",
        "|---|---:|---:|---:|:---:|",
    ]
    picked = {c["candidate"] for c in chosen.values()}
    for name, r in sorted(rows.items()):
        lines.append(
            f"| `{name}` | {r['slo_violation_min']:.3f} | {r['allocated_cost']:.4f} | "
            f"{r['disruptive_actions']:.2f} | {'yes' if name in picked else ''} |"
        )
    (out / "selection.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
