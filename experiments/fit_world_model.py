"""``opsworld fit-world-model``: collect episodes, train a world model, fit its forecast extras.

``opsworld fit-world-model topology=chain3 max_minutes=10 out=runs/wm_chain3``:

1. collects the ``suite`` (default ``train``) entries on ``topology`` under the behaviour
   policies ``behaviours`` x ``replicates`` (:func:`agents.world_model.data.collect`, in
   ``workers`` processes);
2. trains a :class:`~agents.world_model.model.WorldModel` (``size`` preset, with ``lr``,
   ``batch``, ``seq_len`` and any other ``wm.<field>`` override) for ``updates`` updates
   of :class:`~agents.world_model.trainer.WorldModelTrainer` on sequences from a
   :class:`~agents.world_model.replay.Replay` (stopping early after ``max_minutes``);
3. on a calibration split of the same suite (replicate index ``replicates``, a run seed not
   used for training, under ``calib_behaviours``), fits the forecast extras: the
   :class:`~agents.world_model.forecast.Calibration` (anchor weights and spread), the
   persistence and seasonal-naive residual quantiles and the naive violation frequencies
   (all TRAIN-suite data). With ``calib_split=entries`` (the default) every
   ``calib_every``-th entry is kept out of training and the model's calibration is fitted
   on those unseen entries only (the holdout suite's incidents are unseen too); the naive
   forecasters use the calibration episodes of every entry.

It writes to ``out``:

* ``checkpoint.pt``: the trainer checkpoint (model, optimizer, step, RNG, config, layout;
  :func:`agents.world_model.trainer.load_model` rebuilds the model from it);
* ``spec.json``: topology, services, the ObsEncoder spec, the action-feature layout, the
  world-model config, the data and the training budget;
* ``metrics.csv``: the training curve (``wm/*`` means over each ``log_every`` updates);
* ``forecast/``: ``calibration.json``, ``persistence.npz``, ``seasonal.npz``,
  ``violation.json``, ``calibration_report.json`` (coverage on the calibration split);
* ``summary.json`` and ``config.yaml`` (this run's resolved config); with
  ``save_data=true`` also ``episodes.npz``.

``opsworld evaluate-forecast model=<out>`` scores the result on the holdout suite; see
``docs/forecasting.md``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from pydantic import ValidationError

from experiments.cli import CONFIG_DIR, EXIT_USAGE, ConfigError, structured_config
from experiments.simulate import Fidelity

FORECAST_DIR = "forecast"
"""Sub-folder of a fit run with the forecast extras."""
MODEL_CODE: tuple[str, ...] = ("config", "math", "nets", "rssm", "fused", "model")
"""Modules of ``agents/world_model`` whose source defines what a checkpoint's weights mean."""


def model_code_digest() -> dict[str, str]:
    """SHA-256 (first 16 hex digits) of each :data:`MODEL_CODE` module's source.

    A checkpoint loads into any model with the same parameter shapes, even after a change
    that gives the weights another meaning (e.g. a new GRU gate layout); comparing these
    digests at load time catches that.
    """
    import hashlib

    import agents.world_model as wm

    folder = Path(wm.__file__).parent
    out = {}
    for name in MODEL_CODE:
        path = folder / f"{name}.py"
        if path.exists():
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return out


@dataclass
class WorldModelOverrides:
    """``wm.<field>=<value>``: WorldModelConfig fields that override the ``size`` preset.

    None keeps the preset's value (:class:`agents.world_model.config.WorldModelConfig`).
    ``size``, ``batch``, ``seq_len``, ``lr`` and ``threads`` are top-level keys instead.
    """

    deter: int | None = None
    hidden: int | None = None
    stoch: int | None = None
    classes: int | None = None
    gru_blocks: int | None = None
    dyn_layers: int | None = None
    img_layers: int | None = None
    units: int | None = None
    enc_layers: int | None = None
    dec_layers: int | None = None
    head_layers: int | None = None
    unimix: float | None = None
    free_nats: float | None = None
    kl_dyn: float | None = None
    kl_rep: float | None = None
    dec_scale: float | None = None
    rew_scale: float | None = None
    cont_scale: float | None = None
    viol_scale: float | None = None
    bins: int | None = None
    bin_limit: float | None = None
    min_std: float | None = None
    max_std: float | None = None
    eps: float | None = None
    grad_clip: float | None = None
    overshoot: int | None = None
    overshoot_stride: int | None = None
    overshoot_scale: float | None = None
    overshoot_detach: bool | None = None
    overshoot_heads: bool | None = None
    overshoot_kl: float | None = None

    def given(self) -> dict[str, Any]:
        """The fields that were set."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


TOP_LEVEL_WM_FIELDS: tuple[str, ...] = ("size", "batch", "seq_len", "lr", "threads")
"""WorldModelConfig fields set by top-level keys of the command, not by ``wm.``."""


class CalibSplit(StrEnum):
    """Which TRAIN episodes calibrate the model's forecasts."""

    replicate = "replicate"
    """A run seed of every entry not used in training."""
    entries = "entries"
    """Every ``calib_every``-th entry, kept out of training altogether."""


@dataclass
class FitWorldModelConfig:
    """Schema of ``configs/fit_world_model.yaml``; a wrong key or type fails at composition.

    Attributes:
        suite: Suite to collect on (``train`` or a YAML path; never the holdout).
        topology: Topology whose entries are used (``chain3``, ``boutique``); required.
        behaviours: Behaviour policies of the training data
            (:data:`agents.world_model.data.BEHAVIOURS`).
        replicates: Seeds per entry and behaviour (replicate indices ``0 .. replicates-1``).
        perturb: When > 0, replicates ``1 ..`` of the training data run seeded variants of
            the entries with other traffic and fault parameters of this strength
            (:func:`agents.world_model.data.perturb_scenario`); 0: the entries as defined.
        limit: Only the first ``limit`` entries (None: all).
        size: World-model size preset (``tiny`` | ``small``).
        updates: Gradient updates.
        max_minutes: Stop training after this many wall minutes (None: no limit).
        batch: Sequences per batch.
        seq_len: Steps per sequence.
        lr: Adam learning rate.
        wm: Further :class:`~agents.world_model.config.WorldModelConfig` overrides.
        seed: Seeds the replay sampling, the trainer and torch.
        workers: Processes for episode collection.
        fidelity: Simulator fidelity.
        threads: Torch threads for training.
        log_every: Updates per line of ``metrics.csv``.
        horizon: Forecast horizon H in steps (20 x 15 s = 5 minutes).
        warmup: First forecast origin (rows of history before it).
        every: Steps between forecast origins on the calibration split.
        n_samples: Sampled futures per forecast on the calibration split.
        calib_behaviours: Behaviours of the calibration split.
        calib_split: ``replicate`` or ``entries`` (see the module docstring).
        calib_every: With ``calib_split=entries``: entries ``k-1, 2k-1, ...`` calibrate.
        calib_level: Interval level the spread calibration targets (0.8 or 0.9).
        anchor: Fit the change and anchor weights of the calibration (else only the spread
            and the Platt scaling).
        init: A previous fit-world-model folder to continue from: model, optimizer, update
            count and RNG come from its checkpoint, and so does the WorldModelConfig
            (``size``, ``lr``, ``batch``, ``seq_len``, ``wm`` are then ignored); with
            ``updates=0`` only the forecast extras are refitted.
        progress: Progress bars (None: when stderr is a terminal).
        save_data: Also write the training episodes (``episodes.npz``).
        out: Output folder.
    """

    suite: str = "train"
    topology: str | None = None
    behaviours: list[str] = field(
        default_factory=lambda: ["static", "hpa", "tuned_hpa", "runbook", "explore"]
    )
    replicates: int = 3
    perturb: float = 1.0
    limit: int | None = None
    size: str = "tiny"
    updates: int = 8000
    max_minutes: float | None = None
    batch: int = 16
    seq_len: int = 64
    lr: float = 3e-4
    wm: WorldModelOverrides = field(default_factory=WorldModelOverrides)
    seed: int = 0
    workers: int = 2
    fidelity: Fidelity = Fidelity.fluid
    threads: int = 1
    log_every: int = 100
    horizon: int = 20
    warmup: int = 20
    every: int = 4
    n_samples: int = 64
    calib_behaviours: list[str] = field(default_factory=lambda: ["hpa", "runbook"])
    calib_split: CalibSplit = CalibSplit.entries
    calib_every: int = 4
    calib_level: float = 0.9
    anchor: bool = True
    init: str | None = None
    progress: bool | None = None
    save_data: bool = False
    out: str = "outputs/fit_world_model/${now:%Y-%m-%d}/${now:%H-%M-%S}"


SCHEMA = FitWorldModelConfig
"""The config schema (used by the ``opsworld`` dispatcher to check override keys)."""


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (idempotent; call before composing)."""
    ConfigStore.instance().store(name="fit_world_model_schema", node=FitWorldModelConfig)


def to_config(
    cfg: DictConfig | FitWorldModelConfig | Mapping[str, Any],
) -> FitWorldModelConfig:
    """Validate a composed config (or a plain mapping) against :class:`FitWorldModelConfig`."""
    return structured_config(FitWorldModelConfig, cfg, "fit-world-model")


# --------------------------------------------------------------------------------------------
# pieces


def suite_entries(suite_name: str, topology: str | None, limit: int | None = None) -> list[Any]:
    """The entries of ``suite_name`` on ``topology`` (first ``limit``).

    Raises:
        ConfigError: Naming ``suite``, ``topology`` or ``limit``.
    """
    from envs.scenarios.suites import SuiteError, load_suite

    try:
        suite = load_suite(suite_name)
    except (SuiteError, OSError) as err:
        raise ConfigError(f"suite={suite_name}: {err}") from None
    names = sorted({e.scenario.topology.name for e in suite.entries})
    if topology is None:
        raise ConfigError(
            f"topology is required (one world model fits one topology): one of {names}"
        )
    entries = [e for e in suite.entries if e.scenario.topology.name == topology]
    if not entries:
        raise ConfigError(
            f"topology={topology}: no entry of suite {suite.name!r} uses it; its topologies "
            f"are {names}"
        )
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"limit={limit}: must be >= 1 (or null for all entries)")
        entries = entries[:limit]
    return entries


def check_behaviours(key: str, names: list[str]) -> None:
    """Raise :class:`ConfigError` unless ``names`` is a non-empty list of known behaviours."""
    from agents.world_model.data import BEHAVIOURS

    bad = [b for b in names if b not in BEHAVIOURS]
    if bad or not names:
        raise ConfigError(f"{key}={names}: use some of {list(BEHAVIOURS)}")


def _check(conf: FitWorldModelConfig) -> Any:
    """Validate the numbers and build the WorldModelConfig (ConfigError names the field)."""
    from agents.world_model.config import WorldModelConfig

    check_behaviours("behaviours", list(conf.behaviours))
    check_behaviours("calib_behaviours", list(conf.calib_behaviours))
    for name, low in (
        ("replicates", 1),
        ("updates", 0),
        ("workers", 1),
        ("threads", 1),
        ("log_every", 1),
        ("horizon", 1),
        ("warmup", 0),
        ("every", 1),
        ("n_samples", 2),
        ("calib_every", 2),
        ("perturb", 0),
    ):
        if getattr(conf, name) < low:
            raise ConfigError(f"{name}={getattr(conf, name)}: must be >= {low}")
    if conf.calib_level not in (0.8, 0.9):
        raise ConfigError(f"calib_level={conf.calib_level}: must be 0.8 or 0.9")
    if conf.max_minutes is not None and conf.max_minutes <= 0:
        raise ConfigError(f"max_minutes={conf.max_minutes}: must be > 0 (or null)")
    try:
        return WorldModelConfig.preset(
            conf.size,
            **{
                "batch": conf.batch,
                "seq_len": conf.seq_len,
                "lr": conf.lr,
                "threads": conf.threads,
                **conf.wm.given(),
            },
        )
    except (ValidationError, ValueError) as err:
        raise ConfigError(f"size={conf.size} / wm={conf.wm.given()}: {err}") from None


def train_world_model(
    trainer: Any,
    episodes: list[dict[str, np.ndarray]],
    updates: int,
    seed: int,
    max_seconds: float | None = None,
    log_every: int = 100,
    progress: bool = False,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Run ``updates`` updates of a WorldModelTrainer on sequences of ``episodes``.

    Stops early once ``max_seconds`` have passed.

    Returns:
        The logged rows (means of ``wm/*`` over each ``log_every`` updates, plus the
        trainer's ``update`` count and ``wall_s``).
    """
    from agents.world_model.data import ProgressBar
    from agents.world_model.replay import Replay

    wm_cfg = trainer.cfg
    steps = sum(len(e["obs"]) for e in episodes)
    replay = Replay(
        capacity=max(steps, wm_cfg.seq_len), seq_len=wm_cfg.seq_len, seed=seed + trainer.steps
    )
    for ep in episodes:
        replay.add(ep)
    rows: list[dict[str, float]] = []
    acc: dict[str, list[float]] = {}
    start = time.perf_counter()
    with ProgressBar(progress, updates, "train world model") as tick:
        for i in range(updates):
            metrics = trainer.step(replay.sample(wm_cfg.batch))
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
    return rows


def fit_forecast_extras(
    model: Any,
    episodes: list[dict[str, np.ndarray]],
    periods: list[int | None],
    calib_episodes: list[dict[str, np.ndarray]],
    horizon: int,
    warmup: int,
    every: int,
    n_samples: int,
    level: float,
    seed: int,
    anchor: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit the forecast extras on calibration episodes (TRAIN suite).

    The extras: the :class:`~agents.world_model.forecast.Calibration` (anchor weights and
    spread multipliers; fitted on ``calib_episodes``), the naive forecasters and the naive
    violation model (fitted on ``episodes``, whose traffic periods are ``periods``).

    Returns:
        ``{"calibration", "persistence", "seasonal", "violation", "report"}``; the report
        holds the raw and calibrated 80 % / 90 % coverage on these episodes per metric.
    """
    from agents.world_model.data import ProgressBar
    from agents.world_model.forecast import (
        METRICS,
        CalibrationStats,
        NaiveForecaster,
        NaiveViolation,
        forecast_batch,
        forecast_origins,
        planned_actions,
        raw_series,
        truths,
    )

    layout = model.layout
    stats = CalibrationStats()
    with ProgressBar(progress, len(calib_episodes), "calibrate") as tick:
        for i, ep in enumerate(calib_episodes):
            origins = forecast_origins(len(ep["obs"]), horizon, warmup, every)
            if origins.size:
                sf = forecast_batch(
                    model,
                    ep["obs"],
                    ep["action"],
                    origins,
                    planned_actions(ep, origins, horizon),
                    n_services=layout.n_services,
                    n_samples=n_samples,
                    seed=seed + i,
                )
                stats.add(
                    sf,
                    truths(ep, layout, origins, horizon),
                    NaiveViolation.outcomes(ep["violation"], origins, horizon),
                )
            tick()
    calibration = stats.fit(level, anchor=anchor)
    raw, cal = stats.coverage(None), stats.coverage(calibration)
    report: dict[str, Any] = {
        m: {
            "raw_80": raw[m]["80"],
            "raw_90": raw[m]["90"],
            "calibrated_80": cal[m]["80"],
            "calibrated_90": cal[m]["90"],
            "change": calibration.change[m],
            "anchor": calibration.anchor[m],
            "scale": calibration.scale[m],
        }
        for m in raw
    }
    if stats.outcome:
        from agents.world_model.forecast_metrics import brier

        p = np.concatenate(stats.p_violation)
        o = np.concatenate(stats.outcome)
        report["violation"] = {
            "brier_raw": brier(p, o),
            "brier_calibrated": brier(calibration.apply_violation(p), o),
            "platt": calibration.violation,
        }
    series = [{m: raw_series(ep, layout, m) for m in METRICS} for ep in episodes]
    persistence = NaiveForecaster("persistence", horizon).fit(series, periods, warmup)
    seasonal = NaiveForecaster("seasonal", horizon, fallback_season=horizon).fit(
        series, periods, warmup
    )
    violation = NaiveViolation.fit([ep["violation"] for ep in episodes], horizon, warmup)
    return {
        "calibration": calibration,
        "persistence": persistence,
        "seasonal": seasonal,
        "violation": violation,
        "report": report,
    }


@dataclass(frozen=True)
class FittedModel:
    """What ``opsworld fit-world-model`` wrote, loaded (:func:`load_fit`).

    Attributes:
        path: The run folder.
        spec: ``spec.json``.
        model: The world model (eval mode).
        calibration: The spread calibration.
        persistence: The persistence forecaster.
        seasonal: The seasonal-naive forecaster.
        violation: The naive violation model.
    """

    path: Path
    spec: dict[str, Any]
    model: Any
    calibration: Any
    persistence: Any
    seasonal: Any
    violation: Any


def load_fit(path: str | Path) -> FittedModel:
    """Load a ``fit-world-model`` run folder (no pickles: ``weights_only`` torch, npz, JSON).

    Raises:
        ConfigError: When ``path`` is not such a folder (naming the missing files).
    """
    from agents.world_model.forecast import Calibration, NaiveForecaster, NaiveViolation
    from agents.world_model.trainer import load_model

    path = Path(path)
    spec_path = path / "spec.json"
    if not spec_path.exists():
        raise ConfigError(f"model={path}: not an 'opsworld fit-world-model' folder (no spec.json)")
    spec = json.loads(spec_path.read_text())
    files = {k: path / v for k, v in spec["forecast"].items() if isinstance(v, str)}
    missing = [str(p) for p in [path / spec["checkpoint"], *files.values()] if not p.exists()]
    if missing:
        raise ConfigError(f"model={path}: missing {', '.join(missing)}")
    saved, now = spec.get("model_code", {}), model_code_digest()
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        warnings.warn(
            f"model={path}: agents/world_model/{{{','.join(changed)}}}.py changed since this "
            "model was fitted; its weights may mean something else now (refit it)",
            stacklevel=2,
        )
    return FittedModel(
        path,
        spec,
        load_model(path / spec["checkpoint"]),
        Calibration.from_json(files["calibration"].read_text()),
        NaiveForecaster.load(files["persistence"]),
        NaiveForecaster.load(files["seasonal"]),
        NaiveViolation(**json.loads(files["violation"].read_text())),
    )


def period_steps(scenario: Any) -> int | None:
    """The scenario's traffic period in decision steps (None when aperiodic)."""
    from agents.world_model.forecast import traffic_period_s

    p = traffic_period_s(scenario)
    return None if p is None else round(p / scenario.decision_interval_s)


# --------------------------------------------------------------------------------------------
# the command


def fit(
    cfg: DictConfig | FitWorldModelConfig | Mapping[str, Any],
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Collect, train and fit the forecast extras; write the outputs of the module docstring.

    Returns:
        The summary (also in ``summary.json``).

    Raises:
        ConfigError: Before anything runs, naming the field.
    """
    import torch

    from agents.world_model.config import ObsLayout, WorldModelConfig
    from agents.world_model.data import collect
    from agents.world_model.model import WorldModel
    from agents.world_model.trainer import WorldModelTrainer
    from envs.gym.envs import ClusterOpsEnv

    conf = to_config(cfg)
    wm_cfg = _check(conf)
    entries = suite_entries(conf.suite, conf.topology, conf.limit)
    show = sys.stderr.isatty() if conf.progress is None else conf.progress
    out = Path(conf.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(conf), resolve=True))
    say = log or (lambda _: None)

    fidelity = conf.fidelity.value
    env = ClusterOpsEnv(scenario=entries[0].scenario)
    layout = ObsLayout.from_encoder(env.encoder)
    torch.manual_seed(conf.seed)
    if conf.init is not None:
        init = Path(conf.init) / "checkpoint.pt"
        if not init.exists():
            raise ConfigError(f"init={conf.init}: no checkpoint.pt (a fit-world-model folder?)")
        state = torch.load(init, weights_only=True)
        wm_cfg = WorldModelConfig(**{**state["config"], "threads": conf.threads})
        model = WorldModel(layout, env.action_encoder.size, wm_cfg)
        trainer = WorldModelTrainer(model, wm_cfg, seed=conf.seed)
        try:
            trainer.load_state_dict(state)
        except ValueError as err:
            raise ConfigError(f"init={conf.init}: {err}") from None
    else:
        model = WorldModel(layout, env.action_encoder.size, wm_cfg)
        trainer = WorldModelTrainer(model, wm_cfg, seed=conf.seed)
    n_params = sum(p.numel() for p in model.parameters())
    start_steps = trainer.steps

    data = None
    collect_s = 0.0
    rows: list[dict[str, float]] = []
    held_out = (
        {e.id for i, e in enumerate(entries) if i % conf.calib_every == conf.calib_every - 1}
        if conf.calib_split == CalibSplit.entries
        else set()
    )
    train_entries = [e for e in entries if e.id not in held_out]
    if not train_entries:
        raise ConfigError(f"calib_every={conf.calib_every}: leaves no entry to train on")
    if conf.updates > 0:
        t0 = time.perf_counter()
        data = collect(
            train_entries,
            conf.behaviours,
            range(conf.replicates),
            conf.workers,
            fidelity,
            progress=show,
            perturb=conf.perturb,
        )
        collect_s = time.perf_counter() - t0
        say(
            f"fit-world-model: {len(data)} episodes, {data.steps} steps from {len(train_entries)} "
            f"{conf.suite} entries on {conf.topology} ({collect_s:.0f} s)"
        )
        if conf.save_data:
            data.save(out / "episodes.npz")
        with (out / "metrics.csv").open("w", newline="") as fh:
            writer: csv.DictWriter[str] | None = None

            def on_log(row: dict[str, float]) -> None:
                nonlocal writer
                if writer is None:
                    writer = csv.DictWriter(fh, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
                fh.flush()

            max_s = None if conf.max_minutes is None else 60.0 * conf.max_minutes
            rows = train_world_model(
                trainer,
                data.episodes,
                conf.updates,
                conf.seed,
                max_s,
                conf.log_every,
                show,
                on_log,
            )
    train_s = rows[-1]["wall_s"] if rows else 0.0
    trainer.save(out / "checkpoint.pt")
    model.eval()
    done = trainer.steps - start_steps
    say(
        f"fit-world-model: {done} updates in {train_s:.0f} s "
        f"({done / max(train_s, 1e-9):.1f}/s; {trainer.steps} in all), final loss "
        f"{rows[-1]['wm/loss'] if rows else float('nan'):.3f}"
    )

    t1 = time.perf_counter()
    calib = collect(
        entries,
        conf.calib_behaviours,
        [conf.replicates],
        conf.workers,
        fidelity,
        progress=show,
    )
    scenarios = {e.id: e.scenario for e in entries}
    periods = [period_steps(scenarios[m.entry]) for m in calib.meta]
    model_calib = calib.select(lambda m: not held_out or m.entry in held_out)
    torch.set_num_threads(conf.threads)
    extras = fit_forecast_extras(
        model,
        calib.episodes,
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
    calib_s = time.perf_counter() - t1
    fdir = out / FORECAST_DIR
    fdir.mkdir(exist_ok=True)
    (fdir / "calibration.json").write_text(extras["calibration"].to_json())
    extras["persistence"].save(fdir / "persistence.npz")
    extras["seasonal"].save(fdir / "seasonal.npz")
    (fdir / "violation.json").write_text(
        json.dumps(dataclasses.asdict(extras["violation"]), indent=2)
    )
    (fdir / "calibration_report.json").write_text(json.dumps(extras["report"], indent=2))

    prev: dict[str, Any] = {}
    if conf.init is not None and (Path(conf.init) / "summary.json").exists():
        prev = json.loads((Path(conf.init) / "summary.json").read_text())
    summary: dict[str, Any] = {
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
            "episodes": len(model_calib),
            "naive_episodes": len(calib),
            "coverage": extras["report"],
        },
        "updates": trainer.steps,
        "updates_this_run": trainer.steps - start_steps,
        "updates_planned": conf.updates,
        "train_wall_s": train_s + float(prev.get("train_wall_s", 0.0)),
        "train_wall_s_this_run": train_s,
        "collect_wall_s": collect_s,
        "calibrate_wall_s": calib_s,
        "parameters": n_params,
        "final": rows[-1] if rows else {},
        "horizon": conf.horizon,
    }
    spec = {
        "format": "opsworld.fit_world_model/1",
        "topology": conf.topology,
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
            "calibration": f"{FORECAST_DIR}/calibration.json",
            "persistence": f"{FORECAST_DIR}/persistence.npz",
            "seasonal": f"{FORECAST_DIR}/seasonal.npz",
            "violation": f"{FORECAST_DIR}/violation.json",
        },
        "training": {k: summary[k] for k in ("episodes", "steps", "updates", "train_wall_s")},
    }
    (out / "spec.json").write_text(json.dumps(spec, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    say(
        "fit-world-model: calibration split coverage (raw -> calibrated, 90%): "
        + ", ".join(
            f"{m} {r['raw_90']:.2f} -> {r['calibrated_90']:.2f}"
            for m, r in extras["report"].items()
            if m != "violation"
        )
    )
    say(f"fit-world-model: wrote {out}")
    return {"out": str(out), **summary}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="fit_world_model")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        fit(cfg)
    except ConfigError as err:
        print(f"opsworld fit-world-model: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def main() -> None:
    """Console entry: register the schema, then let Hydra parse ``sys.argv``."""
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
