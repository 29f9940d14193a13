"""``make shadow-demo``, shortened: 20 minutes of history and the rule bundle (no training).

Everything else is the real thing: the simulated history backfilled with promtool into a real
Prometheus, the live exporter scraped by it, ``opsworld shadow`` in replay over the history,
and the report with its simulated counterfactual.
"""

from __future__ import annotations

import json
from pathlib import Path

from experiments.shadow_demo import demo


def test_shadow_demo_short(tmp_path: Path) -> None:
    lines: list[str] = []
    summary = demo(tmp_path, hours=1 / 3, rule_bundle=True, say=lines.append)
    # 20 min of history, replayed from its 60th second every 15 s: 77 ticks, one record each.
    shadow = summary["shadow"]
    assert shadow["mode"] == "replay"
    assert shadow["ticks"] == shadow["records"] == 77
    assert shadow["actuations"] == 0 and shadow["tick_exceptions"] == 0
    assert shadow["policy"] == "baseline/tuned_runbook"
    records = (tmp_path / "shadow" / "audit.jsonl").read_text().splitlines()
    assert len(records) == 77
    # The live exporter was scraped next to the history: its three deployments are there.
    assert summary["live_exporter_deployments"] == 3
    report = json.loads(Path(summary["report"]["json"]).read_text())
    assert report["window"]["ticks"] == 77
    assert report["missing"]["ticks_all_missing"] == 0
    assert report["actuated_records"] == 0
    cf = report["counterfactual"]
    assert cf["label"] == "simulated" and cf["scenario"] == "chain3"
    assert list(cf["runs"]) == ["recommended", "actual", "policy"]  # the bundle in closed loop
    assert cf["runs"]["policy"]["policy"] == "tuned_runbook+guard"
    # The replayed traffic holds the flash crowd (3x from minute 5 for 2.5 minutes).
    rows = (tmp_path / "report" / "counterfactual" / "traffic.csv").read_text().splitlines()
    rps = [float(r.split(",")[1]) for r in rows[1:]]
    assert max(rps) > 2.5 * min(rps)
    assert any(line.startswith("Report:") and "report.html" in line for line in lines)
    assert (tmp_path / "history" / "timeline.png").stat().st_size > 0
