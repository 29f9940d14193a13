"""Multi-seed training: one run per seed as independent tasks, and a summary across seeds.

``opsworld train ... seeds=[0,1,2,3,4] backend=ray`` trains the same config once per seed
(:func:`train_seeds`): run ``s`` is the config with ``seed=s`` and ``out=<out>/seed_<s>``
(a complete run dir each, its own ``config.yaml`` and ``metrics.json``), fanned out through
:func:`agents.parallel.parallel_map` (Ray tasks, or a local process pool with
``backend=local``). Each run depends only on its config, so a seed's run dir holds the same
weights whichever backend or worker trained it. :func:`summarize` then writes
``<out>/seeds_summary.json`` and ``seeds_summary.md``: every seed's figures and, per figure,
mean, sample standard deviation, min and max across seeds.

On a cluster the run dirs are written by the node that ran the task: ``out`` must be a
folder every node sees (a shared file system) for the driver to find them afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.parallel import Backend, check_backend, parallel_map
from agents.run_config import RunConfig, RunConfigError

SUMMARY_KEYS: tuple[str, ...] = (
    "eval_mean_reward",
    "eval_std_reward",
    "best_eval_mean_reward",
    "timesteps",
    "steps_per_s",
    "wall_time_s",
)
"""The ``metrics.json`` figures summarised across seeds (those a run reports)."""


@dataclass(frozen=True)
class MultiSeed:
    """A multi-seed request (``seeds``, ``backend``, ``workers`` of ``opsworld train``).

    Attributes:
        seeds: Run seeds, distinct, each >= 0.
        backend: ``local`` or ``ray``.
        workers: Runs at a time (None: one per seed).
    """

    seeds: tuple[int, ...]
    backend: Backend = Backend.local
    workers: int | None = None

    def __post_init__(self) -> None:
        """Check the seeds and workers.

        Raises:
            RunConfigError: Naming ``seeds`` or ``workers``.
        """
        if not self.seeds:
            raise RunConfigError("seeds=[]: give the run seeds, e.g. seeds=[0,1,2,3,4]")
        if len(set(self.seeds)) != len(self.seeds):
            raise RunConfigError(f"seeds={list(self.seeds)}: a seed appears twice")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise RunConfigError(f"seeds={list(self.seeds)}: seeds are integers >= 0")
        if self.workers is not None and self.workers < 1:
            raise RunConfigError(f"workers={self.workers}: must be >= 1 (or null: one per seed)")
        try:
            object.__setattr__(self, "backend", check_backend(self.backend))
        except ValueError as err:
            raise RunConfigError(str(err)) from None


def seed_config(conf: RunConfig, seed: int) -> RunConfig:
    """``conf`` with ``seed`` and its own run dir ``<conf.out>/seed_<seed>``."""
    return dataclasses.replace(conf, seed=seed, out=str(Path(conf.out) / f"seed_{seed}"))


def train_one(conf: RunConfig) -> dict[str, Any]:
    """Train one validated run config (what a task executes); its ``metrics.json`` figures."""
    from agents.trainers import train

    return train(conf)


def train_seeds(conf: RunConfig, request: MultiSeed) -> dict[str, Any]:
    """Train ``conf`` once per seed of ``request`` and write the summary across seeds.

    Args:
        conf: A validated run config (:func:`agents.trainers.to_run_config`); its ``seed``
            is replaced, its ``out`` is the parent of the run dirs.
        request: Seeds, backend and workers.

    Returns:
        The summary (:func:`summarize`), also written to ``<out>/seeds_summary.{json,md}``.

    Raises:
        RunConfigError: ``conf.resume`` is set (one checkpoint cannot resume several seeds).
    """
    if conf.resume is not None:
        raise RunConfigError(
            f"resume={conf.resume} with seeds={list(request.seeds)}: a checkpoint belongs to "
            "one run; resume seeds one at a time (seed=<s> out=<out>/seed_<s> resume=...)"
        )
    runs = [seed_config(conf, s) for s in request.seeds]
    workers = request.workers or len(runs)
    metrics = parallel_map(train_one, runs, min(workers, len(runs)), backend=request.backend)
    return summarize(conf.out, request.seeds, metrics, request.backend)


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def summarize(
    out: str | Path,
    seeds: Sequence[int],
    metrics: Sequence[dict[str, Any]],
    backend: Backend | str = Backend.local,
) -> dict[str, Any]:
    """Summarise the runs across seeds and write ``<out>/seeds_summary.{json,md}``.

    Args:
        out: The parent folder of the run dirs.
        seeds: The seeds, in the order of ``metrics``.
        metrics: Each run's ``metrics.json`` figures.
        backend: Where the runs ran (for the record).

    Returns:
        ``{"seeds", "backend", "runs": {seed: {run_dir, figures}}, "across_seeds":
        {figure: {mean, std, min, max}}}``; a figure missing or None in a run is left out of
        its statistics.
    """
    root = Path(out)
    runs: dict[str, dict[str, Any]] = {}
    across: dict[str, dict[str, float | None]] = {}
    for s, m in zip(seeds, metrics, strict=True):
        runs[str(s)] = {
            "run_dir": str(root / f"seed_{s}"),
            **{k: m.get(k) for k in SUMMARY_KEYS if k in m},
        }
    for k in SUMMARY_KEYS:
        vals = [
            float(m[k])
            for m in metrics
            if isinstance(m.get(k), int | float) and math.isfinite(float(m[k]))
        ]
        if any(k in m for m in metrics):
            across[k] = _stats(vals)
    summary = {
        "seeds": list(seeds),
        "backend": str(Backend(backend)),
        "runs": runs,
        "across_seeds": across,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "seeds_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (root / "seeds_summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    return summary


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown: one row per seed, then mean / std / min / max per figure."""
    keys = list(summary["across_seeds"])
    lines = [
        f"# Training across seeds {summary['seeds']} (backend {summary['backend']})",
        "",
        "| seed | " + " | ".join(f"`{k}`" for k in keys) + " |",
        "|---:|" + "---:|" * len(keys),
    ]
    for s, run in summary["runs"].items():
        lines.append(f"| {s} | " + " | ".join(_fmt(run.get(k)) for k in keys) + " |")
    for stat in ("mean", "std", "min", "max"):
        lines.append(
            f"| **{stat}** | "
            + " | ".join(_fmt(summary["across_seeds"][k][stat]) for k in keys)
            + " |"
        )
    lines.append("")
    lines.append("std: sample standard deviation across seeds (0 for one seed).")
    return "\n".join(lines) + "\n"


REQUEST_KEYS: tuple[str, ...] = ("seeds", "backend", "workers")
"""The ``opsworld train`` keys of a multi-seed request (not part of a run's config)."""


def split_request(cfg: Any) -> tuple[Any, MultiSeed | None]:
    """Take the multi-seed keys out of a train config.

    Args:
        cfg: A composed ``opsworld train`` config (``DictConfig``), a mapping, or a
            :class:`RunConfig` (returned as it is).

    Returns:
        The config without :data:`REQUEST_KEYS` (a plain dict unless ``cfg`` was a
        :class:`RunConfig`) and the request, None when ``seeds`` is empty or absent (one run
        with ``seed``; ``backend`` and ``workers`` then change nothing).

    Raises:
        RunConfigError: A bad ``seeds``, ``backend`` or ``workers``.
    """
    if isinstance(cfg, RunConfig):
        return cfg, None
    from omegaconf import DictConfig, OmegaConf

    data = OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    assert isinstance(data, dict)
    picked = {k: data.pop(k) for k in REQUEST_KEYS if k in data}
    seeds = picked.get("seeds") or []
    if not seeds:
        return data, None
    if not isinstance(seeds, list | tuple):
        raise RunConfigError(f"seeds={seeds!r}: give a list, e.g. seeds=[0,1,2,3,4]")
    request = MultiSeed(tuple(seeds), picked.get("backend") or Backend.local, picked.get("workers"))
    return data, request
