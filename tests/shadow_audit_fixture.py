"""A synthetic shadow audit in the schema ``opsworld.shadow.audit/1``, with known answers.

The shadow report's tests use it instead of waiting for a real shadow run. Every figure the
report computes follows from :class:`Plan` by hand (see the properties below).

The window: ``n`` ticks every ``interval_s`` seconds over chain3 (frontend, api, db). Entry
traffic is ``base_rps``, ``crowd_factor`` times that for ticks ``[crowd_start, crowd_end)``.
The cluster (actual) runs every service at 2 replicas and at 4 from ``actual_up``; the policy
recommends 4 from ``recommended_up`` (earlier), and db 5 for ticks ``[db_start, db_end)``.
Ticks ``[gap_start, gap_end)`` lost Prometheus: every value missing, fallback ``hpa``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVICES = ("frontend", "api", "db")


@dataclass(frozen=True)
class Plan:
    """Parameters of the synthetic window (defaults: 2 hours of chain3 at 15 s)."""

    n: int = 480
    interval_s: float = 15.0
    t0: float = 1_764_000_000.0
    base_rps: float = 300.0
    crowd_factor: float = 3.0
    crowd_start: int = 200
    crowd_end: int = 260
    recommended_up: int = 196
    actual_up: int = 230
    db_start: int = 300
    db_end: int = 310
    gap_start: int = 350
    gap_end: int = 355
    blocked_tick: int = 320
    horizon_ticks: int = 4
    forecast_bias: float = 10.0
    forecast_half_width: float = 30.0

    def gap(self, k: int) -> bool:
        """Tick ``k`` lost every value."""
        return self.gap_start <= k < self.gap_end

    def rps(self, k: int) -> float:
        """Observed entry request rate at tick ``k`` (any tick, gap or not)."""
        crowd = self.crowd_start <= k < self.crowd_end
        return self.base_rps * (self.crowd_factor if crowd else 1.0)

    def actual(self, k: int) -> dict[str, int]:
        """Replicas the cluster ran at tick ``k``: every service 2, then 4 from ``actual_up``."""
        return dict.fromkeys(SERVICES, 4 if k >= self.actual_up else 2)

    def recommended(self, k: int) -> dict[str, int]:
        """Replicas the policy recommended: 4 from ``recommended_up``, db 5 in the db window."""
        out = dict.fromkeys(SERVICES, 4 if k >= self.recommended_up else 2)
        if self.db_start <= k < self.db_end:
            out["db"] = 5
        return out

    # Figures of the report, by hand --------------------------------------------------------
    @property
    def observed_ticks(self) -> int:
        """Ticks with values (not in the gap)."""
        return self.n - (self.gap_end - self.gap_start)

    @property
    def disagreeing_pairs(self) -> dict[str, int]:
        """(tick, service) pairs where recommended != actual, per service (gap excluded)."""
        early = self.actual_up - self.recommended_up
        return {"frontend": early, "api": early, "db": early + self.db_end - self.db_start}


def record(plan: Plan, k: int) -> dict[str, Any]:
    """The audit record of tick ``k``."""
    t = plan.t0 + k * plan.interval_s
    gap = plan.gap(k)
    rec: dict[str, Any] = {
        "schema": "opsworld.shadow.audit/1",
        "tick": k,
        "t": t,
        "wall_time": f"2025-11-24T16:{k % 60:02d}:00Z",
        "mode": "replay",
        "bundle_sha": "ab" * 32,
        "policy": "ppo",
        "model_version": "1",
        "services": list(SERVICES),
        "extra_key_the_reader_ignores": {"x": 1},
        "actuated": False,
        "latency_s": 0.01 * (1 + k % 5),
        "raw_actions": [],
        "guarded_actions": [],
        "interventions": [],
        "fallback": None,
        "reasons": [],
        "error": None,
        "actual_actions": [],
        "query_errors": [],
        "forecast": None,
        "drift": None,
    }
    if gap:
        rec["telemetry"] = {s: {"rps": None, "p99": None, "replicas_ready": None} for s in SERVICES}
        rec["missing"] = {s: {"rps": "prometheus unreachable"} for s in SERVICES}
        rec["missing_fraction"] = 1.0
        rec["query_errors"] = [{"query": "rps", "reason": "connection refused"}]
        rec["recommended_replicas"] = dict.fromkeys(SERVICES)
        rec["actual_replicas"] = dict.fromkeys(SERVICES)
        rec["fallback"] = "hpa"
        rec["error"] = "prometheus unreachable"
        rec["reasons"] = ["all telemetry missing: fallback hpa"]
        return rec
    rps = plan.rps(k)
    rec["telemetry"] = {s: {"rps": rps, "p99": 0.05, "replicas_ready": 2.0} for s in SERVICES}
    rec["missing"] = {}
    rec["missing_fraction"] = 0.0
    rec["recommended_replicas"] = plan.recommended(k)
    rec["actual_replicas"] = plan.actual(k)
    if k == plan.recommended_up:  # frontend: 6 asked, the guard's step limit made it 4
        rec["raw_actions"] = [{"kind": "scale", "service": "frontend", "replicas": 6}]
        rec["guarded_actions"] = [{"kind": "scale", "service": s, "replicas": 4} for s in SERVICES]
        rec["interventions"] = [
            {
                "rule": "max_step",
                "reason": "at most +2 replicas per tick",
                "before": {"kind": "scale", "service": "frontend", "replicas": 6},
                "after": {"kind": "scale", "service": "frontend", "replicas": 4},
            }
        ]
        rec["reasons"] = ["p99 forecast above SLO"]
    if k in (plan.db_start, plan.db_end):
        act = {"kind": "scale", "service": "db", "replicas": 5 if k == plan.db_start else 4}
        rec["raw_actions"] = [act]
        rec["guarded_actions"] = [act]
    if k == plan.blocked_tick:
        rec["raw_actions"] = [{"kind": "restart", "service": "api"}]
        rec["interventions"] = [
            {
                "rule": "rate_limit",
                "reason": "one disruptive action per 10 min",
                "before": {"kind": "restart", "service": "api"},
                "after": None,
            }
        ]
    if k == plan.actual_up:
        rec["actual_actions"] = [{"kind": "scale", "service": s, "replicas": 4} for s in SERVICES]
    # A naive forecast of the entry rate: base + bias, +- half width, horizon 4 ticks.
    q50 = plan.base_rps + plan.forecast_bias
    rec["forecast"] = {
        "frontend": {
            "rps": {
                "q05": q50 - plan.forecast_half_width,
                "q50": q50,
                "q95": q50 + plan.forecast_half_width,
                "horizon_s": plan.horizon_ticks * plan.interval_s,
            }
        }
    }
    retrain = k >= plan.n - 10
    rec["drift"] = {
        "psi": {"frontend/rps": 0.35 if retrain else 0.05, "api/cpu_util": 0.1},
        "retrain_recommended": retrain,
    }
    return rec


def write_audit(path: Path, plan: Plan | None = None, rotate_at: int | None = None) -> Path:
    """Write the synthetic audit to ``path`` (plus one junk line and one foreign record).

    Args:
        path: The current audit file.
        plan: The window (default :class:`Plan`).
        rotate_at: Ticks before this go to ``path.1`` (a rotated file), the rest to ``path``.

    Returns:
        ``path``.
    """
    plan = plan or Plan()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(record(plan, k)) for k in range(plan.n)]
    lines.insert(3, "{not json")
    lines.insert(5, json.dumps({"schema": "someone.else/9", "t": 1.0}))
    if rotate_at is None:
        path.write_text("\n".join(lines) + "\n")
    else:
        cut = rotate_at + 2  # the two junk lines come before it
        Path(f"{path}.1").write_text("\n".join(lines[:cut]) + "\n")
        path.write_text("\n".join(lines[cut:]) + "\n")
    return path
