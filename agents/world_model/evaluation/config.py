"""The schema of ``opsworld evaluate-forecast`` and its start-up checks.

:class:`EvaluateForecastConfig` is the run config (``configs/evaluate_forecast.yaml``; the
entry point ``experiments/evaluate_forecast.py`` registers it in Hydra's ConfigStore).
:func:`setup` checks it against the fitted model and the suite before anything runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agents.run_config import Fidelity, RunConfigError, bounded, check_values
from agents.world_model.fit import FittedModel, check_behaviours, load_fit, suite_entries
from agents.world_model.forecast import NaiveForecaster
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


def is_graph_fit(fit: FittedModel) -> bool:
    """Whether ``fit`` is a ``wm.arch=graph`` model (one set of weights for any topology)."""
    wm = fit.spec.get("world_model")
    return isinstance(wm, dict) and wm.get("arch") == "graph"


def model_on(fit: FittedModel, scenario: Any) -> Any:
    """The fitted world model on ``scenario``'s topology.

    ``FittedModel.model_for`` where the fit has it (a graph model binds its weights to the
    topology's call graph), else the flat model itself.

    Raises:
        RunConfigError: A flat model and a topology with other services.
    """
    model_for = getattr(fit, "model_for", None)
    if model_for is not None:
        return model_for(scenario.topology)
    if list(fit.spec.get("services", [])) != list(scenario.service_names):
        raise RunConfigError(
            f"a world model fitted on {fit.spec.get('topology')} cannot forecast "
            f"{scenario.topology.name}; fit one with wm.arch=graph"
        )
    return fit.model


def naive_for(nf: NaiveForecaster, n_services: int) -> NaiveForecaster:
    """``nf`` with residual quantiles for ``n_services`` services.

    Unchanged when it was fitted on that many; otherwise (a graph model scored on a topology
    its extras were not fitted on) each step's quantiles are the mean over the fitted
    services, the same for every service.
    """
    res = {}
    for m, r in nf.residuals.items():  # [H, S, M]
        res[m] = (
            r if r.shape[1] == n_services else np.repeat(r.mean(1, keepdims=True), n_services, 1)
        )
    return dataclasses.replace(nf, residuals=res)


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
    graph = is_graph_fit(fit)
    topology = conf.topology or fit.spec["topology"]
    if graph and "+" in topology:
        raise RunConfigError(
            f"topology is required: the model was fitted on {fit.spec['topology']!r} and runs "
            "on any topology; name one, e.g. topology=mesh40"
        )
    if not graph and topology != fit.spec["topology"]:
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
    services = list(entries[0].scenario.service_names) if graph else list(fit.spec["services"])
    if list(entries[0].scenario.service_names) != services:
        raise RunConfigError(
            f"suite {conf.suite} topology {topology}: services {entries[0].scenario.service_names}"
            f" differ from the model's {services}"
        )
    return EvaluationSetup(conf.model, fit, topology, entries, horizon, services)
