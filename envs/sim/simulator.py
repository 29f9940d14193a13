"""The simulator facade: one scenario, one engine, a step per decision interval.

``Simulator(scenario)`` picks the engine from ``scenario.fidelity`` (``"fluid"`` or
``"request"``). Both engines share the control plane (pods, nodes, deployments, actions,
cost) and differ only in how requests are served. ``reset`` returns the first frame;
``step(actions)`` applies the actions at the current decision point and runs the simulation
to the next one, returning the frames scraped on the way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agents.policy import Policy
from envs.scenarios.schema import Scenario
from envs.sim.actions import Action
from envs.sim.engine import Engine, make_engine
from envs.sim.faults import FaultRecord
from envs.sim.telemetry import Telemetry


@dataclass
class SimResult:
    """What a run produced: every frame, every action, and a summary."""

    scenario: Scenario
    frames: list[Telemetry]
    actions: list[tuple[float, Action]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)


@dataclass(frozen=True)
class Decision:
    """One decision point: when, what the policy saw, what it did."""

    t: float
    missing_fraction: float
    """Share of the per-service gauges that were missing (NaN) in the frame decided on."""
    n_actions: int


class Simulator:
    """Runs one scenario at its fidelity; see the module docstring.

    Args:
        scenario: A validated scenario.
        fidelity: Overrides ``scenario.fidelity`` when given.
        seed: Overrides ``scenario.seed`` when given.
    """

    def __init__(
        self, scenario: Scenario, fidelity: str | None = None, seed: int | None = None
    ) -> None:
        updates: dict[str, Any] = {}
        if fidelity is not None:
            updates["fidelity"] = fidelity
        if seed is not None:
            updates["seed"] = seed
        if updates:
            scenario = Scenario.model_validate({**scenario.model_dump(), **updates})
        self.scenario = scenario
        self.services: tuple[str, ...] = tuple(scenario.service_names)
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        """The running engine (after :meth:`reset`)."""
        if self._engine is None:
            raise RuntimeError("call Simulator.reset() before stepping")
        return self._engine

    @property
    def now(self) -> float:
        """Simulated time, seconds."""
        return self.engine.now

    @property
    def done(self) -> bool:
        """True once the horizon is reached."""
        return self.engine.now >= self.scenario.horizon_s - 1e-9

    def reset(self, seed: int | None = None) -> Telemetry:
        """Start afresh (optionally with a new seed) and return the frame at t = 0."""
        sc = self.scenario
        if seed is not None:
            sc = sc.model_copy(update={"seed": seed})
        self._engine = make_engine(sc)
        return self._engine.start()

    def step(self, actions: Sequence[Action] = ()) -> list[Telemetry]:
        """Apply ``actions`` now and run to the next decision point; return the new frames."""
        if self.done:
            raise RuntimeError(f"the episode is over (t = {self.now:g} s = horizon); call reset()")
        return self.engine.advance(list(actions))

    def run(
        self,
        policy: Policy,
        progress: Callable[[float, float], None] | None = None,
    ) -> SimResult:
        """Run the whole horizon under ``policy``; ``progress(now, horizon)`` after each step."""
        frame = self.reset()
        frames = [frame]
        log: list[tuple[float, Action]] = []
        state = policy.reset(1)
        decisions: list[Decision] = []
        while not self.done:
            seen = frames[-1]
            acts, state, _ = policy.act(seen, state)
            decisions.append(Decision(self.now, 1.0 - float(seen.mask.mean()), len(acts)))
            log.extend((self.now, a) for a in acts)
            frames.extend(self.step(acts))
            if progress is not None:
                progress(self.now, self.scenario.horizon_s)
        return SimResult(
            self.scenario,
            frames,
            log,
            summarize(self.scenario, frames),
            decisions,
            [dataclasses.replace(r) for r in self.engine.faults.records],
        )


def summarize(scenario: Scenario, frames: list[Telemetry]) -> dict[str, Any]:
    """Headline numbers of a run: requests, errors, latency, cost, SLO violation."""
    last = frames[-1]
    arrived = last.counter("arrived")
    failed = last.counter("failed") + last.counter("dropped")
    entry = last.services.index(scenario.topology.entry)
    p99 = np.array([f["p99"][entry] for f in frames[1:]])
    finite = p99[np.isfinite(p99)]
    slo_s = {
        s: float(last["slo_violation_s"][last.services.index(s)]) for s in scenario.effective_slos()
    }
    return {
        "scenario": scenario.name,
        "fidelity": scenario.fidelity,
        "seed": scenario.seed,
        "horizon_s": scenario.horizon_s,
        "entry_requests": float(arrived[entry]),
        "entry_error_rate": float(failed[entry] / arrived[entry]) if arrived[entry] else None,
        "entry_p99_mean_s": float(finite.mean()) if finite.size else None,
        "entry_p99_max_s": float(finite.max()) if finite.size else None,
        "cost_total": last.cluster_value("cost_total"),
        "pod_seconds": last.cluster_value("pod_seconds"),
        "node_hours": last.cluster_value("node_hours"),
        "slo_violation_s": slo_s,
    }
