"""ObsEncoder: the one function from a Telemetry frame to arrays.

The environments, the policy server and the shadow runner all encode through this module,
and a policy bundle records :meth:`ObsEncoder.spec`, so training and serving cannot
disagree. Encoding is a pure function of one frame:

* per-service gauges (:data:`SERVICE_FEATURES`) and cluster gauges (:data:`CLUSTER_FEATURES`)
  in raw units go through ``symlog(x) = sign(x) log(1 + |x|)`` (DreamerV3's squashing);
* a missing value (NaN) becomes 0 **and** its mask entry 0; observed values have mask 1, so
  a policy can always tell "zero" from "unknown";
* time of day and of week as sine/cosine pairs.

The flat (``Box``) layout is ``[values (S*F), cluster (C), time (4), mask (S*F + C)]``; the
``Dict`` layout has ``service_values (S, F)``, ``mask (S, F)``, ``cluster (C,)``, ``cluster_mask
(C,)`` and ``time (4,)`` (not ``values``: SB3's ``MultiInputPolicy`` keeps one extractor
per key in a ``torch.nn.ModuleDict``, where that name clashes with ``ModuleDict.values``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.core.actions import DrainNode, Restart, Rollback, Scale, ShedLoad
from envs.core.telemetry import CLUSTER_INDEX, FIELD_INDEX, Telemetry

SERVICE_FEATURES: tuple[str, ...] = (
    "rps",
    "error_rate",
    "p50",
    "p99",
    "cpu_util",
    "memory_usage_mb",
    "replicas_desired",
    "replicas_ready",
    "replicas_starting",
    "replicas_pending",
    "restarts",
    "oom_kills",
    "backlog",
    "deploy_version",
)
CLUSTER_FEATURES: tuple[str, ...] = (
    "nodes_ready",
    "nodes_provisioning",
    "pods_unschedulable",
    "cost_rate_per_hour",
    "shed_fraction",
)
TIME_FEATURES: tuple[str, ...] = ("day_sin", "day_cos", "week_sin", "week_cos")
ENCODER_VERSION = 1
BOUND = 100.0
"""Encoded values are clipped to [-BOUND, BOUND] (symlog(1e43) ~ 99)."""


def symlog(x: np.ndarray) -> np.ndarray:
    """``sign(x) * log(1 + |x|)``."""
    return np.sign(x) * np.log1p(np.abs(x))


def symexp(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`symlog`."""
    return np.sign(x) * np.expm1(np.abs(x))


@dataclass(frozen=True)
class ObsEncoder:
    """Encodes frames of one cluster (fixed service order) into float32 arrays.

    Args:
        services: Service names, in the order the frames carry them.
        service_features: Per-service gauges to encode.
        cluster_features: Cluster gauges to encode.
    """

    services: tuple[str, ...]
    service_features: tuple[str, ...] = SERVICE_FEATURES
    cluster_features: tuple[str, ...] = CLUSTER_FEATURES
    _cols: np.ndarray = field(init=False, repr=False, compare=False)
    _ccols: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = [f for f in self.service_features if f not in FIELD_INDEX]
        unknown += [f for f in self.cluster_features if f not in CLUSTER_INDEX]
        if unknown:
            raise ValueError(f"ObsEncoder: unknown telemetry fields {unknown}")
        object.__setattr__(self, "_cols", np.array([FIELD_INDEX[f] for f in self.service_features]))
        object.__setattr__(
            self, "_ccols", np.array([CLUSTER_INDEX[f] for f in self.cluster_features])
        )

    @property
    def n_services(self) -> int:
        """Number of services S."""
        return len(self.services)

    @property
    def size(self) -> int:
        """Length of the flat observation."""
        s, f, c = self.n_services, len(self.service_features), len(self.cluster_features)
        return 2 * (s * f + c) + len(TIME_FEATURES)

    def spec(self) -> dict[str, Any]:
        """A JSON-able description that a bundle stores and a server checks."""
        return {
            "version": ENCODER_VERSION,
            "services": list(self.services),
            "service_features": list(self.service_features),
            "cluster_features": list(self.cluster_features),
            "time_features": list(TIME_FEATURES),
            "transform": "symlog",
            "layout": "values, cluster, time, mask",
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ObsEncoder:
        """Rebuild an encoder from :meth:`spec`; refuses another version."""
        if spec.get("version") != ENCODER_VERSION:
            raise ValueError(
                f"encoder spec version {spec.get('version')!r} != {ENCODER_VERSION}; "
                "re-export the policy with this opsworld version"
            )
        return cls(
            tuple(spec["services"]),
            tuple(spec["service_features"]),
            tuple(spec["cluster_features"]),
        )

    def _check(self, frame: Telemetry) -> None:
        if frame.services != self.services:
            raise ValueError(
                f"frame services {list(frame.services)} differ from the encoder's "
                f"{list(self.services)}"
            )

    def encode_dict(self, frame: Telemetry) -> dict[str, np.ndarray]:
        """The ``Dict`` layout (see the module docstring)."""
        self._check(frame)
        raw = frame.values[:, self._cols]
        mask = ~np.isnan(raw)
        craw = frame.cluster[self._ccols]
        cmask = ~np.isnan(craw)
        vals = np.clip(symlog(np.nan_to_num(raw)), -BOUND, BOUND)
        cvals = np.clip(symlog(np.nan_to_num(craw)), -BOUND, BOUND)
        return {
            "service_values": np.where(mask, vals, 0.0).astype(np.float32),
            "mask": mask.astype(np.float32),
            "cluster": np.where(cmask, cvals, 0.0).astype(np.float32),
            "cluster_mask": cmask.astype(np.float32),
            "time": time_features(frame.t),
        }

    def encode(self, frame: Telemetry) -> np.ndarray:
        """The flat layout, shape ``(size,)``, float32."""
        d = self.encode_dict(frame)
        out = np.concatenate(
            [
                d["service_values"].ravel(),
                d["cluster"],
                d["time"],
                d["mask"].ravel(),
                d["cluster_mask"],
            ]
        )
        assert out.shape == (self.size,), (out.shape, self.size)
        return out


def observation_space(encoder: ObsEncoder, kind: str = "box") -> spaces.Space[Any]:
    """The Gymnasium space of ``encoder``'s output: ``"box"`` (flat) or ``"dict"``.

    The environments and the policy adapters build their observation space here, so a
    policy checks a saved model against the space without building an env.
    """
    s, f, c = encoder.n_services, len(encoder.service_features), len(encoder.cluster_features)
    big = BOUND
    if kind == "box":
        n_val = s * f + c
        n_time = len(TIME_FEATURES)
        low = np.concatenate([np.full(n_val, -big), -np.ones(n_time), np.zeros(n_val)])
        high = np.concatenate([np.full(n_val, big), np.ones(n_time), np.ones(n_val)])
        return spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
    if kind == "dict":
        return spaces.Dict(
            {
                "service_values": spaces.Box(-big, big, (s, f), np.float32),
                "mask": spaces.Box(0.0, 1.0, (s, f), np.float32),
                "cluster": spaces.Box(-big, big, (c,), np.float32),
                "cluster_mask": spaces.Box(0.0, 1.0, (c,), np.float32),
                "time": spaces.Box(-1.0, 1.0, (len(TIME_FEATURES),), np.float32),
            }
        )
    raise ValueError(f"obs must be 'box' or 'dict', got {kind!r}")


def symlog_scalar(x: float) -> float:
    """:func:`symlog` of one number."""
    return float(np.sign(x) * np.log1p(abs(x)))


def time_features(t: float) -> np.ndarray:
    """Sine and cosine of the time of day and of the week (float32, shape (4,))."""
    day = 2 * np.pi * (t % 86400.0) / 86400.0
    week = 2 * np.pi * (t % 604800.0) / 604800.0
    return np.array([np.sin(day), np.cos(day), np.sin(week), np.cos(week)], dtype=np.float32)


ACTION_SERVICE_FEATURES: tuple[str, ...] = ("scale", "restart", "rollback")
ACTION_CLUSTER_FEATURES: tuple[str, ...] = ("shed_set", "shed_fraction", "drain")


@dataclass(frozen=True)
class ActionEncoder:
    """Encodes the simulator actions taken at one decision as a float32 vector.

    The world model reads actions in this form whatever policy took them (HPA, runbook,
    SB3, Dreamer), so it can learn from all of them. Layout ``[services (S*3), cluster (3)]``:

    * per service: ``scale`` = ``symlog(new desired - old desired)`` (0 when not scaled),
      ``restart`` and ``rollback`` (0/1);
    * cluster: ``shed_set`` (1 when a ShedLoad was issued), ``shed_fraction`` (its level),
      ``drain`` (1 when a node was drained).

    Args:
        services: Service names in topology order.
    """

    services: tuple[str, ...]

    @property
    def size(self) -> int:
        """Length of the vector, ``3 S + 3``."""
        return len(ACTION_SERVICE_FEATURES) * len(self.services) + len(ACTION_CLUSTER_FEATURES)

    def encode(self, actions: Any, desired: Any) -> np.ndarray:
        """Vector for ``actions`` (a list of simulator actions).

        ``desired`` holds the desired replicas per service (topology order) when they were
        taken.
        """
        index = {name: i for i, name in enumerate(self.services)}
        k = len(ACTION_SERVICE_FEATURES)
        out = np.zeros(self.size, dtype=np.float32)
        svc = out[: k * len(self.services)].reshape(len(self.services), k)
        for a in actions:
            if isinstance(a, Scale):
                i = index[a.service]
                svc[i, 0] = symlog_scalar(a.replicas - int(desired[i]))
            elif isinstance(a, Restart):
                svc[index[a.service], 1] = 1.0
            elif isinstance(a, Rollback):
                svc[index[a.service], 2] = 1.0
            elif isinstance(a, ShedLoad):
                out[-3] = 1.0
                out[-2] = a.fraction
            elif isinstance(a, DrainNode):
                out[-1] = 1.0
        return out
