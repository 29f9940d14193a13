"""World model (DreamerV3-style RSSM) of the cluster: see ``docs/world_model.md``.

Public API (the interface contract shared with ``agents/dreamer`` and the forecaster):
:class:`WorldModelConfig`, :class:`ObsLayout`, :class:`WorldModel`, :class:`RSSM`,
:class:`Carry`, :class:`States`, :class:`Replay`, :class:`WorldModelTrainer`,
:class:`NonFiniteError`, :func:`load_model` and the numerics of :mod:`agents.world_model.math`.
"""

from agents.world_model.config import ObsLayout, WorldModelConfig
from agents.world_model.math import (
    TwoHot,
    kl_categorical,
    kl_free_bits,
    symexp,
    symlog,
    unimix_logits,
    unimix_probs,
)
from agents.world_model.model import BATCH_KEYS, LOSS_TERMS, WorldModel
from agents.world_model.replay import Replay
from agents.world_model.rssm import RSSM, Carry, States
from agents.world_model.trainer import NonFiniteError, WorldModelTrainer, load_model

__all__ = [
    "BATCH_KEYS",
    "LOSS_TERMS",
    "RSSM",
    "Carry",
    "NonFiniteError",
    "ObsLayout",
    "Replay",
    "States",
    "TwoHot",
    "WorldModel",
    "WorldModelConfig",
    "WorldModelTrainer",
    "kl_categorical",
    "kl_free_bits",
    "load_model",
    "symexp",
    "symlog",
    "unimix_logits",
    "unimix_probs",
]
