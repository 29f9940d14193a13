"""The oracle planner on cloned simulator state (an upper bound, not a deployable policy).

How much better than ``tuned_runbook`` can any policy be on an incident? NOT A DEPLOYABLE
POLICY. The oracle reads the scenario's hidden fault list (which service or node is
faulty, and when), clones the whole simulator to try each candidate on the exact
future, and knows ``tuned_runbook``'s own totals on the same run. It is an upper bound on
what a policy in this action space can reach, used to size the headroom (issue 18), never
a method to compare as if it were deployable.

Cloning. SimPy processes are generators and cannot be deep-copied or pickled, so a state
is cloned in one of two ways:

* :func:`fork_map` (what the planner uses): the process holding the episode at the decision
  time forks one child per candidate (a copy-on-write clone of the whole process, SimPy
  state, random generators and the runbook's state included); each child plays its
  candidate to the end of the episode and sends its score back through a pipe.
* :func:`replay` (the reference that proves the fork right): a fresh simulator with the
  same scenario and seed, driven by the same plan history, reproduces the episode bit for
  bit up to the decision time; a candidate then branches from that replay. It costs a
  replay of the prefix per candidate; the fork is the cached prefix.

``tests/test_oracle.py`` checks that a forked clone and a replay give exactly the same
frames as the original under the same actions.

The residual action space. The no-op is ``tuned_runbook``'s decision (its rules over the
tuned HPA, ``configs/policy/tuned_runbook.yaml``). A :class:`Macro` deviates from it for
``hold`` decisions, then the runbook runs alone again: scale a service up or down by ``k``
pods (the runbook's HPA may not undo it while held), change the HPA's CPU target of a
service, restart, roll back, drain a node, shed a fraction of the traffic, or veto the
runbook's disruptive remediations (restart, rollback, shedding). The runbook sees every
frame throughout, so its state stays its own.

Planning (:func:`run_oracle`). Every ``every`` decisions from ``lead_s`` before the first
fault's onset on, the planner forks one child per candidate: the plan in force (the
incumbent), the no-op (the runbook from now on) and every macro of :func:`candidates`.
Each child plays to the horizon, so its score is the whole episode's exact score
(:func:`~envs.scenarios.scoring.score_episode`: SLO-violation minutes, allocated cost,
disruptive actions) under "this candidate, then the runbook". Candidates whose allocated
cost exceeds ``tuned_runbook``'s on the same run (times ``1 + cost_slack``) or whose
disruptive actions exceed its count are out (the budgets); among the rest the lowest
objective wins, and the planner switches only when it beats the incumbent by ``margin``.
Because the simulator is deterministic, the incumbent's projection is what happens if it
is kept, so the realised score equals the last projection chosen, and it is never worse
than ``tuned_runbook`` (the no-op at the first planning point is ``tuned_runbook``'s run).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agents.baselines.hpa import HPAPolicy
from agents.baselines.runbook import RunbookPolicy
from envs.core.actions import (
    Action,
    DrainNode,
    Restart,
    Rollback,
    Scale,
    ShedLoad,
)
from envs.core.telemetry import Telemetry
from envs.scenarios.schema import Scenario
from envs.scenarios.scoring import EpisodeScore, score_episode
from envs.sim.simulator import Decision, SimResult, Simulator

T = TypeVar("T")
R = TypeVar("R")

MACRO_KINDS: tuple[str, ...] = (
    "noop",
    "scale",
    "hpa_target",
    "restart",
    "rollback",
    "drain",
    "shed",
    "veto",
)
"""The kinds of :class:`Macro`."""


# --------------------------------------------------------------------------------------------
# the residual action space


@dataclass(frozen=True)
class Macro:
    """A deviation from the runbook, held for ``hold`` decisions; see the module docstring.

    Attributes:
        kind: One of :data:`MACRO_KINDS`.
        service: The service acted on (``scale``, ``hpa_target``, ``restart``, ``rollback``).
        amount: Pods to add (negative: remove) for ``scale``; the CPU target percent for
            ``hpa_target``; the fraction for ``shed``; the node index for ``drain``.
        hold: Decisions it lasts (its first decision included); the runbook alone after.
    """

    kind: str = "noop"
    service: str | None = None
    amount: float = 0.0
    hold: int = 1

    def __post_init__(self) -> None:
        if self.kind not in MACRO_KINDS:
            raise ValueError(f"Macro.kind={self.kind!r}: use one of {MACRO_KINDS}")
        if self.hold < 1:
            raise ValueError(f"Macro.hold must be >= 1 decision, got {self.hold}")
        needs_service = ("scale", "hpa_target", "restart", "rollback")
        if self.kind in needs_service and not self.service:
            raise ValueError(f"Macro.service is required for kind={self.kind!r}")

    @property
    def label(self) -> str:
        """Short readable name, e.g. ``scale db +2 x8``."""
        if self.kind == "noop":
            return "noop"
        if self.kind == "scale":
            return f"scale {self.service} {int(self.amount):+d} x{self.hold}"
        if self.kind == "hpa_target":
            return f"hpa {self.service} {int(self.amount)}% x{self.hold}"
        if self.kind in ("restart", "rollback"):
            return f"{self.kind} {self.service}"
        if self.kind == "drain":
            return f"drain node{int(self.amount)}"
        if self.kind == "shed":
            return f"shed {self.amount:g} x{self.hold}"
        return f"veto x{self.hold}"


NOOP = Macro()
"""The residual no-op: the runbook's own decision."""


class _TargetedHPA:
    """The runbook's HPA with per-service CPU targets overridden while a macro asks for it.

    :meth:`HPAPolicy.act` takes ``targets`` for one sync (as editing the HPA object between
    syncs would); the runbook calls ``self.hpa.act(obs, state)``, so this wrapper passes the
    planner's targets through.
    """

    def __init__(self, inner: HPAPolicy) -> None:
        self.inner = inner
        self.targets: dict[str, int] | None = None

    def act(
        self, obs: Any, state: Any, targets: dict[str, int] | None = None
    ) -> tuple[list[Action], Any, dict[str, Any]]:
        return self.inner.act(obs, state, self.targets if self.targets is not None else targets)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def make_runbook(scenario: Scenario) -> RunbookPolicy:
    """``tuned_runbook`` exactly as ``opsworld evaluate policy=tuned_runbook`` builds it."""
    from agents.registry import make_policy, policy_config

    policy = make_policy(policy_config("tuned_runbook"), scenario)
    assert isinstance(policy, RunbookPolicy)
    return policy


# --------------------------------------------------------------------------------------------
# one episode under "runbook + plan"


@dataclass
class Plan:
    """A macro and the decision index it started at."""

    macro: Macro
    start: int

    def active(self, step: int) -> bool:
        """Whether the macro still applies at decision ``step``."""
        return self.macro.kind != "noop" and self.start <= step < self.start + self.macro.hold


class World:
    """One episode of ``tuned_runbook`` with an optional :class:`Plan` on top.

    The runbook decides on every frame; a plan in force edits its decision
    (:meth:`residual`). :meth:`step` runs one decision; :meth:`run` to the horizon;
    :meth:`result` packages the run as :func:`agents.rollout.rollout` would. Without a plan it
    reproduces ``rollout(Simulator(...), tuned_runbook)`` exactly.

    Args:
        scenario: The scenario.
        seed: The run's seed (e.g. ``entry.run_seed(k)``).
        fidelity: ``"fluid"`` or ``"request"``.
    """

    def __init__(self, scenario: Scenario, seed: int, fidelity: str = "fluid") -> None:
        self.sim = Simulator(scenario, fidelity=fidelity, seed=seed)
        self.scenario = self.sim.scenario
        self.runbook = make_runbook(scenario)
        self.hpa = _TargetedHPA(self.runbook.hpa)
        self.runbook.hpa = self.hpa  # type: ignore[assignment]  # same act() surface
        self.frames: list[Telemetry] = [self.sim.reset()]
        self.state = self.runbook.reset(1)
        self.log: list[tuple[float, Action]] = []
        self.decisions: list[Decision] = []
        self.step_index = 0
        self.plan = Plan(NOOP, 0)
        self.plans: list[tuple[int, Macro]] = []
        """Every plan switch: ``(decision index, macro)`` (replays follow it)."""
        self.names = tuple(self.scenario.service_names)
        self.bounds = {
            s.name: (s.replicas.min, s.replicas.max) for s in self.scenario.topology.services
        }
        self._scale_pin = 0

    @property
    def done(self) -> bool:
        """True at the horizon."""
        return self.sim.done

    @property
    def now(self) -> float:
        """Simulated time, s."""
        return self.sim.now

    def set_plan(self, macro: Macro) -> None:
        """Put ``macro`` in force from this decision on (replacing the plan in force)."""
        self.plan = Plan(macro, self.step_index)
        self.plans.append((self.step_index, macro))

    def desired(self, service: str) -> int:
        """The control plane's desired replicas of ``service`` now (ground truth)."""
        return int(self.sim.engine.cp.desired[self.names.index(service)])

    def shed_fraction(self) -> float:
        """The shed fraction in force (ground truth)."""
        return float(self.sim.engine.cp.shed_fraction)

    def residual(self, actions: list[Action]) -> list[Action]:
        """The runbook's ``actions`` edited by the plan in force at this decision."""
        plan = self.plan
        if not plan.active(self.step_index):
            return actions
        m = plan.macro
        first = self.step_index == plan.start
        out = list(actions)
        if m.kind == "scale" and m.service is not None:
            lo, hi = self.bounds[m.service]
            if first:
                base = self.desired(m.service)
                out = [a for a in out if not (isinstance(a, Scale) and a.service == m.service)]
                out.append(Scale(m.service, min(hi, max(lo, base + int(m.amount)))))
                self._scale_pin = min(hi, max(lo, base + int(m.amount)))
            else:
                pin = self._scale_pin
                edited: list[Action] = []
                for a in out:
                    if isinstance(a, Scale) and a.service == m.service:
                        n = max(a.replicas, pin) if m.amount > 0 else min(a.replicas, pin)
                        a = Scale(m.service, n)
                    edited.append(a)
                out = edited
        elif m.kind in ("restart", "rollback") and m.service is not None:
            out = [
                a for a in out if not (isinstance(a, Restart | Rollback) and a.service == m.service)
            ]
            out.append(Restart(m.service) if m.kind == "restart" else Rollback(m.service))
        elif m.kind == "drain":
            out = [a for a in out if not isinstance(a, DrainNode)]
            out.append(DrainNode(int(m.amount)))
        elif m.kind == "shed":
            out = [a for a in out if not isinstance(a, ShedLoad)]
            if first:
                out.append(ShedLoad(float(m.amount)))
        elif m.kind == "veto":
            out = [a for a in out if not isinstance(a, Restart | Rollback | ShedLoad | DrainNode)]
        return out

    def step(self) -> list[Action]:
        """One decision: the runbook decides, the plan edits, the simulator advances."""
        plan = self.plan
        m = plan.macro
        held = plan.active(self.step_index) and m.kind == "hpa_target"
        self.hpa.targets = {str(m.service): int(m.amount)} if held else None
        seen = self.frames[-1]
        proposed, self.state, _ = self.runbook.act(seen, self.state)
        self.hpa.targets = None
        accepted, _refused = self.sim.admissible(self.residual(proposed))
        self.decisions.append(Decision(self.now, 1.0 - float(seen.mask.mean()), len(accepted)))
        self.log.extend((self.now, a) for a in accepted)
        self.frames.extend(self.sim.step(accepted))
        self.step_index += 1
        return accepted

    def run(self, until_step: int | None = None) -> None:
        """Step to the horizon (or until decision ``until_step``)."""
        while not self.done and (until_step is None or self.step_index < until_step):
            self.step()

    def result(self) -> SimResult:
        """The run so far as a :class:`SimResult` (what ``rollout`` returns at the horizon)."""
        return self.sim.result(self.frames, self.log, self.decisions)

    def score(self) -> EpisodeScore:
        """:func:`score_episode` of the run so far."""
        return score_episode(self.result())


# --------------------------------------------------------------------------------------------
# cloning: fork (fast) and replay (reference)


class CloneError(RuntimeError):
    """A forked clone failed; the message carries the child's traceback."""


def fork_map(fn: Callable[[T], R], items: Sequence[T], workers: int = 1) -> list[R]:
    """``[fn(x) for x in items]``, each call in a forked copy of this process.

    The child is a copy-on-write clone of the whole process at the fork, so ``fn`` sees (and
    may change) every object as it is now without touching the parent's. Each child pickles
    its result into a pipe and exits with ``os._exit``. At most ``workers`` children run at
    once. POSIX only; a fork copies only the calling thread, so call it from a process that
    runs no other threads holding locks (the simulator and the runbook start none).

    Raises:
        CloneError: When a child raised (its traceback in the message) or died silently.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: list[Any] = [None] * len(items)
    running: list[tuple[int, int, int]] = []  # (index, pid, read fd)

    def collect(index: int, pid: int, fd: int) -> None:
        chunks = []
        with os.fdopen(fd, "rb") as pipe:
            while True:
                chunk = pipe.read(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        data = b"".join(chunks)
        if not data:
            raise CloneError(f"forked clone {index} died without a result (status {status})")
        tag, value = pickle.loads(data)
        if tag != "ok":
            raise CloneError(f"forked clone {index} failed:\n{value}")
        results[index] = value

    try:
        for i, item in enumerate(items):
            if len(running) >= workers:
                collect(*running.pop(0))
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the clone
                os.close(r)
                code = 0
                try:
                    payload = pickle.dumps(("ok", fn(item)), protocol=pickle.HIGHEST_PROTOCOL)
                except BaseException:  # report anything, then exit
                    payload = pickle.dumps(("error", traceback.format_exc()))
                    code = 1
                try:
                    with os.fdopen(w, "wb") as pipe:
                        pipe.write(payload)
                finally:
                    os._exit(code)
            os.close(w)
            running.append((i, pid, r))
        while running:
            collect(*running.pop(0))
    finally:
        for _, pid, fd in running:  # an error above: do not leave clones behind
            try:
                os.close(fd)
                os.waitpid(pid, 0)
            except OSError:
                pass
    return results


def replay(
    scenario: Scenario,
    seed: int,
    plans: Sequence[tuple[int, Macro]],
    until_step: int,
    fidelity: str = "fluid",
) -> World:
    """A fresh :class:`World` driven by the plan history ``plans`` to decision ``until_step``.

    The reference clone: same scenario, seed and plan switches give the same actions and so
    (the simulator being deterministic) the same episode, bit for bit.
    """
    world = World(scenario, seed, fidelity)
    switches = sorted(plans, key=lambda p: p[0])
    k = 0
    while not world.done and world.step_index < until_step:
        while k < len(switches) and switches[k][0] == world.step_index:
            world.set_plan(switches[k][1])
            k += 1
        world.step()
    while k < len(switches) and switches[k][0] == world.step_index:
        world.set_plan(switches[k][1])
        k += 1
    return world


# --------------------------------------------------------------------------------------------
# candidates and the choice


@dataclass(frozen=True)
class OracleConfig:
    """The oracle's knobs (defaults: those of the headroom run in ``docs/control.md``).

    Attributes:
        every: Plan at every ``every``-th decision.
        lead_s: Start planning this long before the first fault's onset.
        hold: Decisions a held macro (scale, HPA target, shed, veto) lasts.
        extra_holds: More hold lengths: every held macro is also tried with each of these.
        scale_steps: Pods added or removed by the ``scale`` macros.
        hpa_targets: CPU targets (percent) of the ``hpa_target`` macros.
        shed_fractions: Fractions of the ``shed`` macros.
        max_services: At most this many services get per-service macros (the faulty ones
            first, then the entry, then those violating their SLO now).
        margin_min: Switch plans only when the objective improves by more than this.
        cost_slack: Allowed allocated cost: ``(1 + cost_slack) x tuned_runbook``'s on the run.
        cost_weight: Objective weight of allocated cost relative to ``tuned_runbook``'s.
        disruption_weight: Objective weight (minutes) of one disruptive action.
        workers: Clones run at once.
    """

    every: int = 4
    lead_s: float = 0.0
    hold: int = 8
    extra_holds: tuple[int, ...] = ()
    scale_steps: tuple[int, ...] = (1, 3, -1)
    hpa_targets: tuple[int, ...] = (30, 80)
    shed_fractions: tuple[float, ...] = (0.25, 0.5)
    max_services: int = 4
    margin_min: float = 0.25
    cost_slack: float = 0.0
    cost_weight: float = 0.5
    disruption_weight: float = 0.05
    workers: int = 1

    def __post_init__(self) -> None:
        if min(self.every, self.hold, self.workers, self.max_services, *self.extra_holds) < 1:
            raise ValueError(
                "OracleConfig: every, hold, workers and max_services must be >= 1, got "
                f"{self.every}, {self.hold}, {self.workers}, {self.max_services}"
            )
        if self.margin_min < 0 or self.cost_slack < 0:
            raise ValueError("OracleConfig: margin_min and cost_slack must be >= 0")


def fault_services(scenario: Scenario) -> list[str]:
    """Services named by the scenario's faults (hidden from policies; the oracle reads them)."""
    out: list[str] = []
    for f in scenario.faults:
        for attr in ("service", "src", "dst"):
            name = getattr(f, attr, None)
            if isinstance(name, str) and name in scenario.service_names and name not in out:
                out.append(name)
    return out


def fault_nodes(scenario: Scenario) -> list[int]:
    """Nodes named by the scenario's faults (CPU hog, node failure)."""
    out: list[int] = []
    for f in scenario.faults:
        node = getattr(f, "node", None)
        if isinstance(node, int) and node not in out:
            out.append(node)
    return out


def focus_services(world: World, limit: int) -> list[str]:
    """The services that get per-service macros: faulty, entry, then those violating now."""
    sc = world.scenario
    names: list[str] = list(fault_services(sc))
    if sc.topology.entry not in names:
        names.append(sc.topology.entry)
    frame = world.frames[-1]
    slos = sc.effective_slos()
    for s in sc.service_names:
        i = frame.services.index(s)
        err = float(frame["error_rate"][i])
        p99 = float(frame["p99"][i])
        cpu = float(frame["cpu_util"][i])
        slo = slos.get(s)
        hot = (slo is not None and ((err > slo.error_rate) or (p99 > slo.p99_latency_s))) or (
            cpu > 0.9
        )
        if hot and s not in names:
            names.append(s)
    return names[:limit]


def candidates(world: World, config: OracleConfig) -> list[Macro]:
    """The macros tried at this decision (admissible now; the no-op not included)."""
    holds = (config.hold, *config.extra_holds)
    out: list[Macro] = []
    for s in focus_services(world, config.max_services):
        lo, hi = world.bounds[s]
        d = world.desired(s)
        for h in holds:
            for k in config.scale_steps:
                if lo <= d + k <= hi:
                    out.append(Macro("scale", s, k, h))
            for target in config.hpa_targets:
                out.append(Macro("hpa_target", s, target, h))
        out.append(Macro("restart", s))
        accepted, _ = world.sim.admissible([Rollback(s)])
        if accepted:
            out.append(Macro("rollback", s))
    for node in fault_nodes(world.scenario):
        accepted, _ = world.sim.admissible([DrainNode(node)])
        if accepted:
            out.append(Macro("drain", amount=node))
    shed = world.shed_fraction()
    for h in holds:
        for f in config.shed_fractions:
            if abs(f - shed) > 1e-9:
                out.append(Macro("shed", amount=f, hold=h))
        if shed > 0:
            out.append(Macro("shed", amount=0.0, hold=h))
        out.append(Macro("veto", hold=h))
    return out


@dataclass(frozen=True)
class Projection:
    """The whole episode's score under one candidate (then the runbook), from a clone."""

    macro: Macro
    keep: bool
    """True for the incumbent (the plan in force, kept)."""
    score: EpisodeScore

    @property
    def slo_violation_min(self) -> float:
        """Projected SLO-violation minutes of the whole episode."""
        return self.score.slo_violation_min

    @property
    def allocated_cost(self) -> float:
        """Projected allocated cost of the whole episode."""
        return self.score.allocated_cost

    @property
    def disruptive_actions(self) -> int:
        """Projected disruptive actions of the whole episode."""
        return self.score.disruptive_actions

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the headline numbers, not the whole score)."""
        return {
            "macro": self.macro.label,
            "keep": self.keep,
            "slo_violation_min": self.slo_violation_min,
            "allocated_cost": self.allocated_cost,
            "disruptive_actions": self.disruptive_actions,
        }


@dataclass(frozen=True)
class Budget:
    """``tuned_runbook``'s totals on the same run: the oracle may not spend more."""

    allocated_cost: float
    disruptive_actions: int
    slo_violation_min: float


def feasible(p: Projection, budget: Budget, config: OracleConfig) -> bool:
    """Whether ``p`` keeps to the budgets (cost and disruptive actions)."""
    cost_ok = p.allocated_cost <= budget.allocated_cost * (1.0 + config.cost_slack) + 1e-12
    return cost_ok and p.disruptive_actions <= budget.disruptive_actions


def objective(p: Projection, budget: Budget, config: OracleConfig) -> float:
    """SLO-violation minutes + small weights on relative cost and disruptive actions."""
    rel = p.allocated_cost / budget.allocated_cost if budget.allocated_cost > 0 else 0.0
    return (
        p.slo_violation_min
        + config.cost_weight * rel
        + config.disruption_weight * p.disruptive_actions
    )


def choose(
    projections: Sequence[Projection], incumbent: int, budget: Budget, config: OracleConfig
) -> int:
    """Index of the projection to follow: the incumbent unless a feasible one beats it.

    The best feasible projection by :func:`objective` replaces the incumbent only when its
    objective is lower by more than ``config.margin_min`` (an infeasible incumbent is
    replaced by the best feasible one at any margin). Ties keep the earlier candidate.
    """
    inc = projections[incumbent]
    best, best_j = incumbent, math.inf
    for i, p in enumerate(projections):
        if not feasible(p, budget, config):
            continue
        j = objective(p, budget, config)
        if j < best_j - 1e-12:
            best, best_j = i, j
    if best == incumbent or best_j == math.inf:
        return incumbent
    if not feasible(inc, budget, config):
        return best
    if best_j < objective(inc, budget, config) - config.margin_min:
        return best
    return incumbent


# --------------------------------------------------------------------------------------------
# the oracle episode


@dataclass
class OracleRun:
    """An oracle episode: the run, what it chose, and the ``tuned_runbook`` reference."""

    result: SimResult
    score: EpisodeScore
    reference: EpisodeScore
    """``tuned_runbook``'s score on the same scenario and seed (the no-op's projection at
    the first planning point, which is exactly its run)."""
    choices: list[dict[str, Any]] = field(default_factory=list)
    """One entry per plan switch: time, macro, projected score, the incumbent's."""
    planning_points: int = 0
    clones: int = 0
    projected: Projection | None = None
    """The projection last followed (the realised score must equal it)."""


def _project(world: World, macro: Macro | None) -> Projection:
    """Play ``macro`` (None: keep the plan in force) then the runbook to the horizon."""
    keep = macro is None
    if macro is not None:
        world.set_plan(macro)
    followed = world.plan.macro
    world.run()
    return Projection(followed, keep, world.score())


def run_oracle(
    scenario: Scenario,
    seed: int,
    fidelity: str = "fluid",
    config: OracleConfig | None = None,
) -> OracleRun:
    """One oracle episode on ``scenario`` with ``seed``; see the module docstring."""
    config = config or OracleConfig()
    world = World(scenario, seed, fidelity)
    onsets = [f.at_s for f in world.scenario.faults]
    start_t = max(0.0, min(onsets) - config.lead_s) if onsets else 0.0
    budget: Budget | None = None
    reference: EpisodeScore | None = None
    choices: list[dict[str, Any]] = []
    points = clones = 0
    followed: Projection | None = None
    while not world.done:
        plan_now = world.now + 1e-9 >= start_t and world.step_index % config.every == 0
        if budget is None and world.now + 1e-9 >= start_t:
            plan_now = True
        if plan_now and followed is not None:
            # nothing left to win on SLO: the plan in force projects no further violation
            so_far = world.score().slo_violation_min
            plan_now = followed.slo_violation_min > so_far + 1e-9
        if plan_now:
            options: list[Macro | None] = [None]  # keep the plan in force
            if world.plan.active(world.step_index):
                options.append(NOOP)
            options.extend(candidates(world, config))
            projections = fork_map(lambda m: _project(world, m), options, workers=config.workers)
            points += 1
            clones += len(options)
            if budget is None:  # the first planning point: keeping the no-op is tuned_runbook
                reference = projections[0].score
                budget = Budget(
                    reference.allocated_cost,
                    reference.disruptive_actions,
                    reference.slo_violation_min,
                )
            pick = choose(projections, 0, budget, config)
            followed = projections[pick]
            if pick != 0:
                macro = options[pick]
                assert macro is not None
                world.set_plan(macro)
                choices.append(
                    {
                        "t": world.now,
                        "decision": world.step_index,
                        "macro": macro.label,
                        "projected": projections[pick].as_dict(),
                        "incumbent": projections[0].as_dict(),
                    }
                )
        world.step()
    result = world.result()
    score = score_episode(result)
    if reference is None:  # never planned (no decision after start_t): it was the runbook
        reference = score
    return OracleRun(result, score, reference, choices, points, clones, followed)


def oracle_summary(run: OracleRun) -> dict[str, Any]:
    """A JSON-ready record of an oracle episode's choices (next to its score)."""
    return {
        "planning_points": run.planning_points,
        "clones": run.clones,
        "switches": len(run.choices),
        "choices": run.choices,
        "reference": dataclasses.asdict(run.reference),
        "projected": None if run.projected is None else run.projected.as_dict(),
    }


__all__ = [
    "MACRO_KINDS",
    "NOOP",
    "Budget",
    "CloneError",
    "Macro",
    "OracleConfig",
    "OracleRun",
    "Projection",
    "World",
    "candidates",
    "choose",
    "feasible",
    "fork_map",
    "objective",
    "oracle_summary",
    "replay",
    "run_oracle",
]
