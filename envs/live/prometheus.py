"""A Telemetry source over Prometheus' HTTP API, driven by a query profile.

:class:`PrometheusSource` builds one :class:`~envs.core.telemetry.Telemetry` frame per call from
the PromQL of a :class:`~envs.live.profile.QueryProfile`:

* **instant** mode, :meth:`PrometheusSource.frame`: ``/api/v1/query`` at ``at`` (default now);
* **range** mode, :meth:`PrometheusSource.replay`: ``/api/v1/query_range`` over
  ``[start, end]`` every ``step_s``, one frame per step (a backfilled TSDB is replayed as fast as
  the queries return), in chunks of at most 10,000 steps (Prometheus refuses 11,000 points).

Rules (``docs/live.md``):

* A value is missing (NaN in ``values`` and ``False`` in ``mask``) when its query failed, came
  back empty (``result: []``: a series that does not exist is missing, **never zero**), had no
  series for the service, more than one, or a non-finite value (``"NaN"``, ``"+Inf"`` are parsed
  and then reported). Every missing value has a reason in :attr:`LiveFrame.reasons`.
* Staleness: Prometheus itself drops series whose target vanished (stale markers, 5 minute
  look-back); on top, the profile's ``freshness`` query gives the age of the newest sample, and
  a frame older than ``max_age_s`` (or with no age at all) is all missing, reason ``stale``.
* Transport errors, timeouts and HTTP 5xx are retried with exponential backoff
  (``retries``, ``backoff_s``); 4xx (a bad query) is not. When Prometheus cannot be reached at
  all, or a query timed out on every attempt, the remaining queries of that frame are not sent
  and share the reason (a frame then costs at most one query's retries, not one per query).
  The source never raises for what Prometheus does: a dead Prometheus gives an all-missing
  frame with reasons.

Frames carry no counters, histogram or in-flight counts (NaN): the gauges are what a policy reads.
``t`` is the evaluation time in Unix seconds. ``cpu_util`` is ``cpu_usage / cpu_request`` when
the profile does not query it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from envs.core.telemetry import (
    CLUSTER_FIELDS,
    CLUSTER_INDEX,
    COUNTER_FIELDS,
    FIELD_INDEX,
    LATENCY_BUCKETS_S,
    SERVICE_FIELDS,
    Telemetry,
    make_frame,
)
from envs.live.profile import QueryProfile

MAX_POINTS = 10_000
"""Steps per ``query_range`` request (Prometheus refuses more than 11,000 points per series)."""


class QueryFailed(Exception):
    """One query that gave no usable answer; ``reason`` says why.

    ``unreachable``: no server answered; ``timed_out``: every attempt timed out. Either way
    the rest of the frame's queries are not sent (they would wait as long again).
    """

    def __init__(self, reason: str, unreachable: bool = False, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unreachable = unreachable
        self.timed_out = timed_out

    @property
    def server_down(self) -> bool:
        """Whether the next query of this frame would fail the same way."""
        return self.unreachable or self.timed_out


@dataclass(frozen=True)
class LiveFrame:
    """A frame from Prometheus and why each missing value is missing.

    Attributes:
        telemetry: The frame (NaN + mask where missing).
        reasons: ``"<service>/<field>"`` or ``"cluster/<field>"`` -> reason, for every missing
            value the profile asked for; ``"*"`` for a reason that applies to the whole frame.
        query_seconds: Wall time spent querying.
    """

    telemetry: Telemetry
    reasons: dict[str, str] = field(default_factory=dict)
    query_seconds: float = 0.0

    @property
    def missing_fraction(self) -> float:
        """Share of per-service gauges that are missing."""
        return 1.0 - float(self.telemetry.mask.mean())


def parse_value(text: str) -> float:
    """A sample value as Prometheus' API sends it (a string, incl. ``NaN``, ``+Inf``, ``-Inf``)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        raise QueryFailed(f"unparseable sample value {text!r}") from None


class PrometheusSource:
    """Telemetry from Prometheus; see the module docstring.

    Args:
        url: Prometheus base URL, e.g. ``http://127.0.0.1:9090``.
        profile: The query profile.
        services: Services in row order (the policy's); results for others are ignored.
        timeout_s: Per-request timeout.
        retries: Extra attempts after a transport error, a timeout or a 5xx.
        backoff_s: First backoff; doubles per retry.
        client: An ``httpx.Client`` to use (one is made otherwise).
        sleep: How to wait between retries (``time.sleep``).
    """

    def __init__(
        self,
        url: str,
        profile: QueryProfile,
        services: tuple[str, ...],
        timeout_s: float = 5.0,
        retries: int = 2,
        backoff_s: float = 0.2,
        client: httpx.Client | None = None,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        if not services:
            raise ValueError("services must name at least one service (the policy's row order)")
        if retries < 0 or backoff_s < 0 or not timeout_s > 0:
            raise ValueError(
                f"need retries >= 0, backoff_s >= 0, timeout_s > 0; got {retries}, {backoff_s}, "
                f"{timeout_s}"
            )
        self.url = url.rstrip("/")
        self.profile = profile
        self.services = tuple(services)
        self.retries = retries
        self.backoff_s = backoff_s
        self._client = client or httpx.Client(timeout=timeout_s)
        self._sleep = sleep

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    # -- HTTP ------------------------------------------------------------------------------
    def _get(self, path: str, params: dict[str, str]) -> Any:
        """``data`` of a successful API answer, else :class:`QueryFailed` (after retries)."""
        reason = "no attempt"
        unreachable = timed_out = False
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                r = self._client.get(f"{self.url}/api/v1/{path}", params=params)
            except httpx.TimeoutException as err:
                reason, unreachable, timed_out = f"timeout ({type(err).__name__})", False, True
                continue
            except httpx.TransportError as err:
                reason, unreachable = f"unreachable ({type(err).__name__}: {err})", True
                timed_out = False
                continue
            unreachable = timed_out = False
            try:
                body = r.json()
            except ValueError:
                body = {}
            if r.status_code >= 500 or (r.status_code != 200 and not body):
                reason = f"HTTP {r.status_code} {body.get('error', r.text[:200])}".strip()
                if r.status_code >= 500:
                    continue
                raise QueryFailed(reason)
            if body.get("status") != "success":
                raise QueryFailed(f"{body.get('errorType', 'error')}: {body.get('error', r.text)}")
            return body.get("data", {})
        raise QueryFailed(reason, unreachable, timed_out)

    # -- instant mode ----------------------------------------------------------------------
    def _instant(self, query: str, at: float) -> list[tuple[dict[str, str], float]]:
        data = self._get("query", {"query": query, "time": f"{at:.3f}"})
        kind, result = data.get("resultType"), data.get("result", [])
        if kind == "scalar":
            return [({}, parse_value(result[1]))]
        if kind != "vector":
            raise QueryFailed(f"expected a vector result, got {kind}")
        return [(r.get("metric", {}), parse_value(r["value"][1])) for r in result]

    def frame(self, at: float | None = None) -> LiveFrame:
        """One frame from instant queries at ``at`` (Unix seconds; default now)."""
        at = time.time() if at is None else float(at)
        started = time.perf_counter()
        b = _Builder(self.services, self.profile)
        down: str | None = None

        def run(key: str, query: str) -> list[tuple[dict[str, str], float]] | None:
            nonlocal down
            if down is not None:
                b.fail(key, down)
                return None
            try:
                return self._instant(self.profile.render(query), at)
            except QueryFailed as err:
                if err.server_down:
                    down = err.reason
                b.fail(key, err.reason)
                return None

        if self.profile.freshness is not None:
            got = run("freshness", self.profile.freshness.query)
            b.freshness(got)
        for name, query in self.profile.services.items():
            got = run(name, query)
            if got is not None:
                b.services_result(name, got)
        for name, query in self.profile.cluster.items():
            got = run(f"cluster/{name}", query)
            if got is not None:
                b.cluster_result(name, got)
        return b.build(at, time.perf_counter() - started)

    # -- range mode ------------------------------------------------------------------------
    def _range(
        self, query: str, start: float, end: float, step: float
    ) -> list[tuple[dict[str, str], dict[float, float]]]:
        data = self._get(
            "query_range",
            {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"},
        )
        if data.get("resultType") != "matrix":
            raise QueryFailed(f"expected a matrix result, got {data.get('resultType')}")
        return [
            (r.get("metric", {}), {round(float(t), 3): parse_value(v) for t, v in r["values"]})
            for r in data.get("result", [])
        ]

    def replay(self, start: float, end: float, step_s: float) -> Iterator[LiveFrame]:
        """Frames at ``start, start + step_s, ... <= end`` from range queries (replay mode)."""
        if not step_s > 0 or end < start:
            raise ValueError(f"need step_s > 0 and end >= start; got {step_s}, {start}, {end}")
        n = math.floor((end - start) / step_s + 1e-9) + 1
        for first in range(0, n, MAX_POINTS):
            count = min(MAX_POINTS, n - first)
            c_start = start + first * step_s
            c_end = c_start + (count - 1) * step_s
            yield from self._replay_chunk(c_start, c_end, step_s, count)

    def _replay_chunk(
        self, start: float, end: float, step: float, count: int
    ) -> Iterator[LiveFrame]:
        started = time.perf_counter()
        results: dict[str, list[tuple[dict[str, str], dict[float, float]]] | QueryFailed] = {}
        down: QueryFailed | None = None
        queries = [("freshness", self.profile.freshness.query)] if self.profile.freshness else []
        queries += list(self.profile.services.items())
        queries += [(f"cluster/{k}", q) for k, q in self.profile.cluster.items()]
        for key, query in queries:
            if down is not None:
                results[key] = down
                continue
            try:
                results[key] = self._range(self.profile.render(query), start, end, step)
            except QueryFailed as err:
                results[key] = err
                if err.server_down:
                    down = err
        spent = (time.perf_counter() - started) / max(count, 1)
        for k in range(count):
            t = round(start + k * step, 3)
            b = _Builder(self.services, self.profile)
            for key, res in results.items():
                if isinstance(res, QueryFailed):
                    b.fail(key, res.reason)
                    continue
                at_t = [(m, pts[t]) for m, pts in res if t in pts]
                if key == "freshness":
                    b.freshness(at_t)
                elif key.startswith("cluster/"):
                    b.cluster_result(key.removeprefix("cluster/"), at_t)
                else:
                    b.services_result(key, at_t)
            yield b.build(t, spent)


class _Builder:
    """Collects query results into one frame and its reasons."""

    def __init__(self, services: tuple[str, ...], profile: QueryProfile) -> None:
        self.services = services
        self.profile = profile
        self.values = np.full((len(services), len(SERVICE_FIELDS)), np.nan)
        self.cluster = np.full(len(CLUSTER_FIELDS), np.nan)
        self.reasons: dict[str, str] = {}
        self.stale: str | None = None

    def fail(self, key: str, reason: str) -> None:
        if key == "freshness":
            self.stale = f"freshness unknown: {reason}"
        elif key.startswith("cluster/"):
            self.reasons[key] = reason
        else:
            for svc in self.services:
                self.reasons[f"{svc}/{key}"] = reason

    def freshness(self, got: list[tuple[dict[str, str], float]] | None) -> None:
        assert self.profile.freshness is not None
        if got is None:
            return
        limit = self.profile.freshness.max_age_s
        if not got or not math.isfinite(got[0][1]):
            self.stale = "stale: no recent sample (empty freshness result)"
        elif got[0][1] > limit:
            self.stale = f"stale: newest sample {got[0][1]:.0f} s old > max_age_s {limit:g}"

    def services_result(self, name: str, got: list[tuple[dict[str, str], float]]) -> None:
        col = FIELD_INDEX[name]
        label = self.profile.service_label
        seen: dict[str, list[float]] = {}
        for metric, value in got:
            seen.setdefault(metric.get(label, ""), []).append(value)
        for s, svc in enumerate(self.services):
            vals = seen.get(svc)
            key = f"{svc}/{name}"
            if not got:
                self.reasons[key] = "empty result"
            elif vals is None:
                self.reasons[key] = f"no series with {label}={svc!r}"
            elif len(vals) > 1:
                self.reasons[key] = f"{len(vals)} series with {label}={svc!r}"
            elif not math.isfinite(vals[0]):
                self.reasons[key] = f"non-finite value {vals[0]}"
            else:
                self.values[s, col] = vals[0]

    def cluster_result(self, name: str, got: list[tuple[dict[str, str], float]]) -> None:
        key = f"cluster/{name}"
        if not got:
            self.reasons[key] = "empty result"
        elif len(got) > 1:
            self.reasons[key] = f"{len(got)} series (want one; aggregate the query)"
        elif not math.isfinite(got[0][1]):
            self.reasons[key] = f"non-finite value {got[0][1]}"
        else:
            self.cluster[CLUSTER_INDEX[name]] = got[0][1]

    def build(self, t: float, seconds: float) -> LiveFrame:
        values, cluster = self.values, self.cluster
        if "cpu_util" not in self.profile.services:
            usage, request = (
                values[:, FIELD_INDEX["cpu_usage"]],
                values[:, FIELD_INDEX["cpu_request"]],
            )
            with np.errstate(divide="ignore", invalid="ignore"):
                util = np.where(request > 0, usage / request, np.nan)
            values[:, FIELD_INDEX["cpu_util"]] = util
        if self.stale is not None:
            values = np.full_like(values, np.nan)
            cluster = np.full_like(cluster, np.nan)
            self.reasons = {"*": self.stale}
        n = len(self.services)
        frame = make_frame(
            t,
            self.services,
            values,
            np.full((n, len(COUNTER_FIELDS)), np.nan),
            np.full(n, np.nan),
            np.full((n, len(LATENCY_BUCKETS_S)), np.nan),
            cluster,
        )
        return LiveFrame(frame, self.reasons, seconds)
