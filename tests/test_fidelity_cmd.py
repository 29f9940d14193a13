"""``opsworld fidelity``: per-run metrics, the agreement verdicts, and tiny end-to-end runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.evaluation.evaluate import PolicySpec, resolve_policy
from agents.evaluation.fidelity import (
    JUDGED,
    METRICS,
    RunMetrics,
    RunTask,
    check_fidelity,
    compare_metrics,
    measure,
    overall_verdict,
    recovery_time,
    run_task,
    spot_entries,
    tolerances,
    window_edges,
)
from agents.rollout import rollout
from envs.core.policy import Policy
from envs.scenarios.loader import load_scenario
from envs.scenarios.schema import FlashCrowdFault, Scenario
from envs.sim.faults import FaultRecord
from envs.sim.simulator import Simulator

REPO = Path(__file__).resolve().parents[1]
OPSWORLD = Path(sys.executable).with_name("opsworld")
CROWD = [{"kind": "flash_crowd", "at_s": 20.0, "factor": 2.0, "ramp_s": 10.0, "duration_s": 20.0}]


def tiny(horizon: float = 60.0, faults: list[dict] | None = None) -> Scenario:
    return load_scenario(
        "chain3", {"horizon_s": horizon, "faults": CROWD if faults is None else faults}
    )


def metrics(seed: int, fidelity: str = "request", **values: float | None) -> RunMetrics:
    full: dict[str, float | None] = {m: 0.0 for m in METRICS}
    full.update(values)
    return RunMetrics(fidelity, seed, full, True, 10_000.0, [], [], [])


# ------------------------------------------------------------------------------ one run


def test_window_edges_bound_aligned_windows() -> None:
    t = np.arange(0.0, 286.0, 15.0)  # 0, 15, ..., 285
    np.testing.assert_array_equal(window_edges(t, 60.0), [0, 4, 8, 12, 16, 19])
    np.testing.assert_array_equal(window_edges(t, 15.0), np.arange(20))
    with pytest.raises(ValueError, match="window_s"):
        window_edges(t, 0.0)


def test_recovery_time_by_hand() -> None:
    t = np.arange(0.0, 301.0, 15.0)
    ok = np.ones(t.size, bool)
    assert recovery_time(t, ok, [], 300.0) == (None, True)
    ended = [FaultRecord(0, "flash_crowd", "traffic", onset=60.0, end=100.0, started=True)]
    assert recovery_time(t, ok, ended, 300.0) == (0.0, True)
    ok[(t >= 75) & (t <= 120)] = False  # broken at 75 .. 120, back at 135
    assert recovery_time(t, ok, ended, 300.0) == (35.0, True)
    ok[-1] = False  # broken again in the last scrape: never recovered
    assert recovery_time(t, ok, ended, 300.0) == (200.0, False)
    ok[-1] = True
    # a fault that never ends by itself: measured from its onset
    open_ = [FaultRecord(0, "node_failure", "node0", onset=60.0, end=None, started=True)]
    assert recovery_time(t, ok, open_, 300.0) == (75.0, True)
    unstarted = [FaultRecord(0, "node_failure", "node0", onset=900.0, started=False)]
    assert recovery_time(t, ok, unstarted, 300.0) == (None, True)


def test_measure_matches_the_run_summary() -> None:
    sc = tiny(120.0)
    result = rollout(Simulator(sc), resolve_build("static", sc))
    m = measure(result.frames, sc, result.faults)
    s = result.summary
    assert m.entry_requests == s["entry_requests"]
    assert m.values["failed_requests"] == pytest.approx(s["entry_error_rate"] * s["entry_requests"])
    assert m.values["slo_violation_s"] == pytest.approx(sum(s["slo_violation_s"].values()))
    # the peak window is at least the whole run's error rate (a weighted mean of windows)
    assert m.values["peak_error_rate"] >= s["entry_error_rate"] - 1e-12
    assert m.window_t == [60.0, 120.0]
    assert len(m.window_error_rate) == len(m.window_p99_s) == 2
    with pytest.raises(ValueError, match="2 frames"):
        measure(result.frames[:1], sc)


def resolve_build(name: str, sc: Scenario) -> Policy:
    from agents.evaluation.evaluate import build_policy

    return build_policy(resolve_policy(name), sc)


# ------------------------------------------------------------------------------ verdicts


def test_tolerances_and_verdicts_by_hand() -> None:
    tol = tolerances(15.0, 10_000.0)
    assert tol["slo_violation_s"].allowed(1000.0) == 100.0  # 10 %
    assert tol["slo_violation_s"].allowed(50.0) == 15.0  # floor: one scrape
    assert tol["failed_requests"].allowed(1000.0) == 200.0  # 20 %
    assert tol["failed_requests"].allowed(10.0) == 10.0  # floor: 0.1 % of 10k requests
    assert tol["peak_error_rate"].allowed(0.9) == 0.05
    assert tol["recovery_s"].allowed(1000.0) == 30.0

    request = [
        metrics(
            0, slo_violation_s=100.0, failed_requests=1000.0, peak_error_rate=0.40, recovery_s=60.0
        ),
        metrics(
            1, slo_violation_s=200.0, failed_requests=1400.0, peak_error_rate=0.50, recovery_s=80.0
        ),
    ]  # means 150, 1200, 0.45, 70
    fluid = [
        metrics(
            0,
            "fluid",
            slo_violation_s=190.0,
            failed_requests=1500.0,
            peak_error_rate=0.30,
            recovery_s=None,
        )
    ]
    rows = {r.metric: r for r in compare_metrics(fluid, request, 15.0)}
    # 190 vs 150: outside 10 % (15), but inside the seed spread 100..200
    assert rows["slo_violation_s"].within_tolerance is False
    assert rows["slo_violation_s"].in_spread is True
    assert rows["slo_violation_s"].verdict == "pass"
    # 1500 vs 1200: diff 300 > 240 and outside 1000..1400
    assert rows["failed_requests"].diff == pytest.approx(300.0)
    assert rows["failed_requests"].verdict == "fail"
    # 0.30 vs 0.45: 15 points off, outside the spread
    assert rows["peak_error_rate"].verdict == "fail"
    # recovery undefined on the fluid side: not judged
    assert rows["recovery_s"].verdict == "n/a"
    assert rows["dropped_requests"].verdict == "n/a"  # reported only
    assert rows["peak_p99_s"].tolerance == ""
    assert overall_verdict(list(rows.values())) == "fail"

    # one request seed: no spread to fall back on
    rows1 = {r.metric: r for r in compare_metrics(fluid, request[1:], 15.0)}
    assert rows1["slo_violation_s"].verdict == "pass"  # 190 vs 200 within 20 (10 %)
    assert rows1["failed_requests"].verdict == "pass"  # 1500 vs 1400 within 280
    with pytest.raises(ValueError, match="at least one"):
        compare_metrics([], request, 15.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 1e4), st.floats(0, 1e6), st.floats(0, 1), st.floats(0, 600)),
        min_size=2,
        max_size=5,
    ),
    st.data(),
)
def test_a_fluid_run_equal_to_a_request_seed_passes(
    runs: list[tuple[float, float, float, float]], data: st.DataObject
) -> None:
    """Property: a fluid value that is one of the request seeds' values always passes."""
    request = [
        metrics(k, slo_violation_s=a, failed_requests=b, peak_error_rate=c, recovery_s=d)
        for k, (a, b, c, d) in enumerate(runs)
    ]
    pick = data.draw(st.integers(0, len(request) - 1))
    fluid = [RunMetrics("fluid", 0, dict(request[pick].values), True, 10_000.0, [], [], [])]
    rows = compare_metrics(fluid, request, 15.0)
    assert {r.metric for r in rows if r.verdict == "pass"} == set(JUDGED)
    assert overall_verdict(rows) == "pass"


# ------------------------------------------------------------------------------ end to end


def test_check_fidelity_in_parallel_equals_serial_runs() -> None:
    sc = tiny()
    spec = PolicySpec("static", config=resolve_policy("static").config)
    report = check_fidelity(sc, spec, seeds=2, workers=2)
    assert report.seeds == [sc.seed, sc.seed + 1]
    assert [r.fidelity for r in report.fluid + report.request] == ["fluid"] * 2 + ["request"] * 2
    again = run_task(
        RunTask(sc.model_copy(update={"fidelity": "request", "seed": sc.seed + 1}), spec)
    )
    assert again.values == report.request[1].values
    assert again.window_error_rate == report.request[1].window_error_rate
    assert [r.metric for r in report.rows] == list(METRICS)
    assert report.verdict == overall_verdict(report.rows)
    with pytest.raises(ValueError, match="seeds"):
        check_fidelity(sc, spec, seeds=0)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    assert OPSWORLD.exists(), f"console script missing: {OPSWORLD} (run make venv)"
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [str(OPSWORLD), "fidelity", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_cli_writes_the_table_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "fid"
    proc = run_cli(
        "scenario=chain3",
        "policy=hpa",
        "seeds=1",
        "workers=1",
        "horizon_s=60",
        f"out={out}",
        "scenario_overrides.faults=[{kind: flash_crowd, at_s: 20, factor: 2.0, ramp_s: 10, "
        "duration_s: 20}]",
    )
    assert proc.returncode == 0, proc.stderr
    assert "opsworld fidelity: chain3 / hpa (1 seeds)" in proc.stdout
    for name in ("fidelity.json", "fidelity.md", "fidelity.png", "config.yaml"):
        assert (out / name).is_file(), name
    data = json.loads((out / "fidelity.json").read_text())
    assert data["policy"] == "hpa" and data["verdict"] in ("pass", "fail")
    assert [r["metric"] for r in data["rows"]] == list(METRICS)
    assert len(data["fluid"]) == len(data["request"]) == 1
    assert data["request"][0]["fidelity"] == "request"
    assert f"Overall verdict: **{data['verdict']}**" in (out / "fidelity.md").read_text()


@pytest.mark.parametrize(
    ("arg", "needle"),
    [
        ("seeds=0", "seeds=0"),
        ("window_s=0", "window_s"),
        ("run_dir=/nonexistent/run", "run_dir"),
        ("scenario=no_such_scenario", "scenario=no_such_scenario"),
        ("workerz=2", "did you mean 'workers'"),
    ],
)
def test_cli_bad_input_names_the_field(arg: str, needle: str, tmp_path: Path) -> None:
    proc = run_cli(arg, f"out={tmp_path}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert needle in proc.stderr
    assert not (tmp_path / "fidelity.json").exists()


# ------------------------------------------------------------------------------ evaluate spot_check


def test_spot_entries_spread_over_the_suite() -> None:
    from envs.scenarios.suites import load_suite

    suite = load_suite("holdout")
    assert [e.id for e in spot_entries(suite, 1)] == [suite.entries[0].id]
    picked = spot_entries(suite, 3)
    assert [e.id for e in picked] == [
        suite.entries[0].id,
        suite.entries[round((len(suite) - 1) / 2)].id,
        suite.entries[-1].id,
    ]
    assert len(spot_entries(suite, 10**6)) == len(suite)
    with pytest.raises(ValueError, match="spot_check"):
        spot_entries(suite, 0)


def test_evaluate_spot_check_prints_and_writes_the_agreement(tmp_path: Path) -> None:
    from experiments.evaluate import evaluate

    suite = tmp_path / "tiny.yaml"
    suite.write_text(
        "name: tiny\nentries:\n"
        "  - id: chain3-crowd\n    base: chain3\n    overrides: {horizon_s: 60}\n"
        "    faults: [{kind: flash_crowd, at_s: 20, factor: 2.0, ramp_s: 10, duration_s: 20}]\n"
    )
    out = tmp_path / "eval"
    result = evaluate(
        {
            "policy": "static",
            "suite": str(suite),
            "workers": 1,
            "timelines": 0,
            "out": str(out),
            "spot_check": 1,
        },
        log=None,
    )
    verdict = result["spot_check"]["static/chain3-crowd"]
    assert verdict in ("pass", "fail")
    data = json.loads(
        (out / "spot_check" / "static" / "chain3-crowd" / "fidelity.json").read_text()
    )
    assert data["verdict"] == verdict and data["seeds"] == [data["fluid"][0]["seed"]]
    assert "| static | chain3-crowd |" in (out / "spot_check" / "summary.md").read_text()


def test_evaluate_rejects_a_negative_spot_check(tmp_path: Path) -> None:
    from experiments.cli import ConfigError
    from experiments.evaluate import evaluate

    with pytest.raises(ConfigError, match="spot_check=-1"):
        evaluate({"spot_check": -1, "out": str(tmp_path)}, log=None)
    assert not (tmp_path / "config.yaml").exists()


# ------------------------------------------------------------------------------ overload suite


def test_overload_suite_covers_what_issue_16_asks() -> None:
    from envs.scenarios.suites import SEED_STRIDE, load_suite

    suite = load_suite("overload")
    assert set(suite.topologies) == {"chain3", "boutique", "mesh40"}
    kinds = {f.kind for e in suite for f in e.scenario.faults}
    assert {"flash_crowd", "retry_storm", "slow_dependency", "node_failure"} <= kinds
    factors = sorted(
        {f.factor for e in suite for f in e.scenario.faults if f.kind == "flash_crowd"}
    )
    assert factors[0] == 2.0 and factors[-1] == 6.0
    # node loss happens while a crowd is on
    for e in suite:
        nodes = [f for f in e.scenario.faults if f.kind == "node_failure"]
        crowds = [f for f in e.scenario.faults if isinstance(f, FlashCrowdFault)]
        for n in nodes:
            ends = [c.at_s + c.ramp_s + (c.duration_s or e.scenario.horizon_s) for c in crowds]
            assert any(c.at_s <= n.at_s < end for c, end in zip(crowds, ends, strict=True)), e.id
    # its run seeds never meet the train or holdout suites'
    seeds = {e.run_seed(k) for e in suite for k in range(10)}
    for other in ("train", "holdout"):
        assert seeds.isdisjoint({e.run_seed(k) for e in load_suite(other) for k in range(10)})
    assert min(seeds) >= 900 * SEED_STRIDE


def test_overload_table_is_built_from_the_result_files(tmp_path: Path) -> None:
    from experiments.fidelity_report import TABLE_END, TABLE_START, build_overload_outputs

    sc = tiny()
    report = check_fidelity(sc, resolve_policy("hpa"), seeds=1)
    data = report.to_dict() | {"entry": "tiny-crowd", "command": "cmd", "machine": "here"}
    (tmp_path / "tiny-crowd__hpa.json").write_text(json.dumps(data))
    doc = tmp_path / "docs" / "fidelity.md"
    doc.parent.mkdir()
    doc.write_text(f"# x\n{TABLE_START}\nold table\n{TABLE_END}\nafter\n")
    text = build_overload_outputs(tmp_path, tmp_path / "docs")
    assert doc.read_text() == f"# x\n{TABLE_START}\n{text}{TABLE_END}\nafter\n"
    row = next(line for line in text.splitlines() if line.startswith("| tiny-crowd | hpa |"))
    assert row.endswith(f"**{report.verdict}** |")
    assert (tmp_path / "table.md").read_text() == text
    assert f"Overall: {int(report.verdict == 'pass')}/1 runs pass" in text
    for name in ("fidelity_overload.png", "fidelity_overload_timelines.png"):
        assert (tmp_path / "docs" / "img" / name).stat().st_size > 0


def test_more_seeds_runs_only_the_missing_request_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import experiments.fidelity_report as fr

    # a stored chain3-crowd-2x / hpa result with 2 seeds; request-level runs are replaced by
    # fluid runs labelled "request" (cheap), and every run the code asks for is recorded
    old = json.loads((Path(fr.OVERLOAD_RESULTS) / "chain3-crowd-2x__hpa.json").read_text())
    (tmp_path / "chain3-crowd-2x__hpa.json").write_text(json.dumps(old))
    asked: list[tuple[str, int]] = []
    real = fr.run_task

    def fake(task: RunTask) -> RunMetrics:
        asked.append((task.scenario.fidelity, task.scenario.seed))
        fluid = task.scenario.model_copy(update={"fidelity": "fluid"})
        run = real(dataclasses.replace(task, scenario=fluid))
        return dataclasses.replace(run, fidelity=task.scenario.fidelity)

    monkeypatch.setattr(fr, "run_task", fake)
    fr.rerun_fluid(tmp_path, 1, [], more_seeds=3)
    s0 = old["seeds"][0]
    assert asked == [("request", s0 + 2)] + [("fluid", s0 + k) for k in range(3)]
    new = json.loads((tmp_path / "chain3-crowd-2x__hpa.json").read_text())
    assert new["seeds"] == [s0, s0 + 1, s0 + 2]
    assert new["request"][:2] == old["request"]  # the recorded runs are kept as they were
    assert new["request"][2]["seed"] == s0 + 2 and len(new["fluid"]) == 3
    assert f"(seeds {s0}-{s0 + 1}); " in new["request_command"]
    assert f"--more-seeds 3 --workers 1 (seeds {s0 + 2}-{s0 + 2})" in new["request_command"]
    assert all(r["request_min"] is not None for r in new["rows"] if r["tolerance"])
    # already at 3 seeds: nothing more to run at the request level
    asked.clear()
    fr.rerun_fluid(tmp_path, 1, [], more_seeds=3)
    assert [f for f, _ in asked] == ["fluid"] * 3
