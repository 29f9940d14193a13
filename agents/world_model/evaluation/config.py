"""The schema of ``opsworld evaluate-forecast`` and its start-up checks.

:class:`EvaluateForecastConfig` is the run config (``configs/evaluate_forecast.yaml``; the
entry point ``experiments/evaluate_forecast.py`` registers it in Hydra's ConfigStore).
:func:`setup` checks it against the fitted model and the suite before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agents.run_config import Fidelity, RunConfigError, bounded, check_values
from agents.world_model.fit import FittedModel, check_behaviours, load_fit, suite_entries
from envs.scenarios.suites import SuiteEntry


@dataclass
class EvaluateForecastConfig:
    """Schema of ``configs/evaluate_forecast.yaml``; a wrong key or type fails at composition.

    Attributes:
        model: An ``opsworld fit-world-model`` output folder (required).
        suite: Suite to score on (``holdout``, ``train`` or a YAML path).
        topology: Topology to score (None: the model's; another one is refused).
        behaviours: Behaviour policies that run the episodes (and plan the actions).
        seeds: Replicates per entry and behaviour.
        limit: Only the first ``limit`` entries (None: all).
        horizon: Steps forecast (None: the model's ``horizon``; at most it).
        warmup: First forecast origin (rows of history before it).
        every: Steps between forecast origins.
        n_samples: Sampled futures per forecast.
        workers: Processes (1: in this process).
        fidelity: Simulator fidelity.
        seed: Seed of the forecasts' random draws.
        threads: Torch threads per process.
        examples: Fan-chart PNGs (first entries, first behaviour, replicate 0).
        progress: Progress bar (None: when stderr is a terminal).
        out: Output folder; a multirun job writes to ``<out>/<job>``.
        overwrite: Clear a non-empty ``out`` first (a non-empty ``out`` is refused otherwise).
    """

    model: str | None = None
    suite: str = "holdout"
    topology: str | None = None
    behaviours: list[str] = field(default_factory=lambda: ["hpa", "runbook"])
    seeds: int = bounded(1, ge=1)
    limit: int | None = None
    horizon: int | None = bounded(None, ge=1)
    warmup: int = bounded(20, ge=0)
    every: int = bounded(4, ge=1)
    n_samples: int = bounded(64, ge=2)
    workers: int = bounded(2, ge=1)
    fidelity: Fidelity = Fidelity.fluid
    seed: int = 0
    threads: int = bounded(1, ge=1)
    examples: int = bounded(2, ge=0)
    progress: bool | None = None
    out: str = "outputs/evaluate_forecast/${now:%Y-%m-%d}/${now:%H-%M-%S}-${opsworld_pid:}"
    overwrite: bool = False


@dataclass(frozen=True)
class EvaluationSetup:
    """A checked evaluation: the model and what it is scored on.

    Attributes:
        model_dir: The fit folder, as given.
        fit: The fitted model (:func:`~agents.world_model.fit.load_fit`).
        topology: The model's topology.
        entries: The suite entries scored.
        horizon: Steps forecast (at most the fitted horizon).
        services: Service names, topology order.
    """

    model_dir: str
    fit: FittedModel
    topology: str
    entries: list[SuiteEntry]
    horizon: int
    services: list[str]


def setup(conf: EvaluateForecastConfig) -> EvaluationSetup:
    """Load the model and check ``conf`` against it and the suite.

    Raises:
        RunConfigError: Naming the field: no or a bad ``model``, a ``topology`` other than
            the model's, an unknown suite or behaviour, a number out of range, a
            ``horizon`` beyond the fitted one, services that differ from the model's.
    """
    check_values(conf)
    if conf.model is None:
        raise RunConfigError("model is required: an 'opsworld fit-world-model' output folder")
    fit = load_fit(conf.model)
    topology = conf.topology or fit.spec["topology"]
    if topology != fit.spec["topology"]:
        raise RunConfigError(
            f"topology={topology}: the model was fitted on {fit.spec['topology']!r} "
            "(one world model fits one topology)"
        )
    entries = suite_entries(conf.suite, topology, conf.limit)
    check_behaviours("behaviours", list(conf.behaviours))
    fitted_h = int(fit.spec["forecast"]["horizon"])
    horizon = conf.horizon or fitted_h
    if not 1 <= horizon <= fitted_h:
        raise RunConfigError(
            f"horizon={horizon}: must be in [1, {fitted_h}] (the horizon the model's "
            "calibration and naive forecasters were fitted for)"
        )
    services = list(fit.spec["services"])
    if list(entries[0].scenario.service_names) != services:
        raise RunConfigError(
            f"suite {conf.suite} topology {topology}: services {entries[0].scenario.service_names}"
            f" differ from the model's {services}"
        )
    return EvaluationSetup(conf.model, fit, topology, entries, horizon, services)
