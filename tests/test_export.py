"""Telemetry table export (Parquet/CSV round trip, NaN kept as null) and the timeline plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from envs.core.actions import DrainNode, Noop, Restart, Rollback, Scale, ShedLoad
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
from envs.scenarios.schema import Scenario
from envs.sim.export import (
    CLUSTER_COLUMNS,
    COLUMNS,
    HIST_COLUMNS,
    IN_FLIGHT_COLUMN,
    frames_to_table,
    read_telemetry,
    table_to_frames,
    write_telemetry,
)
from envs.sim.faults import FaultRecord
from envs.sim.plots import _highlighted, action_label, fault_spans, plot_timeline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic(n_services: int = 3, n_frames: int = 6, seed: int = 0) -> list[Telemetry]:
    """Frames with known values, NaNs at t=0 (no interval yet) and a scrape gap at k=3."""
    rng = np.random.default_rng(seed)
    names = tuple(["frontend"] + [f"svc{i}" for i in range(1, n_services)])
    cum = np.zeros((n_services, len(COUNTER_FIELDS)))
    hist = np.zeros((n_services, len(LATENCY_BUCKETS_S)))
    frames = []
    for k in range(n_frames):
        v = rng.uniform(0.1, 5.0, size=(n_services, len(SERVICE_FIELDS)))
        if k == 0:
            v[:, FIELD_INDEX["rps"]] = np.nan
            v[:, FIELD_INDEX["p99"]] = np.nan
        if k == 3:
            v[1, :] = np.nan  # one service not scraped
        v[2 % n_services, FIELD_INDEX["slo_violation_s"]] = np.nan
        v[:, FIELD_INDEX["error_rate"]] = 0.0 if k == 1 else v[:, FIELD_INDEX["error_rate"]]
        completed = rng.integers(50, 100, n_services)
        failed = rng.integers(0, 5, n_services)
        dropped = rng.integers(0, 3, n_services)
        in_flight = rng.integers(0, 7, n_services).astype(float)
        cum[:, 1] += completed
        cum[:, 2] += failed
        cum[:, 3] += dropped
        cum[:, 0] = cum[:, 1] + cum[:, 2] + cum[:, 3] + in_flight
        hist += np.sort(rng.integers(0, 10, (n_services, len(LATENCY_BUCKETS_S))), axis=1)
        c = rng.uniform(0, 3, len(CLUSTER_FIELDS))
        c[CLUSTER_INDEX["shed_fraction"]] = np.nan
        frames.append(
            make_frame(15.0 * k, names, v, cum.copy(), in_flight, np.cumsum(hist, axis=1), c)
        )
    return frames


def scenario_for(frames: list[Telemetry], horizon_s: float | None = None) -> Scenario:
    names = frames[0].services
    return Scenario.model_validate(
        {
            "name": "synthetic",
            "horizon_s": horizon_s or max(frames[-1].t, 15.0),
            "topology": {
                "entry": names[0],
                "services": [{"name": n} for n in names],
                "edges": [{"src": names[0], "dst": n} for n in names[1:]],
            },
            "traffic": {"bursts": [{"at_s": 15.0, "duration_s": 30.0}]},
        }
    )


def assert_tables_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for k in a:
        if k == "service":
            assert a[k].tolist() == b[k].tolist()
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # NaN == NaN here


def test_table_layout_long_format() -> None:
    frames = synthetic(n_services=3, n_frames=4)
    table = frames_to_table(frames)
    assert tuple(table) == COLUMNS
    assert all(len(col) == 12 for col in table.values())
    assert table["t"].tolist() == [0.0] * 3 + [15.0] * 3 + [30.0] * 3 + [45.0] * 3
    assert table["service"].tolist() == ["frontend", "svc1", "svc2"] * 4
    row = 3 * 2 + 1  # frame 2, service svc1
    for i, f in enumerate(SERVICE_FIELDS):
        assert table[f][row] == frames[2].values[1, i]
    assert table["arrived"][row] == frames[2].counter("arrived")[1]
    assert table[IN_FLIGHT_COLUMN][row] == frames[2].in_flight[1]
    assert table[HIST_COLUMNS[-1]][row] == frames[2].histogram[1, -1]
    assert HIST_COLUMNS[0] == "hist_le_0.005" and HIST_COLUMNS[-1] == "hist_le_inf"
    # cluster gauges repeated on each service row of the scrape
    cost = table["cluster_cost_total"].reshape(4, 3)
    np.testing.assert_array_equal(cost, np.repeat(cost[:, :1], 3, axis=1))
    assert cost[2, 0] == frames[2].cluster_value("cost_total")
    assert np.isnan(table["cluster_shed_fraction"]).all()


def test_conservation_columns() -> None:
    t = frames_to_table(synthetic())
    lhs = t["arrived"]
    rhs = t["completed"] + t["failed"] + t["dropped"] + t[IN_FLIGHT_COLUMN]
    np.testing.assert_allclose(lhs, rhs)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_round_trip_keeps_nan_as_null(tmp_path: Path, fmt: str) -> None:
    frames = synthetic()
    path = write_telemetry(frames, tmp_path / f"telemetry.{fmt}", fmt)  # type: ignore[arg-type]
    assert path.stat().st_size > 0
    back = read_telemetry(path)
    expected = frames_to_table(frames)
    assert_tables_equal(back, expected)
    # NaNs are nulls in the file, and the zeros (error_rate at k=1) stay zeros
    arrow = pq.read_table(path) if fmt == "parquet" else pa_csv.read_csv(path)
    assert arrow.column("rps").null_count == int(np.isnan(expected["rps"]).sum()) > 0
    assert arrow.column("slo_violation_s").null_count == 7  # svc2 always, svc1 at k=3
    assert (back["error_rate"][3:6] == 0.0).all()
    assert np.isnan(back["p99"][:3]).all() and not np.isnan(back["p99"][3:9]).any()
    assert np.isnan(back["p99"][10]) and np.isnan(back["rps"][10])  # svc1 not scraped at k=3


def test_round_trip_to_frames_is_exact(tmp_path: Path) -> None:
    frames = synthetic(n_frames=5)
    back = table_to_frames(read_telemetry(write_telemetry(frames, tmp_path / "x.parquet")))
    assert len(back) == len(frames)
    for a, b in zip(frames, back, strict=True):
        assert a.t == b.t and a.services == b.services
        for field in ("values", "mask", "counters", "in_flight", "histogram", "cluster"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
        np.testing.assert_array_equal(a.cluster_mask, b.cluster_mask)
    assert not back[3].observed("rps")[1] and back[3].observed("rps")[0]


def test_csv_is_plain_text_with_empty_cells_for_missing(tmp_path: Path) -> None:
    path = write_telemetry(synthetic(n_frames=2), tmp_path / "t.csv")
    header, first = path.read_text().splitlines()[:2]
    cols = [c.strip('"') for c in header.split(",")]
    assert cols == list(COLUMNS)
    cells = first.split(",")
    assert cells[cols.index("rps")] == ""  # missing: empty, not 0
    assert cells[cols.index("service")].strip('"') == "frontend"


def test_errors_name_the_problem(tmp_path: Path) -> None:
    frames = synthetic()
    with pytest.raises(ValueError, match="parquet or"):
        write_telemetry(frames, tmp_path / "t.txt")
    with pytest.raises(ValueError, match="unknown telemetry format"):
        write_telemetry(frames, tmp_path / "t.parquet", "hdf5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no frames"):
        frames_to_table([])
    other = synthetic(n_services=2)
    with pytest.raises(ValueError, match="one run at a time"):
        frames_to_table([frames[0], other[1]])
    assert len(CLUSTER_COLUMNS) == len(CLUSTER_FIELDS)


@pytest.mark.parametrize("n_services", [3, 40])
def test_plot_written(tmp_path: Path, n_services: int) -> None:
    frames = synthetic(n_services=n_services, n_frames=20)
    out = plot_timeline(frames, scenario_for(frames), tmp_path / "sub" / "timeline.png")
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000


def test_plot_single_all_missing_frame(tmp_path: Path) -> None:
    frames = synthetic(n_frames=1)
    frames = [
        make_frame(
            0.0,
            frames[0].services,
            np.full_like(frames[0].values, np.nan),
            frames[0].counters,
            frames[0].in_flight,
            frames[0].histogram,
            np.full(len(CLUSTER_FIELDS), np.nan),
        )
    ]
    out = plot_timeline(frames, scenario_for(frames, 60.0), tmp_path / "t.png")
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_plot_highlights_entry_then_busiest() -> None:
    frames = synthetic(n_services=12, n_frames=3)
    util = FIELD_INDEX["cpu_util"]
    for f in frames:
        f.values[:, util] = np.arange(12) / 12.0  # svc11 busiest
        f.values[0, util] = 0.0
    shown = _highlighted(frames, entry=0, top_k=3)
    assert shown == [0, 11, 10, 9]


def test_action_labels_name_kind_and_target() -> None:
    assert action_label(Scale("db", 4)) == "scale db 4"
    assert action_label(Restart("api")) == "restart api"
    assert action_label(Rollback("api")) == "rollback api"
    assert action_label(ShedLoad(0.25)) == "shed 0.25"
    assert action_label(DrainNode(2)) == "drain node2"
    assert action_label(Noop()) == "noop"


def test_fault_spans_run_from_onset_to_cause_end() -> None:
    faults = [
        FaultRecord(0, "bad_deploy", "api", onset=300.0, end=420.0, started=True),
        FaultRecord(1, "crash_loop", "db", onset=900.0, end=None, started=True),
        FaultRecord(2, "node_loss", "node1", onset=5000.0, end=None, started=False),
    ]
    assert fault_spans(faults, horizon_s=1800.0) == [
        (300.0, 420.0, "bad_deploy api"),
        (900.0, 1800.0, "crash_loop db"),
    ]


def test_plot_with_faults_and_many_actions(tmp_path: Path) -> None:
    frames = synthetic(n_services=3, n_frames=20)
    actions = [(float(10 * k), Restart(frames[0].services[k % 3])) for k in range(40)]
    faults = [FaultRecord(0, "crash_loop", frames[0].services[1], 50.0, 120.0, True)]
    plain = plot_timeline(frames, scenario_for(frames), tmp_path / "plain.png")
    rich = plot_timeline(
        frames, scenario_for(frames), tmp_path / "rich.png", actions=actions, faults=faults
    )
    assert rich.read_bytes().startswith(PNG_MAGIC)
    assert rich.read_bytes() != plain.read_bytes()
