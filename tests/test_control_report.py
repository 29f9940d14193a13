"""experiments.control_report on a tiny synthetic record set with known answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from experiments import control_report as cr


def _run(entry: str, k: int, slo: float, ttm: float | None, cost: float = 1.0) -> dict[str, Any]:
    return {
        "entry": entry,
        "replicate": k,
        "seed": 100 + k,
        "slo_violation_min": slo,
        "allocated_cost": cost,
        "disruptive_actions": 2,
        "time_to_mitigate_s": ttm,
        "mitigated": ttm is not None,
        "impacted": True,
        "horizon_s": 2400.0,
    }


def _write(path: Path, runs: list[dict[str, Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"policy": path.parent.name, "per_run": runs}))
    return str(path)


@pytest.fixture
def records(tmp_path: Path) -> dict[str, str]:
    ref = [_run("e1", k, 4.0, 60.0 * (k + 1)) for k in range(3)]
    ref += [_run("e2", k, 2.0, None) for k in range(3)]
    files = {"ref": _write(tmp_path / "ref" / "results.json", ref)}
    for s in (0, 1):
        runs = [_run("e1", k, 1.0, 30.0, cost=2.0) for k in range(3)]
        runs += [_run("e2", k, 2.0, 30.0, cost=2.0) for k in range(3)]
        _write(tmp_path / f"new_{s}" / "results.json", runs)
    files["new"] = str(tmp_path / "new_*" / "results.json")
    return files


def test_known_answers(records: dict[str, str]) -> None:
    methods = [cr.load_method("ref", [records["ref"]]), cr.load_method("new", [records["new"]])]
    res = cr.analyse(methods, "ref", reps=200)
    ref, new = res["methods"]["ref"], res["methods"]["new"]
    assert res["entries"] == ["e1", "e2"] and new["training_seeds"] == 2 and new["runs"] == 12
    # constant strata: the bootstrap intervals collapse onto the point estimates
    assert ref["slo_violation_min"]["mean"] == pytest.approx((3.0, 3.0, 3.0))
    assert ref["slo_violation_min"]["iqm"] == pytest.approx((3.0, 3.0, 3.0))  # [2,2,4,4]
    assert new["slo_violation_min"]["mean"] == pytest.approx((1.5, 1.5, 1.5))
    assert new["slo_violation_min"]["iqm"] == pytest.approx((1.5, 1.5, 1.5))
    assert new["allocated_cost"]["mean"] == pytest.approx((2.0, 2.0, 2.0))
    # e1: every run better (1); e2: all tied (1/2) -> 0.75
    assert new["prob_improvement"] == pytest.approx((0.75, 0.75, 0.75))
    p = new["paired"]
    assert p["per_entry"] == {"e1": -3.0, "e2": 0.0}
    assert p["all"][0] == pytest.approx(-1.5)
    assert p["most_favourable_entry"] == "e1" and p["without_most_favourable"][0] == 0.0
    assert p["most_unfavourable_entry"] == "e2" and p["without_most_unfavourable"][0] == -3.0
    assert (p["better"], p["worse"], p["tied"]) == (1, 0, 1)
    # KM: events at 60, 120, 180 among 6 runs (3 censored at 2400): S = 5/6, 4/6, 3/6
    assert ref["mitigation"] == {
        "impacted_runs": 6,
        "censored_fraction": 0.5,
        "km_median_s": 180.0,
    }
    assert new["mitigation"]["km_median_s"] == 30.0


def test_km_median_by_hand() -> None:
    assert cr.km_median([10, 20, 30, 40], [True, True, True, True]) == 20.0
    # censored at 15 leaves 3 at risk at 20: S(10) = 3/4, S(20) = 3/4 * 2/3 = 1/2
    assert cr.km_median([10, 15, 20, 30], [True, False, True, True]) == 20.0
    assert cr.km_median([10, 99, 99, 99], [True, False, False, False]) is None


def test_mismatched_records_fail_clearly(records: dict[str, str], tmp_path: Path) -> None:
    other = _write(tmp_path / "other" / "results.json", [_run("e3", 0, 1.0, None)])
    methods = [cr.load_method("ref", [records["ref"]]), cr.load_method("o", [other])]
    with pytest.raises(cr.RecordError, match="different entries"):
        cr.analyse(methods, "ref")
    with pytest.raises(cr.RecordError, match="no file matches"):
        cr.load_method("x", [str(tmp_path / "nothing*.json")])
    with pytest.raises(cr.RecordError, match="reference"):
        cr.analyse(methods[:1], "nope")


def test_main_writes_the_page_and_figures(records: dict[str, str], tmp_path: Path) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text("Pilot: two seeds.")
    out = tmp_path / "out"
    rc = cr.main(
        [
            "--method",
            f"ref={records['ref']}",
            "--method",
            f"new={records['new']}",
            "--reference",
            "ref",
            "--notes",
            str(notes),
            "--out",
            str(out),
            "--reps",
            "100",
        ]
    )
    assert rc == 0
    page = (out / "control.md").read_text()
    assert "Pilot: two seeds." in page and "python -m experiments.control_report" in page
    assert "| `new` | 2 | 12 | 1.5 [1.5, 1.5]" in page
    assert "0.75 [0.75, 0.75]" in page and "1 / 0 / 1" in page
    assert (out / "control_profiles.png").stat().st_size > 0
    assert (out / "control_paired.png").stat().st_size > 0
    assert json.loads((out / "control.json").read_text())["reference"] == "ref"


def test_checkpoint_pick_respects_the_budgets() -> None:
    from experiments.residual_select import pick

    ref = {"slo_violation_min": 4.0, "allocated_cost": 0.2, "disruptive_actions": 3.0}
    rows = {
        "s0_10": {"slo_violation_min": 1.0, "allocated_cost": 0.3, "disruptive_actions": 2.0},
        "s0_20": {"slo_violation_min": 3.0, "allocated_cost": 0.2, "disruptive_actions": 3.0},
        "s0_30": {"slo_violation_min": 3.5, "allocated_cost": 0.1, "disruptive_actions": 1.0},
    }
    assert pick(rows, ref) == ("s0_20", True)  # s0_10 is cheaper in minutes but over budget
    over = {k: {**r, "disruptive_actions": 9.0} for k, r in rows.items()}
    over["s0_30"]["disruptive_actions"] = 4.0
    assert pick(over, ref) == ("s0_30", False)  # none within: the smallest excess


def test_common_entries_restricts_and_lists_the_rest(
    records: dict[str, str], tmp_path: Path
) -> None:
    only_e1 = _write(
        tmp_path / "e1only" / "results.json", [_run("e1", k, 0.0, 10.0) for k in range(3)]
    )
    methods = [cr.load_method("ref", [records["ref"]]), cr.load_method("o", [only_e1])]
    res = cr.analyse(methods, "ref", reps=100, common=True)
    assert res["entries"] == ["e1"] and res["dropped"] == ["e2"]
    assert res["methods"]["ref"]["slo_violation_min"]["mean"][0] == 4.0  # e1 only
    assert res["methods"]["o"]["paired"]["per_entry"] == {"e1": -4.0}
    assert res["methods"]["o"]["prob_improvement"][0] == 1.0
    other = _write(tmp_path / "other" / "results.json", [_run("e3", 0, 1.0, None)])
    with pytest.raises(cr.RecordError, match="no entry in common"):
        cr.analyse([methods[0], cr.load_method("x", [other])], "ref", common=True)


def test_a_rebuild_gives_the_same_intervals(records: dict[str, str]) -> None:
    methods = [cr.load_method("ref", [records["ref"]]), cr.load_method("new", [records["new"]])]
    noisy = [
        cr.Method(
            m.label,
            m.files,
            tuple(
                {**r, "allocated_cost": r["allocated_cost"] + 0.1 * i} for i, r in enumerate(m.runs)
            ),
        )
        for m in methods
    ]
    a = cr.analyse(noisy, "ref", reps=200, seed=3)
    b = cr.analyse(noisy, "ref", reps=200, seed=3)
    assert a == b
    assert (
        a["methods"]["new"]["allocated_cost"]["mean"][1]
        < a["methods"]["new"]["allocated_cost"]["mean"][2]
    )


def test_rliable_cannot_close_a_stderr_that_was_captured_when_it_was_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # absl (imported by rliable) binds its handler to the stderr of the moment; a later
    # logging.config.dictConfig (Hydra's, in any CLI command of the same process) closed that
    # stream: inside pytest, the capture file, and every later write to stderr failed
    import io
    import logging.config
    import sys

    import absl.logging

    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    absl.logging.get_absl_handler().python_handler.stream = captured  # a first import's state
    cr._rliable()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    assert not captured.closed
