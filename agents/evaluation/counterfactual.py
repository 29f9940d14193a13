"""The shadow report's counterfactual: the window's traffic replayed in the simulator.

A shadow run only records; it cannot say what *would* have happened had the cluster followed
the recommendations. This module estimates it in the simulator, and everything it returns is
labelled simulated. For a shadow audit (records of schema ``opsworld.shadow.audit/1`` as
plain dicts) and a scenario whose topology holds the audited deployments:

1. the entry service's observed request rate (``telemetry[entry]["rps"]`` per tick; missing
   ticks interpolated) becomes a replay CSV (``t, rps``; ``t`` from the first tick) that the
   scenario's traffic replays (``traffic.replay``, no noise, no other pattern);
2. the scenario's faults and in-cluster HPA are removed (the observed traffic already holds
   the flash crowds; what else went wrong on the cluster is not known to the simulator), its
   horizon becomes the window, and each deployment starts at the first observed replicas;
3. two runs on the same seed: replicas following the **recommended** schedule
   (``recommended_replicas`` per tick) and following the **actual** schedule
   (``actual_replicas`` per tick, what the cluster did), each as a
   :class:`ReplicaSchedulePolicy` that scales a deployment when its scheduled count changes;
4. per run: SLO-violation minutes (summed over the scenario's SLO services), the node bill
   (``cost_total``) and the cost allocated to pods by their CPU requests
   (``allocated_cost_total``, what replica choices change when the node count does not),
   entry error rate and mean p99, scale actions, and per-frame series for the plot.

With a policy (``opsworld shadow-report bundle=<dir>``), a third run lets the shadowed policy
itself act in closed loop on the replayed traffic, every action kind applied: what it would
have done had it been in charge, as far as the simulator can tell.

Limits, also written into the result's ``notes``: the recommendations are replayed open loop
(as made from the observed cluster; a policy acting live would have seen other telemetry);
only replica counts are replayed (restarts, rollbacks, load shedding are not); a null
recommendation keeps the previous value; counts are clamped to the scenario's replica bounds.

:mod:`agents.shadow.report` renders the result; it never imports this module (the shadow side
must run without the simulator): ``experiments/shadow_report.py`` wires the two.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.rollout import rollout
from envs.core.actions import Action, InvalidActionError, Scale
from envs.core.policy import Policy
from envs.core.telemetry import Telemetry
from envs.scenarios.builtin import BUILTIN_SCENARIOS
from envs.scenarios.loader import load_scenario, validate
from envs.scenarios.schema import Scenario
from envs.sim.simulator import Simulator

SCHEDULES: tuple[str, ...] = ("recommended", "actual")
"""The two runs: the audit keys ``<name>_replicas`` they follow."""

MAX_SERIES_POINTS = 720
"""Per-frame series kept for the plot at most (evenly thinned beyond)."""


class CounterfactualSkipped(Exception):
    """The counterfactual cannot be computed for this audit; the message says why."""


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def audit_services(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Service names in the records, first-seen order."""
    out: list[str] = []
    for rec in records:
        for s in rec.get("services") or []:
            if isinstance(s, str) and s not in out:
                out.append(s)
    return out


def infer_scenario(services: Sequence[str]) -> str | None:
    """The built-in scenario whose services are exactly ``services`` (any order), else None."""
    want = set(services)
    for name in BUILTIN_SCENARIOS:
        if set(load_scenario(name).service_names) == want:
            return name
    return None


class ReplicaSchedulePolicy:
    """Scales each deployment to a fixed schedule of replica counts (no other action).

    Args:
        name: Policy name (``recommended`` or ``actual``).
        times: Schedule times, seconds from the start, increasing.
        schedule: ``{service: counts}``, one count per time (None: keep the previous count).
        bounds: ``{service: (min, max)}``; counts are clamped into them.

    At a decision at time ``t`` the count in force is the last one at or before ``t``; a
    :class:`~envs.core.actions.Scale` is issued for each service whose count differs from the
    one last commanded (the state, starting from the initial replicas given to :meth:`reset`).
    """

    def __init__(
        self,
        name: str,
        times: Sequence[float],
        schedule: Mapping[str, Sequence[int | None]],
        bounds: Mapping[str, tuple[int, int]],
        initial: Mapping[str, int],
    ) -> None:
        self.name = name
        self.times = np.asarray(times, dtype=np.float64)
        self.bounds = dict(bounds)
        self.initial = dict(initial)
        self.clamped = 0
        filled: dict[str, list[int]] = {}
        for s, counts in schedule.items():
            lo, hi = self.bounds[s]
            cur = self.initial[s]
            col: list[int] = []
            for c in counts:
                if c is not None:
                    v = min(max(int(c), lo), hi)
                    self.clamped += v != int(c)
                    cur = v
                col.append(cur)
            filled[s] = col
        self.schedule = filled

    def reset(self, n: int = 1) -> dict[str, int]:
        """The counts last commanded: the initial replicas."""
        return dict(self.initial)

    def act(
        self, obs: Telemetry, state: dict[str, int]
    ) -> tuple[list[Action], dict[str, int], dict[str, Any]]:
        """Scale every service whose scheduled count changed since the last command."""
        k = int(np.searchsorted(self.times, obs.t + 1e-6, side="right")) - 1
        if k < 0:
            return [], state, {}
        actions: list[Action] = []
        new = dict(state)
        for s, col in self.schedule.items():
            if col[k] != new[s]:
                actions.append(Scale(s, col[k]))
                new[s] = col[k]
        return actions, new, {}


def _replay_csv(times: np.ndarray, rps: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["t", "rps"])
        for t, r in zip(times, rps, strict=True):
            w.writerow([f"{t:.6g}", f"{r:.9g}"])
    return path


def _thin(n: int) -> np.ndarray:
    if n <= MAX_SERIES_POINTS:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, MAX_SERIES_POINTS).round().astype(int))


def _run_summary(scenario: Scenario, policy: Policy, sim: Simulator) -> dict[str, Any]:
    result = rollout(sim, policy)
    s = result.summary
    frames = result.frames
    entry = scenario.topology.entry
    e = frames[0].services.index(entry)
    keep = _thin(len(frames))
    slo_s = {k: float(v) for k, v in s["slo_violation_s"].items()}
    return {
        "slo_violation_min": sum(slo_s.values()) / 60.0,
        "slo_violation_s_by_service": slo_s,
        "cost_total": float(s["cost_total"]),
        "allocated_cost_total": float(frames[-1].cluster_value("allocated_cost_total")),
        "entry_error_rate": s["entry_error_rate"],
        "entry_p99_mean_s": s["entry_p99_mean_s"],
        "entry_p99_max_s": s["entry_p99_max_s"],
        "scale_actions": len(result.actions),
        "clamped_counts": int(getattr(policy, "clamped", 0)),
        "series": {
            "t": [float(frames[i].t) for i in keep],
            "entry_p99_s": [float(frames[i]["p99"][e]) for i in keep],
            "entry_rps": [float(frames[i]["rps"][e]) for i in keep],
            "allocated_cost": [
                float(frames[i].cluster_value("allocated_cost_total")) for i in keep
            ],
        },
    }


def counterfactual(
    records: Sequence[Mapping[str, Any]],
    scenario: str | Path | Scenario | None,
    workdir: str | Path,
    seed: int = 0,
    fidelity: str = "fluid",
    policy: Policy | None = None,
) -> dict[str, Any]:
    """The simulated comparison of the recommended and the actual replica schedules.

    Args:
        records: Audit records (plain dicts, time order).
        scenario: A built-in name, a scenario YAML, a Scenario, or None to infer the built-in
            whose services equal the audit's (:func:`infer_scenario`).
        workdir: Where the replay CSV is written (``traffic.csv``).
        seed: Simulator seed (both runs).
        fidelity: ``fluid`` or ``request``.
        policy: The shadowed policy itself (e.g. a bundle's, behind its guard): a third run,
            ``policy``, lets it act in closed loop on the replayed traffic (it sees the
            simulated cluster, not the observed one). None: two runs only.

    Returns:
        Plain data: ``label`` ("simulated"), ``description``, ``scenario``, ``seed``,
        ``fidelity``, ``horizon_s``, ``traffic_csv``, ``entry``, ``entry_slo_p99_s``,
        ``runs`` (``recommended``, ``actual``, and ``policy`` when given; see the module
        docstring), ``difference``
        (recommended minus actual: SLO-violation minutes, cost) and ``notes``.

    Raises:
        CounterfactualSkipped: No matching topology, services the scenario lacks, no entry
            traffic, or fewer than two ticks; the message says which and what to pass.
    """
    if len(records) < 2:
        raise CounterfactualSkipped("the audit has fewer than two ticks")
    services = audit_services(records)
    if scenario is None:
        name = infer_scenario(services)
        if name is None:
            raise CounterfactualSkipped(
                f"the audited deployments {services} match no built-in topology "
                f"({', '.join(BUILTIN_SCENARIOS)}); pass scenario=<name or YAML> describing "
                "this cluster"
            )
        scenario = name
    base = load_scenario(scenario)
    missing = [s for s in services if s not in base.service_names]
    if missing:
        raise CounterfactualSkipped(
            f"scenario {base.name!r} has no deployment {missing}; pass a scenario whose "
            "topology holds every audited deployment"
        )
    entry = base.topology.entry
    t_abs = np.array([float(r["t"]) for r in records])
    times = t_abs - t_abs[0]
    rps = np.array(
        [
            np.nan
            if (v := _num(((r.get("telemetry") or {}).get(entry) or {}).get("rps"))) is None
            else v
            for r in records
        ]
    )
    known = np.isfinite(rps) & (rps >= 0)
    if known.sum() < 2:
        raise CounterfactualSkipped(
            f"fewer than two ticks observed the entry service {entry!r}'s request rate "
            "(telemetry.<entry>.rps); nothing to replay"
        )
    rps_filled = np.interp(times, times[known], rps[known])
    workdir = Path(workdir)
    csv_path = _replay_csv(times, rps_filled, workdir / "traffic.csv").resolve()
    step = float(np.median(np.diff(times)))
    horizon = max(float(times[-1]) + step, base.decision_interval_s)

    def first(key: str, s: str, default: int) -> int:
        for r in records:
            v = _num((r.get(key) or {}).get(s))
            if v is not None:
                return round(v)
        return default

    raw = base.model_dump(mode="json")
    bounds: dict[str, tuple[int, int]] = {}
    initial: dict[str, int] = {}
    for svc in raw["topology"]["services"]:
        rep = svc["replicas"]
        lo, hi = int(rep["min"]), int(rep["max"])
        bounds[svc["name"]] = (lo, hi)
        start = min(max(first("actual_replicas", svc["name"], int(rep["initial"])), lo), hi)
        rep["initial"] = initial[svc["name"]] = start
    raw["traffic"] = {
        "base_rps": 1.0,
        "replay": {"path": str(csv_path), "scale": 1.0, "loop": False},
        "resolution_s": 1.0,
    }
    raw["faults"] = []
    raw["autoscaling"] = {"hpa": None}
    raw["horizon_s"] = horizon
    raw["seed"] = seed
    raw["fidelity"] = fidelity
    raw["name"] = f"{base.name}-counterfactual"
    sc = validate(raw, f"counterfactual of {base.name!r}")

    runs: dict[str, dict[str, Any]] = {}
    for name in SCHEDULES:
        sched: dict[str, list[int | None]] = {
            s: [
                None if (v := _num((r.get(f"{name}_replicas") or {}).get(s))) is None else round(v)
                for r in records
            ]
            for s in services
        }
        follower = ReplicaSchedulePolicy(name, times, sched, bounds, initial)
        runs[name] = _run_summary(sc, follower, Simulator(sc))
    skipped_policy: str | None = None
    if policy is not None:
        label = str(getattr(policy, "name", "policy"))
        try:
            runs["policy"] = _run_summary(sc, policy, Simulator(sc))
            runs["policy"]["policy"] = label
        except (InvalidActionError, ValueError) as err:
            skipped_policy = f"the closed-loop run of {label} failed: {err}"
    slos = sc.effective_slos()
    rec, act = runs["recommended"], runs["actual"]
    clamped = rec["clamped_counts"] + act["clamped_counts"]
    notes = [
        "Open loop: the recommendations are replayed as they were made from the observed "
        "cluster; a policy acting live would have seen other telemetry.",
        "Only replica counts are replayed; restarts, rollbacks, load shedding and faults are "
        "not, and the simulator's pods stand in for the cluster's.",
        f"Traffic: the entry's ({entry}) observed request rate, {int(known.sum())} of "
        f"{len(records)} ticks observed (the rest interpolated), as a replay CSV.",
    ]
    if clamped:
        notes.append(f"{clamped} scheduled counts were clamped to the scenario's replica bounds.")
    if policy is not None:
        notes.append(
            skipped_policy
            or "policy: the shadowed policy acting in closed loop on the replayed traffic (it "
            "sees the simulated cluster; every action kind it takes is applied)."
        )
    return {
        "label": "simulated",
        "description": (
            f"The window's observed traffic ({len(records)} ticks, {horizon / 60:.1f} min) "
            f"replayed in the simulator (scenario {base.name!r}, {fidelity}, seed {seed}) with "
            "replicas following the recommended schedule vs the actual one."
        ),
        "scenario": base.name,
        "seed": seed,
        "fidelity": fidelity,
        "horizon_s": horizon,
        "traffic_csv": str(csv_path),
        "entry": entry,
        "entry_slo_p99_s": slos[entry].p99_latency_s if entry in slos else None,
        "slo_services": list(slos),
        "runs": runs,
        "difference": {
            "slo_violation_min": rec["slo_violation_min"] - act["slo_violation_min"],
            "cost_total": rec["cost_total"] - act["cost_total"],
            "allocated_cost_total": rec["allocated_cost_total"] - act["allocated_cost_total"],
        },
        "notes": notes,
    }
