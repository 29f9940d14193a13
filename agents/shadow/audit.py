"""The shadow audit log: one JSON Lines record per tick, with size-based rotation.

:class:`AuditRecord` is the record's schema (``opsworld.shadow.audit/1``), shared with
``opsworld shadow-report``: one object per tick, written **always**, even when every query
and the policy failed (then the values are null and ``error``/``query_errors`` say why).
Readers must tolerate extra keys; the fields below never change meaning.

:class:`AuditWriter` appends records to ``audit.jsonl`` and rotates by size, as logrotate
does: when the file would pass ``max_bytes`` it becomes ``audit.jsonl.1`` (the older ones
shift to ``.2`` ...), and only ``keep`` rotated files are kept. Each record is one line,
flushed at once, so a crash loses at most the record being written.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA = "opsworld.shadow.audit/1"
"""The value of every record's ``schema`` field."""

ActionDict = dict[str, Any]
"""An action as :func:`agents.guard.action_dict` writes it (``{"kind": "scale", ...}``)."""


class QueryError(BaseModel):
    """One query that gave no usable answer this tick."""

    model_config = ConfigDict(extra="allow")

    query: str
    reason: str


class InterventionRecord(BaseModel):
    """One change the guard made (``agents.guard.GuardVerdict.as_dict`` form)."""

    model_config = ConfigDict(extra="allow")

    rule: str
    reason: str
    before: ActionDict | None = None
    after: ActionDict | None = None


class DriftRecord(BaseModel):
    """Input drift against the bundle's training reference."""

    model_config = ConfigDict(extra="allow")

    psi: dict[str, float]
    retrain_recommended: bool


class AuditRecord(BaseModel):
    """One tick of shadow mode (see ``docs/live.md``, "Shadow mode").

    Attributes:
        schema_: Always :data:`SCHEMA` (serialised as ``schema``).
        tick: 0-based tick number of this run.
        t: Evaluation time in Unix seconds (in replay, the TSDB time).
        wall_time: ISO-8601 UTC wall-clock time the record was made.
        mode: ``live`` or ``replay``.
        bundle_sha: The bundle's SHA (None when unknown, e.g. the server never answered).
        policy: The policy's kind/algorithm (``sb3/ppo``, ``baseline/hpa``, ``remote/...``).
        model_version: The model version (None when unknown).
        services: Service names in the bundle's topology order.
        telemetry: ``service -> field -> value`` (None = missing).
        missing: ``service -> field -> reason`` for the missing ones only.
        missing_fraction: Share of the frame's per-service gauges that are missing.
        query_errors: Queries that failed (or came back unusable) and why.
        raw_actions: What the policy proposed (empty when it failed).
        guarded_actions: What the guard let out (the recommendation).
        interventions: Every change the guard made.
        fallback: The baseline that decided instead of the policy (None: the policy did).
        recommended_replicas: Replicas per service after the recommendation.
        actual_replicas: Desired replicas per service observed this tick.
        actual_actions: What the cluster did since the previous tick (inferred).
        forecast: The policy's forecast per service (None when it has none).
        drift: Input drift (None without a training reference).
        reasons: Why the recommendation is what it is, or why the tick failed.
        error: The inference/transport error of this tick (None: none).
        latency_s: Seconds from the first query to the record.
        actuated: Always False: shadow mode never acts.
        inference_s: Seconds the policy and guard took (extra field).
        breaker_open: Whether the guard's circuit breaker is open after this tick (extra).
        query_seconds: Seconds spent querying Prometheus for this frame (extra).
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_: Literal["opsworld.shadow.audit/1"] = Field(
        default="opsworld.shadow.audit/1", alias="schema"
    )
    tick: Annotated[int, Field(ge=0)]
    t: float
    wall_time: str
    mode: Literal["live", "replay"]
    bundle_sha: str | None = None
    policy: str
    model_version: str | None = None
    services: list[str]
    telemetry: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    missing: dict[str, dict[str, str]] = Field(default_factory=dict)
    missing_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    query_errors: list[QueryError] = Field(default_factory=list)
    raw_actions: list[ActionDict] = Field(default_factory=list)
    guarded_actions: list[ActionDict] = Field(default_factory=list)
    interventions: list[InterventionRecord] = Field(default_factory=list)
    fallback: str | None = None
    recommended_replicas: dict[str, int | None] = Field(default_factory=dict)
    actual_replicas: dict[str, int | None] = Field(default_factory=dict)
    actual_actions: list[ActionDict] = Field(default_factory=list)
    forecast: dict[str, dict[str, dict[str, float]]] | None = None
    drift: DriftRecord | None = None
    reasons: list[str] = Field(default_factory=list)
    error: str | None = None
    latency_s: Annotated[float, Field(ge=0.0)] = 0.0
    actuated: Literal[False] = False
    inference_s: float | None = None
    breaker_open: bool | None = None
    query_seconds: float | None = None

    @field_validator("telemetry")
    @classmethod
    def _finite(cls, v: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
        for svc, fields in v.items():
            for name, x in fields.items():
                if x is not None and not math.isfinite(x):
                    raise ValueError(
                        f"telemetry.{svc}.{name} = {x}: write None for a missing value"
                    )
        return v

    def line(self) -> str:
        """The record as one JSON line (no trailing newline; strict JSON, no NaN)."""
        data = self.model_dump(mode="json", by_alias=True)
        return json.dumps(data, separators=(",", ":"), allow_nan=False)


class AuditWriter:
    """Appends records to ``path`` and rotates it by size.

    Args:
        path: The live file (e.g. ``runs/shadow/audit.jsonl``); its folder is created.
        max_bytes: Rotate before a write would make the file larger than this (0: never).
        keep: Rotated files kept (``path.1`` newest ... ``path.<keep>`` oldest).

    Raises:
        ValueError: ``max_bytes < 0`` or ``keep < 1``.
    """

    def __init__(self, path: str | Path, max_bytes: int = 50 << 20, keep: int = 5) -> None:
        if max_bytes < 0 or keep < 1:
            raise ValueError(
                f"audit rotation needs max_bytes >= 0 and keep >= 1; got {max_bytes}, {keep}"
            )
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.keep = keep
        self.written = 0
        self.rotations = 0
        self._fh = self.path.open("ab")

    def write(self, record: AuditRecord) -> None:
        """Append one record (one line, flushed)."""
        data = (record.line() + "\n").encode("utf-8")
        size = self._fh.tell()
        if self.max_bytes and size > 0 and size + len(data) > self.max_bytes:
            self._rotate()
        self._fh.write(data)
        self._fh.flush()
        self.written += 1

    def _rotate(self) -> None:
        self._fh.close()
        oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
        if oldest.exists():
            oldest.unlink()
        for k in range(self.keep - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{k}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{k + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.rotations += 1
        self._fh = self.path.open("ab")

    def close(self) -> None:
        """Close the file."""
        self._fh.close()

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def audit_files(path: str | Path) -> list[Path]:
    """``path`` and its rotated files, oldest first (``.N`` ... ``.1``, then ``path``)."""
    p = Path(path)
    rotated = []
    for f in p.parent.glob(f"{p.name}.*"):
        suffix = f.name[len(p.name) + 1 :]
        if suffix.isdigit():
            rotated.append((int(suffix), f))
    out = [f for _, f in sorted(rotated, reverse=True)]
    return out + ([p] if p.exists() else [])


def read_audit(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every record of ``path`` and its rotated files, oldest first, as plain dicts."""
    for f in audit_files(path):
        with f.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)
