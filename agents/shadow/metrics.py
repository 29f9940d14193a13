"""Shadow mode's own ``/metrics`` (its own registry; a small HTTP server on 127.0.0.1).

The names are those the Grafana dashboards and ``configs/prometheus/shadow.rules.yml``
read (``docs/live.md``); every ``opsworld_shadow_*`` series carries ``namespace``:

* ``opsworld_shadow_recommended_replicas{namespace,deployment}`` (and ``_lower``/``_upper``
  when the policy forecasts replicas), ``opsworld_shadow_actual_replicas{namespace,deployment}``;
* ``opsworld_shadow_would_act_total{namespace,action,reason}``: guarded recommendations that
  would have changed something (``reason``: ``policy`` or ``fallback``);
* ``opsworld_shadow_agreement_ratio{namespace}``: share of (tick, service) pairs where the
  recommended replicas equal the desired replicas observed at the next tick;
* ``opsworld_shadow_missing_telemetry_ratio{namespace}``: the last frame's missing share;
* ``opsworld_shadow_drift_psi{namespace,feature}``, ``opsworld_shadow_retrain_recommended``;
* ``opsworld_shadow_forecast_abs_error{namespace,deployment}``;
* ``opsworld_guard_interventions_total{rule}``, ``opsworld_policy_inference_seconds`` (the
  policy plus guard, as the server exports it);
* ``opsworld_shadow_ticks_total{namespace,mode,outcome}`` (``ok``, ``fallback``, ``error``),
  ``opsworld_shadow_tick_seconds`` (queries -> recommendation -> record),
  ``opsworld_shadow_query_errors_total{namespace}``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from agents.guard import RULES
from agents.serving.schemas import INFERENCE_BUCKETS_S
from envs.core.actions import ACTION_KINDS

TICK_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class ShadowMetrics:
    """The registry and the series of one shadow run.

    Args:
        namespace: The ``namespace`` label of every ``opsworld_shadow_*`` series.
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        r = self.registry = CollectorRegistry()
        ns = ["namespace"]
        self.recommended = Gauge(
            "opsworld_shadow_recommended_replicas",
            "Replicas the shadow policy recommends.",
            [*ns, "deployment"],
            registry=r,
        )
        self.recommended_lower = Gauge(
            "opsworld_shadow_recommended_replicas_lower",
            "Lower end (q05) of the policy's replica forecast.",
            [*ns, "deployment"],
            registry=r,
        )
        self.recommended_upper = Gauge(
            "opsworld_shadow_recommended_replicas_upper",
            "Upper end (q95) of the policy's replica forecast.",
            [*ns, "deployment"],
            registry=r,
        )
        self.actual = Gauge(
            "opsworld_shadow_actual_replicas",
            "Desired replicas observed on the cluster.",
            [*ns, "deployment"],
            registry=r,
        )
        self.would_act = Counter(
            "opsworld_shadow_would_act",
            "Guarded recommendations that would have acted, by action kind and who decided.",
            [*ns, "action", "reason"],
            registry=r,
        )
        self.agreement = Gauge(
            "opsworld_shadow_agreement_ratio",
            "Share of (tick, service) pairs where the recommendation equals the next observed "
            "desired replicas.",
            ns,
            registry=r,
        )
        self.missing = Gauge(
            "opsworld_shadow_missing_telemetry_ratio",
            "Share of the last frame's per-service gauges that are missing.",
            ns,
            registry=r,
        )
        self.drift = Gauge(
            "opsworld_shadow_drift_psi",
            "Population Stability Index of a live input feature vs the training reference.",
            [*ns, "feature"],
            registry=r,
        )
        self.retrain = Gauge(
            "opsworld_shadow_retrain_recommended",
            "1 when some feature's PSI exceeds the threshold.",
            ns,
            registry=r,
        )
        self.forecast_error = Gauge(
            "opsworld_shadow_forecast_abs_error",
            "Absolute error of the policy's last realised median forecast.",
            [*ns, "deployment"],
            registry=r,
        )
        self.interventions = Counter(
            "opsworld_guard_interventions", "Guard interventions by rule.", ["rule"], registry=r
        )
        self.inference = Histogram(
            "opsworld_policy_inference_seconds",
            "Seconds per decision (policy and guard).",
            buckets=INFERENCE_BUCKETS_S,
            registry=r,
        )
        self.ticks = Counter(
            "opsworld_shadow_ticks",
            "Ticks by mode and outcome (ok, fallback, error).",
            [*ns, "mode", "outcome"],
            registry=r,
        )
        self.tick_seconds = Histogram(
            "opsworld_shadow_tick_seconds",
            "Seconds per tick: queries -> recommendation -> audit record.",
            ns,
            buckets=TICK_BUCKETS_S,
            registry=r,
        )
        self.query_errors = Counter(
            "opsworld_shadow_query_errors",
            "Queries that gave no usable answer.",
            ns,
            registry=r,
        )
        self._server: Any = None
        # every label set exists from the start (0), so rate() and increase() see the first
        # increment and dashboards show 0 rather than "no data"
        for kind in ACTION_KINDS:
            if kind != "noop":
                for reason in ("policy", "fallback"):
                    self.would_act.labels(namespace, kind, reason)
        for rule in RULES:
            self.interventions.labels(rule)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` in a daemon thread; the port (0 picks one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        """Stop the HTTP server (if any)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
