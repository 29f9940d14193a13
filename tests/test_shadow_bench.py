"""``opsworld bench shadow`` at tiny sizes: both parts run and the report is complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from agents.bench.config import BenchConfig, BenchSuite
from agents.bench.runner import run_bench
from agents.bench.shadow_config import ShadowSizes, ShadowSuiteConfig


@pytest.mark.slow  # about 40 s: mesh40 through the exporter, a backfill
def test_bench_shadow_tiny(tmp_path: Path) -> None:
    conf = BenchConfig(
        suite=BenchSuite.shadow,
        quick=True,
        results_dir=str(tmp_path),
        shadow=ShadowSuiteConfig(
            warmup_s=16.0, quick=ShadowSizes(latency_ticks=3, replay_hours=0.1)
        ),
    )
    report = run_bench(conf, Console(quiet=True))
    figures, details = report["figures"], report["details"]
    assert set(figures) == {"tick_p50_s", "tick_p99_s", "replay_ticks_per_s"}
    assert 0 < figures["tick_p50_s"] <= figures["tick_p99_s"]
    assert details["live"]["ticks"] == 3 and details["live"]["services"] == 40
    assert details["live"]["mean_missing_fraction"] == 0.0  # every profiled value answered
    # 0.1 h = 360 s of history; replayed from 120 s after its start, every 15 s: 17 frames
    assert details["replay"]["replay_ticks"] == 17 and details["replay"]["replay_errors"] == 0
    assert set(report["status"]) == {"tick_p99_s", "replay_ticks_per_s"}
    saved = json.loads((tmp_path / "shadow_bench_quick.json").read_text())
    assert saved["figures"] == figures
    assert "40 services of mesh40" in (tmp_path / "shadow_bench_quick.md").read_text()
