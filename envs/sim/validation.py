"""Validation workloads: analytic M/M/c scenarios and fluid-vs-request comparisons.

Used by the tests, ``opsworld bench sim`` and the fidelity table in ``docs/fidelity.md``, so
all three measure the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.core.telemetry import Telemetry
from envs.scenarios.schema import Scenario
from envs.sim.simulator import Simulator


def visit_ratios(scenario: Scenario) -> np.ndarray:
    """Expected attempts at each service per external request, with no failures."""
    topo = scenario.topology
    index = {s.name: i for i, s in enumerate(topo.services)}
    n = len(topo.services)
    em = np.zeros((n, n))
    for e in topo.edges:
        em[index[e.src], index[e.dst]] = e.probability * e.calls
    v = np.zeros(n)
    v[index[topo.entry]] = 1.0
    for i in topo.topological_order():
        v += v[i] * em[i]
    return v


def utilisation(scenario: Scenario, rps: float | None = None) -> np.ndarray:
    """Per-service utilisation ``lambda_i * E[S_i] / (replicas_i * concurrency_i)``."""
    rps = scenario.traffic.base_rps if rps is None else rps
    lam = rps * visit_ratios(scenario)
    out = []
    for i, s in enumerate(scenario.topology.services):
        c = s.replicas.initial * s.pod.concurrency
        out.append(lam[i] * s.pod.service_time.mean / c if c else np.inf)
    return np.array(out)


def at_utilisation(scenario: Scenario, util: float, **updates: Any) -> Scenario:
    """``scenario`` with constant traffic scaled so that its busiest service runs at ``util``."""
    rps = scenario.traffic.base_rps * util / float(utilisation(scenario).max())
    raw = scenario.model_dump()
    raw["traffic"] = {"base_rps": rps, "resolution_s": scenario.traffic.resolution_s}
    raw.update(updates)
    return Scenario.model_validate(raw)


def without_timeouts(scenario: Scenario) -> Scenario:
    """``scenario`` with every timeout and retry removed (overload then sheds by queue limit)."""
    raw = scenario.model_dump()
    for s in raw["topology"]["services"]:
        s["pod"]["timeout_s"] = None
        s["pod"]["retries"] = 0
    return Scenario.model_validate(raw)


def mmc_scenario(
    rho: float,
    servers: int = 8,
    mean_service_s: float = 0.01,
    pods: int = 2,
    horizon_s: float = 600.0,
    seed: int = 0,
    fidelity: str = "request",
) -> Scenario:
    """One service, Poisson arrivals, exponential service, ``servers`` slots, no limits."""
    if servers % pods:
        raise ValueError(f"servers ({servers}) must be a multiple of pods ({pods})")
    lam = rho * servers / mean_service_s
    return Scenario.model_validate(
        {
            "name": f"mmc-{servers}-{rho:g}",
            "topology": {
                "name": "single",
                "entry": "svc",
                "services": [
                    {
                        "name": "svc",
                        "pod": {
                            "concurrency": servers // pods,
                            "service_time": {"mean": mean_service_s, "cv": 1.0},
                            "queue_per_pod": 10**9,
                        },
                        "replicas": {"initial": pods, "min": 1, "max": 100},
                    }
                ],
            },
            "traffic": {"base_rps": lam},
            "horizon_s": horizon_s,
            "seed": seed,
            "fidelity": fidelity,
        }
    )


def run_frames(scenario: Scenario) -> list[Telemetry]:
    """Every frame of a run with no actions."""
    sim = Simulator(scenario)
    frames = [sim.reset()]
    while not sim.done:
        frames.extend(sim.step([]))
    return frames


@dataclass(frozen=True)
class RunStats:
    """Per-service steady-state statistics of one run (after ``warmup`` frames)."""

    services: tuple[str, ...]
    throughput: np.ndarray  # completed attempts per second
    error_rate: np.ndarray  # (failed + dropped) / finished attempts
    mean_latency: np.ndarray  # mean over scrapes of the interval mean latency
    p99: np.ndarray  # mean over scrapes of the interval p99


def run_stats(frames: list[Telemetry], warmup: int = 1) -> RunStats:
    """Steady-state statistics of a run, skipping the first ``warmup`` scrapes."""
    first, last = frames[warmup], frames[-1]
    span = last.t - first.t
    d = last.counters - first.counters
    finished = d[:, 1:].sum(axis=1)
    body = frames[warmup + 1 :]
    return RunStats(
        services=last.services,
        throughput=d[:, 1] / span,
        error_rate=np.where(finished > 0, (d[:, 2] + d[:, 3]) / np.maximum(finished, 1e-12), 0),
        mean_latency=np.nanmean([f["mean_latency"] for f in body], axis=0),
        p99=np.nanmean([f["p99"] for f in body], axis=0),
    )


def compare(scenario: Scenario) -> tuple[RunStats, RunStats]:
    """Run ``scenario`` at both fidelities: ``(fluid, request)``."""
    fluid = run_stats(run_frames(scenario.model_copy(update={"fidelity": "fluid"})))
    request = run_stats(run_frames(scenario.model_copy(update={"fidelity": "request"})))
    return fluid, request
