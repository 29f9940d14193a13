"""Training a world model for ``opsworld fit-world-model``: the model, its trainer, the loop.

:func:`build_trainer` makes a fresh :class:`~agents.world_model.trainer.WorldModelTrainer`
or restores one from an earlier fit's checkpoint; :func:`train_world_model` runs its updates
on sequences of recorded episodes (a :class:`~agents.world_model.replay.Replay`), logging
means of the ``wm/*`` metrics every ``log_every`` updates; :class:`CsvLog` writes those rows
to ``metrics.csv`` as they come.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from agents.run_config import RunConfigError
from agents.world_model.config import ObsLayout, WorldModelConfig
from agents.world_model.data import ProgressBar
from agents.world_model.graph import GraphWorldModel, TopologyGraph
from agents.world_model.model import WorldModel
from agents.world_model.replay import Replay
from agents.world_model.trainer import WorldModelTrainer


def build_trainer(
    layout: ObsLayout,
    n_actions: int,
    wm_cfg: WorldModelConfig,
    seed: int,
    init: str | None = None,
    threads: int = 1,
    graph: TopologyGraph | None = None,
) -> WorldModelTrainer:
    """A world model and its trainer: new (``wm_cfg``), or continued from ``init``.

    Seeds torch with ``seed`` first. With ``init`` (an earlier fit folder) the model,
    optimizer, update count and RNG come from its ``checkpoint.pt`` and so does the
    WorldModelConfig (``wm_cfg`` is ignored; ``threads`` still applies). A ``wm.arch=graph``
    model is bound to ``graph`` (the first training topology).

    Raises:
        RunConfigError: ``init`` has no checkpoint, or one that does not fit this model.
    """
    torch.manual_seed(seed)

    def model(cfg: WorldModelConfig) -> Any:
        if cfg.arch != "graph":
            return WorldModel(layout, n_actions, cfg)
        if graph is None:
            raise RunConfigError("wm.arch=graph needs the topology's call graph")
        core = GraphWorldModel(cfg, layout.service_features, layout.cluster_features)
        return core.bind(graph)

    if init is None:
        return WorldModelTrainer(model(wm_cfg), wm_cfg, seed=seed)
    path = Path(init) / "checkpoint.pt"
    if not path.exists():
        raise RunConfigError(f"init={init}: no checkpoint.pt (a fit-world-model folder?)")
    try:
        state = torch.load(path, weights_only=True)
        wm_cfg = WorldModelConfig(**{**state["config"], "threads": threads})
    except Exception as err:  # a truncated or damaged file raises anything
        raise RunConfigError(
            f"init={init}: {path.name} is damaged or truncated ({type(err).__name__}: "
            f"{str(err)[:200]}); give another fit folder or fit from scratch (init=null)"
        ) from None
    trainer = WorldModelTrainer(model(wm_cfg), wm_cfg, seed=seed)
    try:
        trainer.load_state_dict(state)
    except ValueError as err:
        raise RunConfigError(f"init={init}: {err}") from None
    return trainer


class CsvLog:
    """``metrics.csv`` written row by row (header from the first row's keys), flushed each time.

    A context manager; use :meth:`write` as ``train_world_model``'s ``on_log``.
    """

    def __init__(self, path: Path) -> None:
        self._fh = path.open("w", newline="")
        self._writer: csv.DictWriter[str] | None = None

    def write(self, row: dict[str, float]) -> None:
        """Append ``row`` (the first row fixes the columns)."""
        if self._writer is None:
            self._writer = csv.DictWriter(self._fh, fieldnames=list(row))
            self._writer.writeheader()
        self._writer.writerow(row)
        self._fh.flush()

    def __enter__(self) -> CsvLog:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._fh.close()


def train_world_model(
    trainer: WorldModelTrainer,
    episodes: list[dict[str, np.ndarray]],
    updates: int,
    seed: int,
    max_seconds: float | None = None,
    log_every: int = 100,
    progress: bool = False,
    on_log: Callable[[dict[str, float]], None] | None = None,
    groups: list[tuple[Any, list[dict[str, np.ndarray]]]] | None = None,
) -> list[dict[str, float]]:
    """Run ``updates`` updates of a WorldModelTrainer on sequences of ``episodes``.

    Stops early once ``max_seconds`` have passed. With ``groups`` (``(model, episodes)``
    per topology: one ``wm.arch=graph`` model bound to each) the updates cycle through the
    groups, each on a batch of its own episodes (``episodes`` is then ignored); the
    trainer's model is the first group's again at the end.

    Returns:
        The logged rows (means of ``wm/*`` over each ``log_every`` updates, plus the
        trainer's ``update`` count and ``wall_s``).
    """
    wm_cfg = trainer.cfg
    if groups is None:
        groups = [(trainer.model, episodes)]
    replays = []
    for j, (_, eps) in enumerate(groups):
        steps = sum(len(e["obs"]) for e in eps)
        replay = Replay(
            capacity=max(steps, wm_cfg.seq_len),
            seq_len=wm_cfg.seq_len,
            seed=seed + trainer.steps + 7919 * j,
        )
        for ep in eps:
            replay.add(ep)
        replays.append(replay)
    rows: list[dict[str, float]] = []
    acc: dict[str, list[float]] = {}
    start = time.perf_counter()
    with ProgressBar(progress, updates, "train world model") as tick:
        for i in range(updates):
            g = i % len(groups)
            trainer.model = groups[g][0]
            metrics = trainer.step(replays[g].sample(wm_cfg.batch))
            for k, v in metrics.items():
                acc.setdefault(k, []).append(v)
            wall = time.perf_counter() - start
            last = i + 1 == updates or (max_seconds is not None and wall >= max_seconds)
            if (i + 1) % log_every == 0 or last:
                row = {k: float(np.mean(v)) for k, v in acc.items() if k != "wm/step"}
                row.update({"update": float(trainer.steps), "wall_s": wall})
                rows.append(row)
                acc = {}
                if on_log is not None:
                    on_log(row)
            tick(f"loss {metrics['wm/loss']:.2f}")
            if last:
                break
    trainer.model = groups[0][0]
    return rows
