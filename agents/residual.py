"""A residual policy around ``tuned_runbook``: its no-op is the best rules' decision.

The rules (:class:`agents.baselines.runbook.RunbookPolicy` over the tuned HPA,
``policy=tuned_runbook``) decide first, from telemetry alone; a learned policy then adjusts
that decision instead of replacing it:

* per service, a multiplicative offset on the runbook's HPA CPU target
  (:data:`TARGET_FACTORS`; the tuned target 50 % becomes 30, 40, 50, 60 or 70 %) for this
  sync, with the HPA's histories carried over (:meth:`agents.baselines.hpa.HPAPolicy.act`);
* one remediation choice: keep the runbook's remediations, **veto** them (its restarts,
  rollbacks and shed increases of this step are dropped; the rules still count a vetoed
  restart or rollback against their cool-down, and keep the shed level actually in force),
  or **add** a restart or rollback of one service, or a shed level. The rules take an added
  action as their own (:meth:`~agents.baselines.runbook.RunbookPolicy.record_external`):
  its cool-down and settle time start, and an added shed level is lifted by the overload
  rule once the service is healthy, as the rules lift their own.

Choosing :meth:`ResidualController.noop` everywhere reproduces ``tuned_runbook``'s episode
exactly (same seed, same trajectory; ``tests/test_residual.py``). Restart and rollback
cooldowns (the runbook's, 600 s per service, counted from the last restart or rollback of
that service by either the rules or the learned part) are action masks, as are a rollback
without a previous version, a shed level already in force and a veto with nothing to veto.

Three pieces:

* :class:`ResidualController`: the residual decision as pure functions of an explicit
  :class:`ResidualState` (telemetry and own actions only; no simulator), shared by the env
  and by :class:`agents.sb3.policy.SB3Policy` at evaluation;
* :class:`ResidualEnv` (``opsworld/Residual-v0``, ``env=residual``): a Gymnasium env over
  :class:`envs.gym.envs.ClusterEnv` whose reward is a Lagrangian with exact costs: per step
  ``-(slo + lambda_cost * (cost - cost_ref) + lambda_disruption * (disruption -
  disruption_ref))``, where ``cost`` and ``disruption`` are the env's exact reward
  components and ``*_ref`` are ``tuned_runbook``'s per-step means on the *same* episode
  (same scenario and simulator seed, replayed with the no-op residual at reset);
* :func:`dual_step`: the multipliers' dual-ascent step from episode statistics, run once
  per rollout by :class:`agents.sb3.callbacks.LagrangeCallback`, which drives the mean cost
  and disruption per step to at most the runbook's on the same episodes.

The spaces and the budgets are documented in ``docs/control.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import register, registry

from agents.baselines.runbook import RunbookPolicy, RunbookState
from envs.core.actions import Action, Restart, Rollback, ShedLoad
from envs.core.telemetry import Telemetry
from envs.gym.codec import SHED_LEVELS, ControlBelief, control_spec
from envs.gym.encoder import ObsEncoder, observation_space
from envs.gym.envs import ClusterEnv
from envs.kube.tuned import load_settings
from envs.scenarios.schema import Scenario

ENV_ID = "opsworld/Residual-v0"
"""The Gymnasium id of :class:`ResidualEnv` (registered when this module is imported)."""

TARGET_FACTORS: tuple[float, ...] = (0.6, 0.8, 1.0, 1.2, 1.4)
"""Multiplicative offsets on the runbook's HPA CPU target (index 2 = 1.0 = no change)."""
NOOP_TARGET = TARGET_FACTORS.index(1.0)
KEEP, VETO = 0, 1
"""Remediation indices: keep the runbook's remediations, veto them."""
_EPS = 1e-9


@dataclass(frozen=True)
class ResidualState:
    """What :class:`ResidualController` remembers between decisions (one stream).

    Attributes:
        runbook: The rules' own state.
        belief: The control belief (deploy versions, shed level) from telemetry and own actions.
        last_restart_t: ``(S,)`` time of the last restart of each service (rules or learned).
        last_rollback_t: ``(S,)`` time of the last rollback of each service.
        frame: The frame observed last (None before the first).
        preview: The runbook's decision on ``frame`` at its configured targets
            ``(actions, runbook state after, info)``; what the no-op applies.
    """

    runbook: RunbookState
    belief: ControlBelief
    last_restart_t: tuple[float, ...]
    last_rollback_t: tuple[float, ...]
    frame: Telemetry | None = None
    preview: tuple[tuple[Action, ...], RunbookState, dict[str, Any]] | None = field(
        default=None, repr=False
    )


class ResidualController:
    """The residual decision around ``tuned_runbook`` on one scenario; see the module docstring.

    Args:
        scenario: The scenario (services, replica bounds, SLOs, entry; as ``tuned_runbook``).
        runbook: The rules; None builds ``tuned_runbook`` (the tuned HPA's settings from
            ``configs/policy/tuned_hpa.yaml``).
    """

    def __init__(self, scenario: Scenario, runbook: RunbookPolicy | None = None) -> None:
        if runbook is None:
            runbook = RunbookPolicy(scenario, hpa_config=load_settings().hpa_config())
            runbook.name = "tuned_runbook"
        self.runbook = runbook
        self.scenario = scenario
        self.services: tuple[str, ...] = tuple(scenario.service_names)
        self.spec = control_spec(scenario)
        cpu = [m for m in runbook.hpa.config.metrics if m.resource == "cpu"]
        if not cpu:
            raise ValueError("the runbook's HPA has no CPU metric: there is no target to offset")
        self.base_target = int(cpu[0].target_utilization)
        self.restart_cooldown_s = float(runbook.rules.restart_cooldown_s)
        self.rollback_cooldown_s = float(runbook.rules.rollback_cooldown_s)
        s = len(self.services)
        self.n_remediations = 2 + 2 * s + len(SHED_LEVELS)
        self.nvec = (len(TARGET_FACTORS),) * s + (self.n_remediations,)

    # ------------------------------------------------------------------ spaces
    def action_space(self) -> spaces.MultiDiscrete:
        """``MultiDiscrete([5] * S + [2 + 2*S + 3])`` (a new object per call)."""
        return spaces.MultiDiscrete(list(self.nvec))

    def noop(self) -> np.ndarray:
        """The action that applies the runbook's decision unchanged."""
        return np.array([NOOP_TARGET] * len(self.services) + [KEEP], dtype=np.int64)

    @property
    def n_features(self) -> int:
        """Length of :meth:`features`: ``4*S + 2``."""
        return 4 * len(self.services) + 2

    def observation_space(self, encoder: ObsEncoder) -> spaces.Box:
        """The encoder's box followed by :meth:`features` (each in ``[0, 1]``)."""
        base = observation_space(encoder, "box")
        assert isinstance(base, spaces.Box)
        n = self.n_features
        low = np.concatenate([base.low, np.zeros(n, np.float32)])
        high = np.concatenate([base.high, np.ones(n, np.float32)])
        return spaces.Box(low, high, dtype=np.float32)

    def describe(self, index: int) -> str:
        """What remediation index ``index`` does (for logs and docs)."""
        s = len(self.services)
        if index == KEEP:
            return "keep the runbook's remediations"
        if index == VETO:
            return "veto the runbook's restarts, rollbacks and shed increases"
        if index < 2 + 2 * s:
            svc = self.services[(index - 2) // 2]
            return f"{'restart' if (index - 2) % 2 == 0 else 'roll back'} {svc}"
        return f"shed {SHED_LEVELS[index - 2 - 2 * s]:g} of external traffic"

    # ------------------------------------------------------------------ state
    def reset(self) -> ResidualState:
        """Fresh state of one stream."""
        rb = self.runbook.reset(1)
        assert isinstance(rb, RunbookState)
        n = len(self.services)
        return ResidualState(
            runbook=rb,
            belief=ControlBelief.initial(self.spec),
            last_restart_t=(-math.inf,) * n,
            last_rollback_t=(-math.inf,) * n,
        )

    def observe(self, frame: Telemetry, state: ResidualState) -> ResidualState:
        """The state after seeing ``frame``: belief updated, the runbook's decision previewed."""
        acts, rb_state, info = self.runbook.act(frame, state.runbook)
        return replace(
            state,
            belief=state.belief.observe(frame),
            frame=frame,
            preview=(tuple(acts), rb_state, info),
        )

    def _now(self, state: ResidualState) -> float:
        if state.frame is None or state.preview is None:
            raise RuntimeError("call observe(frame, state) before masks or decide")
        return float(state.frame.t)

    def _vetoable(self, action: Action, belief: ControlBelief) -> bool:
        if isinstance(action, Restart | Rollback):
            return True
        return isinstance(action, ShedLoad) and action.fraction > belief.shed_fraction + _EPS

    def masks(self, state: ResidualState) -> np.ndarray:
        """Valid choices, flat as MaskablePPO reads them (targets always valid)."""
        t = self._now(state)
        assert state.preview is not None
        belief = state.belief
        rem = np.zeros(self.n_remediations, dtype=bool)
        rem[KEEP] = True
        rem[VETO] = any(self._vetoable(a, belief) for a in state.preview[0])
        for s in range(len(self.services)):
            restart_ok = t - state.last_restart_t[s] + _EPS >= self.restart_cooldown_s
            rollback_ok = t - state.last_rollback_t[s] + _EPS >= self.rollback_cooldown_s
            rem[2 + 2 * s] = restart_ok
            rem[3 + 2 * s] = rollback_ok and belief.can_rollback(s)
        base = 2 + 2 * len(self.services)
        for j, level in enumerate(SHED_LEVELS):
            rem[base + j] = abs(level - belief.shed_fraction) > _EPS
        free = np.ones(len(TARGET_FACTORS) * len(self.services), dtype=bool)
        return np.concatenate([free, rem])

    def features(self, state: ResidualState) -> np.ndarray:
        """What the rules propose and the cooldowns, in ``[0, 1]`` (``(4*S + 2,)`` float32).

        ``[restart proposed (S), rollback proposed (S), shed proposed (0/1), proposed shed
        fraction, restart cooldown left / cooldown (S), rollback cooldown left (S)]``.
        """
        t = self._now(state)
        assert state.preview is not None
        n = len(self.services)
        out = np.zeros(self.n_features, dtype=np.float32)
        for a in state.preview[0]:
            if isinstance(a, Restart):
                out[self.services.index(a.service)] = 1.0
            elif isinstance(a, Rollback):
                out[n + self.services.index(a.service)] = 1.0
            elif isinstance(a, ShedLoad):
                out[2 * n] = 1.0
                out[2 * n + 1] = a.fraction
        for s in range(n):
            left_r = self.restart_cooldown_s - (t - state.last_restart_t[s])
            left_b = self.rollback_cooldown_s - (t - state.last_rollback_t[s])
            out[2 * n + 2 + s] = np.clip(left_r / max(self.restart_cooldown_s, _EPS), 0, 1)
            out[3 * n + 2 + s] = np.clip(left_b / max(self.rollback_cooldown_s, _EPS), 0, 1)
        return out

    def targets(self, action: Any) -> dict[str, int]:
        """The HPA CPU targets (percent) that ``action`` changes (empty for the no-op)."""
        a = np.asarray(action)
        out = {}
        for s, name in enumerate(self.services):
            k = int(a[s])
            if k != NOOP_TARGET:
                out[name] = max(1, round(self.base_target * TARGET_FACTORS[k]))
        return out

    def decide(
        self, state: ResidualState, action: Any
    ) -> tuple[list[Action], ResidualState, dict[str, Any]]:
        """The typed actions of ``action`` on the frame last observed, and the next state.

        A remediation choice that :meth:`masks` rules out is a no-op (``info["masked_out"]``).
        """
        t = self._now(state)
        assert state.preview is not None and state.frame is not None
        a = np.asarray(action).astype(np.int64)
        if a.shape != (len(self.nvec),) or np.any(a < 0) or np.any(a >= np.asarray(self.nvec)):
            raise ValueError(
                f"action {a.tolist()} is not in MultiDiscrete({list(self.nvec)}): give "
                f"{len(self.nvec)} integers, entry i in [0, nvec[i] - 1]"
            )
        targets = self.targets(a)
        if targets:
            acts_l, rb_state, rb_info = self.runbook.act(state.frame, state.runbook, targets)
            acts = list(acts_l)
        else:
            acts, rb_state, rb_info = list(state.preview[0]), state.preview[1], state.preview[2]
        masks = self.masks(state)
        rem = int(a[-1])
        masked_out = not masks[len(masks) - self.n_remediations + rem]
        if masked_out:
            rem = KEEP
        belief = state.belief
        n = len(self.services)
        added: Action | None = None
        if rem == VETO:
            if any(isinstance(x, ShedLoad) and self._vetoable(x, belief) for x in acts):
                # the rules believe they shed: they keep the level actually in force
                before = state.runbook
                rb_state = replace(
                    rb_state,
                    shed=before.shed,
                    shed_changed_t=before.shed_changed_t,
                    shed_released=before.shed_released,
                    shed_floor=before.shed_floor,
                    shed_floor_until=before.shed_floor_until,
                )
            acts = [x for x in acts if not self._vetoable(x, belief)]
        elif 2 <= rem < 2 + 2 * n:
            svc = self.services[(rem - 2) // 2]
            added = Restart(svc) if (rem - 2) % 2 == 0 else Rollback(svc)
            if added not in acts:
                acts.append(added)
        elif rem >= 2 + 2 * n:
            added = ShedLoad(SHED_LEVELS[rem - 2 - 2 * n])
            acts = [x for x in acts if not isinstance(x, ShedLoad)] + [added]
        if added is not None:  # the rules take it as their own (cool-downs, shed release)
            rb_state = self.runbook.record_external(rb_state, added, t)
        restarts = list(state.last_restart_t)
        rollbacks = list(state.last_rollback_t)
        for x in acts:
            if isinstance(x, Restart):
                restarts[self.services.index(x.service)] = t
            elif isinstance(x, Rollback):
                rollbacks[self.services.index(x.service)] = t
        new = replace(
            state,
            runbook=rb_state,
            belief=belief.after(acts, self.services),
            last_restart_t=tuple(restarts),
            last_rollback_t=tuple(rollbacks),
        )
        info = {
            "residual": self.describe(rem),
            "hpa_targets": targets,
            "masked_out": masked_out,
            "runbook": rb_info.get("runbook", []),
        }
        return acts, new, info


class ResidualPolicy:
    """A :class:`~envs.core.policy.Policy` of the residual controller and a chooser.

    ``choose(observation, masks) -> action`` picks the residual action from the encoded
    observation (the env's: :meth:`ResidualEnv.observe_state`) and the masks; with
    ``choose=None`` it is the no-op, i.e. ``tuned_runbook`` itself.
    """

    name = "residual"

    def __init__(self, scenario: Scenario, choose: Any = None) -> None:
        self.controller = ResidualController(scenario)
        self.encoder = ObsEncoder(self.controller.services)
        self.choose = choose

    def reset(self, n: int = 1) -> Any:
        """Fresh :class:`ResidualState` (a list of ``n`` for ``n > 1``)."""
        return self.controller.reset() if n == 1 else [self.controller.reset() for _ in range(n)]

    def act(self, obs: Telemetry, state: Any) -> tuple[list[Action], Any, dict[str, Any]]:
        """Observe ``obs``, choose the residual action and decide."""
        ctrl = self.controller
        st = ctrl.observe(obs, state)
        if self.choose is None:
            action = ctrl.noop()
        else:
            x = np.concatenate([self.encoder.encode(obs), ctrl.features(st)])
            action = self.choose(x, ctrl.masks(st))
        acts, st, info = ctrl.decide(st, action)
        info["action"] = np.asarray(action).tolist()
        return acts, st, info


# --------------------------------------------------------------------------------------------
# the env


@dataclass(frozen=True)
class Multipliers:
    """Lagrange multipliers of the cost and disruption budgets (both ``>= 0``)."""

    cost: float = 1.0
    disruption: float = 0.1


def dual_step(
    lam: Multipliers,
    cost_gaps: Sequence[float],
    disruption_gaps: Sequence[float],
    lr_cost: float,
    lr_disruption: float,
    cap: float = 100.0,
) -> Multipliers:
    """One projected dual-ascent step: ``lambda <- clip(lambda + lr * mean(gap), 0, cap)``.

    A gap is an episode's mean per-step cost (or disruption) minus ``tuned_runbook``'s on
    the same episode (:class:`ResidualEnv`'s ``info["residual_episode"]``): positive when
    the learned policy spends more than its budget, which raises the price. With no
    episodes a multiplier stays.
    """
    if lr_cost < 0 or lr_disruption < 0 or cap <= 0:
        raise ValueError(
            f"lr_cost={lr_cost}, lr_disruption={lr_disruption}, cap={cap}: the step sizes "
            "must be >= 0 and the cap > 0"
        )

    def one(value: float, gaps: Sequence[float], lr: float) -> float:
        if not len(gaps):
            return value
        return float(min(cap, max(0.0, value + lr * float(np.mean(gaps)))))

    return Multipliers(
        one(lam.cost, cost_gaps, lr_cost), one(lam.disruption, disruption_gaps, lr_disruption)
    )


def episode_gaps(record: dict[str, float]) -> tuple[float, float]:
    """(cost gap, disruption gap) per step of one ``info["residual_episode"]`` record.

    Each is the episode's sum minus the reference's over the same steps, divided by the
    number of steps.
    """
    steps = max(record["steps"], 1.0)
    return (
        (record["cost"] - record["ref_cost"]) / steps,
        (record["disruption"] - record["ref_disruption"]) / steps,
    )


class ResidualEnv(ClusterEnv):
    """Adjust ``tuned_runbook``'s decisions: HPA target offsets, veto or add remediations.

    ## Description

    As :class:`envs.gym.envs.HPATuneEnv`, a simulated cluster of microservices with
    incidents; but every step the runbook over the tuned HPA (``policy=tuned_runbook``)
    decides first from telemetry, and the agent adjusts that decision
    (:class:`ResidualController`). The all-no-op action
    ``[2] * S + [0]`` is exactly ``tuned_runbook``.

    ## Action Space

    ``MultiDiscrete([5] * S + [R])`` with ``R = 2 + 2*S + 3``: entry ``s < S`` multiplies
    service ``s``'s HPA CPU target (tuned: 50 %) by ``(0.6, 0.8, 1.0, 1.2, 1.4)[k]`` for this
    sync (a lower target scales out earlier); the last entry is:

    | index | action | masked when |
    |---|---|---|
    | 0 | keep the runbook's remediations | never |
    | 1 | veto the runbook's restarts, rollbacks, shed increases | nothing to veto |
    | 2 + 2*s | also restart service ``s`` | ``s`` restarted < 600 s ago |
    | 3 + 2*s | also roll back service ``s`` | ``s`` rolled back < 600 s ago; no old version |
    | 2 + 2*S + j | shed ``(0, 0.25, 0.5)[j]`` instead of the runbook | the level in force |

    ## Observation Space

    ``Box`` of the encoder's ``2*(S*F + C) + 4`` values (as the other envs with
    ``obs="box"``) followed by ``4*S + 2`` values in ``[0, 1]``
    (:meth:`ResidualController.features`): the restarts, rollbacks and shedding that the
    runbook proposes now, and each service's restart and rollback cooldown left.

    ## Rewards

    A Lagrangian of the SLO objective and two budgets, per step::

        r = -(w_slo * slo_violation + lambda_cost * (cost - cost_ref)
              + lambda_disruption * (disruption - disruption_ref))

    ``slo_violation``, ``cost`` and ``disruption`` are the exact components of the other
    envs (ground truth, counted from the actions applied); ``cost_ref`` and
    ``disruption_ref`` are ``tuned_runbook``'s at the same step of the same episode (the
    scenario and simulator seed replayed with the no-op at reset; ``reference=False``: 0),
    so an episode's return is minus its SLO violation and the multipliers times its excess
    over ``tuned_runbook``, however early it is cut. The multipliers start at
    ``multipliers`` and move by :func:`dual_step` between rollouts (:meth:`set_multipliers`).
    Every step's ``info["residual_episode"]`` holds the episode's sums so far and the
    reference's over as many steps (``steps``, ``slo``, ``cost``, ``disruption``,
    ``ref_steps``, ``ref_slo``, ``ref_cost``, ``ref_disruption``).

    ## Episode End

    As the other envs: truncation at the scenario's horizon, never terminated.

    ## Arguments

    As :class:`envs.gym.envs.ClusterEnv` (``obs`` must be ``"box"``), plus
    ``multipliers`` (``(lambda_cost, lambda_disruption)``, default ``(1.0, 0.1)``) and
    ``reference`` (replay ``tuned_runbook`` on each episode for the budgets; default True).
    """

    layout = "remediate"  # the base codec is unused: ResidualController decodes

    def __init__(
        self,
        multipliers: tuple[float, float] | Multipliers | None = None,
        reference: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.obs_kind != "box":
            raise ValueError(
                f"env=residual observes a box only: set obs='box' (got {self.obs_kind!r})"
            )
        self.controllers = [ResidualController(sc) for sc in self.scenarios]
        self._by_name = {sc.name: i for i, sc in enumerate(self.scenarios)}
        ctrl = self.controllers[0]
        self.action_space = ctrl.action_space()
        self.observation_space = ctrl.observation_space(self.encoder)
        if isinstance(multipliers, tuple | list):
            multipliers = Multipliers(float(multipliers[0]), float(multipliers[1]))
        self.lam = multipliers or Multipliers()
        self.reference = reference
        self._ctrl = ctrl
        self._state: ResidualState | None = None
        self._refs: dict[int, ResidualEnv] = {}
        self._ref_parts = np.zeros((0, 3))  # the reference's per-step slo, cost, disruption
        self._ep = np.zeros(4)  # steps, slo, cost, disruption
        self._ep_ref = np.zeros(3)  # the reference's sums over as many steps

    def noop_action(self) -> np.ndarray:
        """The all-no-op action (``tuned_runbook``'s decision unchanged)."""
        return self._ctrl.noop()

    # ------------------------------------------------------------------ budgets
    def set_multipliers(self, cost: float, disruption: float) -> None:
        """Set the Lagrange multipliers (the callback's dual step)."""
        if cost < 0 or disruption < 0:
            raise ValueError(f"multipliers must be >= 0, got cost={cost}, disruption={disruption}")
        self.lam = Multipliers(float(cost), float(disruption))

    def reference_parts(self, index: int, sim_seed: int) -> np.ndarray:
        """``tuned_runbook``'s per-step ``(slo_violation, cost, disruption)``, ``(steps, 3)``.

        On scenario ``index`` with ``sim_seed``: the no-op replayed in a second env.
        """
        ref = self._refs.get(index)
        if ref is None:
            ref = ResidualEnv(
                scenario=self.scenarios[index],
                fidelity=self.fidelity,
                reference=False,
                reward_weights=self.weights,
            )
            self._refs[index] = ref
        ref.reset(options={"scenario": 0, "sim_seed": sim_seed})
        noop = ref._ctrl.noop()
        rows = []
        done = False
        while not done:
            *_, done, info = ref.step(noop)
            p = info["reward_components"]
            rows.append((p["slo_violation"], p["cost"], p["disruption"]))
        return np.asarray(rows, dtype=np.float64)

    # ------------------------------------------------------------------ gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """As :meth:`ClusterEnv.reset`, then the rules' first decision and the reference."""
        _, info = super().reset(seed=seed, options=options)
        index = self._by_name[self._sim.scenario.name]
        self._ctrl = self.controllers[index]
        self._state = self._ctrl.observe(self.frame, self._ctrl.reset())
        self._ep = np.zeros(4)
        self._ep_ref = np.zeros(3)
        if self.reference:
            self._ref_parts = self.reference_parts(index, info["sim_seed"])
        else:
            self._ref_parts = np.zeros((0, 3))
        return self.observe_state(), info

    def observe_state(self) -> np.ndarray:
        """The observation: encoded frame and :meth:`ResidualController.features`."""
        if self._state is None:
            raise RuntimeError("call reset() first")
        return np.concatenate([self.encoder.encode(self.frame), self._ctrl.features(self._state)])

    def action_masks(self) -> np.ndarray:
        """Valid actions (True = valid), flat as MaskablePPO reads them."""
        if self._state is None:
            raise RuntimeError("call reset() first")
        return self._ctrl.masks(self._state)

    def masked_out(self, action: Any, masks: np.ndarray) -> bool:
        """Whether ``action``'s remediation is ruled out by ``masks`` (a no-op then)."""
        rem = int(np.asarray(action)[-1])
        return not bool(masks[len(masks) - self._ctrl.n_remediations + rem])

    def decode(self, action: Any) -> list[Action]:
        """What ``action`` would do now (the state does not move)."""
        if self._state is None:
            raise RuntimeError("call reset() first")
        return self._ctrl.decide(self._state, action)[0]

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Decide with the rules and ``action``, apply, run to the next decision.

        Raises:
            ValueError: ``action`` is not in ``action_space``.
        """
        self.check_action(action)
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        acts, state, rinfo = self._ctrl.decide(self._state, action)
        _, reward, terminated, truncated, info = self.step_actions(acts)
        self._state = self._ctrl.observe(self.frame, state)
        parts = info["reward_components"]
        self._ep_ref += self._ref_step(int(self._ep[0]))
        self._ep += (1.0, parts["slo_violation"], parts["cost"], parts["disruption"])
        info.update(rinfo)
        info["multipliers"] = (self.lam.cost, self.lam.disruption)
        steps, slo, cost, dis = self._ep.tolist()
        ref_slo, ref_cost, ref_dis = self._ep_ref.tolist()
        info["residual_episode"] = {  # so far: read at the episode's end (also a TimeLimit's)
            "steps": steps,
            "slo": slo,
            "cost": cost,
            "disruption": dis,
            "ref_steps": steps if self.reference else 0.0,
            "ref_slo": ref_slo,
            "ref_cost": ref_cost,
            "ref_disruption": ref_dis,
        }
        return self.observe_state(), reward, terminated, truncated, info

    def _ref_step(self, k: int) -> np.ndarray:
        """The reference's ``(slo, cost, disruption)`` at step ``k`` (zeros without one)."""
        if k < len(self._ref_parts):
            return self._ref_parts[k]
        return np.zeros(3)

    def _reward(self, disruptive: int) -> tuple[float, dict[str, float]]:
        _, parts = super()._reward(disruptive)
        _, cost_ref, dis_ref = self._ref_step(int(self._ep[0])).tolist()
        reward = -(
            self.weights.slo * parts["slo_violation"]
            + self.lam.cost * (parts["cost"] - cost_ref)
            + self.lam.disruption * (parts["disruption"] - dis_ref)
        )
        return float(reward), parts


def register_env() -> None:
    """Register ``opsworld/Residual-v0`` with Gymnasium (idempotent)."""
    if ENV_ID not in registry:
        register(id=ENV_ID, entry_point="agents.residual:ResidualEnv", max_episode_steps=240)


register_env()

__all__ = [
    "ENV_ID",
    "NOOP_TARGET",
    "TARGET_FACTORS",
    "Multipliers",
    "ResidualController",
    "ResidualEnv",
    "ResidualPolicy",
    "ResidualState",
    "dual_step",
    "episode_gaps",
]
