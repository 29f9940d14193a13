"""``opsworld shadow-report``: reading an audit and the figures of the report, by hand.

The audit is synthetic (``tests/shadow_audit_fixture.py``): every expected value below follows
from its :class:`Plan` by hand arithmetic, written out next to the assertion.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from shadow_audit_fixture import SERVICES, Plan, record, write_audit

from agents.shadow.report import (
    AuditError,
    agreement,
    analyse,
    audit_files,
    read_audit,
    render_html,
    write_report,
)
from experiments.cli import ConfigError
from experiments.shadow_report import shadow_report

OPSWORLD = Path(sys.executable).with_name("opsworld")
PLAN = Plan()


@pytest.fixture(scope="module")
def audit_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_audit(tmp_path_factory.mktemp("audit") / "audit.jsonl", rotate_at=100)


@pytest.fixture(scope="module")
def analysis(audit_path: Path) -> dict:
    return analyse(read_audit(audit_path))


# ------------------------------------------------------------------------------------ reading


def test_rotated_files_are_read_oldest_first_and_junk_is_counted(audit_path: Path) -> None:
    Path(f"{audit_path}.2").write_text("")  # an empty older rotation is harmless
    files = audit_files(audit_path)
    assert [f.name for f in files] == ["audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"]
    audit = read_audit(audit_path)
    assert [r["tick"] for r in audit.records] == list(range(PLAN.n))
    assert len(audit.skipped) == 2
    assert audit.skipped[0].startswith("audit.jsonl.1:4: not JSON")
    assert audit.skipped[1] == (
        "audit.jsonl.1:6: schema 'someone.else/9', not 'opsworld.shadow.audit/1'"
    )


def test_records_out_of_order_and_duplicated_are_sorted_and_deduplicated(tmp_path: Path) -> None:
    plan = Plan(n=6)
    lines = [json.dumps(record(plan, k)) for k in (3, 1, 2, 0, 5, 4, 1)]
    (tmp_path / "a.jsonl").write_text("\n".join(lines))
    audit = read_audit(tmp_path / "a.jsonl")
    assert [r["tick"] for r in audit.records] == [0, 1, 2, 3, 4, 5]


def test_missing_audit_names_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match=r"audit=.*nope\.jsonl: no such file.*'opsworld shadow'"):
        read_audit(tmp_path / "nope.jsonl")


def test_an_audit_without_a_record_of_the_schema_fails_naming_a_line(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text('{"schema": "other/1", "t": 1}\n[1, 2]\n')
    with pytest.raises(AuditError, match=r"no record of schema.*2 lines skipped.*x\.jsonl:1"):
        read_audit(tmp_path / "x.jsonl")


def test_optional_keys_may_be_absent(tmp_path: Path) -> None:
    """A minimal record (schema, tick, t) is reported on; nothing optional is required."""
    lines = [json.dumps({"schema": "opsworld.shadow.audit/1", "tick": k, "t": 15.0 * k})
             for k in range(3)]  # fmt: skip
    (tmp_path / "min.jsonl").write_text("\n".join(lines))
    paths = write_report(read_audit(tmp_path / "min.jsonl"), tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["window"]["ticks"] == 3
    assert data["agreement"]["rate"] is None
    assert data["forecast"] is None and data["drift"] is None
    assert data["would_have_acted_count"] == 0


# ----------------------------------------------------------------------------------- figures


def test_agreement_by_hand(analysis: dict) -> None:
    obs = PLAN.observed_ticks  # 480 - 5 gap ticks = 475
    dis = PLAN.disagreeing_pairs  # frontend 34, api 34, db 34 + 10
    assert obs == 475 and dis == {"frontend": 34, "api": 34, "db": 44}
    ag = analysis["agreement"]
    assert ag["compared_pairs"] == 3 * obs
    assert ag["rate"] == pytest.approx((3 * obs - 112) / (3 * obs))
    assert ag["by_service"] == {s: pytest.approx((obs - dis[s]) / obs) for s in SERVICES}
    # Ticks with a disagreement: [196, 230) and [300, 310): 44 of 475.
    assert ag["tick_rate"] == pytest.approx((obs - 44) / obs)


def test_agreement_ignores_pairs_with_a_missing_side() -> None:
    nan = float("nan")
    ag = agreement({"a": [1, 2, nan, 4]}, {"a": [1, 3, 3, nan]})
    assert ag == {"rate": 0.5, "tick_rate": 0.5, "compared_pairs": 2, "by_service": {"a": 0.5}}


def test_would_have_acted_list_with_guard_verdicts(analysis: dict) -> None:
    rows = [(r["tick"], r["action"], r["verdict"]) for r in analysis["would_have_acted"]]
    assert rows == [
        (196, "scale frontend 4", "changed by max_step (was scale frontend 6)"),
        (196, "scale api 4", "allowed"),
        (196, "scale db 4", "allowed"),
        (300, "scale db 5", "allowed"),
        (310, "scale db 4", "allowed"),
        (320, "restart api", "blocked by rate_limit"),
    ]
    first = analysis["would_have_acted"][0]
    assert first["reason"] == "p99 forecast above SLO; at most +2 replicas per tick"
    assert analysis["would_have_acted_ticks"] == 4


def test_interventions_fallbacks_missing_and_errors(analysis: dict) -> None:
    assert analysis["interventions_by_rule"] == {"max_step": 1, "rate_limit": 1}
    assert analysis["fallbacks"] == {"hpa": 5}
    assert analysis["error_ticks"] == 5
    miss = analysis["missing"]
    assert miss["ticks_all_missing"] == 5
    assert miss["mean_fraction"] == pytest.approx(5 / 480)
    assert miss["query_errors"] == 5
    assert miss["top_fields"] == [("frontend/rps", 5), ("api/rps", 5), ("db/rps", 5)]
    assert miss["top_reasons"] == [("prometheus unreachable", 15)]
    assert analysis["actuated_records"] == 0
    assert analysis["window"]["interval_s"] == 15.0
    assert analysis["window"]["duration_s"] == 479 * 15.0


def test_forecast_coverage_and_mae_by_hand(analysis: dict) -> None:
    """Forecasts of the entry rate: q50 = 310, interval [280, 340], horizon 4 ticks.

    Made on the 475 observed ticks; scored when tick k + 4 exists (k <= 475) and was observed:
    k in [0, 476) minus the gap [350, 355) and minus k + 4 in the gap, k in [346, 351): 9
    ticks out, 467 scored. Realised 900 (outside the interval) when k + 4 is in the crowd
    [200, 260): k in [196, 256), 60 forecasts; error 590 there, 10 elsewhere.
    """
    fc = analysis["forecast"]
    assert fc["forecasts"] == 475
    assert fc["scored"] == 467
    assert fc["overall_coverage"] == pytest.approx(407 / 467)
    (row,) = fc["rows"]
    assert (row["service"], row["quantity"], row["n"]) == ("frontend", "rps", 467)
    assert row["mae"] == pytest.approx((407 * 10 + 60 * 590) / 467)
    assert fc["by_quantity_coverage"] == {"rps": pytest.approx(407 / 467)}


def test_drift_and_retrain_signal(analysis: dict) -> None:
    d = analysis["drift"]
    assert d["psi_last"] == {"frontend/rps": 0.35, "api/cpu_util": 0.1}
    assert d["psi_max"] == {"frontend/rps": 0.35, "api/cpu_util": 0.1}
    assert d["drifted_features"] == ["frontend/rps"]
    assert d["retrain_recommended"] is True
    assert d["retrain_ticks"] == 10


def test_an_actuated_record_is_flagged(tmp_path: Path) -> None:
    plan = Plan(n=4)
    recs = [record(plan, k) for k in range(4)]
    recs[2]["actuated"] = True
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    a = analyse(read_audit(tmp_path / "a.jsonl"))
    assert a["actuated_records"] == 1
    assert "1 audit records are not marked actuated=false" in render_html(a, None)


# ------------------------------------------------------------------------------------ outputs


@pytest.fixture(scope="module")
def written(audit_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("report")
    return shadow_report({"audit": str(audit_path), "out": str(out)})


def test_html_is_self_contained(written: dict) -> None:
    page = written["paths"]["html"].read_text()
    assert page.startswith("<!DOCTYPE html>")
    # Nothing to load: no src/href but fragment links and data URIs, no <link>, no <img>.
    assert re.findall(r"""(?:src|href)\s*=\s*["'](?!#|data:)""", page) == []
    assert "<link" not in page and "<img" not in page and "<iframe" not in page
    assert page.count("<svg") == 4  # replicas, missing telemetry, drift, counterfactual
    assert "default-src 'none'" in page
    assert "Counterfactual (SIMULATED)" in page and "Simulated, not observed." in page


def test_summary_json_is_strict_and_has_the_figures(written: dict) -> None:
    text = written["paths"]["json"].read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert "series" not in data
    assert data["would_have_acted_count"] == 6
    assert data["agreement"]["compared_pairs"] == 3 * 475
    cf = data["counterfactual"]
    assert cf["label"] == "simulated" and cf["scenario"] == "chain3"
    assert set(cf["runs"]) == {"recommended", "actual"}
    assert all("series" not in run for run in cf["runs"].values())


def test_markdown_lists_every_row_and_the_simulated_section(written: dict) -> None:
    md = written["paths"]["md"].read_text()
    assert "| 320 | 80.00 | restart api | blocked by rate_limit |" in md
    assert "## Counterfactual (SIMULATED)" in md
    assert "**Simulated, not observed.**" in md
    assert "| recommended |" in md and "| actual |" in md


def test_report_is_deterministic(audit_path: Path, tmp_path: Path) -> None:
    a = write_report(read_audit(audit_path), tmp_path / "a")
    b = write_report(read_audit(audit_path), tmp_path / "b")
    for key in ("html", "md", "json"):
        assert a[key].read_bytes() == b[key].read_bytes(), key


# -------------------------------------------------------------------------------- entry point


def test_scenario_none_skips_the_counterfactual_with_a_note(
    audit_path: Path, tmp_path: Path
) -> None:
    res = shadow_report({"audit": str(audit_path), "out": str(tmp_path), "scenario": "none"})
    assert res["counterfactual"] == {"skipped": "scenario=none was given"}
    assert "Skipped: scenario=none was given" in res["paths"]["md"].read_text()


def test_a_topology_that_matches_no_builtin_skips_with_a_clear_note(tmp_path: Path) -> None:
    recs = [record(Plan(n=4), k) for k in range(4)]
    for r in recs:
        r["services"] = ["checkout", "payments"]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    res = shadow_report({"audit": str(tmp_path / "a.jsonl"), "out": str(tmp_path / "o")})
    why = res["counterfactual"]["skipped"]
    assert "match no built-in topology" in why and "scenario=" in why
    assert f"Skipped: {why}" in res["paths"]["md"].read_text()


def test_bad_config_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="audit="):
        shadow_report({"out": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"audit=.*no such file"):
        shadow_report({"audit": str(tmp_path / "none.jsonl"), "out": str(tmp_path)})
    write_audit(tmp_path / "a.jsonl", Plan(n=4))
    with pytest.raises(ConfigError, match="scenario=nowhere"):
        shadow_report({"audit": str(tmp_path / "a.jsonl"), "scenario": "nowhere"})


def test_config_file_matches_the_schema() -> None:
    """configs/shadow_report.yaml and ShadowReportConfig agree (no silent drift)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from experiments.cli import CONFIG_DIR
    from experiments.shadow_report import ShadowReportConfig, register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="shadow_report", overrides=["audit=a.jsonl"])
    finally:
        GlobalHydra.instance().clear()
    schema = OmegaConf.structured(ShadowReportConfig)
    schema.audit = "a.jsonl"
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(schema)


def test_console_script(audit_path: Path, tmp_path: Path) -> None:
    res = subprocess.run(
        [str(OPSWORLD), "shadow-report", f"audit={audit_path}", f"out={tmp_path}/r"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "480 audit records" in res.stdout
    assert "counterfactual (simulated) recommended:" in res.stdout
    assert f"Report: {tmp_path}/r/report.html" in res.stdout
    bad = subprocess.run(
        [str(OPSWORLD), "shadow-report", f"audit={tmp_path}/missing.jsonl"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert bad.returncode == 2
    assert "missing.jsonl: no such file" in bad.stderr
    none = subprocess.run(
        [str(OPSWORLD), "shadow-report"], capture_output=True, text=True, check=False, timeout=300
    )
    assert none.returncode == 2 and "audit=<the JSON Lines audit" in none.stderr


def test_agreement_with_the_next_tick_by_hand(analysis: dict) -> None:
    """recommended[k] vs actual[k + 1] for k in [0, 479), both known: k or k + 1 in the gap
    [350, 355) drops k in [349, 355), 473 ticks left. Frontend and api disagree for k in
    [196, 229) (33), db for those and for k in [300, 310) (10 more): 109 of 3 x 473."""
    ag = analysis["agreement_next_tick"]
    assert ag["compared_pairs"] == 3 * 473
    assert ag["rate"] == pytest.approx((3 * 473 - 109) / (3 * 473))
    assert ag["by_service"]["db"] == pytest.approx((473 - 43) / 473)


def test_drift_threshold_comes_from_the_records() -> None:
    from agents.shadow.report import drift_summary

    rec = {"drift": {"psi": {"a": 0.22, "b": 0.3}, "retrain_recommended": True}}
    assert drift_summary([rec])["drifted_features"] == ["a", "b"]  # default 0.2
    rec["drift"]["threshold"] = 0.25
    d = drift_summary([rec])
    assert d["drifted_features"] == ["b"] and d["psi_threshold"] == 0.25


def test_a_long_would_have_acted_table_starts_collapsed(tmp_path: Path) -> None:
    plan = Plan(n=60)
    recs = [record(plan, k) for k in range(plan.n)]
    for r in recs:
        r["guarded_actions"] = [{"kind": "scale", "service": "db", "replicas": 3}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    page = render_html(analyse(read_audit(tmp_path / "a.jsonl")), None)
    assert "<details><summary>show the 60 rows</summary><table id='acted'>" in page
    assert page.count("<tr data-verdict='allowed'>") == 60


def test_reads_what_the_shadow_writer_writes_with_rotation(tmp_path: Path) -> None:
    """The contract end to end: records through agents.shadow.audit's writer, rotated by size."""
    from agents.shadow.audit import AuditRecord, AuditWriter

    plan = Plan(n=120)
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(path, max_bytes=40_000, keep=100)
    for k in range(plan.n):
        writer.write(AuditRecord.model_validate(record(plan, k)))
    writer.close()
    assert writer.rotations >= 3
    audit = read_audit(path)
    assert len(audit.files) == writer.rotations + 1
    assert [r["tick"] for r in audit.records] == list(range(plan.n))
    assert audit.skipped == []
    a = analyse(audit)
    assert a["window"]["ticks"] == plan.n
    assert a["actuated_records"] == 0
