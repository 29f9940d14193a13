"""``opsworld shadow``: shadow mode against a live (or backfilled) Prometheus.

``opsworld shadow bundle=<dir> prometheus=http://127.0.0.1:9090 queries=kube interval_s=15``
ticks every ``interval_s`` seconds: instant queries through the query profile, the policy
(in process from the bundle, or a running ``opsworld serve`` with ``server=<url>``) behind
the bundle's guard, one audit record per tick in ``out/audit.jsonl`` and, with
``metrics_port``, shadow's own ``/metrics``. With ``start=`` and ``end=`` it replays that
range of the TSDB instead, as fast as the queries return. It never actuates. At the end it
writes ``out/summary.json`` and prints it (:mod:`agents.shadow.loop`, ``docs/live.md``).

The Hydra entry point only calls :func:`run_shadow`.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from experiments.cli import CONFIG_DIR, EXIT_USAGE, ConfigError, structured_config


@dataclass
class ShadowConfig:
    """Schema of ``configs/shadow.yaml``; a wrong key or type fails at start.

    Attributes:
        bundle: Bundle folder (policy in process); exactly one of ``bundle`` and ``server``.
        server: URL of a running ``opsworld serve``.
        model: Server mode: the model name (None: the one the server serves).
        stream_id: Server mode: the stream id whose state the server keeps.
        backend: Bundle mode: ``auto``, ``onnx`` or ``torch``.
        prometheus: Prometheus base URL.
        queries: Query profile name (``configs/queries/``) or YAML path.
        namespace: The profile's ``namespace`` variable and the metrics' ``namespace`` label.
        window: The profile's rate window (None keeps the profile's).
        interval_s: Live mode: seconds between ticks.
        ticks: Live mode: stop after this many ticks (0: no limit).
        duration_s: Live mode: stop after this many wall seconds.
        start: Replay mode: range start (Unix seconds or ISO-8601).
        end: Replay mode: range end.
        step_s: Replay mode: seconds between frames (None: ``interval_s``).
        out: Folder of ``audit.jsonl`` and ``summary.json``.
        audit_max_bytes: Rotate the audit file beyond this size (0: never).
        audit_keep: Rotated audit files kept.
        metrics_port: Port of shadow's ``/metrics`` (0: off).
        metrics_host: Address of shadow's ``/metrics``.
        timeout_s: Per-request timeout (Prometheus and the server).
        retries: Prometheus retries after a timeout, transport error or 5xx.
        drift_window: Ticks in the drift window.
        drift_min_samples: Ticks before drift is reported.
        drift_threshold: Live-mean shift, in training standard deviations, above which
            retraining is recommended.
        forecast_error_ratio: Online replica forecast error, as a multiple of the bundle's
            held-out error, above which retraining is recommended (world-model bundles).
        derive_pod_counts: Decide with unexported ``replicas_starting``/``replicas_pending``
            set to 0 (see :func:`agents.shadow.loop.derive_pod_counts`).
    """

    bundle: str | None = None
    server: str | None = None
    model: str | None = None
    stream_id: str = "shadow"
    backend: str = "auto"
    prometheus: str = "http://127.0.0.1:9090"
    queries: str = "kube"
    namespace: str = "opsworld"
    window: str | None = None
    interval_s: float = 15.0
    ticks: int = 0
    duration_s: float | None = None
    start: str | None = None
    end: str | None = None
    step_s: float | None = None
    out: str = "runs/shadow"
    audit_max_bytes: int = 50 << 20
    audit_keep: int = 5
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    timeout_s: float = 5.0
    retries: int = 2
    drift_window: int = 240
    drift_min_samples: int = 20
    drift_threshold: float = 3.0
    forecast_error_ratio: float = 2.0
    derive_pod_counts: bool = True


SCHEMA = ShadowConfig
"""The config schema (used by the ``opsworld`` dispatcher to check override keys)."""


CONFIG_FILE = Path(CONFIG_DIR) / "shadow.yaml"
"""The command's YAML (defaults and help)."""


def register_configs() -> None:
    """Register the schema and ``configs/shadow.yaml`` in Hydra's ConfigStore (idempotent).

    The command composes from the ConfigStore rather than from ``configs/``: there,
    ``prometheus/`` and ``queries/`` are folders, which Hydra would take for config groups
    and refuse ``prometheus=<url>`` and ``queries=<profile>``.
    """
    store = ConfigStore.instance()
    store.store(name="shadow_schema", node=ShadowConfig)
    store.store(name="shadow", node=OmegaConf.load(CONFIG_FILE))


def parse_time(value: str | float, key: str) -> float:
    """Unix seconds from a number or an ISO-8601 time (``Z`` or an offset; naive = UTC).

    Raises:
        ConfigError: Naming ``key`` and the accepted forms.
    """
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        text = str(value).replace("Z", "+00:00")
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{key}={value!r}: give Unix seconds or an ISO-8601 time (2026-01-01T00:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        from datetime import UTC

        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def validate(conf: ShadowConfig) -> tuple[float, float] | None:
    """Check the combination of options; the replay range when ``start``/``end`` are set.

    Raises:
        ConfigError: Naming the option and the fix.
    """
    if bool(conf.bundle) == bool(conf.server):
        raise ConfigError(
            "give exactly one of bundle=<bundle folder> (policy in process) and "
            "server=<url of opsworld serve>"
        )
    if conf.backend not in ("auto", "onnx", "torch"):
        raise ConfigError(f"backend={conf.backend!r}: auto, onnx or torch")
    if not conf.interval_s > 0:
        raise ConfigError(f"interval_s={conf.interval_s}: must be > 0")
    if conf.step_s is not None and not conf.step_s > 0:
        raise ConfigError(f"step_s={conf.step_s}: must be > 0")
    if conf.ticks < 0:
        raise ConfigError(f"ticks={conf.ticks}: must be >= 0 (0: no limit)")
    if not 0 <= conf.metrics_port < 65536:
        raise ConfigError(f"metrics_port={conf.metrics_port}: 0 (off) or 1..65535")
    if conf.audit_max_bytes < 0 or conf.audit_keep < 1:
        raise ConfigError("audit_max_bytes must be >= 0 and audit_keep >= 1")
    if (conf.start is None) != (conf.end is None):
        raise ConfigError("replay needs both start= and end= (or neither for live mode)")
    if conf.start is None or conf.end is None:
        return None
    start, end = parse_time(conf.start, "start"), parse_time(conf.end, "end")
    if end < start:
        raise ConfigError(f"end={conf.end} is before start={conf.start}")
    return start, end


def build_loop(conf: ShadowConfig) -> Any:
    """The :class:`~agents.shadow.loop.ShadowLoop` for ``conf`` (metrics served if asked).

    Raises:
        ConfigError: A bad profile, a refused bundle, or a server that does not answer.
    """
    from agents.bundle import BundleError
    from agents.shadow.audit import AuditWriter
    from agents.shadow.deciders import DeciderError, bundle_decider, remote_decider
    from agents.shadow.loop import ShadowLoop
    from agents.shadow.metrics import ShadowMetrics
    from envs.live.profile import ProfileError, load_profile
    from envs.live.prometheus import PrometheusSource

    try:
        profile = load_profile(conf.queries)
        values = {"namespace": conf.namespace} if "namespace" in profile.variables else {}
        if conf.window is not None:
            values["window"] = conf.window
        profile = profile.with_variables(**values)
    except ProfileError as err:
        raise ConfigError(f"queries={conf.queries}: {err}") from None
    try:
        if conf.bundle:
            decider = bundle_decider(conf.bundle, conf.backend)
        else:
            assert conf.server is not None
            decider = remote_decider(
                conf.server, conf.model, stream_id=conf.stream_id, timeout_s=conf.timeout_s
            )
    except BundleError as err:
        raise ConfigError(f"bundle refused: {err}") from None
    except DeciderError as err:
        raise ConfigError(str(err)) from None
    source = PrometheusSource(
        conf.prometheus,
        profile,
        services=decider.spec.services,
        timeout_s=conf.timeout_s,
        retries=conf.retries,
    )
    metrics = ShadowMetrics(conf.namespace)
    audit = AuditWriter(Path(conf.out) / "audit.jsonl", conf.audit_max_bytes, conf.audit_keep)
    loop = ShadowLoop(
        decider,
        source,
        audit,
        metrics,
        drift_window=conf.drift_window,
        drift_min_samples=conf.drift_min_samples,
        drift_threshold=conf.drift_threshold,
        forecast_error_ratio=conf.forecast_error_ratio,
        derive_pods=conf.derive_pod_counts,
    )
    if conf.metrics_port:
        port = metrics.serve(conf.metrics_port, conf.metrics_host)
        print(f"shadow metrics on http://{conf.metrics_host}:{port}/metrics", file=sys.stderr)
    return loop


def run_shadow(
    cfg: DictConfig | ShadowConfig | Mapping[str, Any], stop: threading.Event | None = None
) -> dict[str, Any]:
    """Run shadow mode for ``cfg``; the summary (also written to ``out/summary.json``).

    Raises:
        ConfigError: A bad option (named), a refused bundle or an unreachable server at start.
    """
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    conf = structured_config(ShadowConfig, cfg, "shadow")
    replay = validate(conf)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per query otherwise
    loop = build_loop(conf)
    try:
        if replay is not None:
            step = conf.step_s or conf.interval_s
            stats = loop.run_replay(replay[0], replay[1], step)
            mode = "replay"
        else:
            stats = loop.run_live(conf.interval_s, conf.ticks, conf.duration_s, stop)
            mode = "live"
    except KeyboardInterrupt:
        stats, mode = loop.stats, "replay" if replay else "live"
    finally:
        loop.close()
        if loop.metrics is not None:
            loop.metrics.close()
    summary = {
        "mode": mode,
        "policy": loop.decider.policy_name,
        "bundle_sha": loop.decider.bundle_sha,
        "audit": str(Path(conf.out) / "audit.jsonl"),
        **stats.as_dict(),
    }
    Path(conf.out, "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@hydra.main(version_base="1.3", config_path=None, config_name="shadow")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        summary = run_shadow(cfg)
    except ConfigError as err:
        print(f"opsworld shadow: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    print(json.dumps(summary))


def main() -> None:
    """Console entry: register the schema, then let Hydra parse ``sys.argv``."""
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
