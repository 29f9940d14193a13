"""Smoke tests of the ``opsworld`` CLI: simulate and bench, in-process and as a console script."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from agents.policy import StaticPolicy
from agents.rollout import rollout
from envs.core.actions import Noop, Scale, ShedLoad
from envs.scenarios.loader import load_scenario
from envs.sim.export import IN_FLIGHT_COLUMN, frames_to_table, read_telemetry
from envs.sim.simulator import Simulator
from experiments import bench as bench_mod
from experiments import cli
from experiments import simulate as sim_mod
from experiments.cli import CONFIG_DIR, ConfigError

REPO = Path(__file__).resolve().parents[1]
OPSWORLD = Path(sys.executable).with_name("opsworld")
OUTPUT_FILES = ("timeline.png", "summary.json", "actions.csv", "config.yaml", "scenario.yaml")


@pytest.fixture
def composer() -> Iterator[object]:
    """``compose(name, overrides)`` against the repo's configs/, as Hydra's tests do."""
    sim_mod.register_configs()
    bench_mod.register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):

        def _compose(name: str, overrides: list[str]) -> DictConfig:
            return compose(config_name=name, overrides=overrides)

        yield _compose
    GlobalHydra.instance().clear()


def run_cli(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    assert OPSWORLD.exists(), f"console script missing: {OPSWORLD} (run make venv)"
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [str(OPSWORLD), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


# --------------------------------------------------------------------------- simulate


@pytest.mark.parametrize(
    ("fidelity", "fmt"), [("fluid", "parquet"), ("fluid", "csv"), ("request", "parquet")]
)
def test_simulate_writes_outputs_that_round_trip(
    composer, tmp_path: Path, fidelity: str, fmt: str
) -> None:
    out = tmp_path / "run"
    cfg = composer(
        "simulate",
        [
            "scenario=chain3",
            f"fidelity={fidelity}",
            "horizon_s=120",
            "seed=3",
            f"format={fmt}",
            f"out={out}",
        ],
    )
    summary = sim_mod.simulate(cfg)
    for name in (*OUTPUT_FILES, f"telemetry.{fmt}"):
        assert (out / name).stat().st_size > 0, name
    # summary.json is what simulate returned, and says what ran
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["fidelity"] == fidelity and on_disk["seed"] == 3
    assert on_disk["horizon_s"] == 120.0 and on_disk["policy"] == "static"
    assert on_disk["frames"] == 9  # t = 0, 15, ..., 120
    assert on_disk["wall_time_s"] > 0
    assert on_disk["sim_seconds_per_wall_second"] == pytest.approx(120.0 / on_disk["wall_time_s"])

    # the table equals a fresh run with the same seed (determinism + exact round trip)
    table = read_telemetry(out / f"telemetry.{fmt}")
    scenario = load_scenario(out / "scenario.yaml")
    assert scenario.fidelity == fidelity and scenario.seed == 3 and scenario.horizon_s == 120
    assert scenario == load_scenario("chain3", {"fidelity": fidelity, "seed": 3, "horizon_s": 120})
    again = rollout(Simulator(scenario), StaticPolicy())
    expected = frames_to_table(again.frames)
    assert list(table) == list(expected)
    for k, col in expected.items():
        if k == "service":
            assert table[k].tolist() == col.tolist()
        else:
            np.testing.assert_array_equal(table[k], col, err_msg=k)
    assert np.isnan(table["rps"][:3]).all()  # no interval at t = 0: missing, not zero
    assert np.isnan(table["slo_violation_s"][table["service"] == "db"]).all()  # no SLO on db
    assert on_disk["entry_requests"] == table["arrived"][-3]

    # conservation on every written row
    np.testing.assert_allclose(
        table["arrived"],
        table["completed"] + table["failed"] + table["dropped"] + table[IN_FLIGHT_COLUMN],
        rtol=1e-9,
        atol=1e-6,
    )
    assert table["arrived"][-3] > 0

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["scenario"] == "chain3" and config["fidelity"] == fidelity
    assert config["policy"] == {"name": "static"} and config["out"] == str(out)
    with (out / "actions.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows == [["t", "kind", "service", "replicas", "fraction", "node"]]  # static: none


def test_simulate_scenario_overrides(composer, tmp_path: Path) -> None:
    cfg = composer(
        "simulate",
        [
            "scenario=chain3",
            "horizon_s=60",
            "++scenario_overrides.traffic.base_rps=50",
            "++scenario_overrides.topology.services.frontend.replicas.initial=3",
            f"out={tmp_path}",
        ],
    )
    sim_mod.simulate(cfg)
    scenario = yaml.safe_load((tmp_path / "scenario.yaml").read_text())
    assert scenario["traffic"]["base_rps"] == 50
    assert scenario["topology"]["services"][0]["replicas"]["initial"] == 3
    table = read_telemetry(tmp_path / "telemetry.parquet")
    entry = table["service"] == "frontend"
    assert np.nanmean(table["rps"][entry]) == pytest.approx(50, rel=0.05)
    assert table["replicas_ready"][entry][0] == 3


def test_simulate_rejects_bad_policy_and_scenario_before_running(tmp_path: Path) -> None:
    base = {"scenario": "chain3", "out": str(tmp_path / "x"), "horizon_s": 60}
    known = r"\['hpa', 'runbook', 'static', 'tuned_hpa', 'tuned_runbook'\]"
    with pytest.raises(ConfigError, match=r"policy.*'oracle'.*" + known):
        sim_mod.simulate({**base, "policy": {"name": "oracle"}})
    with pytest.raises(ConfigError, match=r"traffic\.base_rsp.*did you mean 'base_rps'"):
        sim_mod.simulate({**base, "scenario_overrides": {"traffic": {"base_rsp": 5}}})
    with pytest.raises(ConfigError, match="unknown built-in scenario 'nope'"):
        sim_mod.simulate({**base, "scenario": "nope"})
    with pytest.raises(ConfigError, match="fidelity"):
        sim_mod.simulate({**base, "fidelity": "warp"})
    assert not (tmp_path / "x").exists()


def test_write_actions_one_row_per_action(tmp_path: Path) -> None:
    log = [(15.0, Scale("api", 3)), (30.0, ShedLoad(0.25)), (45.0, Noop())]
    path = sim_mod.write_actions(log, tmp_path / "actions.csv")
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [
        {
            "t": "15.0",
            "kind": "scale",
            "service": "api",
            "replicas": "3",
            "fraction": "",
            "node": "",
        },
        {
            "t": "30.0",
            "kind": "shed_load",
            "service": "",
            "replicas": "",
            "fraction": "0.25",
            "node": "",
        },
        {"t": "45.0", "kind": "noop", "service": "", "replicas": "", "fraction": "", "node": ""},
    ]


def test_flatten_scenario_overrides() -> None:
    nested = {"traffic": {"base_rps": 5, "bursts": [{"at_s": 1}], "noise": {}}, "seed": 1}
    assert sim_mod.flatten(nested) == {
        "traffic.base_rps": 5,
        "traffic.bursts": [{"at_s": 1}],
        "traffic.noise": {},
        "seed": 1,
    }


def test_config_files_match_schemas(composer) -> None:
    """The YAML defaults and the dataclass defaults agree (no silent drift)."""
    b = OmegaConf.to_container(composer("bench", []), resolve=True)
    assert b == OmegaConf.to_container(OmegaConf.structured(bench_mod.BenchConfig))
    s = OmegaConf.to_container(composer("simulate", []))
    d = OmegaConf.to_container(OmegaConf.structured(sim_mod.SimulateConfig))
    assert {k: v for k, v in s.items() if k != "policy"} == {
        k: v for k, v in d.items() if k != "policy"
    }
    assert s["policy"] == {"name": "static"}


def test_console_script_simulate(tmp_path: Path) -> None:
    out = tmp_path / "cli-run"
    proc = run_cli(
        "simulate",
        "scenario=chain3",
        "fidelity=fluid",
        "horizon_s=120",
        "format=csv",
        "scenario_overrides.traffic.base_rps=100",
        f"out={out}",
    )
    assert proc.returncode == 0, proc.stderr
    for name in (*OUTPUT_FILES, "telemetry.csv"):
        assert (out / name).stat().st_size > 0, name
    assert "entry requests" in proc.stdout and "chain3" in proc.stdout
    assert json.loads((out / "summary.json").read_text())["entry_requests"] == pytest.approx(
        100 * 120, rel=0.05
    )
    assert not list(out.glob("*.log"))  # Hydra writes no log file into `out`


def test_console_script_help_and_unknown_command() -> None:
    proc = run_cli()
    assert proc.returncode == 0
    assert "simulate" in proc.stdout and "bench" in proc.stdout
    proc = run_cli("--help")
    assert proc.returncode == 0 and "commands:" in proc.stdout
    proc = run_cli("simulat")
    assert proc.returncode == 2
    assert "unknown command 'simulat'" in proc.stderr and "simulate, bench" in proc.stderr


@pytest.mark.parametrize(
    ("override", "code", "needles"),
    [
        ("fidelity=warp", 1, ["fidelity", "fluid, request"]),
        ("fidelty=request", 2, ["unknown option 'fidelty'", "did you mean 'fidelity'"]),
        ("policy=oracle", 1, ["policy/oracle", "static"]),
        ("horizon_s=soon", 1, ["horizon_s"]),
        ("scenario_overrides.traffic.base_rsp=5", 2, ["traffic.base_rsp", "base_rps"]),
    ],
)
def test_console_script_bad_override_names_the_field(
    tmp_path: Path, override: str, code: int, needles: list[str]
) -> None:
    out = tmp_path / "never"
    proc = run_cli("simulate", "scenario=chain3", "horizon_s=60", f"out={out}", override)
    assert proc.returncode == code, proc.stderr
    for needle in needles:
        assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "summary.json").exists()


def test_dispatcher_rewrites() -> None:
    bench_cmd = cli.COMMANDS["bench"]
    assert cli.rewrite_args(bench_cmd, ["sim", "quick=true"]) == ["suite=sim", "quick=true"]
    assert cli.rewrite_args(bench_cmd, ["quick=true"]) == ["quick=true"]
    sim_cmd = cli.COMMANDS["simulate"]
    assert cli.rewrite_args(sim_cmd, ["scenario_overrides.seed=3", "seed=1"]) == [
        "++scenario_overrides.seed=3",
        "seed=1",
    ]
    with pytest.raises(ConfigError, match="did you mean 'horizon_s'"):
        cli.check_overrides("simulate", ["horizon=3"], ["horizon_s", "seed"])
    cli.check_overrides("simulate", ["+new=1", "hydra.run.dir=x", "--cfg", "seed=2"], ["seed"])


# --------------------------------------------------------------------------- bench


def test_erlang_c_by_hand() -> None:
    # c=2, a=1 (rho=0.5), mu=1: C = (1/2 / 0.5) / (1 + 1 + 1) = 1/3; W = (1/3)/(2-1) + 1
    assert bench_mod.erlang_c_response(2, 0.5, 1.0) == pytest.approx(4 / 3)
    # c=1 is M/M/1: W = 1 / (mu - lambda)
    assert bench_mod.erlang_c_response(1, 0.8, 0.02) == pytest.approx(0.02 / 0.2)


def test_bare_simpy_mmc_matches_erlang_c() -> None:
    served, wall, w = bench_mod.bare_simpy_mmc(8, 0.8, 0.02, 20_000, seed=1)
    assert served == 20_000 and wall > 0
    assert w == pytest.approx(bench_mod.erlang_c_response(8, 0.8, 0.02), rel=0.1)


def test_mmc_scenario_is_mmc() -> None:
    sc = bench_mod.mmc_scenario(8, 2, 0.8, 0.02, 1000, seed=0)
    svc = sc.topology.services[0]
    assert len(sc.topology.services) == 1 and not sc.topology.edges
    assert svc.replicas.initial * svc.pod.concurrency == 8
    assert svc.replicas.initial == 2
    assert svc.pod.service_time.cv == 1.0 and svc.pod.service_time.kind == "gamma"
    assert svc.pod.timeout_s is None and svc.pod.retries == 0 and svc.pod.error_rate == 0
    assert sc.traffic.base_rps == pytest.approx(320.0) and sc.traffic.noise is None
    assert sc.fidelity == "request" and sc.horizon_s % sc.decision_interval_s == 0
    with pytest.raises(ConfigError, match="multiple"):
        bench_mod.mmc_scenario(8, 3, 0.8, 0.02, 1000, seed=0)


def test_console_script_bench_quick(tmp_path: Path) -> None:
    proc = run_cli("bench", "sim", "quick=true", "repeats=1", f"results_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # stdout is exactly one JSON object
    on_disk = json.loads((tmp_path / "sim_bench_quick.json").read_text())
    assert on_disk["figures"] == report["figures"] and report["quick"] is True
    figures = report["figures"]
    for name in (
        "fluid_steps_per_s",
        "fluid_sim_seconds_per_wall_second",
        "mesh40_fluid_steps_per_s",
        "mesh40_fluid_sim_seconds_per_wall_second",
        "request_level_requests_per_s",
        "request_level_boutique_requests_per_s",
        "bare_simpy_requests_per_s",
        "request_level_vs_bare_ratio",
        "batched_fluid_varying_n64_steps_per_s",
        "batched_fluid_varying_n256_steps_per_s",
        "batched_fluid_varying_n256_random_steps_per_s",
    ):
        assert math.isfinite(figures[name]) and figures[name] > 0, name
    assert (
        figures["batched_fluid_varying_steps_per_s"]
        == figures["batched_fluid_varying_n256_steps_per_s"]
    )
    assert report["details"]["batched_fluid_varying_n256"]["sub_env_steps"] == 8 * 256
    assert report["targets"]["batched_fluid_varying_steps_per_s"] == 20_000
    assert figures["fluid_sim_seconds_per_wall_second"] == pytest.approx(
        15.0 * figures["fluid_steps_per_s"]
    )
    assert figures["request_level_vs_bare_ratio"] == pytest.approx(
        figures["request_level_requests_per_s"] / figures["bare_simpy_requests_per_s"]
    )
    assert report["status"]["fluid_steps_per_s"] == (
        "pass" if figures["fluid_steps_per_s"] >= 10_000 else "miss"
    )
    assert report["command"] == f"opsworld bench sim quick=true repeats=1 results_dir={tmp_path}"
    assert report["machine"]["cores"] >= 1 and report["machine"]["simpy"].startswith("4.")
    md = (tmp_path / "sim_bench_quick.md").read_text()
    assert report["command"] in md and "| `fluid_steps_per_s` |" in md and ">= 10,000" in md
    assert not (tmp_path / "sim_bench.json").exists()  # quick never overwrites full results


def test_bench_incidents_quick_in_process(tmp_path: Path) -> None:
    report = bench_mod.bench(
        {"suite": "incidents", "quick": True, "results_dir": str(tmp_path)}, log=None
    )
    figures = report["figures"]
    assert figures["runs"] == 4 and report["details"]["entries"] == 4
    assert report["details"]["seeds"] == 1 and report["details"]["workers"] == 2
    assert figures["wall_s"] > 0
    assert figures["runs_per_s"] == pytest.approx(4 / figures["wall_s"])
    assert report["targets"] == {} and report["lower_is_better"] == ["wall_s"]
    assert report["command"] == "opsworld bench incidents quick=true"
    summary = report["details"]["summary"]
    assert summary["slo_violation_min"]["n"] == 4 and "iqm_ci" in summary["cost"]
    assert len(report["details"]["per_run"]) == 4
    on_disk = json.loads((tmp_path / "incidents_bench_quick.json").read_text())
    assert on_disk["figures"] == figures
    md = (tmp_path / "incidents_bench_quick.md").read_text()
    assert "| `wall_s` |" in md and "## Scores" in md and "| `time_to_mitigate_s` |" in md
    assert not (tmp_path / "incidents_bench.json").exists()  # quick never overwrites


def test_bench_incidents_target_is_an_upper_bound(tmp_path: Path) -> None:
    cfg = {
        "suite": "incidents",
        "results_dir": str(tmp_path),
        "incidents": {"full": {"entries": 1, "seeds": 1}, "workers": 1, "target_wall_s": 1e-9},
    }
    report = bench_mod.bench(cfg, log=None)
    assert report["targets"] == {"wall_s": 1e-9} and report["status"] == {"wall_s": "miss"}
    assert "| `wall_s` |" in (tmp_path / "incidents_bench.md").read_text()
    assert "<= 1e-09" in (tmp_path / "incidents_bench.md").read_text()
    with pytest.raises(ConfigError, match=r"incidents\.policy=hpa"):
        bench_mod.bench({**cfg, "incidents": {"policy": "hpa"}}, log=None)
    with pytest.raises(ConfigError, match=r"incidents\.suite=nope.*unknown suite"):
        bench_mod.bench({**cfg, "incidents": {"suite": "nope"}}, log=None)
