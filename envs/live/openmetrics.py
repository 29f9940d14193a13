"""A simulated run as OpenMetrics text, for ``promtool tsdb create-blocks-from openmetrics``.

:func:`write_openmetrics` turns the frames of a run into the series of
:class:`~envs.live.cluster_metrics.ClusterMetrics` with one timestamp per frame (seconds,
``start_unix + frame.t``), grouped as OpenMetrics wants: each family once (``# HELP``,
``# TYPE``), each series' points in time order, counters with ``_total``, histograms as
``_bucket``/``_sum``/``_count`` points, and a trailing ``# EOF``. Backfill it with::

    promtool tsdb create-blocks-from openmetrics run.om DATA_DIR

and start Prometheus on ``DATA_DIR`` with a ``--storage.tsdb.retention.time`` longer than the
data's age (docs/live.md).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from pathlib import Path

from envs.core.telemetry import Telemetry
from envs.live.cluster_metrics import ClusterMetrics, Family, Kind, Labels


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@functools.lru_cache(maxsize=65536)
def format_labels(labels: Labels) -> str:
    """``{a="x",b="y"}`` (empty string for no labels)."""
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def format_value(value: float) -> str:
    """A sample value as the exposition formats spell it (``NaN``, ``+Inf``, ``-Inf``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


@functools.lru_cache(maxsize=65536)
def _series_key(kind: Kind, name: str, labels: Labels) -> tuple[str, Labels]:
    """Series identity of a sample; a histogram's buckets, sum and count form one point."""
    if kind is Kind.histogram:
        return ("", tuple(kv for kv in labels if kv[0] != "le"))
    return (name, labels)


def openmetrics_lines(
    frames: Iterable[Telemetry],
    services: tuple[str, ...],
    start_unix: float,
    namespace: str = "opsworld",
) -> list[str]:
    """The OpenMetrics text of a run, one line per element, ``# EOF`` last.

    Args:
        frames: The run's frames in time order.
        services: Their services (row order).
        start_unix: Unix time (seconds) of the run's ``t = 0``.
        namespace: The ``namespace`` label.
    """
    cm = ClusterMetrics(services, namespace)
    meta: dict[str, Family] = {}
    # family -> series -> [(timestamp, [(sample name, labels, value), ...])]
    points: dict[str, dict[tuple[str, Labels], list[tuple[float, list]]]] = {}
    for frame in frames:
        ts = start_unix + frame.t
        for fam in cm.update(frame):
            meta.setdefault(fam.name, fam)
            series = points.setdefault(fam.name, {})
            for name, labels, value in fam.samples:
                pts = series.setdefault(_series_key(fam.kind, name, labels), [])
                if not pts or pts[-1][0] != ts:
                    pts.append((ts, []))
                pts[-1][1].append((name, labels, value))
    lines: list[str] = []
    for fname, fam in meta.items():
        lines.append(f"# HELP {fname} {fam.help}")
        lines.append(f"# TYPE {fname} {fam.kind.value}")
        for pts in points[fname].values():
            for ts, samples in pts:
                stamp = f"{ts:.3f}"
                lines.extend(
                    f"{name}{format_labels(labels)} {format_value(value)} {stamp}"
                    for name, labels, value in samples
                )
    lines.append("# EOF")
    return lines


def write_openmetrics(
    frames: Iterable[Telemetry],
    services: tuple[str, ...],
    path: str | Path,
    start_unix: float,
    namespace: str = "opsworld",
) -> Path:
    """Write :func:`openmetrics_lines` to ``path`` (parent folders created); return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(openmetrics_lines(frames, services, start_unix, namespace)) + "\n")
    return path
