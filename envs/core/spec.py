"""Specs: what a controller is told about the cluster it controls, and action layouts.

Plain frozen dataclasses of builtins, so a policy bundle can record them (``asdict``) and a
server can rebuild a policy's action decoding without a scenario file or a simulator.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ControlSpec:
    """The configuration a controller of one cluster starts from (no live state).

    What an operator's controller reads from its own config or the Kubernetes API at start:
    the services it manages, their replica bounds and initial counts, the nodes there are at
    start and how long an API call takes to act.

    Attributes:
        services: Service names (the row order of every per-service array).
        replicas_min: ``(S,)`` lowest replica count per service.
        replicas_max: ``(S,)`` highest replica count per service.
        replicas_initial: ``(S,)`` replicas at start.
        n_nodes: Nodes at start (indices ``0 .. n_nodes-1``, all ready).
        actuation_delay_s: Seconds from an action to its effect on the cluster.
    """

    services: tuple[str, ...]
    replicas_min: tuple[int, ...]
    replicas_max: tuple[int, ...]
    replicas_initial: tuple[int, ...]
    n_nodes: int
    actuation_delay_s: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.services)
        for name in ("replicas_min", "replicas_max", "replicas_initial"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"ControlSpec.{name} has {len(getattr(self, name))} entries for "
                    f"{n} services; give one per service"
                )
        for s, lo, hi, init in zip(
            self.services,
            self.replicas_min,
            self.replicas_max,
            self.replicas_initial,
            strict=True,
        ):
            if not lo <= init <= hi:
                raise ValueError(
                    f"ControlSpec: service {s!r} has replicas min {lo}, initial {init}, "
                    f"max {hi}; need min <= initial <= max"
                )
        if self.n_nodes < 0:
            raise ValueError(f"ControlSpec.n_nodes must be >= 0, got {self.n_nodes}")
        if self.actuation_delay_s < 0:
            raise ValueError(
                f"ControlSpec.actuation_delay_s must be >= 0, got {self.actuation_delay_s}"
            )


@dataclass(frozen=True)
class ActionSpaceSpec:
    """The layout of a discrete action space, as a bundle records it.

    Attributes:
        layout: Which decoding applies (``"autoscale"``, ``"remediate"``, ``"cluster_ops"``,
            ``"hpa_tune"``; see :mod:`envs.gym.codec`).
        nvec: Choices per dimension (one entry for a ``Discrete`` space).
        discrete: True for a ``Discrete`` space (``nvec`` has one entry), False for
            ``MultiDiscrete``.
    """

    layout: str
    nvec: tuple[int, ...]
    discrete: bool = False
