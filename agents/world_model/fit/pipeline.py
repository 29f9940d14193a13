"""``opsworld fit-world-model`` as a library call: collect, train, fit the forecast extras.

:func:`fit_world_model` takes a checked :class:`~agents.world_model.fit.config.FitWorldModelConfig`
and

1. collects the ``suite`` entries on ``topology`` under ``behaviours`` x ``replicates``
   (:func:`agents.world_model.data.collect`, in ``workers`` processes), leaving out the
   calibration entries (:func:`calibration_split`);
2. trains a world model for ``updates`` updates or ``max_minutes``
   (:mod:`agents.world_model.fit.train`);
3. collects a calibration split (replicate index ``replicates``, never trained on, under
   ``calib_behaviours``) and fits the forecast extras on it
   (:mod:`agents.world_model.fit.extras`): with ``calib_split=entries`` the model's
   calibration uses only the held-out entries, the naive forecasters every entry;
4. writes the folder of :mod:`agents.world_model.fit.run_dir` and returns the summary.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from agents.run_config import RunConfigError
from agents.world_model.config import ObsLayout, WorldModelConfig
from agents.world_model.data import Collection, collect
from agents.world_model.fit.config import (
    CalibSplit,
    FitWorldModelConfig,
    suite_entries,
    world_model_config,
)
from agents.world_model.fit.extras import FILES, ForecastExtras, fit_forecast_extras
from agents.world_model.fit.run_dir import FORECAST_DIR, SPEC_FORMAT, model_code_digest
from agents.world_model.fit.train import CsvLog, build_trainer, train_world_model
from agents.world_model.forecast import period_steps
from agents.world_model.graph import BoundGraphModel, TopologyGraph
from agents.world_model.trainer import WorldModelTrainer
from envs.gym.envs import ClusterOpsEnv
from envs.scenarios.suites import SuiteEntry

Log = Callable[[str], None]


def calibration_split(
    entries: list[SuiteEntry], split: CalibSplit, every: int
) -> tuple[set[str], list[SuiteEntry]]:
    """``(held-out entry ids, training entries)``.

    With ``split=entries`` every ``every``-th entry (``every-1, 2 every-1, ...``) of each
    topology is held out of training to calibrate on; with ``split=replicate`` none is.

    Raises:
        RunConfigError: No entry is left to train on.
    """
    held_out: set[str] = set()
    if split == CalibSplit.entries:  # every ``every``-th entry of each topology
        for topo in _topologies(entries):
            mine = [e for e in entries if e.scenario.topology.name == topo]
            held_out |= {e.id for i, e in enumerate(mine) if i % every == every - 1}
    train_entries = [e for e in entries if e.id not in held_out]
    if not train_entries:
        raise RunConfigError(f"calib_every={every}: leaves no entry to train on")
    return held_out, train_entries


def _topologies(entries: list[SuiteEntry]) -> list[str]:
    """The topologies of ``entries`` in order of first appearance."""
    return list(dict.fromkeys(e.scenario.topology.name for e in entries))


def _collect_each(
    entries: list[SuiteEntry],
    behaviours: list[str],
    replicates: Any,
    conf: FitWorldModelConfig,
    show: bool,
    perturb: float = 0.0,
) -> Collection:
    """:func:`collect` per topology (it takes one at a time), joined in entry order."""
    parts = [
        collect(
            [e for e in entries if e.scenario.topology.name == topo],
            behaviours,
            replicates,
            conf.workers,
            conf.fidelity.value,
            progress=show,
            perturb=perturb,
        )
        for topo in _topologies(entries)
    ]
    return Collection([ep for c in parts for ep in c.episodes], [m for c in parts for m in c.meta])


def _load_episodes(path: str, train_entries: list[SuiteEntry]) -> Collection:
    """The episodes of ``path`` that belong to ``train_entries``.

    Raises:
        RunConfigError: No such file, or none of its episodes is of a training entry.
    """
    if not Path(path).exists():
        raise RunConfigError(f"episodes={path}: no such file (a Collection .npz)")
    ids = {e.id for e in train_entries}
    data = Collection.load(path).select(lambda m: m.entry in ids)
    if len(data) == 0:
        raise RunConfigError(
            f"episodes={path}: none of its episodes is of a training entry ({sorted(ids)})"
        )
    return data


class Models:
    """The model of the fit on each of its topologies (one for a flat model).

    Args:
        trainer: The trainer (its model is the first topology's).
        entries: The suite entries (their topologies, in order).
    """

    def __init__(self, trainer: WorldModelTrainer, entries: list[SuiteEntry]) -> None:
        self.trainer = trainer
        first = trainer.model
        self.by_topology: dict[str, Any] = {}
        for topo in _topologies(entries):
            scenario = next(e.scenario for e in entries if e.scenario.topology.name == topo)
            self.by_topology[topo] = (
                first.bind(TopologyGraph.from_topology(scenario.topology))
                if isinstance(first, BoundGraphModel)
                else first
            )

    def of(self, entry_ids: list[str], entries: list[SuiteEntry]) -> list[Any]:
        """The model for each of ``entry_ids``."""
        topo = {e.id: e.scenario.topology.name for e in entries}
        return [self.by_topology[topo[i]] for i in entry_ids]


@dataclass
class Training:
    """What the training stage did (nothing when ``updates=0``).

    Attributes:
        data: The training episodes (None when nothing was collected).
        rows: The logged rows of ``metrics.csv``.
        collect_s: Wall seconds of the collection.
    """

    data: Collection | None = None
    rows: list[dict[str, float]] | None = None
    collect_s: float = 0.0

    @property
    def train_s(self) -> float:
        """Wall seconds of the updates."""
        return self.rows[-1]["wall_s"] if self.rows else 0.0


def train_stage(
    conf: FitWorldModelConfig,
    trainer: WorldModelTrainer,
    train_entries: list[SuiteEntry],
    out: Path,
    show: bool,
    say: Log,
) -> Training:
    """Collect the training episodes and run the updates (writes ``metrics.csv``)."""
    if conf.updates <= 0:
        return Training()
    t0 = time.perf_counter()
    if conf.episodes is not None:
        data = _load_episodes(conf.episodes, train_entries)
    else:
        data = _collect_each(
            train_entries, list(conf.behaviours), range(conf.replicates), conf, show, conf.perturb
        )
    collect_s = time.perf_counter() - t0
    say(
        f"fit-world-model: {len(data)} episodes, {data.steps} steps from {len(train_entries)} "
        f"{conf.suite} entries on {conf.topology} ({collect_s:.0f} s)"
    )
    if conf.save_data:
        data.save(out / "episodes.npz")
    with CsvLog(out / "metrics.csv") as metrics:
        max_s = None if conf.max_minutes is None else 60.0 * conf.max_minutes
        models = Models(trainer, train_entries)
        groups = [
            (
                models.by_topology[topo],
                [
                    ep
                    for ep, m in zip(data.episodes, data.meta, strict=True)
                    if m.entry in {e.id for e in train_entries if e.scenario.topology.name == topo}
                ],
            )
            for topo in models.by_topology
        ]
        rows = train_world_model(
            trainer,
            data.episodes,
            conf.updates,
            conf.seed,
            max_s,
            conf.log_every,
            show,
            metrics.write,
            groups=groups if len(groups) > 1 else None,
        )
    return Training(data, rows, collect_s)


@dataclass
class Calibrated:
    """What the calibration stage made.

    Attributes:
        extras: The forecast extras.
        episodes: Calibration episodes of every entry (the naive forecasters' data).
        model_episodes: Those the model's calibration was fitted on.
        wall_s: Wall seconds of collection and fitting.
    """

    extras: ForecastExtras
    episodes: int
    model_episodes: int
    wall_s: float


def calibrate_stage(
    conf: FitWorldModelConfig,
    trainer: WorldModelTrainer,
    entries: list[SuiteEntry],
    held_out: set[str],
    show: bool,
) -> Calibrated:
    """Collect the calibration split and fit the forecast extras on it."""
    t1 = time.perf_counter()
    calib = _collect_each(entries, list(conf.calib_behaviours), [conf.replicates], conf, show)
    scenarios = {e.id: e.scenario for e in entries}
    model_calib = calib.select(lambda m: not held_out or m.entry in held_out)
    models = Models(trainer, entries)
    # the naive forecasters keep per-service quantiles: fitted on the first topology
    first = _topologies(entries)[0]
    naive = calib.select(lambda m: scenarios[m.entry].topology.name == first)
    periods = [period_steps(scenarios[m.entry]) for m in naive.meta]
    torch.set_num_threads(conf.threads)
    several = len(models.by_topology) > 1
    extras = fit_forecast_extras(
        models.of([m.entry for m in model_calib.meta], entries) if several else trainer.model,
        naive.episodes,
        periods,
        model_calib.episodes,
        conf.horizon,
        conf.warmup,
        conf.every,
        conf.n_samples,
        conf.calib_level,
        conf.seed,
        conf.anchor,
        show,
    )
    return Calibrated(extras, len(calib), len(model_calib), time.perf_counter() - t1)


def fit_summary(
    conf: FitWorldModelConfig,
    entries: list[SuiteEntry],
    train_entries: list[SuiteEntry],
    held_out: set[str],
    trainer: WorldModelTrainer,
    start_steps: int,
    training: Training,
    calibrated: Calibrated,
) -> dict[str, Any]:
    """``summary.json``: data, calibration split, budget and final losses.

    An ``init`` run adds the earlier run's episodes, steps and training time.
    """
    prev: dict[str, Any] = {}
    if conf.init is not None and (Path(conf.init) / "summary.json").exists():
        prev = json.loads((Path(conf.init) / "summary.json").read_text())
    data, rows = training.data, training.rows
    return {
        "topology": conf.topology,
        "suite": conf.suite,
        "entries": [e.id for e in entries],
        "behaviours": list(conf.behaviours),
        "replicates": conf.replicates,
        "perturb": conf.perturb,
        "episodes": len(data) if data is not None else prev.get("episodes", 0),
        "steps": data.steps if data is not None else prev.get("steps", 0),
        "init": conf.init,
        "train_entries": [e.id for e in train_entries],
        "calibration_split": {
            "split": conf.calib_split.value,
            "entries": sorted(held_out) if held_out else [e.id for e in entries],
            "replicate": conf.replicates,
            "behaviours": list(conf.calib_behaviours),
            "episodes": calibrated.model_episodes,
            "naive_episodes": calibrated.episodes,
            "coverage": calibrated.extras.report,
        },
        "updates": trainer.steps,
        "updates_this_run": trainer.steps - start_steps,
        "updates_planned": conf.updates,
        "train_wall_s": training.train_s + float(prev.get("train_wall_s", 0.0)),
        "train_wall_s_this_run": training.train_s,
        "collect_wall_s": training.collect_s,
        "calibrate_wall_s": calibrated.wall_s,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "final": rows[-1] if rows else {},
        "horizon": conf.horizon,
    }


def fit_spec(
    conf: FitWorldModelConfig,
    env: ClusterOpsEnv,
    wm_cfg: WorldModelConfig,
    summary: dict[str, Any],
    graphs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``spec.json``: what a consumer needs to load and feed the model.

    Its format is :data:`~agents.world_model.fit.run_dir.SPEC_FORMAT`; a graph model's
    adds ``graphs`` (each training topology's :class:`TopologyGraph` as a dict).
    """
    return {
        "format": SPEC_FORMAT,
        "topology": conf.topology,
        "topologies": str(conf.topology).split("+"),
        **({"graphs": graphs} if graphs else {}),
        "services": list(env.services),
        "encoder": env.encoder.spec(),
        "action_features": {
            "layout": "services x (scale, restart, rollback), shed_set, shed_fraction, drain",
            "size": env.action_encoder.size,
        },
        "world_model": wm_cfg.model_dump(),
        "checkpoint": "checkpoint.pt",
        "model_code": model_code_digest(),
        "forecast": {
            "horizon": conf.horizon,
            "warmup": conf.warmup,
            **{k: f"{FORECAST_DIR}/{v}" for k, v in FILES.items()},
        },
        "training": {k: summary[k] for k in ("episodes", "steps", "updates", "train_wall_s")},
    }


def fit_world_model(conf: FitWorldModelConfig, log: Log | None = print) -> dict[str, Any]:
    """Collect, train and fit the forecast extras; write the fit folder ``conf.out``.

    Args:
        conf: The run config (checked here before anything runs).
        log: Where progress lines go (None: nowhere).

    Returns:
        ``{"out": <folder>, **summary}`` (the summary is also ``summary.json``).

    Raises:
        RunConfigError: Before anything runs, naming the field.
    """
    wm_cfg = world_model_config(conf)
    entries = suite_entries(conf.suite, conf.topology, conf.limit)
    held_out, train_entries = calibration_split(entries, conf.calib_split, conf.calib_every)
    show = sys.stderr.isatty() if conf.progress is None else conf.progress
    out = Path(conf.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(conf), resolve=True))
    say: Log = log or (lambda _: None)

    topologies = _topologies(entries)
    if len(topologies) > 1 and wm_cfg.arch != "graph":
        raise RunConfigError(
            f"topology={conf.topology}: a flat world model fits one topology; "
            "add wm.arch=graph to fit one model on several"
        )
    env = ClusterOpsEnv(scenario=entries[0].scenario)
    layout = ObsLayout.from_encoder(env.encoder)
    graph = (
        TopologyGraph.from_topology(entries[0].scenario.topology)
        if wm_cfg.arch == "graph"
        else None
    )
    trainer = build_trainer(
        layout, env.action_encoder.size, wm_cfg, conf.seed, conf.init, conf.threads, graph
    )
    start_steps = trainer.steps
    training = train_stage(conf, trainer, train_entries, out, show, say)
    trainer.save(out / "checkpoint.pt")
    trainer.model.eval()
    done, rows = trainer.steps - start_steps, training.rows
    say(
        f"fit-world-model: {done} updates in {training.train_s:.0f} s "
        f"({done / max(training.train_s, 1e-9):.1f}/s; {trainer.steps} in all), final loss "
        f"{rows[-1]['wm/loss'] if rows else float('nan'):.3f}"
    )

    calibrated = calibrate_stage(conf, trainer, entries, held_out, show)
    calibrated.extras.save(out / FORECAST_DIR)
    summary = fit_summary(
        conf, entries, train_entries, held_out, trainer, start_steps, training, calibrated
    )
    graphs = None
    if graph is not None:
        graphs = {t: m.graph.to_dict() for t, m in Models(trainer, entries).by_topology.items()}
    spec = fit_spec(conf, env, trainer.cfg, summary, graphs)
    (out / "spec.json").write_text(json.dumps(spec, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    say(
        "fit-world-model: calibration split coverage (raw -> calibrated, 90%): "
        + ", ".join(
            f"{m} {r['raw_90']:.2f} -> {r['calibrated_90']:.2f}"
            for m, r in calibrated.extras.report.items()
            if m != "violation"
        )
    )
    say(f"fit-world-model: wrote {out}")
    return {"out": str(out), **summary}
