"""The ``Policy`` protocol that every decider implements, and the static policy.

Evaluation, serving and shadow mode speak only this protocol. Recurrent state is explicit:
``reset`` returns it and ``act`` threads it through, so one policy object can serve many
episodes or streams at once.
"""

from __future__ import annotations

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
