"""The schema of ``opsworld fit-world-model`` and the start-up checks shared with the evaluation.

:class:`FitWorldModelConfig` is the run config (``configs/fit_world_model.yaml``; the entry
point ``experiments/fit_world_model.py`` registers it in Hydra's ConfigStore, so a wrong key
or type fails at composition). Its numeric ranges are declared with
:func:`agents.run_config.bounded` and checked on the run schemas' one path,
:func:`agents.run_config.check_values`; :func:`world_model_config` runs that and the other
checks and builds the :class:`~agents.world_model.config.WorldModelConfig`.
:func:`suite_entries` and :func:`check_behaviours` are shared with
``opsworld evaluate-forecast``. Every check raises
:class:`~agents.run_config.RunConfigError` naming the field and the fix, before anything
runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from agents.run_config import Fidelity, RunConfigError, bounded, check_values
from agents.world_model.config import WorldModelConfig
from agents.world_model.data import BEHAVIOURS
from envs.scenarios.suites import SuiteEntry, SuiteError, load_suite


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
    dec_beta: float | None = None
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
    arch: str | None = None
    mp_rounds: int | None = None
    dec_loss: str | None = None
    dec_stoch: bool | None = None
    dec_mase_floor: float | None = None
    dec_scaled: bool | None = None
    dec_scale_floor: float | None = None

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
            ``wm.arch=graph`` takes several joined by ``+`` (``chain3+boutique``): one model
            is trained on all of them (updates alternate between the topologies).
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
        calib_split: ``replicate`` or ``entries`` (:class:`CalibSplit`).
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
        episodes: Train on the episodes of this ``.npz`` (``save_data=true``'s
            ``episodes.npz`` or :meth:`agents.world_model.data.Collection.save`) instead of
            collecting them; only those of the training entries are used (None: collect).
        out: Output folder; a multirun job writes to ``<out>/<job>``.
        overwrite: Clear a non-empty ``out`` first (a non-empty ``out`` is refused otherwise).
    """

    suite: str = "train"
    topology: str | None = None
    behaviours: list[str] = field(
        default_factory=lambda: ["static", "hpa", "tuned_hpa", "runbook", "explore"]
    )
    replicates: int = bounded(3, ge=1)
    perturb: float = bounded(1.0, ge=0)
    limit: int | None = None
    size: str = "tiny"
    updates: int = bounded(8000, ge=0)
    max_minutes: float | None = bounded(None, gt=0)
    batch: int = 16
    seq_len: int = 64
    lr: float = 3e-4
    wm: WorldModelOverrides = field(default_factory=WorldModelOverrides)
    seed: int = 0
    workers: int = bounded(2, ge=1)
    fidelity: Fidelity = Fidelity.fluid
    threads: int = bounded(1, ge=1)
    log_every: int = bounded(100, ge=1)
    horizon: int = bounded(20, ge=1)
    warmup: int = bounded(20, ge=0)
    every: int = bounded(4, ge=1)
    n_samples: int = bounded(64, ge=2)
    calib_behaviours: list[str] = field(default_factory=lambda: ["hpa", "runbook"])
    calib_split: CalibSplit = CalibSplit.entries
    calib_every: int = bounded(4, ge=2)
    calib_level: float = 0.9
    anchor: bool = True
    init: str | None = None
    progress: bool | None = None
    save_data: bool = False
    episodes: str | None = None
    out: str = "outputs/fit_world_model/${now:%Y-%m-%d}/${now:%H-%M-%S}-${opsworld_pid:}"
    overwrite: bool = False


def suite_entries(
    suite_name: str, topology: str | None, limit: int | None = None
) -> list[SuiteEntry]:
    """The entries of ``suite_name`` on ``topology`` (first ``limit`` of each topology).

    ``topology`` may join several with ``+`` (``chain3+boutique``); the entries come in
    that order.

    Raises:
        RunConfigError: Naming ``suite``, ``topology`` or ``limit``.
    """
    try:
        suite = load_suite(suite_name)
    except (SuiteError, OSError) as err:
        raise RunConfigError(f"suite={suite_name}: {err}") from None
    names = sorted({e.scenario.topology.name for e in suite.entries})
    if topology is None:
        raise RunConfigError(
            f"topology is required (one world model fits one topology): one of {names}"
        )
    if limit is not None and limit < 1:
        raise RunConfigError(f"limit={limit}: must be >= 1 (or null for all entries)")
    entries: list[SuiteEntry] = []
    for name in topology.split("+"):
        mine = [e for e in suite.entries if e.scenario.topology.name == name]
        if not mine:
            raise RunConfigError(
                f"topology={topology}: no entry of suite {suite.name!r} uses {name!r}; its "
                f"topologies are {names}"
            )
        entries += mine[:limit] if limit is not None else mine
    return entries


def check_behaviours(key: str, names: list[str]) -> None:
    """Raise :class:`RunConfigError` unless ``names`` is a non-empty list of known behaviours."""
    bad = [b for b in names if b not in BEHAVIOURS]
    if bad or not names:
        raise RunConfigError(f"{key}={names}: use some of {list(BEHAVIOURS)}")


def world_model_config(conf: FitWorldModelConfig) -> WorldModelConfig:
    """Check ``conf``'s values and build its WorldModelConfig (``size`` preset + overrides).

    Raises:
        RunConfigError: Naming the first bad field.
    """
    check_values(conf)
    check_behaviours("behaviours", list(conf.behaviours))
    check_behaviours("calib_behaviours", list(conf.calib_behaviours))
    if conf.calib_level not in (0.8, 0.9):
        raise RunConfigError(f"calib_level={conf.calib_level}: must be 0.8 or 0.9")
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
        raise RunConfigError(f"size={conf.size} / wm={conf.wm.given()}: {err}") from None
