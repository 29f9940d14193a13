"""Runbook remediation: the rules an on-call SRE would write, with the HPA scaling underneath.

:class:`RunbookPolicy` reads telemetry only (never the simulator's fault list) and applies,
per service and in this order of precedence:

* ``scaled_to_zero``: ``replicas_desired`` below the scenario's ``replicas.min`` (nobody
  may set that; a bad config push did) -> ``Scale`` back to the last good count.
* ``oom``: ``oom_kills`` rose within ``oom_window_s`` -> ``Rollback`` if the service was
  deployed within ``oom_deploy_window_s``, else ``Restart`` and ``Scale(+1)``.
* ``crash_loop``: ``restarts`` rose by ``crash_restarts`` within ``crash_window_s`` while
  ready < desired -> ``Rollback`` after a recent deploy, else ``Restart``.
* ``bad_deploy``: ``deploy_version`` rose within ``deploy_window_s`` and the error rate or
  p99 stayed above the pre-deploy baseline for ``confirm_scrapes`` scrapes -> ``Rollback``.

and cluster-wide:

* ``overload``: some service with ready pods fails at least ``overload_error_rate`` of its
  attempts while CPU-saturated or retry-amplified, for ``overload_persist_s``, and scaling
  cannot or did not fix it (at ``replicas.max``, pods pending, traffic already back to
  normal, or ``overload_grace_s`` passed) -> ``ShedLoad`` in steps, lifted gradually once
  the entry meets its error SLO again.
* ``pending_pods``: ``pods_unschedulable`` > 0 for ``pending_persist_s`` -> diagnosis only
  (the simulator has no add-node action).
* ``latency_regression``: p99 at ``latency_factor`` x baseline with normal load and no
  deploy or restarts (noisy neighbour, slow dependency) -> diagnosis only (service
  telemetry does not say which node to drain).

Every action has a cool-down per (rule, service); every decision and diagnosis is written
to ``info``; everything remembered is in the explicit :class:`RunbookState`. A frame in which
most services' gauges are missing (a telemetry gap) holds: no action at all, and none of
the disruptive rules fire until ``resume_scrapes`` complete frames have followed the gap.
``docs/baselines.md`` has the rationale and the limits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agents.baselines.hpa import HPAConfig, HPAPolicy, HPAState
from envs.core.actions import Action, Restart, Rollback, Scale, ShedLoad
from envs.core.telemetry import CLUSTER_INDEX, FIELD_INDEX, Telemetry
from envs.scenarios.schema import Scenario

_EPS = 1e-9
_SAMPLE_FIELDS = (
    "rps",
    "error_rate",
    "p99",
    "cpu_util",
    "replicas_desired",
    "replicas_ready",
    "replicas_pending",
    "restarts",
    "oom_kills",
    "deploy_version",
)


class RunbookConfig(BaseModel):
    """Thresholds, windows and cool-downs of :class:`RunbookPolicy` (seconds, fractions)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    history_s: Annotated[float, Field(gt=0)] = 900.0
    """How much per-service history is kept (at least the crash and OOM windows)."""
    baseline_alpha: Annotated[float, Field(gt=0, le=1)] = 0.1
    """EWMA weight of healthy frames in the per-service baselines."""
    crash_restarts: Annotated[int, Field(ge=1)] = 3
    crash_window_s: Annotated[float, Field(gt=0)] = 600.0
    """Long enough to see a crash loop whose back-off has grown to its 300 s cap."""
    oom_kills: Annotated[int, Field(ge=1)] = 1
    oom_window_s: Annotated[float, Field(gt=0)] = 300.0
    deploy_window_s: Annotated[float, Field(gt=0)] = 900.0
    """A deploy this recent is suspect when errors or crashes follow."""
    oom_deploy_window_s: Annotated[float, Field(gt=0)] = 3600.0
    """A deploy this recent is suspect when OOM kills follow (a slow leak takes a while)."""
    error_margin: Annotated[float, Field(gt=0, lt=1)] = 0.02
    """Error rate above baseline + margin (and above twice the baseline) is a regression."""
    latency_factor: Annotated[float, Field(gt=1)] = 1.5
    """p99 above this multiple of the baseline is a regression."""
    confirm_scrapes: Annotated[int, Field(ge=1)] = 2
    overload_error_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    overload_cpu_util: Annotated[float, Field(gt=0, le=1)] = 0.85
    amplification: Annotated[float, Field(gt=1)] = 3.0
    """Attempts per entry request at a service above this multiple of normal: retries."""
    overload_persist_s: Annotated[float, Field(ge=0)] = 60.0
    overload_grace_s: Annotated[float, Field(ge=0)] = 120.0
    """How long the HPA gets to fix an overload by scaling before load is shed."""
    shed_steps: Annotated[tuple[float, ...], Field(min_length=1)] = (0.5, 0.75, 0.9)
    """Shed fractions, one step up per ``shed_hold_s`` while the overload lasts."""
    shed_hold_s: Annotated[float, Field(gt=0)] = 60.0
    shed_release_step: Annotated[float, Field(gt=0, le=1)] = 0.25
    shed_release_after_s: Annotated[float, Field(gt=0)] = 60.0
    """Healthy time before each release step (and between steps)."""
    shed_relapse_hold_s: Annotated[float, Field(ge=0)] = 600.0
    """After a relapse (overload again while lifting), shedding is not lifted below the
    fraction that failed for this long."""
    pending_persist_s: Annotated[float, Field(ge=0)] = 120.0
    settle_s: Annotated[float, Field(ge=0)] = 120.0
    """After a restart or rollback of a service, its restarts and OOM kills before this
    much time has passed are not evidence (the old pods are still being replaced)."""
    restart_cooldown_s: Annotated[float, Field(ge=0)] = 600.0
    rollback_cooldown_s: Annotated[float, Field(ge=0)] = 600.0
    scale_up_cooldown_s: Annotated[float, Field(ge=0)] = 120.0
    gap_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5
    """A frame missing ``replicas_desired`` for at least this share of services is a gap."""
    resume_scrapes: Annotated[int, Field(ge=0)] = 2

    @model_validator(mode="after")
    def _windows_fit(self) -> RunbookConfig:
        longest = max(self.crash_window_s, self.oom_window_s)
        if self.history_s < longest:
            raise ValueError(
                f"history_s ({self.history_s}) must cover the crash and OOM windows ({longest})"
            )
        if list(self.shed_steps) != sorted(set(self.shed_steps)) or not (
            self.shed_steps[0] > 0 and self.shed_steps[-1] <= 1
        ):
            raise ValueError(f"shed_steps must increase within (0, 1], got {self.shed_steps}")
        return self


@dataclass(frozen=True, slots=True)
class Sample:
    """The observed gauges of one service at one scrape (None where missing)."""

    t: float
    values: tuple[float | None, ...]

    def get(self, name: str) -> float | None:
        """One gauge by name (one of the sampled fields)."""
        return self.values[_SAMPLE_FIELDS.index(name)]


@dataclass(frozen=True, slots=True)
class Baseline:
    """EWMA of a service's healthy behaviour."""

    error_rate: float
    p99: float | None
    amplification: float | None
    """Attempts at the service per attempt at the entry."""
    rps: float | None


@dataclass(frozen=True, slots=True)
class DeployRecord:
    """A version change seen in ``deploy_version`` and the baseline just before it."""

    t: float
    version: int
    baseline: Baseline | None
    bad_scrapes: int = 0


@dataclass(frozen=True)
class RunbookState:
    """Everything :class:`RunbookPolicy` remembers, per stream; see the field comments."""

    hpa: HPAState
    history: Mapping[str, tuple[Sample, ...]] = field(default_factory=dict)
    baselines: Mapping[str, Baseline] = field(default_factory=dict)
    versions: Mapping[str, int] = field(default_factory=dict)
    """Last ``deploy_version`` seen per service."""
    deploys: Mapping[str, DeployRecord] = field(default_factory=dict)
    """Latest deploy per service (version increase seen)."""
    revisions: Mapping[str, int] = field(default_factory=dict)
    """Deploys seen minus rollbacks issued: how many rollbacks are possible."""
    good_desired: Mapping[str, int] = field(default_factory=dict)
    """Last replica count seen within the scenario's bounds."""
    last_action_t: Mapping[str, float] = field(default_factory=dict)
    """``"<rule>:<service>"`` -> time of its last action (cool-downs)."""
    overload_since: float | None = None
    shed: float = 0.0
    shed_changed_t: float = -math.inf
    healthy_since: float | None = None
    shed_released: bool = False
    """Whether the last change to shedding lifted it (an overload now is a relapse)."""
    shed_floor: float = 0.0
    """After a relapse, shedding is not lifted below ``shed_floor`` before ``shed_floor_until``."""
    shed_floor_until: float = -math.inf
    pending_since: float | None = None
    gap_t: float | None = None
    """Time of the last frame held as a telemetry gap."""
    frames_since_gap: int = 0


class RunbookPolicy:
    """Rule-based remediation over an exact Kubernetes HPA; see the module docstring.

    Args:
        scenario: The scenario (service names, replica bounds, SLOs, entry service).
        hpa_config: Configuration of the HPA underneath; None: ``HPAConfig()``.
        rules: Thresholds, windows and cool-downs.
    """

    name = "runbook"

    def __init__(
        self,
        scenario: Scenario,
        hpa_config: HPAConfig | None = None,
        rules: RunbookConfig | None = None,
    ) -> None:
        self.scenario = scenario
        self.rules = rules if rules is not None else RunbookConfig()
        self.hpa = HPAPolicy(hpa_config if hpa_config is not None else HPAConfig(), scenario)
        self.services: tuple[str, ...] = tuple(scenario.service_names)
        self.entry = scenario.topology.entry
        self.bounds = {s.name: (s.replicas.min, s.replicas.max) for s in scenario.topology.services}
        slos = scenario.effective_slos()
        self.slo_error = {n: slo.error_rate for n, slo in slos.items()}
        self.slo_p99 = {n: slo.p99_latency_s for n, slo in slos.items()}

    # ------------------------------------------------------------------ protocol
    def reset(self, n: int = 1) -> RunbookState | tuple[RunbookState, ...]:
        """Fresh state: one :class:`RunbookState`, or a tuple of ``n`` for ``n > 1``."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        hpa = self.hpa.reset(1)
        assert isinstance(hpa, HPAState)
        fresh = RunbookState(hpa=hpa)
        return fresh if n == 1 else tuple(fresh for _ in range(n))

    def act(
        self, obs: Telemetry, state: Any, hpa_targets: Mapping[str, int] | None = None
    ) -> tuple[list[Action], RunbookState, dict[str, Any]]:
        """Decide on one frame.

        ``hpa_targets`` (optional) sets some services' HPA CPU targets for this sync
        (:meth:`agents.baselines.hpa.HPAPolicy.act`); the residual policy
        (:mod:`agents.residual`) steers the runbook through it. None: the configured target.

        ``info`` holds ``runbook`` (one entry per action: rule, service, action, why),
        ``diagnoses`` (findings without an action), ``hold`` (why nothing was done, if so),
        ``shed`` (the shed fraction in force) and the HPA's own ``hpa`` report.
        """
        if not isinstance(state, RunbookState):
            raise TypeError(
                f"RunbookPolicy.act needs the RunbookState from reset(1), "
                f"got {type(state).__name__}"
            )
        rules = self.rules
        obs = _served_view(obs, self.services.index(self.entry))
        t = obs.t
        missing = sum(1 for s in self.services if not _observed(obs, "replicas_desired", s))
        if missing >= rules.gap_fraction * len(self.services):
            state = replace(state, gap_t=t, frames_since_gap=0)
            info = {
                "hold": f"telemetry gap: replicas unknown for {missing}/{len(self.services)} "
                "services; holding every action",
                "runbook": [],
                "diagnoses": [],
                "shed": state.shed,
                "hpa": {},
            }
            return [], state, info

        state = replace(state, frames_since_gap=state.frames_since_gap + 1)
        state = self._observe(obs, state)
        settled = state.gap_t is None or state.frames_since_gap > rules.resume_scrapes
        decisions: list[dict[str, Any]] = []
        diagnoses: list[dict[str, Any]] = []
        actions: list[Action] = []
        scaled: set[str] = set()

        for name in self.services:
            acts, state, found = self._service_rules(obs, state, name, settled)
            for rule, action, why in acts:
                actions.append(action)
                decisions.append(
                    {"rule": rule, "service": name, "action": _describe(action), "why": why}
                )
                if isinstance(action, Scale):
                    scaled.add(name)
            diagnoses.extend(found)

        shed_action, state, shed_info = self._shed_rule(obs, state, settled)
        if shed_action is not None:
            actions.append(shed_action)
            decisions.append(shed_info)
        elif shed_info:
            diagnoses.append(shed_info)
        state, pending = self._pending_rule(obs, state)
        if pending:
            diagnoses.append(pending)

        hpa_actions, hpa_state, hpa_info = self.hpa.act(obs, state.hpa, hpa_targets)
        state = replace(state, hpa=hpa_state)
        for a in hpa_actions:
            if isinstance(a, Scale) and a.service in scaled:
                continue  # the runbook's own Scale for this service wins this step
            actions.append(a)
        info = {
            "hold": None if settled else "resuming after a telemetry gap: disruptive rules wait",
            "runbook": decisions,
            "diagnoses": diagnoses,
            "shed": state.shed,
            "hpa": hpa_info.get("hpa", {}),
        }
        return actions, state, info

    def record_external(self, state: RunbookState, action: Action, t: float) -> RunbookState:
        """``state`` as if the rules had taken ``action`` themselves at time ``t``.

        For a controller that adds to the rules' decision (:mod:`agents.residual`): a
        ``Restart`` or ``Rollback`` starts the service's cool-down and settle time (so that
        the rules neither repeat it at once nor read its replaced pods as a crash loop; a
        rollback also uses up the deploy it reverts), and a ``ShedLoad`` becomes the shed
        level in force, which the overload rule then lifts gradually once healthy. Other
        actions leave the state as it is.
        """
        if isinstance(action, Restart):
            state = self._mark(state, f"restart:{action.service}", t)
            return self._mark(state, f"remediate:{action.service}", t)
        if isinstance(action, Rollback):
            name = action.service
            state = self._mark(self._mark(state, f"rollback:{name}", t), f"remediate:{name}", t)
            deploys = {k: v for k, v in state.deploys.items() if k != name}
            revisions = {**state.revisions, name: state.revisions.get(name, 0) - 1}
            return replace(state, deploys=deploys, revisions=revisions)
        if isinstance(action, ShedLoad):
            lifted = action.fraction < state.shed - _EPS
            return replace(state, shed=action.fraction, shed_changed_t=t, shed_released=lifted)
        return state

    # ------------------------------------------------------------------ bookkeeping
    def _observe(self, obs: Telemetry, state: RunbookState) -> RunbookState:
        """Append this frame to the history; update baselines, versions and deploys."""
        rules = self.rules
        history = dict(state.history)
        baselines = dict(state.baselines)
        versions = dict(state.versions)
        deploys = dict(state.deploys)
        revisions = dict(state.revisions)
        good = dict(state.good_desired)
        entry_rps = _get(obs, "rps", self.entry)
        entry_err = _get(obs, "error_rate", self.entry)
        entry_p99 = _get(obs, "p99", self.entry)
        healthy_system = (
            entry_err is not None
            and entry_err <= self.slo_error.get(self.entry, 0.01)
            and (entry_p99 is None or entry_p99 <= self.slo_p99.get(self.entry, math.inf))
        )
        for name in self.services:
            sample = Sample(obs.t, tuple(_get(obs, f, name) for f in _SAMPLE_FIELDS))
            kept = [x for x in history.get(name, ()) if x.t > obs.t - rules.history_s]
            history[name] = (*kept, sample)
            desired = sample.get("replicas_desired")
            lo, hi = self.bounds[name]
            if desired is not None and lo <= desired <= hi and desired > 0:
                good[name] = round(desired)
            version = sample.get("deploy_version")
            if version is not None:
                v = round(version)
                before = versions.get(name)
                if before is not None and v > before:  # a rollback lowers the version
                    deploys[name] = DeployRecord(obs.t, v, baselines.get(name))
                    revisions[name] = revisions.get(name, 0) + 1
                versions[name] = v
            err = sample.get("error_rate")
            rps = sample.get("rps")
            if healthy_system and err is not None and not self._recent_deploy(deploys, name, obs.t):
                p99 = sample.get("p99")
                amp = rps / entry_rps if rps is not None and entry_rps else None
                old = baselines.get(name)
                a = rules.baseline_alpha
                baselines[name] = (
                    Baseline(err, p99, amp, rps)
                    if old is None
                    else Baseline(
                        _ewma(old.error_rate, err, a),
                        _ewma_opt(old.p99, p99, a),
                        _ewma_opt(old.amplification, amp, a),
                        _ewma_opt(old.rps, rps, a),
                    )
                )
        return replace(
            state,
            history=history,
            baselines=baselines,
            versions=versions,
            deploys=deploys,
            revisions=revisions,
            good_desired=good,
        )

    def _recent_deploy(
        self,
        deploys: Mapping[str, DeployRecord],
        name: str,
        t: float,
        window_s: float | None = None,
    ) -> DeployRecord | None:
        """The service's last deploy if at most ``window_s`` (default ``deploy_window_s``) old."""
        window = self.rules.deploy_window_s if window_s is None else window_s
        rec = deploys.get(name)
        if rec is not None and t - rec.t <= window:
            return rec
        return None

    def _crash_looping(self, state: RunbookState, name: str, t: float) -> bool:
        """Containers restarting (crash loop or OOM kills) while not all pods are ready."""
        rules = self.rules
        hist = state.history.get(name, ())
        if not hist:
            return False
        ready, desired = hist[-1].get("replicas_ready"), hist[-1].get("replicas_desired")
        rise = _rise(hist, "restarts", t - rules.crash_window_s) or 0
        return rise >= rules.crash_restarts and ready is not None and ready < (desired or 0)

    def _cooled(self, state: RunbookState, key: str, t: float, cooldown: float) -> bool:
        return t - state.last_action_t.get(key, -math.inf) >= cooldown - _EPS

    def _mark(self, state: RunbookState, key: str, t: float) -> RunbookState:
        return replace(state, last_action_t={**state.last_action_t, key: t})

    # ------------------------------------------------------------------ per-service rules
    def _service_rules(
        self, obs: Telemetry, state: RunbookState, name: str, settled: bool
    ) -> tuple[list[tuple[str, Action, str]], RunbookState, list[dict[str, Any]]]:
        rules = self.rules
        t = obs.t
        hist = state.history.get(name, ())
        now = hist[-1] if hist else None
        out: list[tuple[str, Action, str]] = []
        diagnoses: list[dict[str, Any]] = []
        if now is None or now.get("replicas_desired") is None:
            return out, state, diagnoses
        desired = round(now.get("replicas_desired") or 0)
        lo, hi = self.bounds[name]

        # scaled to zero (or below min) by a bad config push: scale back up (not disruptive)
        if desired < lo or (desired == 0 and lo == 0 and (now.get("rps") or 0) > 0):
            key = f"scaled_to_zero:{name}"
            target = max(state.good_desired.get(name, lo), lo, 1)
            if target <= hi and self._cooled(state, key, t, rules.scale_up_cooldown_s):
                out.append(
                    (
                        "scaled_to_zero",
                        Scale(name, target),
                        f"replicas_desired = {desired} below replicas.min = {lo} (or 0 while "
                        f"traffic arrives); restoring the last good count {target}",
                    )
                )
                state = self._mark(state, key, t)
            return out, state, diagnoses

        if not settled:
            return out, state, diagnoses
        deploy = self._recent_deploy(state.deploys, name, t)
        can_rollback = state.revisions.get(name, 0) > 0
        ready = now.get("replicas_ready")
        # evidence counts only once the last restart or rollback of this service has settled
        acted = state.last_action_t.get(f"remediate:{name}", -math.inf) + rules.settle_s

        # OOM kills rising
        oom_rise = _rise(hist, "oom_kills", max(t - rules.oom_window_s, acted))
        if oom_rise is not None and oom_rise >= rules.oom_kills:
            why = f"oom_kills +{oom_rise:g} in the last {rules.oom_window_s:g} s"
            leaky = self._recent_deploy(state.deploys, name, t, rules.oom_deploy_window_s)
            if leaky is not None and can_rollback:
                done, state = self._rollback(
                    state,
                    name,
                    t,
                    f"{why}, after the deploy of v{leaky.version} at t={leaky.t:g} s",
                    "oom",
                    out,
                )
                if done:
                    return out, state, diagnoses
            elif self._cooled(state, f"restart:{name}", t, rules.restart_cooldown_s):
                out.append(("oom", Restart(name), f"{why}; no recent deploy: restart"))
                if desired + 1 <= hi:
                    out.append(
                        ("oom", Scale(name, desired + 1), f"{why}: one more replica for headroom")
                    )
                state = self._mark(self._mark(state, f"restart:{name}", t), f"remediate:{name}", t)
                return out, state, diagnoses
            return out, state, diagnoses

        # crash loop: restarts rising while not all pods are ready
        crash_rise = _rise(hist, "restarts", max(t - rules.crash_window_s, acted))
        if (
            crash_rise is not None
            and crash_rise >= rules.crash_restarts
            and ready is not None
            and ready < desired
        ):
            why = (
                f"restarts +{crash_rise:g} in the last {rules.crash_window_s:g} s with "
                f"{ready:g}/{desired} ready"
            )
            if deploy is not None and can_rollback:
                why = f"{why}, after the deploy of v{deploy.version}"
                done, state = self._rollback(state, name, t, why, "crash_loop", out)
                if done:
                    return out, state, diagnoses
            elif self._cooled(state, f"restart:{name}", t, rules.restart_cooldown_s):
                out.append(("crash_loop", Restart(name), f"{why}: rolling restart"))
                state = self._mark(self._mark(state, f"restart:{name}", t), f"remediate:{name}", t)
            return out, state, diagnoses

        # errors or latency after a deploy
        if deploy is not None and can_rollback:
            bad, why = self._regressed(name, now, deploy.baseline)
            count = deploy.bad_scrapes + 1 if bad else 0
            deploys = {**state.deploys, name: replace(deploy, bad_scrapes=count)}
            state = replace(state, deploys=deploys)
            if count >= rules.confirm_scrapes:
                _, state = self._rollback(
                    state,
                    name,
                    t,
                    f"deploy of v{deploy.version} at t={deploy.t:g} s, then {why} for "
                    f"{count} scrapes",
                    "bad_deploy",
                    out,
                )
            return out, state, diagnoses

        # latency regression with normal load: diagnosis only (no node view)
        base = state.baselines.get(name)
        p99 = now.get("p99")
        rps = now.get("rps")
        restarts_rise = _rise(hist, "restarts", t - rules.crash_window_s) or 0
        if (
            base is not None
            and base.p99
            and p99 is not None
            and p99 >= rules.latency_factor * base.p99
            and base.rps
            and rps is not None
            and abs(rps / base.rps - 1.0) <= 0.2
            and restarts_rise == 0
        ):
            diagnoses.append(
                {
                    "rule": "latency_regression",
                    "service": name,
                    "why": f"p99 {p99:.3f} s is {p99 / base.p99:.1f}x its baseline with normal "
                    f"load ({rps:.0f} rps) and no deploy or restarts: a noisy neighbour or a "
                    "slow dependency; service telemetry does not say which node to drain",
                }
            )
        return out, state, diagnoses

    def _regressed(self, name: str, now: Sample, base: Baseline | None) -> tuple[bool, str]:
        rules = self.rules
        err = now.get("error_rate")
        p99 = now.get("p99")
        base_err = base.error_rate if base is not None else 0.0
        limit = max(base_err + rules.error_margin, 2.0 * base_err)
        if name in self.slo_error:
            limit = min(limit, max(self.slo_error[name], base_err))
        if err is not None and err > limit:
            return True, f"error rate {err:.3f} > {limit:.3f} (baseline {base_err:.3f})"
        if (
            base is not None
            and base.p99
            and p99 is not None
            and p99 > rules.latency_factor * base.p99
        ):
            return True, f"p99 {p99:.3f} s > {rules.latency_factor:g} x baseline {base.p99:.3f} s"
        return False, ""

    def _rollback(
        self,
        state: RunbookState,
        name: str,
        t: float,
        why: str,
        rule: str,
        out: list[tuple[str, Action, str]],
    ) -> tuple[bool, RunbookState]:
        """Append a rollback if its cool-down allows; returns whether it did, and the state."""
        if not self._cooled(state, f"rollback:{name}", t, self.rules.rollback_cooldown_s):
            return False, state
        out.append((rule, Rollback(name), why))
        state = self._mark(state, f"rollback:{name}", t)
        state = self._mark(state, f"remediate:{name}", t)
        deploys = dict(state.deploys)
        deploys.pop(name, None)
        revisions = {**state.revisions, name: state.revisions.get(name, 0) - 1}
        return True, replace(state, deploys=deploys, revisions=revisions)

    # ------------------------------------------------------------------ cluster-wide rules
    def _overloaded(self, obs: Telemetry, state: RunbookState) -> list[str]:
        """Services failing most attempts while saturated or amplified by retries.

        A service with no ready pod, or whose containers are restarting (crash loop, OOM),
        is not overloaded: shedding would not help it.
        """
        rules = self.rules
        entry_rps = _get(obs, "rps", self.entry)
        out = []
        for name in self.services:
            err = _get(obs, "error_rate", name)
            ready = _get(obs, "replicas_ready", name)
            if err is None or err < rules.overload_error_rate or not ready:
                continue
            if self._crash_looping(state, name, obs.t):
                continue
            cpu = _get(obs, "cpu_util", name)
            rps = _get(obs, "rps", name)
            base = state.baselines.get(name)
            amplified = bool(
                base is not None
                and base.amplification
                and rps is not None
                and entry_rps
                and rps / entry_rps >= rules.amplification * base.amplification
            )
            if (cpu is not None and cpu >= rules.overload_cpu_util) or amplified:
                out.append(name)
        return out

    def _shed_rule(
        self, obs: Telemetry, state: RunbookState, settled: bool
    ) -> tuple[Action | None, RunbookState, dict[str, Any]]:
        rules = self.rules
        t = obs.t
        hot = self._overloaded(obs, state)
        entry_err = _get(obs, "error_rate", self.entry)
        if hot:
            since = state.overload_since if state.overload_since is not None else t
            state = replace(state, overload_since=since, healthy_since=None)
        elif entry_err is not None and entry_err <= self.slo_error.get(self.entry, 0.01):
            healthy = state.healthy_since if state.healthy_since is not None else t
            state = replace(state, overload_since=None, healthy_since=healthy)
        else:
            state = replace(state, overload_since=None, healthy_since=None)

        if hot and settled:
            lasted = t - (state.overload_since or t)
            if lasted + _EPS < rules.overload_persist_s:
                return None, state, {}
            why = self._why_shed(obs, state, hot, lasted)
            if why is None:
                return None, state, {}
            if t - state.shed_changed_t + _EPS < rules.shed_hold_s:
                return None, state, {}
            higher = [f for f in rules.shed_steps if f > state.shed + _EPS]
            if not higher:
                return (
                    None,
                    state,
                    {
                        "rule": "overload",
                        "why": f"{why}; already shedding the most allowed ({state.shed:g})",
                    },
                )
            fraction = higher[0]
            if state.shed_released:  # a relapse after lifting: do not lift below this again
                state = replace(
                    state, shed_floor=state.shed, shed_floor_until=t + rules.shed_relapse_hold_s
                )
            state = replace(state, shed=fraction, shed_changed_t=t, shed_released=False)
            return (
                ShedLoad(fraction),
                state,
                {
                    "rule": "overload",
                    "service": ",".join(hot),
                    "action": _describe(ShedLoad(fraction)),
                    "why": why,
                },
            )

        if not hot and state.shed > 0 and state.healthy_since is not None:
            healthy_for = t - state.healthy_since
            since_change = t - state.shed_changed_t
            if (
                healthy_for + _EPS >= rules.shed_release_after_s
                and since_change + _EPS >= rules.shed_release_after_s
            ):
                floor = state.shed_floor if t < state.shed_floor_until else 0.0
                fraction = round(max(0.0, state.shed - rules.shed_release_step), 6)
                if fraction < 0.05:
                    fraction = 0.0
                if floor > 0 and fraction <= floor + _EPS:
                    return None, state, {}  # it relapsed at this fraction not long ago
                state = replace(state, shed=fraction, shed_changed_t=t, shed_released=True)
                return (
                    ShedLoad(fraction),
                    state,
                    {
                        "rule": "overload",
                        "service": "",
                        "action": _describe(ShedLoad(fraction)),
                        "why": f"healthy for {healthy_for:g} s: lifting shedding gradually",
                    },
                )
        return None, state, {}

    def _why_shed(
        self, obs: Telemetry, state: RunbookState, hot: list[str], lasted: float
    ) -> str | None:
        """Why scaling will not (or did not) fix the overload; None: give the HPA time."""
        rules = self.rules
        reasons = []
        for name in hot:
            desired = _get(obs, "replicas_desired", name)
            pending = _get(obs, "replicas_pending", name)
            if desired is not None and desired >= self.bounds[name][1]:
                reasons.append(f"{name} at replicas.max")
            if pending:
                reasons.append(f"{name} has {pending:g} pods pending")
        entry_rps = _get(obs, "rps", self.entry)
        base = state.baselines.get(self.entry)
        if (
            entry_rps is not None
            and base is not None
            and base.rps
            and entry_rps <= 1.1 * base.rps / max(1.0 - state.shed, 1e-6)
        ):
            reasons.append("traffic is back to normal yet errors persist (metastable)")
        if lasted + _EPS >= rules.overload_grace_s:
            reasons.append(f"scaling has not fixed it in {lasted:g} s")
        if not reasons:
            return None
        return (
            f"{', '.join(hot)} failing >= {rules.overload_error_rate:g} of attempts while "
            f"saturated or retry-amplified for {lasted:g} s; " + "; ".join(reasons)
        )

    def _pending_rule(
        self, obs: Telemetry, state: RunbookState
    ) -> tuple[RunbookState, dict[str, Any]]:
        t = obs.t
        unschedulable = obs.cluster_value("pods_unschedulable")
        if not obs.cluster_mask[CLUSTER_INDEX["pods_unschedulable"]] or not math.isfinite(
            unschedulable
        ):
            return state, {}
        if unschedulable > 0:
            since = state.pending_since if state.pending_since is not None else t
            state = replace(state, pending_since=since)
            if t - since + _EPS >= self.rules.pending_persist_s:
                return state, {
                    "rule": "pending_pods",
                    "why": f"{unschedulable:g} pods unschedulable for {t - since:g} s: the "
                    "cluster needs nodes; the simulator has no add-node action (enable "
                    "cluster.autoscaler in the scenario), so this is recorded only",
                }
            return state, {}
        return replace(state, pending_since=None), {}


# --------------------------------------------------------------------------------------------
# helpers


def _observed(obs: Telemetry, field_name: str, service: str) -> bool:
    s = obs.services.index(service)
    return bool(obs.observed(field_name)[s]) and math.isfinite(float(obs[field_name][s]))


def _served_view(obs: Telemetry, entry: int) -> Telemetry:
    """The frame as the entry service itself sees it while traffic is being shed.

    Shed requests count as dropped at the entry (users get errors), so under shedding the
    entry's ``rps`` and ``error_rate`` include them. The rules judge the service by the
    traffic it actually serves: ``rps * (1 - shed)`` and ``(error_rate - shed) / (1 - shed)``.
    """
    shed = obs.cluster_value("shed_fraction")
    if not obs.cluster_mask[CLUSTER_INDEX["shed_fraction"]] or not 0 < shed < 1:
        return obs
    values = obs.values.copy()
    rps, err = FIELD_INDEX["rps"], FIELD_INDEX["error_rate"]
    values[entry, rps] = values[entry, rps] * (1.0 - shed)
    values[entry, err] = max(0.0, (values[entry, err] - shed) / (1.0 - shed))
    return dataclasses.replace(obs, values=values)


def _get(obs: Telemetry, field_name: str, service: str) -> float | None:
    if not _observed(obs, field_name, service):
        return None
    return float(obs[field_name][obs.services.index(service)])


def _rise(history: tuple[Sample, ...], field_name: str, since: float) -> float | None:
    """Increase of a counter gauge from the oldest sample at or after ``since`` to now."""
    values = [(x.t, x.get(field_name)) for x in history if x.t >= since - _EPS]
    observed = [v for _, v in values if v is not None]
    if len(observed) < 2:
        return None
    return observed[-1] - min(observed)


def _ewma(old: float, new: float, alpha: float) -> float:
    return (1 - alpha) * old + alpha * new


def _ewma_opt(old: float | None, new: float | None, alpha: float) -> float | None:
    if new is None:
        return old
    if old is None:
        return new
    return _ewma(old, new, alpha)


def _describe(action: Action) -> str:
    if isinstance(action, Scale):
        return f"scale {action.service} to {action.replicas}"
    if isinstance(action, Restart):
        return f"restart {action.service}"
    if isinstance(action, Rollback):
        return f"rollback {action.service}"
    if isinstance(action, ShedLoad):
        return f"shed {action.fraction:g} of traffic"
    return action.kind
