"""``opsworld evaluate`` and the tuned HPA (``agents/baselines/tuned.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from agents.baselines import tuned
from agents.baselines.hpa import HPAConfig, HPAPolicy
from agents.baselines.runbook import RunbookPolicy
from agents.policy import StaticPolicy
from agents.rollout import rollout
from envs.scenarios.scoring import score_episode
from envs.scenarios.suites import load_suite
from envs.sim.simulator import Simulator
from experiments import evaluate as ev
from experiments import simulate as sim_mod
from experiments.cli import CONFIG_DIR, ConfigError

REPO = Path(__file__).resolve().parents[1]
OPSWORLD = Path(sys.executable).with_name("opsworld")


@pytest.fixture
def composer() -> Iterator[object]:
    """``compose(name, overrides)`` against the repo's configs/."""
    sim_mod.register_configs()
    ev.register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):

        def _compose(name: str, overrides: list[str]) -> DictConfig:
            return compose(config_name=name, overrides=overrides)

        yield _compose
    GlobalHydra.instance().clear()


def test_evaluate_writes_results_matching_direct_runs(composer, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    cfg = composer(
        "evaluate",
        [
            "policies=[static,hpa]",
            "suite=train",
            "limit=2",
            "seeds=1",
            "workers=1",
            "timelines=1",
            f"out={out}",
        ],
    )
    ret = ev.evaluate(cfg, log=None)
    assert set(ret["results"]) == {"static", "hpa"}
    for name in ("static", "hpa"):
        assert (out / name / "results.md").read_text().startswith("# Suite `train`")
        assert (out / "timelines" / name).glob("*.png")
    assert (out / "pareto.png").stat().st_size > 1000
    assert (out / "summary.md").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["policies"]) == {"static", "hpa"}
    assert summary["entries"] == 2

    suite = load_suite("train").subset(first=2)
    for name, make in (
        ("static", lambda s: StaticPolicy()),
        ("hpa", lambda s: HPAPolicy(HPAConfig.cpu(70), s)),
    ):
        data = json.loads((out / name / "results.json").read_text())
        assert data["runs"] == 2
        for entry, row in zip(suite.entries, data["per_run"], strict=True):
            assert row["entry"] == entry.id
            result = rollout(
                Simulator(entry.scenario, fidelity="fluid", seed=entry.run_seed(0)),
                make(entry.scenario),
            )
            direct = score_episode(result)
            assert row["seed"] == entry.run_seed(0)
            assert row["slo_violation_min"] == pytest.approx(direct.slo_violation_min)
            assert row["cost"] == pytest.approx(direct.cost)
            assert row["error_budget_burn"] == pytest.approx(direct.error_budget_burn)
        slo = [r["slo_violation_min"] for r in data["per_run"]]
        assert data["summary"]["slo_violation_min"]["mean"] == pytest.approx(sum(slo) / len(slo))
        assert len(list((out / "timelines" / name).glob("*.png"))) == 1


def test_evaluate_parallel_equals_serial_on_a_yaml_suite(tmp_path: Path) -> None:
    suite = tmp_path / "tiny.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "seed_base": 5,
                "defaults": {"horizon_s": 600},
                "entries": [
                    {
                        "id": "chain3-crash",
                        "base": "chain3",
                        "faults": [{"kind": "pod_crash", "service": "api", "at_s": 300}],
                    },
                    {
                        "id": "chain3-leak",
                        "base": "chain3",
                        "faults": [{"kind": "memory_leak", "service": "api", "at_s": 300}],
                    },
                ],
            }
        )
    )
    base = {"policy": "hpa", "suite": str(suite), "timelines": 0}
    serial = ev.evaluate({**base, "workers": 1, "out": str(tmp_path / "a")}, log=None)
    parallel = ev.evaluate({**base, "workers": 2, "out": str(tmp_path / "b")}, log=None)
    s, p = serial["results"]["hpa"], parallel["results"]["hpa"]
    assert p["workers"] == 2
    for a, b in zip(s["per_run"], p["per_run"], strict=True):
        assert a["slo_violation_min"] == b["slo_violation_min"]
        assert a["cost"] == b["cost"]


def test_evaluate_rejects_bad_config_naming_the_field(tmp_path: Path) -> None:
    base = {"suite": "train", "limit": 1, "workers": 1, "out": str(tmp_path / "x")}
    with pytest.raises(ConfigError, match=r"policy='oracle'.*known policy"):
        ev.evaluate({**base, "policy": "oracle"}, log=None)
    with pytest.raises(ConfigError, match=r"policies='oracle'"):
        ev.evaluate({**base, "policies": ["static", "oracle"]}, log=None)
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"policy=.*not_a_run.*missing config\.yaml"):
        ev.evaluate({**base, "policy": str(empty)}, log=None)
    with pytest.raises(ConfigError, match=r"suite=nope"):
        ev.evaluate({**base, "suite": "nope"}, log=None)
    with pytest.raises(ConfigError, match=r"seeds=0"):
        ev.evaluate({**base, "seeds": 0}, log=None)
    with pytest.raises(ConfigError, match=r"limit=0"):
        ev.evaluate({**base, "limit": 0}, log=None)
    with pytest.raises(ConfigError, match=r"fidelity"):
        ev.evaluate({**base, "fidelity": "warp"}, log=None)
    with pytest.raises(ConfigError, match=r"topology=atlantis.*\['boutique', 'chain3'\]"):
        ev.evaluate({**base, "limit": None, "topology": "atlantis"}, log=None)
    assert not (tmp_path / "x").exists()


def test_evaluate_topology_keeps_only_that_topologys_entries(tmp_path: Path) -> None:
    cfg = {"suite": "holdout", "topology": "mesh40", "limit": 1, "workers": 1, "timelines": 0}
    out = tmp_path / "mesh"
    ev.evaluate({**cfg, "policy": "static", "out": str(out)}, log=None)
    data = json.loads((out / "static" / "results.json").read_text())
    ids = {run["entry"] for run in data["per_run"]}
    mesh = [e.id for e in load_suite("holdout").entries if e.scenario.topology.name == "mesh40"]
    assert ids == {mesh[0]}


def test_console_script_runs(tmp_path: Path) -> None:
    assert OPSWORLD.exists(), f"console script missing: {OPSWORLD}"
    out = tmp_path / "cli"
    env = {**os.environ, "COLUMNS": "200"}
    args = ["evaluate", "policy=tuned_hpa", "suite=train", "limit=1", "workers=1", f"out={out}"]
    proc = subprocess.run(
        [str(OPSWORLD), *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "tuned_hpa" / "results.json").exists()
    assert (out / "pareto.png").stat().st_size > 0
    bad = subprocess.run(
        [str(OPSWORLD), "evaluate", "policy=oracle", f"out={tmp_path / 'bad'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert bad.returncode == 2
    assert "policy='oracle'" in bad.stderr


def test_tuned_config_loads_within_grid(composer) -> None:
    settings = tuned.load_settings()
    assert settings.target_cpu_utilization in tuned.TARGETS
    assert settings.scale_down_stabilization_s in tuned.WINDOWS
    spec = ev.resolve_policy("tuned_hpa")
    assert spec.config is not None
    assert spec.config.target_cpu_utilization == settings.target_cpu_utilization  # type: ignore[attr-defined]
    cfg = composer("simulate", ["policy=tuned_hpa"])
    assert cfg.policy.scale_down_stabilization_s == settings.scale_down_stabilization_s
    scenario = load_suite("train").entries[0].scenario
    policy = sim_mod.make_policy(spec.config, scenario)
    assert isinstance(policy, HPAPolicy)
    assert policy.name == "tuned_hpa"
    hpa = policy.config
    assert hpa.metrics[0].target_utilization == settings.target_cpu_utilization
    assert (
        hpa.behavior.scale_down.stabilization_window_seconds == settings.scale_down_stabilization_s
    )


def test_grid_search_ranks_by_objective() -> None:
    rows = tuned.grid_search(targets=(60, 70), windows=(300,), workers=1, limit=1)
    assert rows == sorted(rows, key=tuned.rank)
    default = next(r for r in rows if r["target_cpu_utilization"] == 70)
    lower = next(r for r in rows if r["target_cpu_utilization"] == 60)
    assert default["cost_rel"] == pytest.approx(1.0)
    # the cost is the pods' allocation, which a lower target (more replicas) raises
    assert lower["allocated_cost"] > default["allocated_cost"] > 0
    assert lower["cost_rel"] == pytest.approx(lower["allocated_cost"] / default["allocated_cost"])
    for r in rows:  # the budget: at most the default HPA's allocated cost
        assert r["within_budget"] == (r["cost_rel"] <= tuned.COST_CAP)
    assert default["within_budget"] and not lower["within_budget"]
    assert rows[0] is default  # the only setting within the budget here
    # within the budget, fewer SLO-violation minutes win whatever the cost
    cheap = {**lower, "within_budget": True, "slo_violation_min": -1.0}
    assert sorted([default, cheap], key=tuned.rank)[0] is cheap
    assert "| target CPU % |" in tuned.grid_markdown(rows)


def test_tuned_runbook_is_the_runbook_over_the_tuned_hpa(composer) -> None:
    """policy=tuned_runbook: runbook rules, HPA knobs from configs/policy/tuned_hpa.yaml."""
    settings = tuned.load_settings()
    spec = ev.resolve_policy("tuned_runbook")
    assert spec.config is not None
    assert composer("simulate", ["policy=tuned_runbook"]).policy.name == "tuned_runbook"
    scenario = load_suite("holdout").on_topology("chain3").entries[0].scenario
    policy = sim_mod.make_policy(spec.config, scenario)
    assert isinstance(policy, RunbookPolicy)
    assert policy.name == "tuned_runbook"
    assert policy.hpa.config == settings.hpa_config()
    # same decisions as a RunbookPolicy built by hand with that HPA
    by_hand = RunbookPolicy(scenario, hpa_config=settings.hpa_config())
    a = rollout(Simulator(scenario, seed=3), policy)
    b = rollout(Simulator(scenario, seed=3), by_hand)
    assert [f.t for f in a.frames] == [f.t for f in b.frames]
    assert score_episode(a).slo_violation_min == score_episode(b).slo_violation_min
    assert [repr(x) for x in a.actions] == [repr(x) for x in b.actions]
