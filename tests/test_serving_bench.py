"""``opsworld bench serve quick=true``: the suite runs end to end and writes its page."""

from __future__ import annotations

import json
from pathlib import Path

from agents.bench.config import BenchConfig, BenchSuite, ServeSizes
from agents.bench.runner import run_bench


def test_serve_bench_quick_writes_figures_for_every_target(tmp_path: Path) -> None:
    cfg = BenchConfig(suite=BenchSuite.serve, quick=True, results_dir=str(tmp_path))
    cfg.serve.quick = ServeSizes(rates=[20.0], duration_s=1.0, frames=10, in_process_repeats=1)
    report = run_bench(cfg, None)
    data = json.loads((tmp_path / "serve_bench_quick.json").read_text())
    assert data["figures"] == report["figures"]
    targets = data["details"]["targets"]
    assert set(targets) == {"ppo_onnx", "ppo_torch", "dreamer"}
    for label, d in targets.items():
        (r,) = d["rates"]
        assert r["requests"] == 20 and r["errors"] == 0, label
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"], label
        assert r["decision_share"] > 0 and 0 < r["model_share"] < 1, label
        assert d["backend"] == ("torch" if label == "ppo_torch" else "onnx")
        p = d["in_process"]
        assert p["model_p50_ms"] > 0 and 0 < p["decision_p50_ms"] <= p["decision_p99_ms"]
    assert len(data["details"]["load_average_before"]) == 3
    page = (tmp_path / "serve_bench_quick.md").read_text()
    assert data["command"].startswith("opsworld bench serve")
    assert "| ppo_onnx | 20 |" in page and "## In-process" in page
