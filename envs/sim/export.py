"""Telemetry frames as one flat table, written to and read from Parquet or CSV.

The table is in long format: one row per ``(t, service)``, rows ordered by time and then by
service (the frames' service order). Columns, in order:

================================  ===========================================================
column                            meaning
================================  ===========================================================
``t``                             scrape time, seconds (float64)
``service``                       service name (string)
:data:`SERVICE_FIELDS`            the per-service gauges, raw units (float64)
:data:`COUNTER_FIELDS`            cumulative attempt counters ``arrived``, ``completed``,
                                  ``failed``, ``dropped`` (float64)
``attempts_in_flight``            ``Telemetry.in_flight``: attempts in flight at ``t``, the
                                  conservation term (the gauge ``in_flight`` counts only
                                  requests whose caller still waits)
``hist_le_<bound>``               cumulative latency-histogram buckets, one per bound of
                                  :data:`LATENCY_BUCKETS_S` (``hist_le_inf`` last)
``cluster_<field>``               the cluster gauges of :data:`CLUSTER_FIELDS`, repeated on
                                  every service row of the same scrape
================================  ===========================================================

So ``arrived == completed + failed + dropped + attempts_in_flight`` holds on every row.
Missing values are NaN in memory and null in the files (an empty cell in CSV); they are never
written as zero, and :func:`read_telemetry` turns nulls back into NaN. :func:`table_to_frames`
inverts :func:`frames_to_table` exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from envs.core.telemetry import (
    CLUSTER_FIELDS,
    COUNTER_FIELDS,
    LATENCY_BUCKETS_S,
    SERVICE_FIELDS,
    Telemetry,
)

TelemetryFormat = Literal["parquet", "csv"]
FORMATS: tuple[str, ...] = ("parquet", "csv")
SUFFIXES: dict[str, str] = {"parquet": ".parquet", "csv": ".csv"}

IN_FLIGHT_COLUMN = "attempts_in_flight"
HIST_COLUMNS: tuple[str, ...] = tuple(
    "hist_le_inf" if not np.isfinite(b) else f"hist_le_{b:g}" for b in LATENCY_BUCKETS_S
)
CLUSTER_COLUMNS: tuple[str, ...] = tuple(f"cluster_{f}" for f in CLUSTER_FIELDS)
COLUMNS: tuple[str, ...] = (
    "t",
    "service",
    *SERVICE_FIELDS,
    *COUNTER_FIELDS,
    IN_FLIGHT_COLUMN,
    *HIST_COLUMNS,
    *CLUSTER_COLUMNS,
)
"""All table columns in order; every one but ``service`` is float64."""

SCHEMA_VERSION = "1"


def frames_to_table(frames: list[Telemetry]) -> dict[str, np.ndarray]:
    """Flatten frames into the long table described in the module docstring.

    Args:
        frames: Frames of one run; all must list the same services in the same order.

    Returns:
        Column name -> 1-D array of length ``len(frames) * S`` (``service`` is a ``str``
        array, everything else float64 with NaN where missing).
    """
    if not frames:
        raise ValueError("frames_to_table: no frames to export")
    services = frames[0].services
    for f in frames:
        if f.services != services:
            raise ValueError(
                f"frames_to_table: frame at t={f.t:g} lists services {f.services}, "
                f"the first frame lists {services}; export one run at a time"
            )
    n, s = len(frames), len(services)
    values = np.stack([f.values for f in frames])  # (T, S, F)
    counters = np.stack([f.counters for f in frames])  # (T, S, C)
    in_flight = np.stack([f.in_flight for f in frames])  # (T, S)
    hist = np.stack([f.histogram for f in frames])  # (T, S, B)
    cluster = np.stack([f.cluster for f in frames])  # (T, K)
    assert values.shape == (n, s, len(SERVICE_FIELDS)), values.shape
    assert counters.shape == (n, s, len(COUNTER_FIELDS)), counters.shape
    assert in_flight.shape == (n, s), in_flight.shape
    assert hist.shape == (n, s, len(LATENCY_BUCKETS_S)), hist.shape
    assert cluster.shape == (n, len(CLUSTER_FIELDS)), cluster.shape

    table: dict[str, np.ndarray] = {
        "t": np.repeat(np.array([f.t for f in frames], dtype=np.float64), s),
        "service": np.tile(np.array(services, dtype=str), n),
    }
    for i, name in enumerate(SERVICE_FIELDS):
        table[name] = values[:, :, i].reshape(-1).astype(np.float64)
    for i, name in enumerate(COUNTER_FIELDS):
        table[name] = counters[:, :, i].reshape(-1).astype(np.float64)
    table[IN_FLIGHT_COLUMN] = in_flight.reshape(-1).astype(np.float64)
    for i, name in enumerate(HIST_COLUMNS):
        table[name] = hist[:, :, i].reshape(-1).astype(np.float64)
    for i, name in enumerate(CLUSTER_COLUMNS):
        table[name] = np.repeat(cluster[:, i].astype(np.float64), s)
    return table


def table_to_frames(table: dict[str, np.ndarray]) -> list[Telemetry]:
    """Rebuild frames from a table made by :func:`frames_to_table` (or read back from disk).

    Masks are derived from NaNs, as :func:`envs.core.telemetry.make_frame` does.
    """
    missing = [c for c in COLUMNS if c not in table]
    if missing:
        raise ValueError(f"table_to_frames: missing columns {missing}")
    t = np.asarray(table["t"], dtype=np.float64)
    times, first = np.unique(t, return_index=True)
    times = times[np.argsort(first)]
    n = len(times)
    if n == 0 or len(t) % n:
        raise ValueError(f"table_to_frames: {len(t)} rows do not split into {n} scrapes")
    s = len(t) // n
    services = tuple(str(x) for x in np.asarray(table["service"])[:s])

    def block(cols: tuple[str, ...]) -> np.ndarray:
        return np.stack([np.asarray(table[c], dtype=np.float64) for c in cols], axis=-1).reshape(
            n, s, len(cols)
        )

    values = block(SERVICE_FIELDS)
    counters = block(COUNTER_FIELDS)
    hist = block(HIST_COLUMNS)
    in_flight = np.asarray(table[IN_FLIGHT_COLUMN], dtype=np.float64).reshape(n, s)
    cluster = block(CLUSTER_COLUMNS)[:, 0, :]
    frames = []
    for k in range(n):
        frames.append(
            Telemetry(
                t=float(times[k]),
                services=services,
                values=values[k].copy(),
                mask=~np.isnan(values[k]),
                counters=counters[k].copy(),
                in_flight=in_flight[k].copy(),
                histogram=hist[k].copy(),
                cluster=cluster[k].copy(),
                cluster_mask=~np.isnan(cluster[k]),
            )
        )
    return frames


def _to_arrow(table: dict[str, np.ndarray], services: tuple[str, ...]) -> pa.Table:
    arrays = []
    for name in COLUMNS:
        col = table[name]
        if name == "service":
            arrays.append(pa.array(col.tolist(), type=pa.string()))
        else:
            col = np.asarray(col, dtype=np.float64)
            arrays.append(pa.array(col, type=pa.float64(), mask=np.isnan(col)))
    metadata = {
        "opsworld.telemetry.version": SCHEMA_VERSION,
        "opsworld.telemetry.services": ",".join(services),
    }
    return pa.Table.from_arrays(arrays, names=list(COLUMNS)).replace_schema_metadata(metadata)


def format_for(path: str | Path) -> TelemetryFormat:
    """The telemetry format implied by a file suffix (``.parquet`` or ``.csv``)."""
    suffix = Path(path).suffix.lower()
    for fmt, suf in SUFFIXES.items():
        if suffix == suf:
            return fmt  # type: ignore[return-value]
    raise ValueError(
        f"cannot tell the telemetry format of {str(path)!r}; name it *.parquet or *.csv"
    )


def write_telemetry(
    frames: list[Telemetry], path: str | Path, format: TelemetryFormat | None = None
) -> Path:
    """Write frames as the long table to ``path`` (Parquet or CSV, via pyarrow).

    Args:
        frames: Frames of one run.
        path: Output file; its parent folder is created.
        format: ``"parquet"`` or ``"csv"``; by default taken from the suffix of ``path``.

    Returns:
        The path written.
    """
    fmt = format if format is not None else format_for(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown telemetry format {fmt!r}; use one of {list(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrow = _to_arrow(frames_to_table(frames), frames[0].services)
    if fmt == "parquet":
        pq.write_table(arrow, path)
    else:
        pa_csv.write_csv(arrow, path)
    return path


def read_telemetry(path: str | Path) -> dict[str, np.ndarray]:
    """Read a table written by :func:`write_telemetry`; nulls come back as NaN.

    The format is taken from the suffix (``.parquet`` or ``.csv``).
    """
    path = Path(path)
    fmt = format_for(path)
    if fmt == "parquet":
        arrow = pq.read_table(path)
    else:
        types = {c: pa.float64() for c in COLUMNS if c != "service"}
        types["service"] = pa.string()
        arrow = pa_csv.read_csv(
            path,
            convert_options=pa_csv.ConvertOptions(
                column_types=types, strings_can_be_null=False, null_values=[""]
            ),
        )
    out: dict[str, np.ndarray] = {}
    for name in arrow.column_names:
        col = arrow.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            out[name] = np.array(col.to_pylist(), dtype=str)
        else:
            out[name] = col.to_numpy().astype(np.float64)
    return out
