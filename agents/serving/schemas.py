"""Request and response bodies of the policy server, and frames from JSON.

A request carries a telemetry window: frames oldest first, each a time, per-service gauges
by name and cluster gauges by name, where a missing or ``null`` value is NaN and masked
(never zero). Fields are those of :data:`envs.core.telemetry.SERVICE_FIELDS` and
:data:`~envs.core.telemetry.CLUSTER_FIELDS`; an unknown name is a 422 naming it.
"""

from __future__ import annotations

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
