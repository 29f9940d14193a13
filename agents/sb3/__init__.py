"""Stable-Baselines3 training of opsworld agents, and a Policy adapter for trained runs.

* :mod:`agents.sb3.config`: the typed run config and the start-up checks;
* :mod:`agents.sb3.envs`: env ids, kwargs, seeds, vectorisation and normalisation;
* :mod:`agents.sb3.callbacks`: the ``env/...`` episode metrics and best-model statistics;
* :mod:`agents.sb3.train`: :func:`~agents.sb3.train.train_agent`, the training run;
* :mod:`agents.sb3.policy`: :class:`~agents.sb3.policy.SB3Policy`, a trained run dir behind
  the :class:`envs.core.policy.Policy` protocol (trusted run dirs only: SB3 zips hold pickles).

``docs/training.md`` is the user guide.
"""
