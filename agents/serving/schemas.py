"""Request and response bodies of the policy server, and frames from JSON.

A request carries a telemetry window: frames oldest first, each a time, per-service gauges
by name and cluster gauges by name, where a missing or ``null`` value is NaN and masked
(never zero). Fields are those of :data:`envs.core.telemetry.SERVICE_FIELDS` and
:data:`~envs.core.telemetry.CLUSTER_FIELDS`; an unknown name is a 422 naming it.
"""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from envs.core.telemetry import (
    CLUSTER_FIELDS,
    COUNTER_FIELDS,
    LATENCY_BUCKETS_S,
    SERVICE_FIELDS,
    Telemetry,
    make_frame,
)

INFERENCE_BUCKETS_S: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
"""Buckets of ``opsworld_policy_inference_seconds`` (sub-millisecond), shared by the server and
shadow mode so their dashboards read one histogram layout."""

MAX_FRAMES = 64
"""Most frames one request may carry."""

Gauge = Annotated[float | None, Field(allow_inf_nan=True)]


class Frame(BaseModel):
    """One scrape: ``t`` in seconds and gauges by name (absent or null: missing)."""

    model_config = ConfigDict(extra="forbid")

    t: Annotated[float, Field(allow_inf_nan=False, ge=-1e12, le=1e12)]
    services: dict[str, dict[str, Gauge]]
    cluster: dict[str, Gauge] = Field(default_factory=dict)

    @field_validator("services")
    @classmethod
    def _known_service_fields(cls, v: dict[str, dict[str, Gauge]]) -> dict[str, dict[str, Gauge]]:
        known = set(SERVICE_FIELDS)
        for name, gauges in v.items():
            unknown = sorted(set(gauges) - known)
            if unknown:
                raise ValueError(
                    f"service {name!r}: unknown fields {unknown}; fields are {list(SERVICE_FIELDS)}"
                )
        return v

    @field_validator("cluster")
    @classmethod
    def _known_cluster_fields(cls, v: dict[str, Gauge]) -> dict[str, Gauge]:
        unknown = sorted(set(v) - set(CLUSTER_FIELDS))
        if unknown:
            raise ValueError(f"unknown cluster fields {unknown}; fields are {list(CLUSTER_FIELDS)}")
        return v


class InferRequest(BaseModel):
    """``POST /v2/models/{name}/infer``.

    Attributes:
        id: Client's request id, echoed back.
        stream_id: Which stream's recurrent state to use (one per controlled cluster).
        frames: The telemetry window, oldest first; frames not newer than the stream's last
            one are skipped, each newer one is a decision.
        reset: Start the stream afresh before these frames.
        now: The current time on the frames' clock for the guard's staleness check
            (default: the newest frame's ``t``).
    """

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(max_length=128)] | None = None
    stream_id: Annotated[str, Field(min_length=1, max_length=128)] = "default"
    frames: Annotated[list[Frame], Field(min_length=1, max_length=MAX_FRAMES)]
    reset: bool = False
    now: Annotated[float, Field(allow_inf_nan=False)] | None = None


class WorldModelRequest(BaseModel):
    """What the world-model routes (``forecast``, ``explain``) read.

    They start from the stream's state after its last ``infer`` (``stream_id``); ``frames``
    newer than the stream's last one are filtered first on a copy (the stream itself does
    not move). A stream with no state needs ``frames``.

    Attributes:
        stream_id: The stream whose state to start from.
        frames: Optional newer frames, oldest first.
        horizon: Decisions to look ahead (default: the bundle's imagination horizon).
        samples: Imagined futures (per candidate for ``explain``).
        seed: Seeds the imagination (same state and seed, same answer).
    """

    model_config = ConfigDict(extra="forbid")

    stream_id: Annotated[str, Field(min_length=1, max_length=128)] = "default"
    frames: Annotated[list[Frame], Field(max_length=MAX_FRAMES)] = Field(default_factory=list)
    horizon: Annotated[int, Field(ge=1, le=120)] | None = None
    samples: Annotated[int, Field(ge=1, le=256)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0


class ForecastRequest(WorldModelRequest):
    """``POST /v2/models/{name}/forecast`` (see :class:`WorldModelRequest`).

    Attributes:
        quantiles: Quantile levels, ascending in (0, 1).
    """

    quantiles: Annotated[
        list[Annotated[float, Field(gt=0.0, lt=1.0)]], Field(min_length=1, max_length=9)
    ] = Field(default_factory=lambda: [0.1, 0.5, 0.9])

    @field_validator("quantiles")
    @classmethod
    def _ascending(cls, v: list[float]) -> list[float]:
        if any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError(f"quantiles must increase strictly, got {v}")
        return v


class ForecastResponse(BaseModel):
    """Quantiles ``[H][S][Q]`` per metric in raw units, clipped to physical ranges.

    ``p99`` in seconds (>= 0), ``rps`` in attempts/s (>= 0), ``error_rate`` a fraction in
    [0, 1], ``replicas`` ready pods (>= 0); ``p_violation`` the probability of at least one
    SLO-violating decision interval within the horizon, in [0, 1]. Step ``h`` is
    ``t + (h + 1) * decision_interval_s``: the actions decided on the frame at ``t`` first,
    then none.
    """

    model_name: str
    model_version: str
    stream_id: str
    t: float
    horizon: int
    decision_interval_s: float
    samples: int
    services: list[str]
    quantiles: list[float]
    p99: list[list[list[float]]]
    rps: list[list[list[float]]]
    error_rate: list[list[list[float]]]
    replicas: list[list[list[float]]]
    p_violation: float


class ExplainResponse(BaseModel):
    """The what-if planner's predicted outcome of each candidate action.

    ``plan``: ``best``, ``chosen``, ``horizon``, ``samples``, ``follow``, ``quantiles``,
    ``services`` and ``candidates`` (each ``label``, ``actions``, ``score``, ``reward``,
    ``p99_s`` ``[S][Q]``, ``error_rate`` ``[S]``, ``cost``, ``p_violation``);
    ``explanation``: the same as a Markdown table.
    """

    model_name: str
    model_version: str
    stream_id: str
    t: float
    plan: dict[str, Any]
    explanation: str


class Intervention(BaseModel):
    """One change the guard made."""

    rule: str
    reason: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


class GuardVerdictOut(BaseModel):
    """The guard's verdict on the last decision."""

    source: str
    breaker_open: bool
    interventions: list[Intervention]


class InferResponse(BaseModel):
    """The decision on the newest frame, after the guard."""

    model_name: str
    model_version: str
    bundle_sha: str
    id: str | None
    stream_id: str
    decisions: int
    actions: list[dict[str, Any]]
    proposed: list[dict[str, Any]]
    guard: GuardVerdictOut | None
    info: dict[str, Any]


class ErrorBody(BaseModel):
    """Every 4xx and 5xx: what went wrong and why."""

    error: str
    reason: str
    detail: Any = None


def to_telemetry(frame: Frame, services: tuple[str, ...]) -> Telemetry:
    """The :class:`Telemetry` of a request frame for a cluster of ``services``.

    Raises:
        ValueError: The frame names services the bundle does not control (missing ones are
            fully NaN).
    """
    unknown = sorted(set(frame.services) - set(services))
    if unknown:
        raise ValueError(
            f"frame t={frame.t}: unknown services {unknown}; this model controls {list(services)}"
        )
    values = np.full((len(services), len(SERVICE_FIELDS)), np.nan)
    for i, name in enumerate(services):
        gauges = frame.services.get(name, {})
        for j, f in enumerate(SERVICE_FIELDS):
            v = gauges.get(f)
            if v is not None and not math.isnan(v):
                values[i, j] = v
    cluster = np.full(len(CLUSTER_FIELDS), np.nan)
    for j, f in enumerate(CLUSTER_FIELDS):
        v = frame.cluster.get(f)
        if v is not None and not math.isnan(v):
            cluster[j] = v
    n = len(services)
    return make_frame(
        frame.t,
        services,
        values,
        np.full((n, len(COUNTER_FIELDS)), np.nan),
        np.full(n, np.nan),
        np.full((n, len(LATENCY_BUCKETS_S)), np.nan),
        cluster,
    )


def frame_json(frame: Telemetry) -> dict[str, Any]:
    """A :class:`Telemetry` frame as the request's JSON (NaN as null), for clients and tests."""
    return {
        "t": float(frame.t),
        "services": {
            name: {
                f: (None if math.isnan(v) else float(v))
                for f, v in zip(SERVICE_FIELDS, frame.values[i], strict=True)
            }
            for i, name in enumerate(frame.services)
        },
        "cluster": {
            f: (None if math.isnan(v) else float(v))
            for f, v in zip(CLUSTER_FIELDS, frame.cluster, strict=True)
        },
    }
