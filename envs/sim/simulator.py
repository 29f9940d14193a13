"""The simulator facade: one scenario, one engine, a step per decision interval.

``Simulator(scenario)`` picks the engine from ``scenario.fidelity`` (``"fluid"`` or
``"request"``). Both engines share the control plane (pods, nodes, deployments, actions,
cost) and differ only in how requests are served. ``reset`` returns the first frame;
``step(actions)`` applies the actions at the current decision point and runs the simulation
to the next one, returning the frames scraped on the way. Running a whole horizon under a
policy is :func:`agents.rollout.rollout` (the simulator does not know about policies).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.core.actions import Action, InvalidActionError
from envs.core.telemetry import Telemetry
from envs.scenarios.schema import Scenario
from envs.sim.engine import Engine, make_engine
from envs.sim.faults import FaultRecord


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

    def admissible(
        self, actions: Sequence[Action]
    ) -> tuple[list[Action], list[tuple[Action, str]]]:
        """Split ``actions`` into those the cluster accepts now and those it refuses.

        In order, each action is checked together with the ones accepted before it (two
        rollbacks of one service need two previous versions), as :meth:`step` checks the
        batch. Returns ``(accepted, [(refused action, reason), ...])``.
        """
        accepted: list[Action] = []
        refused: list[tuple[Action, str]] = []
        try:  # the usual case, one check: the whole batch is fine
            self.engine.cp.check(list(actions))
        except InvalidActionError:
            pass
        else:
            return list(actions), refused
        for a in actions:
            try:
                self.engine.cp.check([*accepted, a])
            except InvalidActionError as err:
                refused.append((a, str(err)))
            else:
                accepted.append(a)
        return accepted, refused

    def result(
        self,
        frames: list[Telemetry],
        actions: list[tuple[float, Action]],
        decisions: list[Decision],
    ) -> SimResult:
        """Package a finished run of this simulator: summary and fault records added.

        :func:`agents.rollout.rollout` calls it at the horizon.
        """
        return SimResult(
            self.scenario,
            frames,
            actions,
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
