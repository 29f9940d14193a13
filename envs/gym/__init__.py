"""Gymnasium environments over the simulator, and their registration.

Importing this package registers ``opsworld/Autoscale-v0``, ``opsworld/Remediate-v0``,
``opsworld/ClusterOps-v0`` and ``opsworld/HPATune-v0`` (the usual Gymnasium plug-in pattern), so
``gymnasium.make("opsworld/Autoscale-v0")`` works after ``import envs.gym``; the module form
``gymnasium.make("envs.gym:opsworld/Autoscale-v0")`` imports it for you.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from envs.gym.encoder import ObsEncoder
from envs.gym.envs import (
    AutoscaleEnv,
    ClusterEnv,
    ClusterOpsEnv,
    HPATuneEnv,
    RemediateEnv,
    RewardWeights,
)

ENV_IDS: dict[str, str] = {
    "opsworld/Autoscale-v0": "envs.gym.envs:AutoscaleEnv",
    "opsworld/Remediate-v0": "envs.gym.envs:RemediateEnv",
    "opsworld/ClusterOps-v0": "envs.gym.envs:ClusterOpsEnv",
    "opsworld/HPATune-v0": "envs.gym.envs:HPATuneEnv",
}
MAX_EPISODE_STEPS = 240
"""One hour of 15 s decisions: the default scenario's horizon."""


def register_envs() -> None:
    """Register the opsworld ids with Gymnasium (idempotent)."""
    for env_id, entry_point in ENV_IDS.items():
        if env_id not in registry:
            register(id=env_id, entry_point=entry_point, max_episode_steps=MAX_EPISODE_STEPS)


register_envs()

__all__ = [
    "ENV_IDS",
    "AutoscaleEnv",
    "ClusterEnv",
    "ClusterOpsEnv",
    "HPATuneEnv",
    "ObsEncoder",
    "RemediateEnv",
    "RewardWeights",
    "register_envs",
]
