"""Gymnasium environments over the cluster simulator.

Four environments share one base (:class:`ClusterEnv`): the simulator, the observation
encoding (:class:`envs.gym.encoder.ObsEncoder`), the reward and the episode logic; they
differ in their action space. Each class docstring is that environment's spec
(``docs/envs.md`` is checked against it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from envs.core.actions import Action
from envs.core.telemetry import Telemetry
from envs.gym.codec import ActionCodec, ControlBelief, control_spec
from envs.gym.encoder import ActionEncoder, ObsEncoder, observation_space
from envs.kube.config import HPAConfig
from envs.kube.tuned import load_settings
from envs.scenarios.loader import load_scenario
from envs.scenarios.schema import Autoscaling, Scenario
from envs.scenarios.scoring import TrustedReady

if TYPE_CHECKING:
    from envs.sim.simulator import Simulator


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the reward's components (all penalties, see the env docstrings)."""

    slo: float = 1.0
    cost: float = 0.2
    disruption: float = 0.05


class ClusterEnv(gym.Env[Any, Any]):
    """Base class: see :class:`AutoscaleEnv` for the shared spec.

    Subclasses set :attr:`layout` (an :mod:`envs.gym.codec` layout). Actions decode through
    the env's :class:`~envs.gym.codec.ActionCodec` under its
    :class:`~envs.gym.codec.ControlBelief`, which is updated from the frames the env emits
    and the actions it applies only, exactly as a served policy decodes: the env never
    reads the control plane to decode or mask.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}  # noqa: RUF012 (Gymnasium's convention)
    layout = "autoscale"

    def __init__(
        self,
        scenario: str | Path | Scenario | Sequence[str | Path | Scenario] = "boutique",
        fidelity: str = "fluid",
        obs: str = "box",
        reward_weights: RewardWeights | dict[str, float] | None = None,
        scenario_overrides: dict[str, Any] | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode={render_mode!r}: use one of {self.metadata['render_modes']} or None"
            )
        self.render_mode = render_mode
        specs: list[str | Path | Scenario] = (
            list(scenario) if isinstance(scenario, list | tuple) else [scenario]  # type: ignore[list-item]
        )
        if not specs:
            raise ValueError("scenario: give at least one scenario (name, path or Scenario)")
        self.scenarios = [
            load_scenario(s, scenario_overrides) if not isinstance(s, Scenario) else s
            for s in specs
        ]
        base = self.scenarios[0]
        for sc in self.scenarios[1:]:
            if sc.service_names != base.service_names:
                raise ValueError(
                    f"scenario: {sc.name!r} has services {sc.service_names}, but "
                    f"{base.name!r} has {base.service_names}; one env needs one topology"
                )
        if fidelity not in ("fluid", "request"):
            raise ValueError(f"fidelity must be 'fluid' or 'request', got {fidelity!r}")
        if obs not in ("box", "dict"):
            raise ValueError(f"obs must be 'box' or 'dict', got {obs!r}")
        self.fidelity = fidelity
        self.obs_kind = obs
        if isinstance(reward_weights, dict):
            reward_weights = RewardWeights(**reward_weights)
        self.weights = reward_weights or RewardWeights()
        self.services = tuple(base.service_names)
        self.encoder = ObsEncoder(self.services)
        self.action_encoder = ActionEncoder(self.services)
        self.specs = base.topology.services
        self.n_nodes = base.cluster.nodes
        self.codec = ActionCodec(self.layout, control_spec(base))
        self.action_space = self.codec.action_space()
        self.observation_space = observation_space(self.encoder, obs)
        self.belief = ControlBelief.initial(self.codec.spec)
        self.sim: Simulator | None = None
        self._frame: Telemetry | None = None
        s = len(self.services)
        self._last_viol = np.zeros(s)
        self._slo_mask = np.zeros(s, dtype=bool)
        self._base_cost_rate = 1.0
        self._last_cost = 0.0
        self._ready: TrustedReady | None = None
        self._history: list[Telemetry] = []  # frames and actions of the episode (rgb_array)
        self._applied: list[tuple[float, Action]] = []

    # ------------------------------------------------------------------ actions
    @property
    def n_remediations(self) -> int:
        """Size of the remediation choice (no-op included)."""
        return self.codec.n_remediations

    def decode(self, action: Any) -> list[Action]:
        """Translate an element of ``action_space`` into typed actions (under the belief)."""
        return self.codec.decode(action, self.belief)

    def masked_out(self, action: Any, masks: np.ndarray) -> bool:
        """Whether ``action`` chose a remediation that ``masks`` rules out (a no-op then).

        ``masks`` is this env's ``action_masks()`` at the time of the choice.
        """
        return self.codec.masked_out(action, masks)

    def action_masks(self) -> np.ndarray:
        """Valid actions (True = valid), flat as sb3-contrib's MaskablePPO reads them."""
        return self.codec.masks(self.belief)

    def action_feature_matrix(self) -> np.ndarray:
        """``M`` with ``onehot(action) @ M`` = the action's :class:`ActionEncoder` features.

        See :meth:`envs.gym.codec.ActionCodec.feature_matrix`.
        """
        return self.codec.feature_matrix()

    # ------------------------------------------------------------------ gym API
    @property
    def _sim(self) -> Simulator:
        if self.sim is None:
            raise RuntimeError("call reset() before step()")
        return self.sim

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start an episode on a scenario drawn from the env's scenarios.

        ``options={"scenario": i}`` picks scenario ``i`` instead of drawing one;
        ``options={"sim_seed": k}`` runs the simulator with seed ``k`` instead of the drawn
        one (the env's generator still draws it, so later episodes do not change): replays
        an episode, as the residual env's reference run does (:mod:`agents.residual`).
        """
        super().reset(seed=seed)
        options = options or {}
        idx = options.get("scenario")
        if idx is None:
            idx = int(self.np_random.integers(len(self.scenarios)))
        sc = self.scenarios[int(idx)]
        sim_seed = int(self.np_random.integers(2**31 - 1))
        if options.get("sim_seed") is not None:
            sim_seed = int(options["sim_seed"])
        # Imported here, not at module level: the policies build their codec and encoder
        # from this package without the simulator (see envs.gym.codec).
        from envs.sim.simulator import Simulator

        self.sim = Simulator(sc, fidelity=self.fidelity, seed=sim_seed)
        frame = self.sim.reset()
        self._frame = frame
        self._history = [frame] if self.render_mode == "rgb_array" else []
        self._applied = []
        self.belief = ControlBelief.initial(self.codec.spec).observe(frame)
        self._ready = TrustedReady(self.sim.scenario)
        self._ready.observe(frame)
        eng = self.sim.engine
        self._last_viol = eng.violation_s.copy()
        self._slo_mask = ~np.isnan(eng.slo_p99)
        self._base_cost_rate = max(eng.cp.allocated_cost_rate, 1e-9)
        self._last_cost = 0.0
        info = {"scenario": sc.name, "sim_seed": sim_seed, "t": frame.t}
        return self._observe(frame), info

    @property
    def frame(self) -> Telemetry:
        """The latest telemetry frame (what a :class:`~envs.core.policy.Policy` decides on)."""
        if self._frame is None:
            raise RuntimeError("call reset() first")
        return self._frame

    def check_action(self, action: Any) -> None:
        """Raise unless ``action`` is an element of ``action_space`` (also under ``python -O``).

        Raises:
            ValueError: Naming the action, its shape and the valid range.
        """
        if self.action_space.contains(action):
            return
        shape = np.shape(action)
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            valid = f"an integer in [{space.start}, {space.start + space.n - 1}]"
        elif isinstance(space, gym.spaces.MultiDiscrete):
            valid = (
                f"integers of shape {space.shape}, entry i in [0, nvec[i] - 1] with "
                f"nvec={space.nvec.tolist()}"
            )
        else:
            valid = str(space)
        raise ValueError(f"action {action!r} (shape {shape}) is not in {space}: give {valid}")

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Apply ``action``, run one decision interval, return the Gymnasium 5-tuple.

        Raises:
            ValueError: ``action`` is not in ``action_space`` (:meth:`check_action`).
        """
        self.check_action(action)
        return self.step_actions(self.decode(action))

    def step_actions(
        self, actions: Sequence[Action]
    ) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """As :meth:`step`, with typed actions instead of an element of ``action_space``.

        For baseline policies (which speak typed actions); ``info["action_features"]``
        encodes the actions with :class:`~envs.gym.encoder.ActionEncoder`. An action the
        cluster refuses now (a drain of a node that is gone, a rollback with no previous
        version: what the belief cannot see) is not applied, not counted and listed in
        ``info["refused"]``.
        """
        sim = self._sim
        actions, refused = sim.admissible(list(actions))
        features = self.action_encoder.encode(actions, self.belief.desired)
        disruptive = sum(self._trusted_ready.disruptive(a) for a in actions)
        frames = sim.step(actions)
        self.belief = self.belief.after(actions, self.services)
        for f in frames:
            self.belief = self.belief.observe(f)
            self._trusted_ready.observe(f)
        frame = frames[-1] if frames else self._frame
        if frame is None:
            raise RuntimeError("call reset() before step()")
        self._frame = frame
        if self.render_mode == "rgb_array":
            self._history.extend(frames)
            self._applied.extend((sim.now, a) for a in actions)
        reward, parts = self._reward(disruptive)
        truncated = sim.done
        info = {
            "t": sim.now,
            "actions": [repr(a) for a in actions],
            "reward_components": parts,
            "action_features": features,
        }
        if refused:
            info["refused"] = [f"{a!r}: {why}" for a, why in refused]
        return self._observe(frame), reward, False, truncated, info

    # ------------------------------------------------------------------ render
    def render(self) -> Any:
        """The episode so far, as ``render_mode`` says.

        ``"ansi"``: a text table with one row per service (replicas ready/desired, CPU
        utilisation, requests/s, p99 latency, error rate) under the simulated time.
        ``"rgb_array"``: the run's timeline figure so far (:func:`envs.sim.plots.plot_timeline`:
        latency, traffic, replicas with the actions, cost) as an ``(H, W, 3)`` ``uint8`` array.
        ``None``: nothing.
        """
        if self.render_mode is None:
            return None
        frame = self.frame
        if self.render_mode == "ansi":
            return render_table(frame)
        return self._render_timeline()

    def _render_timeline(self) -> np.ndarray:
        import tempfile

        import matplotlib.image as mpimg

        from envs.sim.plots import plot_timeline

        scenario = self._sim.scenario
        with tempfile.TemporaryDirectory() as tmp:
            path = plot_timeline(
                self._history, scenario, Path(tmp) / "timeline.png", actions=self._applied
            )
            image = mpimg.imread(path)
        rgb = image[..., :3]
        if rgb.dtype != np.uint8:
            rgb = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(rgb)

    @property
    def _trusted_ready(self) -> TrustedReady:
        if self._ready is None:
            raise RuntimeError("call reset() before step()")
        return self._ready

    # ------------------------------------------------------------------ reward
    def _reward(self, disruptive: int) -> tuple[float, dict[str, float]]:
        eng = self._sim.engine
        dt = self._sim.scenario.decision_interval_s
        viol = eng.violation_s
        n_slo = max(int(self._slo_mask.sum()), 1)
        slo = float(np.sum((viol - self._last_viol)[self._slo_mask])) / (dt * n_slo)
        self._last_viol = viol.copy()
        cost_total = eng.cp.allocated_cost()
        cost = (cost_total - self._last_cost) / (self._base_cost_rate * dt / 3600.0)
        self._last_cost = cost_total
        w = self.weights
        parts = {
            "slo_violation": slo,
            "cost": cost,
            "disruption": float(disruptive),
        }
        reward = -(w.slo * slo + w.cost * cost + w.disruption * disruptive)
        return float(reward), parts

    def _observe(self, frame: Telemetry) -> Any:
        if self.obs_kind == "box":
            return self.encoder.encode(frame)
        return self.encoder.encode_dict(frame)


_SPEC_COMMON = """
    ## Observation Space

    Built by :class:`envs.gym.encoder.ObsEncoder` from the last telemetry frame of the step.
    With ``obs="box"`` (default) a ``Box(-100, 100, (2*(S*F + C) + 4,), float32)`` laid out
    as ``[values (S*F), cluster (C), time (4), mask (S*F + C)]``; with ``obs="dict"`` a
    ``Dict`` of ``service_values (S, F)``, ``mask (S, F)``, ``cluster (C,)``, ``cluster_mask (C,)``,
    ``time (4,)``. ``S`` is the number of services (topology order), ``F = 14`` per-service
    and ``C = 5`` cluster features:

    | index | name | unit (before symlog) | min | max |
    |---|---|---|---|---|
    | f0 | rps | attempts / s | 0 | inf |
    | f1 | error_rate | fraction | 0 | 1 |
    | f2 | p50 | s | 0 | inf |
    | f3 | p99 | s | 0 | inf |
    | f4 | cpu_util | usage / request | 0 | inf |
    | f5 | memory_usage_mb | MB | 0 | inf |
    | f6 | replicas_desired | pods | 0 | inf |
    | f7 | replicas_ready | pods | 0 | inf |
    | f8 | replicas_starting | pods | 0 | inf |
    | f9 | replicas_pending | pods | 0 | inf |
    | f10 | restarts | cumulative count | 0 | inf |
    | f11 | oom_kills | cumulative count | 0 | inf |
    | f12 | backlog | attempts | 0 | inf |
    | f13 | deploy_version | integer | 0 | inf |
    | c0 | nodes_ready | nodes | 0 | inf |
    | c1 | nodes_provisioning | nodes | 0 | inf |
    | c2 | pods_unschedulable | pods | 0 | inf |
    | c3 | cost_rate_per_hour | currency / h | 0 | inf |
    | c4 | shed_fraction | fraction | 0 | 1 |
    | t0-t3 | day_sin, day_cos, week_sin, week_cos | - | -1 | 1 |

    Values pass through ``symlog``. A missing value (telemetry gap, a service with no
    ready pod, the first frame's rates) is 0 with mask 0; observed values have mask 1.

    ## Rewards

    Per step of ``decision_interval_s`` seconds, a sum of penalties (components in
    ``info["reward_components"]``)::

        r = -(w_slo * slo_violation + w_cost * cost + w_disruption * disruption)

    * ``slo_violation``: seconds of SLO violation in the step over all services with an SLO,
      divided by the step length and their number (0 = all SLOs met, 1 = all broken);
    * ``cost``: spend attributed to the pods in the step (their CPU requests at the node's
      price per core, as FinOps tools allocate a bill) over that of the initial pods in the
      same time (1 = as many pods as at the start, 2 = twice as many cores). The node bill
      itself does not move when pods scale within fixed nodes, so it would make
      over-provisioning free; an agent trained on it learned to scale everything to its
      maximum;
    * ``disruption``: number of disruptive actions applied in the step, as the scorer counts
      them (:func:`envs.core.actions.is_disruptive`): restart, rollback, drain, shedding > 0,
      and a scale-down below the service's ready replicas (from the latest trustworthy
      frame, :class:`envs.scenarios.scoring.TrustedReady`).

    Defaults ``w_slo = 1``, ``w_cost = 0.2``, ``w_disruption = 0.05``
    (:class:`RewardWeights`). SLO violation and cost come from the ground truth, never from
    degraded telemetry.

    ## Starting State

    ``reset(seed=...)`` draws a scenario from ``scenario`` (uniformly; or
    ``options={"scenario": i}``) and a simulator seed from the env's generator, and returns
    the frame at t = 0 (rates unknown: masked).

    ## Episode End

    * Termination: never (a cluster has no terminal state); ``terminated`` is always False.
    * Truncation: at the scenario's horizon (``horizon_s / decision_interval_s`` steps; the
      registered ``max_episode_steps`` is 240, one hour of the default scenario).

    ## Arguments

    * ``scenario``: built-in name, YAML path, :class:`Scenario`, or a list of them sharing one
      topology (default ``"boutique"``).
    * ``fidelity``: ``"fluid"`` (default) or ``"request"``.
    * ``obs``: ``"box"`` (default) or ``"dict"``.
    * ``reward_weights``: :class:`RewardWeights` or a dict of its fields.
    * ``scenario_overrides``: dotted-key overrides applied to named scenarios.

    ## Version History

    * v0: first version. Since the action codec (issue 10): actions decode under a
      telemetry-only :class:`~envs.gym.codec.ControlBelief`, an action the cluster refuses
      is dropped (``info["refused"]``), and ``disruption`` counts scale-downs below the
      ready replicas (the scorer's definition).
"""


class AutoscaleEnv(ClusterEnv):
    """Scale every service of a microservice cluster.

    ## Description

    A simulated Kubernetes cluster of microservices (``envs/sim``) serves traffic that may
    carry incidents. Every ``decision_interval_s`` (15 s by default) the agent sees the
    latest telemetry and changes each service's replica count; the episode rewards meeting
    the SLOs cheaply.

    ## Action Space

    ``MultiDiscrete([5] * S)``: one entry per service (topology order); entry ``k`` asks for
    ``SCALE_DELTAS[k] = (-2, -1, 0, +1, +2)[k]`` replicas relative to the current desired
    count, clamped to the service's ``[min, max]``. New pods become ready after their
    start-up time; a scale request reaches the cluster after ``actuation_delay_s``.
    """

    layout = "autoscale"


class RemediateEnv(ClusterEnv):
    """Remediate incidents in a microservice cluster, one action per step.

    ## Description

    As :class:`AutoscaleEnv`, but each step the agent picks one remediation (or nothing),
    as an on-call engineer would. Replica counts otherwise stay where the scenario or
    earlier actions put them.

    ## Action Space

    ``Discrete(1 + 3*S + 3 + N)`` where ``N`` is the initial node count:

    | index | action |
    |---|---|
    | 0 | no-op |
    | 1 + 3*s | restart service ``s`` (rolling) |
    | 2 + 3*s | roll back service ``s`` (masked when it has no previous version) |
    | 3 + 3*s | scale service ``s`` up by one replica (masked at its max) |
    | 1 + 3*S + j | shed ``(0, 0.25, 0.5)[j]`` of external traffic (masked at the level in force) |
    | 4 + 3*S + n | drain node ``n`` (masked unless ready) |

    ``action_masks()`` returns the valid actions for sb3-contrib's ``MaskablePPO``; an
    action that is masked out is still accepted and becomes a no-op.
    """

    layout = "remediate"


class ClusterOpsEnv(ClusterEnv):
    """Scale every service and remediate incidents, together.

    ## Description

    The union of :class:`AutoscaleEnv` and :class:`RemediateEnv`: each step sets every
    service's replica delta and picks one remediation.

    ## Action Space

    ``MultiDiscrete([5] * S + [R])`` with ``R = 1 + 3*S + 3 + N``: the first ``S`` entries
    are :class:`AutoscaleEnv`'s deltas, the last :class:`RemediateEnv`'s index. When both
    touch the same service's replicas the remediation's scale-up wins.
    ``action_masks()`` concatenates the per-dimension masks (MaskablePPO's MultiDiscrete
    layout).
    """

    layout = "cluster_ops"


class HPATuneEnv(ClusterEnv):
    """Tune every service's Horizontal Pod Autoscaler and remediate incidents.

    ## Description

    As :class:`ClusterOpsEnv`, but the replicas stay under a real Kubernetes HPA run by the
    simulated control plane (``autoscaling.hpa``: :class:`envs.kube.hpa.HPAController`,
    ``autoscaling/v2``, CPU utilisation, synced every 15 s from the scraped telemetry) and
    the agent sets each HPA's CPU target with ``SetHPATarget`` instead of the replica
    count, as an SRE team would let a learned controller tune the autoscaler rather than
    replace it. The env enables the HPA on its scenarios (a scenario that has its own
    ``autoscaling.hpa`` keeps it) with the tuned HPA's settings
    (``configs/policy/tuned_hpa.yaml``: Kubernetes' defaults with the tuned scale-down
    stabilisation window, 60 s, target 50 %) and the scenario's replica bounds. The HPA's
    state (recommendation history, scale events, targets in force) lives in the control
    plane and restarts with the episode. A new target is applied after the actuation delay
    and used from the HPA's next sync on. Choosing 50 % everywhere and no remediation is
    exactly the tuned HPA (``policy=tuned_hpa``).

    ## Action Space

    ``MultiDiscrete([5] * S + [R])`` with ``R = 1 + 3*S + 3 + N``: entry ``s < S`` sets
    service ``s``'s CPU target to ``HPA_TARGETS[k] = (30, 40, 50, 60, 70)[k]`` percent
    (a lower target scales out earlier; a ``SetHPATarget`` is issued only when the choice
    differs from the target in force); the last entry is :class:`RemediateEnv`'s index,
    with its masks. A remediation scale-up sets the replicas at once; the HPA then
    reconciles from that count. ``action_masks()`` concatenates the per-dimension masks
    (targets always valid).

    ``info["action_features"]`` encodes the agent's *choice*, ``onehot(action) @
    action_feature_matrix()``: slot ``3*s`` (otherwise the replica delta) holds
    ``(50 - target) / 20`` (+1 at 30 %, -1 at 70 %), the remediation part is
    :class:`ClusterOpsEnv`'s. ``info["hpa_targets"]`` lists the targets chosen.
    ``step_actions`` applies a baseline's actions as they are (the HPA keeps running).
    """

    layout = "hpa_tune"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hpa_config = load_settings().hpa_config()  # read once, not at every reset
        self.scenarios = [with_hpa(sc, self.hpa_config) for sc in self.scenarios]

    def targets(self, action: Any) -> dict[str, int]:
        """The CPU target (percent) per service that ``action`` chooses."""
        return self.codec.targets(action)

    def decide(self, action: Any, belief: ControlBelief) -> list[Action]:
        """``action`` -> typed actions under ``belief``: changed targets, then remediation."""
        return self.codec.decode(action, belief)

    def decode(self, action: Any) -> list[Action]:
        """What ``action`` would do now."""
        return self.decide(action, self.belief)

    def choice_features(self, action: Any) -> np.ndarray:
        """``onehot(action) @ action_feature_matrix()``: the features of the choice."""
        return self.codec.choice_features(action)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Set the chosen targets, remediate, and run to the next decision.

        Raises:
            ValueError: ``action`` is not in ``action_space`` (:meth:`check_action`).
        """
        self.check_action(action)
        actions = self.decide(action, self.belief)
        obs, reward, terminated, truncated, info = self.step_actions(actions)
        info["action_features"] = self.choice_features(action)
        info["hpa_targets"] = list(self.targets(action).values())
        return obs, reward, terminated, truncated, info


def render_table(frame: Telemetry) -> str:
    """A per-service text table of ``frame`` (what ``render_mode="ansi"`` shows)."""

    def num(x: float, fmt: str) -> str:
        return "-" if not np.isfinite(x) else format(x, fmt)

    width = max(7, *(len(s) for s in frame.services))
    head = (
        f"{'service':<{width}}  {'ready/desired':>13}  {'cpu':>5}  {'rps':>8}  "
        f"{'p99 ms':>8}  {'errors':>6}"
    )
    lines = [f"t={frame.t:.0f}s", head, "-" * len(head)]
    for i, name in enumerate(frame.services):
        ready = frame["replicas_ready"][i]
        desired = frame["replicas_desired"][i]
        pods = f"{num(ready, '.0f')}/{num(desired, '.0f')}"
        lines.append(
            f"{name:<{width}}  {pods:>13}  {num(100 * frame['cpu_util'][i], '.0f') + '%':>5}  "
            f"{num(frame['rps'][i], '.1f'):>8}  {num(1000 * frame['p99'][i], '.1f'):>8}  "
            f"{num(100 * frame['error_rate'][i], '.1f') + '%':>6}"
        )
    return "\n".join(lines) + "\n"


def with_hpa(scenario: Scenario, config: HPAConfig) -> Scenario:
    """``scenario`` with its control plane running the HPA ``config`` (kept if it has one)."""
    if scenario.autoscaling.hpa is not None:
        return scenario
    return scenario.model_copy(update={"autoscaling": Autoscaling(hpa=config)})


for _env in (AutoscaleEnv, RemediateEnv, ClusterOpsEnv, HPATuneEnv):
    _env.__doc__ = (_env.__doc__ or "").rstrip() + "\n" + _SPEC_COMMON
