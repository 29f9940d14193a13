"""``opsworld evaluate-forecast``: score a world model's forecasts against naive forecasts.

``opsworld evaluate-forecast model=runs/wm_chain3 suite=holdout out=runs/fc_chain3`` runs
every entry of ``suite`` on the model's topology under the behaviour policies
``behaviours`` x ``seeds`` (in ``workers`` processes). In each episode, at forecast origins
``t = warmup, warmup + every, ...`` it forecasts the next ``horizon`` steps (default 20 x
15 s = 5 minutes) of p99 latency, rps, error rate and ready replicas of every service, with
the planned actions = the actions the behaviour actually took, by the world model (raw,
``model``, and calibrated, ``model_cal``) and the naive ``persistence`` and ``seasonal``
forecasters, and scores them against what happened: MAE of the median, CRPS, coverage of
the central 80 % and 90 % intervals, and Brier score and reliability of the probability of
an SLO violation within the horizon.

It writes ``metrics.json``, ``forecast.md``, ``mae.png``, ``crps.png``, ``coverage.png``,
``reliability.png``, ``examples/*.png`` (fan charts) and ``config.yaml`` to ``out``. The
schema is :class:`agents.world_model.evaluation.EvaluateForecastConfig`, the work
:func:`agents.world_model.evaluation.evaluate_forecast`. See ``docs/forecasting.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from agents.run_config import RunConfigError, prepare_out
from agents.world_model import evaluation
from agents.world_model.evaluation import EvaluateForecastConfig
from experiments.cli import CONFIG_DIR, ConfigError, fail, job_out, structured_config

SCHEMA = EvaluateForecastConfig
"""The config schema (used by the ``opsworld`` dispatcher to check override keys)."""


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (idempotent; call before composing)."""
    ConfigStore.instance().store(name="evaluate_forecast_schema", node=EvaluateForecastConfig)


def to_config(
    cfg: DictConfig | EvaluateForecastConfig | Mapping[str, Any],
) -> EvaluateForecastConfig:
    """Validate a composed config (or a plain mapping) against :class:`EvaluateForecastConfig`."""
    return structured_config(EvaluateForecastConfig, cfg, "evaluate-forecast")


def evaluate_forecast(
    cfg: DictConfig | EvaluateForecastConfig | Mapping[str, Any],
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Run the command on a composed config.

    Returns:
        ``{"out": ..., "metrics": <metrics.json>, "files": [...]}``.

    Raises:
        ConfigError: Before anything runs, naming the field.
    """
    return evaluation.evaluate_forecast(to_config(cfg), log)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate_forecast")
def _hydra_main(cfg: DictConfig) -> None:
    job_out(cfg)
    try:
        conf = to_config(cfg)
        try:
            prepare_out(conf.out, overwrite=conf.overwrite)
        except RunConfigError as err:
            raise ConfigError(str(err)) from None
        evaluate_forecast(conf)
    except ConfigError as err:
        fail("evaluate-forecast", err)


def main() -> None:
    """Console entry: register the schema, then let Hydra parse ``sys.argv``."""
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
