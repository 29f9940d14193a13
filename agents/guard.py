"""The safety guard: the last layer between any policy and the actions it hands to a cluster.

:class:`Guard` checks one decision (the actions a policy proposed for one telemetry frame)
against a :class:`GuardConfig` and returns a :class:`GuardVerdict`: the actions that may go
out and one :class:`Intervention` (a rule and a reason) for every change it made. The rules,
in the order they apply:

``stale_telemetry``
    No frame with enough observed fields (``min_observed_fraction`` of ``rps``,
    ``cpu_util``, ``replicas_ready``, ``p99``) for more than ``stale_after_s`` (measured
    against ``now``, the wall clock in the server and the frame time in a simulation), or
    the frame itself older than ``stale_after_s``: the state is unknown, the fallback
    baseline decides.
``circuit_breaker``
    ``breaker_violations`` violations or inference errors within ``breaker_window_s`` open
    the breaker: the fallback decides until ``breaker_reset_s`` (600 s) after opening (or
    :meth:`Guard.reset_breaker`; ``breaker_reset_s: null`` waits for that). A violation is
    a proposal out of range (:data:`BREAKER_RULES`: ``replica_bounds``, ``shed_limit``,
    ``hpa_target_bounds``, ``unknown_target``); the pacing clamps (``max_step``,
    ``max_surge``, ``cooldown``, ``rate_limit``, ``duplicate``) are reported but do not
    count, so a policy that acts in big steps is paced, not shut out. After an automatic
    reset the breaker is half-open for ``breaker_window_s``: one violation or error then
    opens it again at once.
``inference_error``
    The policy raised: the fallback decides for this frame (and it counts for the breaker).
``replica_bounds`` / ``max_step`` / ``max_surge``
    A ``Scale`` is clamped into ``[min, max]`` (the intersection of the config's bounds and
    the controller's :class:`~envs.core.spec.ControlSpec`), then to at most ``max_step``
    replicas away from the current desired count, and scale-ups in one decision add at most
    ``max_surge`` replicas in total. A clamp to the current count drops the action.
``cooldown`` / ``rate_limit``
    A disruptive action (restart, rollback, drain, shedding more) on a target within
    ``cooldown_s[kind]`` of the last one of that kind on that target is dropped, and so is
    any beyond ``max_disruptive`` within ``rate_window_s`` over the whole cluster.
``shed_limit`` / ``hpa_target_bounds`` / ``duplicate`` / ``unknown_target``
    Shedding is capped at ``max_shed_fraction``; an HPA target is clamped into
    ``[hpa_target_min, hpa_target_max]``; a second action of the same kind on the same
    target in one decision is dropped (the first stays), and so is an action on a service
    the spec does not name.

Bounds come first: a service whose current count lies outside its bounds is brought to
the nearest bound even if that moves it more than ``max_step`` or ``max_surge``. Shedding
less than is in force (or stopping) is never limited.

The fallback's own actions go through the same clamps and limits (its interventions are
reported, but do not count toward the breaker). The guard's state is explicit (a frozen
:class:`GuardState` per stream), like a policy's, so one guard serves many streams.

:class:`GuardedPolicy` wraps a :class:`~envs.core.policy.Policy` with a guard and is itself
a policy, so evaluation, the server and shadow mode use it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agents.baselines.hpa import HPAConfig, HPAPolicy
from envs.core.actions import (
    Action,
    DrainNode,
    Noop,
    Restart,
    Rollback,
    Scale,
    SetHPATarget,
    ShedLoad,
)
from envs.core.policy import Policy
from envs.core.spec import ControlSpec
from envs.core.telemetry import CLUSTER_INDEX, FIELD_INDEX, Telemetry

KEY_FIELDS: tuple[str, ...] = ("rps", "cpu_util", "replicas_ready", "p99")
"""Fields whose observed share decides whether a frame counts as telemetry at all."""

DISRUPTIVE_KINDS: tuple[str, ...] = ("restart", "rollback", "drain_node", "shed_load")
"""Action kinds under cooldowns and the rate limit."""

RULES: tuple[str, ...] = (
    "stale_telemetry",
    "circuit_breaker",
    "inference_error",
    "replica_bounds",
    "max_step",
    "max_surge",
    "cooldown",
    "rate_limit",
    "shed_limit",
    "hpa_target_bounds",
    "duplicate",
    "unknown_target",
)
"""Every rule an :class:`Intervention` can name."""

BREAKER_RULES: frozenset[str] = frozenset(
    {"replica_bounds", "shed_limit", "hpa_target_bounds", "unknown_target"}
)
"""Rules whose interventions on a policy's proposal count toward the circuit breaker (an
out-of-range proposal); pacing clamps do not count, inference errors do."""

Fallback = Literal["hpa", "hold"]

PositiveInt = Annotated[int, Field(ge=1)]


class GuardConfig(BaseModel):
    """Limits the guard enforces; every field has a safe default.

    Attributes:
        replicas_min: Lowest replica count, one value or per service (None: the spec's).
        replicas_max: Highest replica count, likewise.
        max_step: Most replicas one decision may add to or remove from a service.
        max_surge: Most replicas one decision may add over all services (None: no limit).
        cooldown_s: Seconds between two disruptive actions of a kind on one target
            (service, node, or the ingress for shedding).
        max_disruptive: Most disruptive actions within ``rate_window_s`` (whole cluster).
        rate_window_s: The rate limit's window.
        max_shed_fraction: Highest shedding fraction allowed.
        hpa_target_min: Lowest HPA CPU target (percent) a policy may set.
        hpa_target_max: Highest one.
        stale_after_s: Telemetry older than this (or without enough observed fields for
            this long) hands the decision to the fallback.
        min_observed_fraction: Share of the key fields a frame must have observed to count.
        fallback: The baseline that decides when the policy may not: ``hpa`` (the Kubernetes
            HPA with CPU target ``fallback_cpu_target``) or ``hold`` (no action).
        fallback_cpu_target: The fallback HPA's CPU utilisation target, percent.
        breaker_violations: Violations (interventions of :data:`BREAKER_RULES` on the
            policy's proposal) or inference errors within ``breaker_window_s`` that open
            the circuit breaker.
        breaker_window_s: The breaker's window (and how long it stays half-open after an
            automatic reset).
        breaker_reset_s: Close the breaker this long after it opened, half-open (None:
            only :meth:`Guard.reset_breaker` closes it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    replicas_min: PositiveInt | dict[str, PositiveInt] | None = None
    replicas_max: PositiveInt | dict[str, PositiveInt] | None = None
    max_step: PositiveInt = 4
    max_surge: PositiveInt | None = 10
    cooldown_s: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {
            "restart": 300.0,
            "rollback": 600.0,
            "drain_node": 600.0,
            "shed_load": 60.0,
        }
    )
    max_disruptive: PositiveInt = 3
    rate_window_s: Annotated[float, Field(gt=0)] = 600.0
    max_shed_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5
    hpa_target_min: Annotated[int, Field(ge=1, le=100)] = 30
    hpa_target_max: Annotated[int, Field(ge=1, le=100)] = 90
    stale_after_s: Annotated[float, Field(gt=0)] = 60.0
    min_observed_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5
    fallback: Fallback = "hpa"
    fallback_cpu_target: Annotated[int, Field(ge=1, le=100)] = 70
    breaker_violations: PositiveInt = 5
    breaker_window_s: Annotated[float, Field(gt=0)] = 300.0
    breaker_reset_s: Annotated[float, Field(gt=0)] | None = 600.0

    @model_validator(mode="after")
    def _check(self) -> GuardConfig:
        unknown = sorted(set(self.cooldown_s) - set(DISRUPTIVE_KINDS))
        if unknown:
            raise ValueError(
                f"cooldown_s: unknown action kinds {unknown}; use {list(DISRUPTIVE_KINDS)}"
            )
        if self.hpa_target_min > self.hpa_target_max:
            raise ValueError(
                f"hpa_target_min ({self.hpa_target_min}) must be <= hpa_target_max "
                f"({self.hpa_target_max})"
            )
        lo, hi = self.replicas_min, self.replicas_max
        if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
            raise ValueError(f"replicas_min ({lo}) must be <= replicas_max ({hi})")
        return self


def guard_config(data: dict[str, Any] | None) -> GuardConfig:
    """Validate a mapping into a :class:`GuardConfig` with one readable error.

    Raises:
        ValueError: Naming each bad field (``guard.<field>``) and what it must be.
    """
    try:
        return GuardConfig.model_validate(data or {})
    except ValidationError as err:
        lines = [
            f"guard.{'.'.join(str(p) for p in e['loc']) or '<config>'}: {e['msg']}"
            for e in err.errors()
        ]
        raise ValueError(
            "invalid guard config:\n  "
            + "\n  ".join(lines)
            + f"\nfields: {list(GuardConfig.model_fields)}"
        ) from None


@dataclass(frozen=True, slots=True)
class Intervention:
    """One change the guard made to a decision.

    Attributes:
        rule: Which rule (one of :data:`RULES`).
        reason: Why, in words, with the numbers.
        before: The action as proposed (None for decision-wide rules).
        after: The action as it goes out (None when dropped or for decision-wide rules).
    """

    rule: str
    reason: str
    before: Action | None = None
    after: Action | None = None


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    """What the guard let out for one decision.

    Attributes:
        actions: The actions that go out.
        interventions: Every change made, with its rule and reason.
        source: ``policy`` or ``fallback`` (who decided).
        breaker_open: Whether the circuit breaker is open after this decision.
    """

    actions: list[Action]
    interventions: list[Intervention]
    source: Literal["policy", "fallback"]
    breaker_open: bool

    @property
    def intervened(self) -> bool:
        """Whether the guard changed anything."""
        return bool(self.interventions)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (actions as their fields)."""
        return {
            "source": self.source,
            "breaker_open": self.breaker_open,
            "interventions": [
                {
                    "rule": i.rule,
                    "reason": i.reason,
                    "before": None if i.before is None else action_dict(i.before),
                    "after": None if i.after is None else action_dict(i.after),
                }
                for i in self.interventions
            ],
        }


def action_dict(action: Action) -> dict[str, Any]:
    """An action's fields as a dict (``kind`` first)."""
    names = type(action).__slots__
    out: dict[str, Any] = {"kind": action.kind}
    out.update({n: getattr(action, n) for n in names if n != "kind"})
    return out


@dataclass(frozen=True)
class GuardState:
    """The guard's memory for one stream.

    Attributes:
        desired: Desired replicas per service as last known (telemetry or our own output).
        last_disruptive: ``(kind, target) -> time`` of the last allowed disruptive action.
        disruptive_times: Times of allowed disruptive actions (rate-limit window).
        violation_times: Times of violations and inference errors (breaker window).
        breaker_opened_t: When the breaker opened (None: closed).
        half_open_until: Until when the breaker is half-open after an automatic reset (one
            violation or error re-opens it); None: not half-open.
        last_good_t: Time of the last frame with enough observed fields (None: none yet).
        shed_fraction: Shedding in force as last set by our output.
        fallback_state: The fallback policy's recurrent state.
    """

    desired: tuple[int, ...]
    last_disruptive: dict[tuple[str, str], float] = field(default_factory=dict)
    disruptive_times: tuple[float, ...] = ()
    violation_times: tuple[float, ...] = ()
    breaker_opened_t: float | None = None
    half_open_until: float | None = None
    last_good_t: float | None = None
    shed_fraction: float = 0.0
    fallback_state: Any = None


def _target(action: Action) -> str:
    if isinstance(action, Restart | Rollback | Scale | SetHPATarget):
        return action.service
    if isinstance(action, DrainNode):
        return f"node/{action.node}"
    return "ingress"


class Guard:
    """Enforces a :class:`GuardConfig` on the decisions of one cluster's controller.

    Args:
        config: The limits.
        spec: What the controller is configured with (service names and replica bounds).

    Raises:
        ValueError: Bounds per service that name unknown services or leave no valid count.
    """

    def __init__(self, config: GuardConfig, spec: ControlSpec) -> None:
        self.config = config
        self.spec = spec
        self.services = spec.services
        self.bounds: dict[str, tuple[int, int]] = {}
        for i, name in enumerate(spec.services):
            lo = max(spec.replicas_min[i], _per(config.replicas_min, name, "replicas_min", spec))
            hi = min(spec.replicas_max[i], _per(config.replicas_max, name, "replicas_max", spec))
            if lo > hi:
                raise ValueError(
                    f"guard: service {name!r} has no valid replica count: bounds "
                    f"[{lo}, {hi}] from guard.replicas_min/max and the spec "
                    f"[{spec.replicas_min[i]}, {spec.replicas_max[i]}]"
                )
            self.bounds[name] = (lo, hi)
        self.fallback: Policy | None = None
        if config.fallback == "hpa":
            lows = {s: max(1, b[0]) for s, b in self.bounds.items()}
            highs = {s: b[1] for s, b in self.bounds.items()}
            hpa_config = HPAConfig.cpu(
                config.fallback_cpu_target, min_replicas=lows, max_replicas=highs
            )
            self.fallback = HPAPolicy(hpa_config, list(spec.services))
            self.fallback.name = "guard-fallback-hpa"

    def reset(self) -> GuardState:
        """Fresh state for one stream."""
        return GuardState(
            desired=tuple(int(r) for r in self.spec.replicas_initial),
            fallback_state=None if self.fallback is None else self.fallback.reset(1),
        )

    def reset_breaker(self, state: GuardState) -> GuardState:
        """Close the breaker and forget the violations counted so far."""
        return replace(state, breaker_opened_t=None, violation_times=(), half_open_until=None)

    def breaker_open(self, state: GuardState, now: float) -> bool:
        """Whether the breaker is open at ``now`` (auto-reset included)."""
        opened = state.breaker_opened_t
        if opened is None:
            return False
        reset_s = self.config.breaker_reset_s
        return reset_s is None or now < opened + reset_s

    def observed_fraction(self, frame: Telemetry) -> float:
        """Share of :data:`KEY_FIELDS` observed over all services of ``frame``."""
        cols = [FIELD_INDEX[f] for f in KEY_FIELDS]
        mask = np.asarray(frame.mask)[:, cols]
        return float(mask.mean()) if mask.size else 0.0

    def check(
        self,
        frame: Telemetry,
        proposed: Sequence[Action] | None,
        state: GuardState,
        *,
        now: float | None = None,
        error: str | None = None,
    ) -> tuple[GuardVerdict, GuardState]:
        """Check one decision.

        Args:
            frame: The frame the policy decided on.
            proposed: The policy's actions (None when it failed; then give ``error``).
            state: This stream's :class:`GuardState`.
            now: The current time on the frame's clock (default: ``frame.t``).
            error: The policy's error message when it raised.

        Returns:
            ``(verdict, new_state)``.
        """
        cfg = self.config
        now = frame.t if now is None else float(now)
        if frame.services != self.services:
            raise ValueError(
                f"guard: frame services {list(frame.services)} differ from the spec's "
                f"{list(self.services)}; build the guard for this cluster"
            )
        notes: list[Intervention] = []
        state = self._observe(frame, state)
        # the fallback runs on every frame so that its history is warm when it takes over
        fb_actions: list[Action] = []
        if self.fallback is not None:
            fb_actions, fb_state, _ = self.fallback.act(frame, state.fallback_state)
            state = replace(state, fallback_state=fb_state)
        good = self.observed_fraction(frame) >= cfg.min_observed_fraction
        if good and now - frame.t <= cfg.stale_after_s:
            state = replace(state, last_good_t=frame.t)
        violations = tuple(t for t in state.violation_times if t > now - cfg.breaker_window_s)
        if error is not None:
            violations += (now,)
        source: Literal["policy", "fallback"] = "policy"
        if state.last_good_t is None or now - state.last_good_t > cfg.stale_after_s:
            age = "never" if state.last_good_t is None else f"{now - state.last_good_t:.1f} s ago"
            notes.append(
                Intervention(
                    "stale_telemetry",
                    f"last frame with >= {cfg.min_observed_fraction:.0%} of {list(KEY_FIELDS)} "
                    f"observed: {age} (limit {cfg.stale_after_s} s); {cfg.fallback} decides",
                )
            )
            source = "fallback"
        if error is not None:
            notes.append(
                Intervention("inference_error", f"policy failed: {error}; {cfg.fallback} decides")
            )
            source = "fallback"
        if self.breaker_open(state, now):
            notes.append(
                Intervention(
                    "circuit_breaker",
                    f"breaker open since t={state.breaker_opened_t}; {cfg.fallback} decides "
                    "until reset",
                )
            )
            source = "fallback"
        elif state.breaker_opened_t is not None:  # auto-reset elapsed: half-open
            assert cfg.breaker_reset_s is not None
            closed = state.breaker_opened_t + cfg.breaker_reset_s
            state = replace(
                state, breaker_opened_t=None, half_open_until=closed + cfg.breaker_window_s
            )
            violations = (now,) if error is not None else ()
        actions = list(fb_actions if source == "fallback" else (proposed or []))
        out, limit_notes, state = self._limit(actions, state, now)
        notes.extend(limit_notes)
        if source == "policy" and any(n.rule in BREAKER_RULES for n in limit_notes):
            violations += (now,)
        opened = state.breaker_opened_t
        half_open = state.half_open_until is not None and now < state.half_open_until
        if opened is None and violations and half_open and violations[-1] == now:
            opened = now
            notes.append(
                Intervention(
                    "circuit_breaker",
                    f"a violation or error while half-open (until t={state.half_open_until}): "
                    f"breaker opens again; {cfg.fallback} decides from the next decision",
                )
            )
        elif opened is None and len(violations) >= cfg.breaker_violations:
            opened = now
            notes.append(
                Intervention(
                    "circuit_breaker",
                    f"{len(violations)} violations or errors within {cfg.breaker_window_s} s "
                    f"(limit {cfg.breaker_violations}): breaker opens; {cfg.fallback} decides "
                    "from the next decision until reset",
                )
            )
        if opened is not None or not half_open:
            state = replace(state, half_open_until=None)
        state = replace(state, violation_times=violations, breaker_opened_t=opened)
        verdict = GuardVerdict(out, notes, source, self.breaker_open(state, now))
        return verdict, state

    def _observe(self, frame: Telemetry, state: GuardState) -> GuardState:
        col = np.asarray(frame.values)[:, FIELD_INDEX["replicas_desired"]]
        seen = np.asarray(frame.mask)[:, FIELD_INDEX["replicas_desired"]]
        desired = tuple(
            round(float(v)) if ok and math.isfinite(float(v)) else old
            for v, ok, old in zip(col, seen, state.desired, strict=True)
        )
        shed = state.shed_fraction
        if frame.cluster_mask[CLUSTER_INDEX["shed_fraction"]]:
            shed = float(frame.cluster[CLUSTER_INDEX["shed_fraction"]])
        return replace(state, desired=desired, shed_fraction=shed)

    def _limit(
        self, actions: Sequence[Action], state: GuardState, now: float
    ) -> tuple[list[Action], list[Intervention], GuardState]:
        cfg = self.config
        notes: list[Intervention] = []
        out: list[Action] = []
        seen: set[tuple[str, str]] = set()
        desired = list(state.desired)
        surge = 0
        last = dict(state.last_disruptive)
        window = [t for t in state.disruptive_times if t > now - cfg.rate_window_s]
        shed = state.shed_fraction
        for action in actions:
            if isinstance(action, Noop):
                continue
            key = (action.kind, _target(action))
            if key in seen:
                notes.append(
                    Intervention(
                        "duplicate", f"second {key[0]} on {key[1]} in one decision", action
                    )
                )
                continue
            seen.add(key)
            if isinstance(action, Scale):
                if action.service not in self.bounds:
                    notes.append(
                        Intervention(
                            "unknown_target", f"unknown service {action.service!r}", action
                        )
                    )
                    continue
                i = self.services.index(action.service)
                new, rule_notes = self._clamp_scale(action, desired[i], surge)
                for rule, reason in rule_notes:
                    after = None if new == desired[i] else Scale(action.service, new)
                    notes.append(Intervention(rule, reason, action, after))
                if new == desired[i]:
                    continue
                surge += max(0, new - desired[i])
                desired[i] = new
                seen.add(key)
                out.append(Scale(action.service, new))
                continue
            if isinstance(action, SetHPATarget):
                if action.service not in self.bounds:
                    notes.append(
                        Intervention(
                            "unknown_target", f"unknown service {action.service!r}", action
                        )
                    )
                    continue
                target = min(max(action.cpu_target, cfg.hpa_target_min), cfg.hpa_target_max)
                if target != action.cpu_target:
                    after_t = SetHPATarget(action.service, target)
                    notes.append(
                        Intervention(
                            "hpa_target_bounds",
                            f"cpu_target {action.cpu_target} outside [{cfg.hpa_target_min}, "
                            f"{cfg.hpa_target_max}]",
                            action,
                            after_t,
                        )
                    )
                    action = after_t
                seen.add(key)
                out.append(action)
                continue
            if isinstance(action, ShedLoad):
                fraction = min(max(float(action.fraction), 0.0), cfg.max_shed_fraction)
                if fraction != action.fraction:
                    clipped = ShedLoad(fraction)
                    notes.append(
                        Intervention(
                            "shed_limit",
                            f"fraction {action.fraction} outside [0, {cfg.max_shed_fraction}]",
                            action,
                            clipped,
                        )
                    )
                    action = clipped
                if fraction <= shed:  # shedding less (or stopping) is never limited
                    seen.add(key)
                    shed = fraction
                    out.append(action)
                    continue
            if isinstance(action, Restart | Rollback) and action.service not in self.bounds:
                notes.append(
                    Intervention("unknown_target", f"unknown service {action.service!r}", action)
                )
                continue
            if isinstance(action, DrainNode) and action.node < 0:
                notes.append(Intervention("unknown_target", f"invalid node {action.node}", action))
                continue
            # a disruptive action: cooldown per (kind, target), then the cluster's rate
            cooldown = cfg.cooldown_s.get(action.kind, 0.0)
            prev = last.get(key)
            if prev is not None and now - prev < cooldown:
                notes.append(
                    Intervention(
                        "cooldown",
                        f"{action.kind} on {key[1]} {now - prev:.1f} s after the last one "
                        f"(cooldown {cooldown} s)",
                        action,
                    )
                )
                continue
            if len(window) >= cfg.max_disruptive:
                notes.append(
                    Intervention(
                        "rate_limit",
                        f"{len(window)} disruptive actions within {cfg.rate_window_s} s "
                        f"(limit {cfg.max_disruptive})",
                        action,
                    )
                )
                continue
            last[key] = now
            window.append(now)
            seen.add(key)
            if isinstance(action, ShedLoad):
                shed = action.fraction
            out.append(action)
        new_state = replace(
            state,
            desired=tuple(desired),
            last_disruptive=last,
            disruptive_times=tuple(window),
            shed_fraction=shed,
        )
        return out, notes, new_state

    def _clamp_scale(
        self, action: Scale, current: int, surge: int
    ) -> tuple[int, list[tuple[str, str]]]:
        """The allowed count nearest the proposed one, and the rules that moved it.

        Bounds come first: with the current count outside them, the nearest bound is the
        only choice (even beyond ``max_step`` or ``max_surge``).
        """
        cfg = self.config
        lo, hi = self.bounds[action.service]
        proposed = int(action.replicas)
        if current < lo or current > hi:
            new = lo if current < lo else hi
            if new != proposed:
                return new, [
                    (
                        "replica_bounds",
                        f"current {current} outside [{lo}, {hi}]: only {new} is allowed, "
                        f"not {proposed}",
                    )
                ]
            return new, []
        limits: list[tuple[str, int, int]] = [("replica_bounds", lo, hi)]
        limits.append(("max_step", current - cfg.max_step, current + cfg.max_step))
        if cfg.max_surge is not None:
            limits.append(("max_surge", -(2**31), current + max(0, cfg.max_surge - surge)))
        notes: list[tuple[str, str]] = []
        new = proposed
        for rule, a, b in limits:
            clipped = min(max(new, a), b)
            if clipped != new:
                if rule == "replica_bounds":
                    why = f"{new} replicas outside [{lo}, {hi}]"
                elif rule == "max_step":
                    why = f"{current} -> {new} moves more than {cfg.max_step} replicas"
                else:
                    why = (
                        f"+{new - current} replicas with +{surge} already this decision "
                        f"exceeds max_surge {cfg.max_surge}"
                    )
                notes.append((rule, f"{why} -> {clipped}"))
                new = clipped
        return new, notes


def _per(value: int | dict[str, int] | None, name: str, field_name: str, spec: ControlSpec) -> int:
    if value is None:
        return 1 if field_name == "replicas_min" else 2**31 - 1
    if isinstance(value, int):
        return value
    unknown = sorted(set(value) - set(spec.services))
    if unknown:
        raise ValueError(
            f"guard.{field_name}: unknown services {unknown}; one of {list(spec.services)}"
        )
    return value.get(name, 1 if field_name == "replicas_min" else 2**31 - 1)


@dataclass(frozen=True)
class GuardedState:
    """State of a :class:`GuardedPolicy` stream: the policy's and the guard's."""

    policy: Any
    guard: GuardState


class GuardedPolicy:
    """A policy behind a :class:`Guard`; itself a :class:`~envs.core.policy.Policy`.

    The inner policy sees every frame (its recurrent state stays current even while the
    fallback decides); an exception from it becomes an ``inference_error`` intervention.
    ``info["guard"]`` holds :meth:`GuardVerdict.as_dict` and ``info["proposed"]`` the
    policy's own actions.

    Args:
        policy: The policy to guard.
        guard: The guard.
    """

    def __init__(self, policy: Policy, guard: Guard) -> None:
        self.policy = policy
        self.guard = guard
        self.name = f"{policy.name}+guard"
        # an hpa_tune policy steers the control plane's HPA: the rollout must still run it
        self.in_cluster_hpa = getattr(policy, "in_cluster_hpa", None)

    def reset(self, n: int = 1) -> GuardedState | list[GuardedState]:
        """Fresh state (one for ``n == 1``, else a list of ``n``)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        states = [GuardedState(self.policy.reset(1), self.guard.reset()) for _ in range(n)]
        return states[0] if n == 1 else states

    def act(
        self, obs: Telemetry, state: Any, now: float | None = None
    ) -> tuple[list[Action], GuardedState, dict[str, Any]]:
        """Decide on one frame: the policy proposes, the guard disposes."""
        if not isinstance(state, GuardedState):
            raise TypeError(
                f"GuardedPolicy.act needs the GuardedState of reset(1), got {type(state).__name__}"
            )
        error: str | None = None
        proposed: list[Action] | None = None
        info: dict[str, Any] = {}
        inner = state.policy
        try:
            proposed, inner, info = self.policy.act(obs, state.policy)
        except Exception as exc:  # any inference failure hands over to the fallback
            error = f"{type(exc).__name__}: {exc}"
        verdict, guard_state = self.guard.check(obs, proposed, state.guard, now=now, error=error)
        info = dict(info)
        info["proposed"] = list(proposed or [])
        info["guard"] = verdict.as_dict()
        info["guard_verdict"] = verdict
        return verdict.actions, GuardedState(inner, guard_state), info


def guard_policy(
    policy: Policy, spec: ControlSpec, config: GuardConfig | dict[str, Any] | None = None
) -> GuardedPolicy:
    """``policy`` behind a guard for the cluster ``spec`` describes (default limits).

    The one call ``opsworld evaluate guard=true`` needs:
    ``guard_policy(build_policy(...), envs.gym.codec.control_spec(scenario))``.
    """
    cfg = config if isinstance(config, GuardConfig) else guard_config(config)
    return GuardedPolicy(policy, Guard(cfg, spec))
