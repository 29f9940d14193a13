"""What the cluster did, inferred from consecutive frames (shadow mode never sees the actions).

* a change of ``replicas_desired`` is a scale: ``{"kind": "scale", "service", "replicas",
  "from"}`` (whoever made it: the HPA, an operator, a deploy);
* an increase of the ``restarts`` counter is ``{"kind": "restart", "service", "count"}``;
  a decrease is a counter reset (the exporter or kube-state-metrics restarted), not an
  action, and is reported as a reason;
* a value missing in either frame says nothing: no action is inferred from a gap, and the
  last observed value is kept to compare with the next one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from envs.core.telemetry import FIELD_INDEX, Telemetry


def replicas(frame: Telemetry) -> dict[str, int | None]:
    """Desired replicas per service (None where missing)."""
    col = FIELD_INDEX["replicas_desired"]
    out: dict[str, int | None] = {}
    for i, svc in enumerate(frame.services):
        v = float(frame.values[i, col])
        out[svc] = round(v) if bool(frame.mask[i, col]) and math.isfinite(v) else None
    return out


@dataclass
class ActionObserver:
    """Remembers the last observed replicas and restart counts per service."""

    last_replicas: dict[str, int] = field(default_factory=dict)
    last_restarts: dict[str, float] = field(default_factory=dict)

    def observe(self, frame: Telemetry) -> tuple[list[dict[str, Any]], list[str]]:
        """Actions seen since the previous frame and notes (counter resets).

        Returns:
            ``(actions, notes)``.
        """
        actions: list[dict[str, Any]] = []
        notes: list[str] = []
        rcol = FIELD_INDEX["restarts"]
        for svc, now in replicas(frame).items():
            if now is None:
                continue
            before = self.last_replicas.get(svc)
            if before is not None and now != before:
                actions.append({"kind": "scale", "service": svc, "replicas": now, "from": before})
            self.last_replicas[svc] = now
        for i, svc in enumerate(frame.services):
            v = float(frame.values[i, rcol])
            if not (bool(frame.mask[i, rcol]) and math.isfinite(v)):
                continue
            before_r = self.last_restarts.get(svc)
            if before_r is not None:
                if v > before_r:
                    actions.append(
                        {"kind": "restart", "service": svc, "count": round(v - before_r)}
                    )
                elif v < before_r:
                    notes.append(
                        f"{svc}: restart counter fell {before_r:g} -> {v:g} (counter reset: "
                        "the exporter restarted); no action inferred"
                    )
            self.last_restarts[svc] = v
        return actions, notes
