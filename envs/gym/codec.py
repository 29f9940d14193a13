"""From an element of an env's action space to typed actions, on telemetry alone.

Two pieces, shared by the environments, :class:`agents.sb3.policy.SB3Policy` and
:class:`agents.dreamer.policy.DreamerPolicy` (and, next, the server and shadow mode):

* :class:`ControlBelief`: what a controller can know of the cluster it controls, updated only
  from :class:`~envs.core.telemetry.Telemetry` frames (:meth:`ControlBelief.observe`) and
  the controller's own actions (:meth:`ControlBelief.after`): desired and ready replicas,
  deploy versions (so whether a rollback is possible), the shed level in force, the nodes it
  may drain and when it last acted on each service (cooldowns);
* :class:`ActionCodec`: one action layout (``autoscale``, ``remediate``, ``cluster_ops``,
  ``hpa_tune``; see the env docstrings in :mod:`envs.gym.envs`): its Gymnasium space, its
  action masks under a belief, the decoding of a choice into typed actions, and the linear
  map from a choice to :class:`~envs.gym.encoder.ActionEncoder` features.

Neither reads the simulator; this module does not import :mod:`envs.sim`.

**How exact it is.** The belief reproduces the control plane's state at a decision point
whenever the frame decided on is complete and fresh (the usual case: the frame is scraped
at the decision time, so its ``replicas_desired``, ``deploy_version`` and ``shed_fraction``
are the control plane's at that instant; a rollback is possible iff ``deploy_version > 0``,
since version 0 is at the bottom of every rollout history). Where telemetry cannot say, it
falls back as follows, and the env lets the world refuse what the belief wrongly allows
(:meth:`envs.sim.simulator.Simulator.admissible`: a refused action is not applied and not
counted, as a masked one was before):

* a missing gauge (telemetry gap, vanished service) keeps the last observed value, moved by
  the controller's own actions (``Scale`` sets the desired count, ``ShedLoad`` the level);
  a change made by someone else inside the gap (a misconfiguration scaling a service to 0)
  is seen only when telemetry returns;
* after its own ``Rollback`` the version is unknown until a frame shows it, and rollback is
  masked meanwhile; a deploy inside a gap is unknown too (rollback stays masked);
* delayed telemetry (a ``delay`` fault) shows values that are several scrapes old; the
  belief cannot tell, so it decodes relative to them (the control plane had moved on);
* nodes: telemetry counts ready nodes but does not say *which*. Node ``n`` is drainable iff
  ``n`` is one of the nodes at start (``n < min(n_nodes, nodes_ready at t = 0)``) and the
  controller has not drained it itself. A node that failed or that the cluster autoscaler
  removed still looks drainable; the simulator refuses that drain. Policies therefore keep
  drains masked unless ``allow_drain`` (see :class:`ActionCodec`);
* timing: the own actions move the belief at once, the cluster after
  ``actuation_delay_s`` (2 s by default, well inside a 15 s decision interval). With a delay
  longer than the decision interval, the next frame still shows the old desired count
  (observed values win), and a drained node counts as drained before it is cordoned.

Measured on the train suite (20 minutes per entry, ClusterOps, random actions; 2,400
decisions): the belief differed from the control plane at 3 decisions in the telemetry-delay
entry (desired replicas) and 102 in the two node-failure entries (the failed node still
looks drainable), nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.core.actions import Action, DrainNode, Restart, Rollback, Scale, ShedLoad
from envs.core.spec import ActionSpaceSpec, ControlSpec
from envs.core.telemetry import Telemetry
from envs.gym.encoder import ActionEncoder, symlog_scalar
from envs.scenarios.schema import Scenario

SCALE_DELTAS: tuple[int, ...] = (-2, -1, 0, 1, 2)
"""Replica changes a scaling dimension can ask for (index 2 = keep)."""
SERVICE_REMEDIATIONS: tuple[str, ...] = ("restart", "rollback", "scale_up")
SHED_LEVELS: tuple[float, ...] = (0.0, 0.25, 0.5)
HPA_TARGETS: tuple[int, ...] = (30, 40, 50, 60, 70)
"""CPU utilisation targets (percent) an ``hpa_tune`` dimension picks from (index 2 = 50 %,
the tuned HPA's)."""
LAYOUTS: tuple[str, ...] = ("autoscale", "remediate", "cluster_ops", "hpa_tune")
"""The action layouts, one per environment."""


def control_spec(scenario: Scenario) -> ControlSpec:
    """What a controller of ``scenario``'s cluster is configured with (no live state)."""
    svc = scenario.topology.services
    return ControlSpec(
        services=tuple(scenario.service_names),
        replicas_min=tuple(s.replicas.min for s in svc),
        replicas_max=tuple(s.replicas.max for s in svc),
        replicas_initial=tuple(s.replicas.initial for s in svc),
        n_nodes=scenario.cluster.nodes,
        actuation_delay_s=scenario.actuation_delay_s,
    )


@dataclass(frozen=True)
class ControlBelief:
    """What a controller knows of the cluster it controls; see the module docstring.

    Attributes:
        t: Time of the last frame observed, seconds (NaN before any).
        desired: ``(S,)`` desired replicas per service.
        ready: ``(S,)`` ready replicas per service as last observed.
        deploy_version: ``(S,)`` deploy version per service (NaN: unknown).
        shed_fraction: Share of external traffic shed at the ingress.
        nodes_at_start: Nodes ready in the first frame (NaN before it).
        drained: Nodes this controller drained.
        last_action_t: ``(S,)`` when this controller last acted on each service (its
            cooldown clock; ``-inf``: never).
    """

    t: float
    desired: tuple[int, ...]
    ready: tuple[float, ...]
    deploy_version: tuple[float, ...]
    shed_fraction: float
    nodes_at_start: float
    drained: frozenset[int]
    last_action_t: tuple[float, ...]

    @classmethod
    def initial(cls, spec: ControlSpec) -> ControlBelief:
        """Before any frame: the configured initial replicas, version 0, no shedding."""
        n = len(spec.services)
        return cls(
            t=math.nan,
            desired=tuple(int(r) for r in spec.replicas_initial),
            ready=tuple(float(r) for r in spec.replicas_initial),
            deploy_version=(0.0,) * n,
            shed_fraction=0.0,
            nodes_at_start=math.nan,
            drained=frozenset(),
            last_action_t=(-math.inf,) * n,
        )

    def observe(self, frame: Telemetry) -> ControlBelief:
        """The belief after seeing ``frame``: observed values replace, missing ones keep."""

        def merge(col: np.ndarray, old: tuple[float, ...]) -> tuple[float, ...]:
            return tuple(
                o if math.isnan(v) else float(v) for v, o in zip(col.tolist(), old, strict=True)
            )

        desired = tuple(
            o if math.isnan(v) else round(v)
            for v, o in zip(frame["replicas_desired"].tolist(), self.desired, strict=True)
        )
        shed = frame.cluster_value("shed_fraction")
        nodes_at_start = self.nodes_at_start
        if math.isnan(nodes_at_start):
            nodes_at_start = frame.cluster_value("nodes_ready")
        return replace(
            self,
            t=float(frame.t),
            desired=desired,
            ready=merge(frame["replicas_ready"], self.ready),
            deploy_version=merge(frame["deploy_version"], self.deploy_version),
            shed_fraction=self.shed_fraction if math.isnan(shed) else shed,
            nodes_at_start=nodes_at_start,
        )

    def after(self, actions: Sequence[Action], services: Sequence[str]) -> ControlBelief:
        """The belief once the controller's own ``actions`` (taken at :attr:`t`) act."""
        desired = list(self.desired)
        version = list(self.deploy_version)
        last = list(self.last_action_t)
        shed = self.shed_fraction
        drained = set(self.drained)
        for a in actions:
            if isinstance(a, Scale | Restart | Rollback):
                s = services.index(a.service)
                last[s] = self.t
                if isinstance(a, Scale):
                    desired[s] = a.replicas
                elif isinstance(a, Rollback):
                    version[s] = math.nan  # the previous version is not in telemetry
            elif isinstance(a, ShedLoad):
                shed = a.fraction
            elif isinstance(a, DrainNode):
                drained.add(a.node)
        return replace(
            self,
            desired=tuple(desired),
            deploy_version=tuple(version),
            shed_fraction=shed,
            drained=frozenset(drained),
            last_action_t=tuple(last),
        )

    def can_rollback(self, s: int) -> bool:
        """Whether service ``s`` has a previous version (its version is known and > 0)."""
        return self.deploy_version[s] > 0  # NaN > 0 is False

    def drainable(self, node: int, n_nodes: int) -> bool:
        """Whether node ``node`` (of the ``n_nodes`` at start) is believed ready to drain."""
        start = n_nodes if math.isnan(self.nodes_at_start) else int(self.nodes_at_start)
        return node < min(n_nodes, start) and node not in self.drained


class ActionCodec:
    """One action layout: its space, masks and decoding; see the module docstring.

    Args:
        layout: One of :data:`LAYOUTS`.
        spec: The controlled cluster's :class:`~envs.core.spec.ControlSpec` (bounds, nodes).
        allow_drain: Whether ``drain node`` choices may be valid at all. The env allows them
            (the simulator refuses a drain of a node that is gone); policies keep them off by
            default, since telemetry does not say which nodes are ready.
    """

    def __init__(self, layout: str, spec: ControlSpec, allow_drain: bool = True) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
        self.layout = layout
        self.spec = spec
        self.allow_drain = allow_drain
        self.services = spec.services
        self.n_nodes = spec.n_nodes
        self.action_encoder = ActionEncoder(self.services)
        s = len(self.services)
        if layout == "autoscale":
            nvec = [len(SCALE_DELTAS)] * s
        elif layout == "remediate":
            nvec = [self.n_remediations]
        elif layout == "cluster_ops":
            nvec = [len(SCALE_DELTAS)] * s + [self.n_remediations]
        else:
            nvec = [len(HPA_TARGETS)] * s + [self.n_remediations]
        self.nvec = tuple(nvec)
        self._offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]]).astype(np.int64)
        self._matrix = self.feature_matrix()

    # ------------------------------------------------------------------ spaces
    @property
    def space_spec(self) -> ActionSpaceSpec:
        """The layout as plain data (what a bundle records)."""
        return ActionSpaceSpec(self.layout, self.nvec, discrete=self.layout == "remediate")

    def action_space(self) -> spaces.Space[Any]:
        """The Gymnasium space of this layout (a new object per call)."""
        if self.layout == "remediate":
            return spaces.Discrete(self.n_remediations)
        return spaces.MultiDiscrete(list(self.nvec))

    @property
    def n_remediations(self) -> int:
        """Size of the remediation choice (no-op included)."""
        return 1 + len(SERVICE_REMEDIATIONS) * len(self.services) + len(SHED_LEVELS) + self.n_nodes

    @property
    def has_remediation(self) -> bool:
        """Whether the layout's last dimension is a remediation."""
        return self.layout != "autoscale"

    # ------------------------------------------------------------------ masks
    def remediation_mask(self, belief: ControlBelief) -> np.ndarray:
        """Valid remediation indices under ``belief`` (True = valid)."""
        mask = np.ones(self.n_remediations, dtype=bool)
        for svc in range(len(self.services)):
            base = 1 + svc * len(SERVICE_REMEDIATIONS)
            mask[base + 1] = belief.can_rollback(svc)
            mask[base + 2] = belief.desired[svc] < self.spec.replicas_max[svc]
        base = 1 + len(SERVICE_REMEDIATIONS) * len(self.services)
        for j, level in enumerate(SHED_LEVELS):
            mask[base + j] = abs(level - belief.shed_fraction) > 1e-9
        base += len(SHED_LEVELS)
        for node in range(self.n_nodes):
            mask[base + node] = self.allow_drain and belief.drainable(node, self.n_nodes)
        return mask

    def masks(self, belief: ControlBelief) -> np.ndarray:
        """Valid choices, flat as sb3-contrib's MaskablePPO reads them (True = valid).

        The free dimensions (deltas, targets) are always valid; a remediation dimension
        comes last with :meth:`remediation_mask`.
        """
        if self.layout == "remediate":
            return self.remediation_mask(belief)
        n_free = int(sum(self.nvec[:-1]) if self.has_remediation else sum(self.nvec))
        free = np.ones(n_free, dtype=bool)
        if not self.has_remediation:
            return free
        return np.concatenate([free, self.remediation_mask(belief)])

    def remediation_index(self, action: Any) -> int:
        """The remediation index of ``action`` (layouts with a remediation)."""
        if self.layout == "remediate":
            return int(action)
        return int(np.asarray(action)[-1])

    def masked_out(self, action: Any, masks: np.ndarray) -> bool:
        """Whether ``action`` chose a remediation that ``masks`` rules out (a no-op then).

        ``masks`` is :meth:`masks` at the time of the choice.
        """
        if not self.has_remediation:
            return False
        return not bool(masks[-self.n_remediations :][self.remediation_index(action)])

    # ------------------------------------------------------------------ decoding
    def scaling(self, deltas: np.ndarray, belief: ControlBelief) -> list[Action]:
        """Per-service replica deltas -> Scale actions, clamped to the bounds."""
        out: list[Action] = []
        for i, k in enumerate(deltas):
            delta = SCALE_DELTAS[int(k)]
            if delta == 0:
                continue
            lo, hi = self.spec.replicas_min[i], self.spec.replicas_max[i]
            target = min(max(belief.desired[i] + delta, lo), hi)
            if target != belief.desired[i]:
                out.append(Scale(self.services[i], target))
        return out

    def remediation(self, k: int, belief: ControlBelief) -> list[Action]:
        """Remediation index ``k`` -> at most one action (no mask applied)."""
        if k == 0:
            return []
        k -= 1
        n_svc = len(SERVICE_REMEDIATIONS) * len(self.services)
        if k < n_svc:
            svc, what = divmod(k, len(SERVICE_REMEDIATIONS))
            name = self.services[svc]
            kind = SERVICE_REMEDIATIONS[what]
            if kind == "restart":
                return [Restart(name)]
            if kind == "rollback":
                return [Rollback(name)]
            return [Scale(name, min(belief.desired[svc] + 1, self.spec.replicas_max[svc]))]
        k -= n_svc
        if k < len(SHED_LEVELS):
            return [ShedLoad(SHED_LEVELS[k])]
        return [DrainNode(k - len(SHED_LEVELS))]

    def with_remediation(
        self, scaling: Sequence[Action], k: int, belief: ControlBelief
    ) -> list[Action]:
        """``scaling`` plus remediation ``k`` (nothing if masked under ``belief``).

        A remediation's scale-up of a service replaces that service's Scale in ``scaling``.
        """
        extra = self.remediation(k, belief) if self.remediation_mask(belief)[k] else []
        touched = {x.service for x in extra if isinstance(x, Scale)}
        kept = [x for x in scaling if not (isinstance(x, Scale) and x.service in touched)]
        return kept + extra

    def targets(self, action: Any) -> dict[str, int]:
        """The HPA CPU target (percent) per service that an ``hpa_tune`` ``action`` picks."""
        if self.layout != "hpa_tune":
            raise ValueError(f"targets: layout {self.layout!r} has no HPA targets")
        a = np.asarray(action)
        return {name: HPA_TARGETS[int(k)] for name, k in zip(self.services, a[:-1], strict=True)}

    def decode(
        self, action: Any, belief: ControlBelief, scaling: Sequence[Action] = ()
    ) -> list[Action]:
        """An element of :meth:`action_space` -> typed actions under ``belief``.

        ``autoscale``: the deltas' Scale actions. ``remediate``: the remediation (nothing if
        masked). ``cluster_ops``: the deltas, then the remediation (its scale-up of a
        service replaces that service's Scale). ``hpa_tune``: ``scaling`` (the HPA's Scale
        actions under :meth:`targets`, computed by the caller), then the remediation.
        """
        if self.layout == "autoscale":
            return self.scaling(np.asarray(action), belief)
        if self.layout == "remediate":
            k = int(action)
            return self.remediation(k, belief) if self.remediation_mask(belief)[k] else []
        a = np.asarray(action)
        base = self.scaling(a[:-1], belief) if self.layout == "cluster_ops" else list(scaling)
        return self.with_remediation(base, int(a[-1]), belief)

    # ------------------------------------------------------------------ features
    def _scaling_matrix(self) -> np.ndarray:
        s, n = len(self.services), len(SCALE_DELTAS)
        m = np.zeros((s * n, self.action_encoder.size), dtype=np.float32)
        for i in range(s):
            for k, d in enumerate(SCALE_DELTAS):
                m[i * n + k, 3 * i] = symlog_scalar(d)
        return m

    def _remediation_matrix(self) -> np.ndarray:
        s, r = len(self.services), len(SERVICE_REMEDIATIONS)
        m = np.zeros((self.n_remediations, self.action_encoder.size), dtype=np.float32)
        for svc in range(s):
            base = 1 + svc * r
            m[base + 0, 3 * svc + 1] = 1.0  # restart
            m[base + 1, 3 * svc + 2] = 1.0  # rollback
            m[base + 2, 3 * svc] = symlog_scalar(1.0)  # scale up by one
        base = 1 + r * s
        for j, level in enumerate(SHED_LEVELS):
            m[base + j, -3] = 1.0
            m[base + j, -2] = level
        m[base + len(SHED_LEVELS) :, -1] = 1.0
        return m

    def _target_matrix(self) -> np.ndarray:
        s, n = len(self.services), len(HPA_TARGETS)
        m = np.zeros((s * n, self.action_encoder.size), dtype=np.float32)
        for i in range(s):
            for k, target in enumerate(HPA_TARGETS):
                m[i * n + k, 3 * i] = (50.0 - target) / 20.0
        return m

    def feature_matrix(self) -> np.ndarray:
        """``M`` with ``onehot(action) @ M`` = the action's :class:`ActionEncoder` features.

        Clamps and masks are ignored (they need the belief). ``onehot`` concatenates one
        one-hot per action dimension (MultiDiscrete) or is one one-hot (Discrete). A world
        model imagines with this linear map. For ``hpa_tune``, slot ``3*s`` (otherwise the
        replica delta) holds ``(50 - target) / 20``.
        """
        if self.layout == "autoscale":
            return self._scaling_matrix()
        if self.layout == "remediate":
            return self._remediation_matrix()
        head = self._scaling_matrix() if self.layout == "cluster_ops" else self._target_matrix()
        return np.concatenate([head, self._remediation_matrix()])

    def choice_features(self, action: Any) -> np.ndarray:
        """``onehot(action) @ feature_matrix()``: the features of the choice itself."""
        a = np.asarray(action, dtype=np.int64).reshape(-1)
        onehot = np.zeros(len(self._matrix), dtype=np.float32)
        onehot[self._offsets + a] = 1.0
        return (onehot @ self._matrix).astype(np.float32)
