"""Hyperparameter studies on Ray Tune: Optuna's sampler, ASHA, selection on the train suite.

``opsworld tune tune=<space>`` (``experiments/tune.py``) runs a study described by
``configs/tune/<space>.yaml`` (:class:`agents.tune.config.TuneSpec`):

* :mod:`agents.tune.config`: the study's schema and its Ray Tune search space;
* :mod:`agents.tune.trials`: what one trial runs (an HPA setting scored on train-suite
  entries, or a training run in rungs, each rung scored on train-suite entries);
* :mod:`agents.tune.study`: the Tuner (``OptunaSearch`` + ``ASHAScheduler``), resuming an
  interrupted study (``Tuner.restore``), the results table, the plot and the best config.

Docs: ``docs/scaling.md``.
"""
