"""The ``Policy`` protocol that every decider implements.

Evaluation, serving and shadow mode speak only this protocol. Recurrent state is explicit:
``reset`` returns it and ``act`` threads it through, so one policy object can serve many
episodes or streams at once.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from envs.core.actions import Action
from envs.core.telemetry import Telemetry


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
