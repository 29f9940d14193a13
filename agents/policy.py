"""The ``Policy`` protocol that every decider implements, and the static policy.

Evaluation, serving and shadow mode speak only this protocol. Recurrent state is explicit:
``reset`` returns it and ``act`` threads it through, so one policy object can serve many
episodes or streams at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from envs.sim.actions import Action
from envs.sim.telemetry import Telemetry


@runtime_checkable
class Policy(Protocol):
    """Maps telemetry to actions."""

    name: str

    def reset(self, n: int = 1) -> Any:
        """Fresh recurrent state for ``n`` independent streams (episodes)."""
        ...

    def act(self, obs: Telemetry, state: Any) -> tuple[list[Action], Any, dict[str, Any]]:
        """Decide on one frame: ``(actions, new_state, info)``; no action is ``[]``."""
        ...


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
