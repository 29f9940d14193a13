"""The shadow loop: query, decide, guard, record, export; never actuate.

Every tick, :class:`ShadowLoop`:

1. takes a :class:`~envs.live.prometheus.LiveFrame` (instant queries in live mode, one step of
   range queries in replay mode; the source never raises for what Prometheus does, and an
   unexpected failure of the source still gives an all-missing frame);
2. asks the policy (a bundle in process or a remote server, :mod:`agents.shadow.deciders`)
   behind a local :class:`~agents.guard.Guard` with the bundle's guard configuration: stale
   or missing telemetry hands the decision to the fallback (the Kubernetes HPA by default),
   inference errors (a dead server) do too and open the circuit breaker;
3. infers what the cluster did since the previous tick (:mod:`agents.shadow.observe`), the
   agreement of the previous recommendation with it, drift (:mod:`agents.shadow.drift`);
4. writes one :class:`~agents.shadow.audit.AuditRecord` (always, even when all failed) and
   updates :class:`~agents.shadow.metrics.ShadowMetrics`.

Nothing is ever sent to the cluster: the loop holds no client that could act, and every
record says ``actuated: false``. A tick that raises anywhere is caught, recorded with its
error, and the loop goes on.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from agents.guard import Guard, GuardedPolicy, GuardVerdict, action_dict
from agents.shadow.audit import AuditRecord, AuditWriter, DriftRecord
from agents.shadow.deciders import Decider
from agents.shadow.drift import DriftMonitor
from agents.shadow.metrics import ShadowMetrics
from agents.shadow.observe import ActionObserver, replicas
from envs.core.actions import Scale
from envs.core.telemetry import (
    CLUSTER_FIELDS,
    COUNTER_FIELDS,
    FIELD_INDEX,
    LATENCY_BUCKETS_S,
    SERVICE_FIELDS,
    Telemetry,
    make_frame,
)
from envs.live.prometheus import LiveFrame, PrometheusSource

Mode = Literal["live", "replay"]


def blank_frame(services: tuple[str, ...], t: float) -> Telemetry:
    """An all-missing frame (NaN everywhere, nothing observed)."""
    n = len(services)
    return make_frame(
        t,
        services,
        np.full((n, len(SERVICE_FIELDS)), np.nan),
        np.full((n, len(COUNTER_FIELDS)), np.nan),
        np.full(n, np.nan),
        np.full((n, len(LATENCY_BUCKETS_S)), np.nan),
        np.full(len(CLUSTER_FIELDS), np.nan),
    )


POD_COUNTS: tuple[str, ...] = ("replicas_starting", "replicas_pending")
"""Pod counts kube-state-metrics' deployment series do not give (the kube profile leaves them
missing)."""


FORECAST_FIELDS: dict[str, str] = {"replicas": "replicas_desired", "p99_s": "p99"}
"""Forecast quantities (audit names) -> the Telemetry field they are checked against."""
FORECAST_ERROR_FLOOR = 0.5
"""Replicas: the held-out error a ratio is taken against is at least this (a model that was
exact on its held-out rollout would otherwise make any online error infinitely worse)."""
REPLICA_FORECASTS: tuple[str, ...] = ("replicas", "replicas_ready")
"""Forecast fields that give the recommended-replica band and the forecast error metric
(``replicas``: a policy's own replica forecast; ``replicas_ready``: a world model's)."""


def derive_pod_counts(frame: Telemetry) -> tuple[Telemetry, list[str]]:
    """The frame the policy decides on: unobserved pod counts set to 0 where they are implied.

    Implied: the deployment's desired and ready replicas are observed. The Kubernetes HPA
    (``envs.kube.hpa.pods_from_telemetry``) needs ``replicas_starting`` and
    ``replicas_pending`` to place every pod; without them it cannot compute anything
    (``FailedGetMetrics``) and never scales. With both at 0, the pods the deployment wants
    beyond the ready ones count as pods without metrics, which the HPA treats
    conservatively (0 % of the request when scaling up, 100 % when scaling down), as
    Kubernetes does. The audit record keeps the frame as observed.

    Returns:
        ``(frame, services whose counts were derived)``.
    """
    cols = [FIELD_INDEX[f] for f in POD_COUNTS]
    known = (
        frame.mask[:, FIELD_INDEX["replicas_desired"]]
        & frame.mask[:, FIELD_INDEX["replicas_ready"]]
    )
    fill = known[:, None] & ~frame.mask[:, cols]
    if not fill.any():
        return frame, []
    values, mask = frame.values.copy(), frame.mask.copy()
    for k, col in enumerate(cols):
        values[fill[:, k], col] = 0.0
        mask[fill[:, k], col] = True
    derived = [svc for i, svc in enumerate(frame.services) if fill[i].any()]
    return replace(frame, values=values, mask=mask), derived


@dataclass
class ShadowStats:
    """Totals of one run (what ``opsworld shadow`` prints at the end).

    Attributes:
        ticks: Ticks run.
        records: Audit records written (equals ``ticks`` unless the disk failed).
        errors: Ticks with an inference/transport error or a failure inside the tick.
        tick_exceptions: Ticks where something inside the loop raised (caught, recorded).
        fallbacks: Ticks decided by each fallback.
        interventions: Guard interventions by rule.
        would_act: Recommended actions that would have acted, by kind.
        actuations: Actions sent to the cluster: always 0.
        agreed: (tick, service) pairs where the recommendation matched the next tick.
        compared: (tick, service) pairs compared.
        audit_failures: Records that could not be written.
    """

    ticks: int = 0
    records: int = 0
    errors: int = 0
    tick_exceptions: int = 0
    fallbacks: Tally[str] = field(default_factory=Tally)
    interventions: Tally[str] = field(default_factory=Tally)
    would_act: Tally[str] = field(default_factory=Tally)
    actuations: int = 0
    agreed: int = 0
    compared: int = 0
    audit_failures: int = 0

    @property
    def agreement(self) -> float | None:
        """Share of compared pairs that agreed (None before any)."""
        return self.agreed / self.compared if self.compared else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready totals."""
        return {
            "ticks": self.ticks,
            "records": self.records,
            "errors": self.errors,
            "tick_exceptions": self.tick_exceptions,
            "fallbacks": dict(self.fallbacks),
            "interventions": dict(self.interventions),
            "would_act": dict(self.would_act),
            "actuations": self.actuations,
            "agreement": self.agreement,
            "compared": self.compared,
            "audit_failures": self.audit_failures,
        }


class ShadowLoop:
    """One shadow run over one cluster; see the module docstring.

    Args:
        decider: The policy and its bundle facts.
        source: Prometheus, through a query profile (services in the decider's order).
        audit: Where records go.
        metrics: The ``/metrics`` series to update (None: none).
        drift_window: Ticks in the drift window.
        drift_min_samples: Ticks before drift is reported.
        drift_threshold: Live-mean shift (training stds) above which retraining is
            recommended (:class:`~agents.shadow.drift.DriftMonitor`).
        drift_every: Recompute PSI every this many ticks (the last report is repeated between).
        forecast_error_ratio: With a bundle's forecast reference, retraining is recommended
            when the online replica forecast error (mean of the last ``drift_window``
            realised forecasts, at least ``drift_min_samples``) exceeds this many times the
            held-out error (floored at :data:`FORECAST_ERROR_FLOOR` replicas).
        derive_pods: Decide on :func:`derive_pod_counts` of each frame (else on the frame as
            observed).
        on_record: Called with each record after it is written (tests, the drill).

    Raises:
        ValueError: The source's services differ from the policy's.
    """

    def __init__(
        self,
        decider: Decider,
        source: PrometheusSource,
        audit: AuditWriter,
        metrics: ShadowMetrics | None = None,
        *,
        drift_window: int = 240,
        drift_min_samples: int = 20,
        drift_threshold: float = 3.0,
        drift_every: int = 5,
        forecast_error_ratio: float = 2.0,
        derive_pods: bool = True,
        on_record: Callable[[AuditRecord], Any] | None = None,
    ) -> None:
        if tuple(source.services) != tuple(decider.spec.services):
            raise ValueError(
                f"source services {list(source.services)} differ from the policy's "
                f"{list(decider.spec.services)}; build the source with services=spec.services"
            )
        self.decider = decider
        self.source = source
        self.audit = audit
        self.metrics = metrics
        self.services = tuple(decider.spec.services)
        self.guard = Guard(decider.guard, decider.spec)
        self.policy = GuardedPolicy(decider.policy, self.guard)
        self.state: Any = self.policy.reset(1)
        self.observer = ActionObserver()
        self.drift: DriftMonitor | None = None
        if decider.feature_reference and decider.encoder is not None:
            self.drift = DriftMonitor(
                decider.encoder,
                decider.feature_reference,
                window=drift_window,
                min_samples=drift_min_samples,
                shift_threshold=drift_threshold,
            )
        self.drift_every = max(1, drift_every)
        self.drift_window, self.drift_min_samples = drift_window, drift_min_samples
        self.forecast_error_ratio = forecast_error_ratio
        self._realised: list[float] = []
        self._drift_report: dict[str, Any] | None = None
        self.on_record = on_record
        self.derive_pods = derive_pods
        self.stats = ShadowStats()
        self.profiled = [f for f in SERVICE_FIELDS if f in source.profile.services]
        if "cpu_util" not in self.profiled and {"cpu_usage", "cpu_request"} <= set(self.profiled):
            self.profiled.append("cpu_util")
        self._prev_recommended: dict[str, int | None] | None = None
        self._pending_forecasts: list[tuple[float, str, str, float]] = []
        self.namespace = metrics.namespace if metrics is not None else ""

    # -- one tick ----------------------------------------------------------------------------
    def tick(self, live: LiveFrame | None, mode: Mode, started: float | None = None) -> AuditRecord:
        """Process one frame (None: the source itself failed) and write its record."""
        started = time.perf_counter() if started is None else started
        tick_no = self.stats.ticks
        try:
            record = self._decide(live, mode, tick_no, started)
        except Exception as exc:  # nothing inside a tick may stop the loop
            self.stats.tick_exceptions += 1
            record = self._failed_record(live, mode, tick_no, started, exc)
        self.stats.ticks += 1
        if record.error is not None:
            self.stats.errors += 1
        try:
            self.audit.write(record)
            self.stats.records += 1
        except OSError:
            self.stats.audit_failures += 1
        if self.metrics is not None:
            outcome = "error" if record.error else ("fallback" if record.fallback else "ok")
            self.metrics.ticks.labels(self.namespace, mode, outcome).inc()
            self.metrics.tick_seconds.labels(self.namespace).observe(record.latency_s)
        if self.on_record is not None:
            self.on_record(record)
        return record

    def _telemetry(
        self, live: LiveFrame
    ) -> tuple[dict[str, dict[str, float | None]], dict[str, dict[str, str]], float]:
        frame = live.telemetry
        values: dict[str, dict[str, float | None]] = {}
        missing: dict[str, dict[str, str]] = {}
        n_missing = 0
        for i, svc in enumerate(self.services):
            row: dict[str, float | None] = {}
            for f in self.profiled:
                col = FIELD_INDEX[f]
                v = float(frame.values[i, col])
                if bool(frame.mask[i, col]) and math.isfinite(v):
                    row[f] = v
                else:
                    row[f] = None
                    n_missing += 1
                    why = live.reasons.get(f"{svc}/{f}") or live.reasons.get("*")
                    if why is None and f == "cpu_util":
                        why = "derived: cpu_usage or cpu_request missing"
                    missing.setdefault(svc, {})[f] = why or "missing"
            values[svc] = row
        total = len(self.services) * len(self.profiled)
        return values, missing, (n_missing / total if total else 1.0)

    @staticmethod
    def _query_errors(live: LiveFrame) -> list[dict[str, str]]:
        seen: dict[tuple[str, str], None] = {}
        for key, reason in live.reasons.items():
            query = "freshness" if key == "*" else key.rsplit("/", 1)[-1]
            if key.startswith("cluster/"):
                query = key
            seen.setdefault((query, reason), None)
        return [{"query": q, "reason": r} for q, r in seen]

    def _decide(
        self, live: LiveFrame | None, mode: Mode, tick_no: int, started: float
    ) -> AuditRecord:
        d = self.decider
        reasons: list[str] = []
        if live is None:
            live = LiveFrame(blank_frame(self.services, time.time()), {"*": "source failed"})
        frame = live.telemetry
        telemetry, missing, missing_fraction = self._telemetry(live)
        query_errors = self._query_errors(live)
        if missing_fraction >= 1.0:
            first = live.reasons.get("*") or next(iter(live.reasons.values()), "no data")
            reasons.append(f"all telemetry missing ({first})")
        # decide: the policy proposes, the guard disposes
        view, derived = derive_pod_counts(frame) if self.derive_pods else (frame, [])
        t_inf = time.perf_counter()
        actions, self.state, info = self.policy.act(view, self.state, now=frame.t)
        inference_s = time.perf_counter() - t_inf
        verdict: GuardVerdict = info["guard_verdict"]
        error = next((i.reason for i in verdict.interventions if i.rule == "inference_error"), None)
        fallback = d.guard.fallback if verdict.source == "fallback" else None
        if fallback is not None:
            why = "; ".join(
                i.reason
                for i in verdict.interventions
                if i.rule in ("stale_telemetry", "inference_error", "circuit_breaker")
            )
            reasons.append(f"fallback {fallback} decided: {why}")
            self.stats.fallbacks[fallback] += 1
        else:
            reasons.append(f"policy {d.policy_name} decided")
        if derived:
            reasons.append(
                f"decided with replicas_starting/replicas_pending = 0 where not exported "
                f"({len(derived)} services): not-ready pods count as pods without metrics"
            )
        for i in verdict.interventions:
            self.stats.interventions[i.rule] += 1
        # what the cluster did, and whether the last recommendation agreed with it
        actual = replicas(frame)
        actual_actions, notes = self.observer.observe(frame)
        reasons.extend(notes)
        if self._prev_recommended is not None:
            for svc, rec in self._prev_recommended.items():
                if rec is not None and actual.get(svc) is not None:
                    self.stats.compared += 1
                    self.stats.agreed += int(rec == actual[svc])
        recommended: dict[str, int | None] = dict(actual)
        for a in actions:
            if isinstance(a, Scale):
                recommended[a.service] = int(a.replicas)
        self._prev_recommended = recommended
        would_act = [a for a in actions if a.kind != "noop"]
        for a in would_act:
            self.stats.would_act[a.kind] += 1
        # drift and forecasts
        drift = self._drift(frame, missing_fraction, tick_no)
        if drift is not None and drift["retrain_recommended"]:
            worst = max(drift["mean_shift"].items(), key=lambda kv: kv[1])
            reasons.append(
                f"retrain recommended: live {worst[0]} is {worst[1]:.1f} training stds from its "
                f"training mean (> {drift['threshold']:g}); PSI {drift['psi'][worst[0]]:.2f}"
            )
        forecast = info.get("forecast") if isinstance(info.get("forecast"), dict) else None
        errors = self._forecast_errors(frame, forecast)
        drift = self._forecast_drift(drift, errors, reasons)
        bundle_sha = info.get("bundle_sha") or d.bundle_sha
        model_version = info.get("model_version") or d.model_version
        record = AuditRecord(
            tick=tick_no,
            t=float(frame.t),
            wall_time=datetime.now(UTC).isoformat(),
            mode=mode,
            bundle_sha=bundle_sha,
            policy=d.policy_name,
            model_version=model_version,
            services=list(self.services),
            telemetry=telemetry,
            missing=missing,
            missing_fraction=missing_fraction,
            query_errors=query_errors,  # type: ignore[arg-type]
            raw_actions=[action_dict(a) for a in info.get("proposed", [])],
            guarded_actions=[action_dict(a) for a in actions],
            interventions=verdict.as_dict()["interventions"],
            fallback=fallback,
            recommended_replicas=recommended,
            actual_replicas=actual,
            actual_actions=actual_actions,
            forecast=forecast,
            drift=None if drift is None else DriftRecord.model_validate(drift),
            reasons=reasons,
            error=error,
            latency_s=max(0.0, time.perf_counter() - started),
            actuated=False,
            inference_s=inference_s,
            breaker_open=verdict.breaker_open,
            query_seconds=live.query_seconds,
        )
        if self.metrics is not None:
            self._export(record, verdict, inference_s, drift, errors, would_act)
        return record

    def _drift(self, frame: Telemetry, missing_fraction: float, tick_no: int) -> Any:
        if self.drift is None:
            return None
        if missing_fraction < 1.0:
            self.drift.observe(frame)
        if tick_no % self.drift_every == 0 or self._drift_report is None:
            self._drift_report = self.drift.report()
        return self._drift_report

    def _forecast_drift(
        self, drift: dict[str, Any] | None, errors: dict[str, float], reasons: list[str]
    ) -> dict[str, Any] | None:
        """Compare the online replica forecast error with the bundle's held-out error."""
        ref = (self.decider.forecast_reference or {}).get("mae", {}).get("replicas_ready")
        if ref is None:
            return drift
        self._realised = (self._realised + list(errors.values()))[-self.drift_window :]
        if len(self._realised) < self.drift_min_samples:
            return drift
        online = float(np.mean(self._realised))
        ratio = online / max(float(ref), FORECAST_ERROR_FLOOR)
        worse = ratio > self.forecast_error_ratio
        out = dict(drift) if drift is not None else {"psi": {}, "retrain_recommended": False}
        out["forecast_error"] = {
            "online_mae": online,
            "validation_mae": float(ref),
            "ratio": ratio,
            "limit": self.forecast_error_ratio,
            "samples": len(self._realised),
        }
        if worse:
            out["retrain_recommended"] = True
            reasons.append(
                f"retrain recommended: replica forecast error {online:.2f} online vs "
                f"{float(ref):.2f} held out ({ratio:.1f}x > {self.forecast_error_ratio:g}x)"
            )
        return out

    def _forecast_errors(
        self, frame: Telemetry, forecast: dict[str, Any] | None
    ) -> dict[str, float]:
        """Realise due forecasts (median vs observed) and queue new ones."""
        out: dict[str, float] = {}
        keep = []
        for due, svc, fld, q50 in self._pending_forecasts:
            if frame.t < due:
                keep.append((due, svc, fld, q50))
                continue
            if fld not in REPLICA_FORECASTS:  # the error metric is in replicas
                continue
            fld = FORECAST_FIELDS.get(fld, fld)
            if svc in self.services and fld in FIELD_INDEX:
                i, col = self.services.index(svc), FIELD_INDEX[fld]
                v = float(frame.values[i, col])
                if bool(frame.mask[i, col]) and math.isfinite(v):
                    out[svc] = abs(v - q50)
        self._pending_forecasts = keep
        for svc, fields in (forecast or {}).items():
            for fld, q in fields.items():
                if "q50" in q and "horizon_s" in q:
                    self._pending_forecasts.append(
                        (frame.t + float(q["horizon_s"]), svc, fld, float(q["q50"]))
                    )
        return out

    def _export(
        self,
        record: AuditRecord,
        verdict: GuardVerdict,
        inference_s: float,
        drift: dict[str, Any] | None,
        errors: dict[str, float],
        would_act: list[Any],
    ) -> None:
        m, ns = self.metrics, self.namespace
        assert m is not None
        for svc in self.services:
            rec, act = record.recommended_replicas.get(svc), record.actual_replicas.get(svc)
            if rec is not None:
                m.recommended.labels(ns, svc).set(rec)
            if act is not None:
                m.actual.labels(ns, svc).set(act)
            per_field = (record.forecast or {}).get(svc, {})
            fc = next((per_field[k] for k in REPLICA_FORECASTS if k in per_field), None)
            if fc:
                m.recommended_lower.labels(ns, svc).set(fc["q05"])
                m.recommended_upper.labels(ns, svc).set(fc["q95"])
        for a in would_act:
            m.would_act.labels(ns, a.kind, verdict.source).inc()
        if self.stats.agreement is not None:
            m.agreement.labels(ns).set(self.stats.agreement)
        m.missing.labels(ns).set(record.missing_fraction)
        for i in verdict.interventions:
            m.interventions.labels(i.rule).inc()
        m.inference.observe(inference_s)
        if record.query_errors:
            m.query_errors.labels(ns).inc(len(record.query_errors))
        if drift is not None:
            for feat, value in drift["psi"].items():
                m.drift.labels(ns, feat).set(value)
            m.retrain.labels(ns).set(1.0 if drift["retrain_recommended"] else 0.0)
        for svc, err in errors.items():
            m.forecast_error.labels(ns, svc).set(err)

    def _failed_record(
        self, live: LiveFrame | None, mode: Mode, tick_no: int, started: float, exc: Exception
    ) -> AuditRecord:
        t = float(live.telemetry.t) if live is not None else time.time()
        return AuditRecord(
            tick=tick_no,
            t=t,
            wall_time=datetime.now(UTC).isoformat(),
            mode=mode,
            bundle_sha=self.decider.bundle_sha,
            policy=self.decider.policy_name,
            model_version=self.decider.model_version,
            services=list(self.services),
            telemetry={},
            missing={},
            missing_fraction=1.0,
            recommended_replicas={s: None for s in self.services},
            actual_replicas={s: None for s in self.services},
            reasons=[f"shadow tick failed: {type(exc).__name__}: {exc}"],
            error=f"{type(exc).__name__}: {exc}",
            latency_s=max(0.0, time.perf_counter() - started),
            actuated=False,
        )

    # -- the runs -----------------------------------------------------------------------------
    def live_tick(self) -> AuditRecord:
        """One live tick: instant queries now, then :meth:`tick`."""
        started = time.perf_counter()
        try:
            live: LiveFrame | None = self.source.frame()
        except Exception:  # the source should never raise; if it does, the tick still counts
            live = None
        return self.tick(live, "live", started)

    def run_live(
        self,
        interval_s: float,
        ticks: int = 0,
        duration_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> ShadowStats:
        """Tick every ``interval_s`` wall seconds until a limit or ``stop``.

        Stops after ``ticks`` ticks of this call (0: no limit), ``duration_s`` wall seconds, or when
        ``stop`` is set.
        """
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        stop = stop or threading.Event()
        begin = time.monotonic()
        next_at = begin
        done = 0
        while not stop.is_set():
            self.live_tick()
            done += 1
            if ticks and done >= ticks:
                break
            if duration_s is not None and time.monotonic() - begin >= duration_s:
                break
            next_at += interval_s
            stop.wait(max(0.0, next_at - time.monotonic()))
        return self.stats

    def replay_frames(
        self, start: float, end: float, step_s: float, chunk: int = 240
    ) -> Iterator[LiveFrame | None]:
        """Frames of ``[start, end]`` every ``step_s``, fetched ``chunk`` steps at a time.

        A chunk whose queries raise (they should not) yields all-missing frames with the reason.
        """
        if not step_s > 0 or end < start:
            raise ValueError(
                f"replay needs step_s > 0 and end >= start; got {step_s}, {start}, {end}"
            )
        n = math.floor((end - start) / step_s + 1e-9) + 1
        for first in range(0, n, chunk):
            count = min(chunk, n - first)
            c_start = start + first * step_s
            c_end = c_start + (count - 1) * step_s
            frames: list[LiveFrame | None]
            try:
                frames = list(self.source.replay(c_start, c_end, step_s))
            except Exception as exc:  # the source should never raise; the ticks still count
                why = f"replay queries failed: {type(exc).__name__}: {exc}"
                frames = [
                    LiveFrame(
                        blank_frame(self.services, round(c_start + k * step_s, 3)), {"*": why}
                    )
                    for k in range(count)
                ]
            yield from frames

    def run_replay(self, start: float, end: float, step_s: float, chunk: int = 240) -> ShadowStats:
        """Replay ``[start, end]`` of the TSDB as fast as the queries return."""
        for live in self.replay_frames(start, end, step_s, chunk):
            started = time.perf_counter() - (live.query_seconds if live is not None else 0.0)
            self.tick(live, "replay", started)
        return self.stats

    def close(self) -> None:
        """Close the audit file and the source's client."""
        self.audit.close()
        self.source.close()
        closer = getattr(self.decider.policy, "close", None)
        if callable(closer):
            closer()
