"""Policies with no model: static provisioning and scripted actions.

Both implement :class:`envs.core.policy.Policy`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from envs.core.actions import Action
from envs.core.telemetry import Telemetry


class StaticPolicy:
    """Static provisioning: keeps the initial replicas and never acts."""

    name = "static"

    def reset(self, n: int = 1) -> None:
        """No state."""
        return None

    def act(self, obs: Telemetry, state: Any) -> tuple[list[Action], Any, dict[str, Any]]:
        """Never acts."""
        return [], state, {}


class ScriptedPolicy:
    """Takes fixed actions at fixed decision times (seconds from the start); nothing else.

    For tests, figures and what-if runs: ``ScriptedPolicy({300: [Rollback("api")]})``.
    """

    name = "scripted"

    def __init__(self, script: Mapping[float, Sequence[Action]]) -> None:
        self.script = {round(t): list(a) for t, a in script.items()}

    def reset(self, n: int = 1) -> None:
        """No state."""
        return None

    def act(self, obs: Telemetry, state: Any) -> tuple[list[Action], Any, dict[str, Any]]:
        """The actions scripted for the frame's time (none for other frames)."""
        return list(self.script.get(round(obs.t), [])), state, {}
