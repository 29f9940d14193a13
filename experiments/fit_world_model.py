"""``opsworld fit-world-model``: collect episodes, train a world model, fit its forecast extras.

``opsworld fit-world-model topology=chain3 max_minutes=10 out=runs/wm_chain3``:

1. collects the ``suite`` (default ``train``) entries on ``topology`` under the behaviour
   policies ``behaviours`` x ``replicates`` (in ``workers`` processes);
2. trains a world model (``size`` preset, with ``lr``, ``batch``, ``seq_len`` and any other
   ``wm.<field>`` override) for ``updates`` updates (stopping early after ``max_minutes``);
3. on a calibration split of the same suite (replicate index ``replicates``, a run seed not
   used for training, under ``calib_behaviours``; with ``calib_split=entries``, the default,
   every ``calib_every``-th entry is kept out of training and calibrates the model), fits
   the forecast extras: the calibration of the model's draws, the persistence and
   seasonal-naive residual quantiles and the naive violation frequencies.

It writes ``checkpoint.pt``, ``spec.json``, ``metrics.csv``, ``forecast/``, ``summary.json``
and ``config.yaml`` (and with ``save_data=true`` ``episodes.npz``) to ``out``. The schema is
:class:`agents.world_model.fit.FitWorldModelConfig`, the work
:func:`agents.world_model.fit.fit_world_model`; ``opsworld evaluate-forecast model=<out>``
scores the result. See ``docs/forecasting.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from agents.run_config import RunConfigError, prepare_out
from agents.world_model.fit import FitWorldModelConfig, fit_world_model
from experiments.cli import CONFIG_DIR, ConfigError, fail, job_out, structured_config

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


def fit(
    cfg: DictConfig | FitWorldModelConfig | Mapping[str, Any],
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Run the command on a composed config; returns the summary (also ``summary.json``).

    Raises:
        ConfigError: Before anything runs, naming the field.
    """
    return fit_world_model(to_config(cfg), log)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="fit_world_model")
def _hydra_main(cfg: DictConfig) -> None:
    job_out(cfg)
    try:
        conf = to_config(cfg)
        try:
            prepare_out(conf.out, overwrite=conf.overwrite)
        except RunConfigError as err:
            raise ConfigError(str(err)) from None
        fit(conf)
    except ConfigError as err:
        fail("fit-world-model", err)


def main() -> None:
    """Console entry: register the schema, then let Hydra parse ``sys.argv``."""
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
