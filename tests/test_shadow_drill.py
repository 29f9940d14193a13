"""The shadow fault drill, short: Prometheus killed and answering 5xx, the policy server killed.

The loop must record every tick, never crash, never actuate, fall back while things are
broken and be healthy again after each repair (``experiments/shadow_drill.py`` has the full
drill; its figures are in ``experiments/results/shadow_drill.md``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.shadow_drill import FaultProxy, markdown, run_drill


@pytest.mark.slow  # about a minute: its own Prometheus, exporter and policy server
def test_short_drill_records_every_tick_and_recovers(tmp_path: Path) -> None:
    faults = ("prometheus_killed", "prometheus_5xx", "server_killed")
    # faults last longer than the guard's stale_after_s (2 s), so the fallback takes over
    result = run_drill(tmp_path, interval_s=0.5, fault_s=3.5, calm_s=1.0, faults=faults)
    assert result["ticks"] == result["audit_records"] > 0
    assert result["crashes"] == 0 and result["tick_exceptions"] == 0
    assert result["actuations"] == 0
    by_fault = {f["fault"]: f for f in result["faults"]}
    assert list(by_fault) == list(faults)
    for name in ("prometheus_killed", "prometheus_5xx"):
        f = by_fault[name]
        assert f["ticks_during"] >= 2 and f["unhealthy_ticks_during"] == f["ticks_during"]
        assert f["max_missing_fraction"] == 1.0 and f["fallback_ticks"] >= 1, f
        assert f["recovered_s"] is not None, f
    killed = by_fault["server_killed"]
    assert killed["error_ticks"] >= 1 and killed["fallback_ticks"] >= killed["error_ticks"]
    assert "Connect" in killed["example_reason"] and killed["recovered_s"] is not None
    assert result["interventions"].get("inference_error", 0) == killed["error_ticks"]
    page = markdown(result)
    assert "| audit records | " in page and "| server_killed |" in page


def test_fault_proxy_rewrites_answers() -> None:
    assert FaultProxy._rewrite(
        {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "2"]}]}},
        "nan",
    )["data"]["result"] == [{"value": [1, "NaN"]}]
    body = {"status": "success", "data": {"resultType": "matrix", "result": [{"values": []}]}}
    assert FaultProxy._rewrite(body, "empty")["data"]["result"] == []
