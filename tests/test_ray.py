"""Ray behind parallel_map, ``opsworld evaluate backend=ray`` (local Ray and a two-node cluster),
multi-seed training on Ray, and ``opsworld tune`` (sweep smoke test, interrupted-and-resumed
study).

One local Ray (2 CPUs, loopback) serves the whole session (:func:`ray_local`); Ray itself is
imported only inside tests, after the fixture has set the environment it reads at import.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.parallel import Backend, ensure_ray, parallel_map

OPSWORLD = Path(sys.executable).with_name("opsworld")
RAY = Path(sys.executable).with_name("ray")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One local Ray for the session: 2 CPUs, no dashboard, bound to 127.0.0.1."""
    os.environ.pop("RAY_ADDRESS", None)
    ensure_ray(2)
    yield
    import ray

    ray.shutdown()


def _strip(result: dict[str, Any]) -> dict[str, Any]:
    """A policy's results without the timing fields (the rest must match exactly)."""
    return {
        "summary": result["summary"],
        "per_run": [{k: v for k, v in r.items() if k != "wall_s"} for r in result["per_run"]],
    }


# --------------------------------------------------------------------------- parallel_map


def test_ray_map_is_serial_map_in_item_order(ray_local: None) -> None:
    xs = [5, -3, 8, -1, 0, 7, -9, 2, 4, -6, 1]
    seen: dict[int, int] = {}
    out = parallel_map(abs, xs, workers=2, backend="ray", on_result=seen.__setitem__)
    assert out == [abs(x) for x in xs]
    assert seen == dict(enumerate(out))  # every index reported once, with its result
    # fewer items than workers, one item and none
    assert parallel_map(operator.neg, [3], workers=2, backend=Backend.ray) == [-3]
    assert parallel_map(operator.neg, [], workers=2, backend=Backend.ray) == []


def test_ray_task_error_is_the_tasks_own_exception(ray_local: None) -> None:
    with pytest.raises(ValueError, match="math domain error"):
        parallel_map(math.sqrt, [4.0, -1.0, 9.0, 16.0], workers=2, backend="ray")
    with pytest.raises(TypeError, match="module-level function"):
        parallel_map(lambda x: x, [1, 2], workers=2, backend="ray")


def test_shared_object_goes_to_the_object_store_once(
    ray_local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    real_put = ray.put
    puts: list[Any] = []

    def spy(value: Any, **kw: Any) -> Any:
        puts.append(value)
        return real_put(value, **kw)

    monkeypatch.setattr(ray, "put", spy)
    shared = tuple(f"payload {i} " * 5_000 for i in range(12))  # ~150 kB in all
    items = list(range(12))
    out = parallel_map(operator.getitem, items, workers=2, backend="ray", shared=shared)
    assert out == list(shared)
    # one put for the function and one for the shared object, whatever the number of tasks
    assert len(puts) == 2 and puts[1] is shared
    # the local pool (shared via each process's initializer) and a serial run agree
    assert parallel_map(operator.getitem, items, workers=2, shared=shared) == out
    assert parallel_map(operator.getitem, items, workers=1, backend="ray", shared=shared) == out


def test_ray_local_binds_only_loopback(ray_local: None) -> None:
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]
    assert ray.cluster_resources().get("CPU") == 2.0


# --------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PPO run dir trained in seconds on chain3 (debug=default)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from experiments import train as train_mod
    from experiments.cli import CONFIG_DIR

    out = tmp_path_factory.mktemp("ppo") / "run"
    train_mod.register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["debug=default", "logger=none", "checkpoint_freq=0", f"out={out}"],
        )
    GlobalHydra.instance().clear()
    train_mod.train(cfg)
    return out


def _evaluate(run_dir: Path, out: Path, workers: int, backend: str) -> dict[str, Any]:
    from experiments.evaluate import evaluate

    conf = {
        "policies": ["hpa", str(run_dir)],
        "suite": "holdout",
        "topology": "chain3",
        "limit": 2,
        "seeds": 2,
        "workers": workers,
        "backend": backend,
        "timelines": 0,
        "out": str(out),
    }
    return evaluate(conf, log=None)["results"]


@pytest.fixture(scope="module")
def serial_results(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _evaluate(trained_run, tmp_path_factory.mktemp("serial"), 1, "local")


def test_evaluate_on_ray_equals_local_pool_and_serial(
    ray_local: None, trained_run: Path, serial_results: dict[str, Any], tmp_path: Path
) -> None:
    on_ray = _evaluate(trained_run, tmp_path / "ray", 2, "ray")
    pooled = _evaluate(trained_run, tmp_path / "local", 2, "local")
    assert list(on_ray) == list(serial_results) == list(pooled)  # hpa, then the run dir
    assert len(serial_results) == 2
    for label in serial_results:
        assert serial_results[label]["runs"] == 2 * 2  # 2 entries x 2 seeds
        assert _strip(on_ray[label]) == _strip(serial_results[label])
        assert _strip(pooled[label]) == _strip(serial_results[label])
    assert on_ray["hpa"]["workers"] == 2


def test_run_dir_travels_as_bytes_and_lands_once(trained_run: Path) -> None:
    from agents.evaluation.evaluate import resolve_policy
    from agents.evaluation.fanout import materialize, pack_run_dir

    spec = resolve_policy(str(trained_run))
    packed = pack_run_dir(spec)
    assert sorted(packed.files) == ["config.yaml", "model.zip", "vecnormalize.pkl"]
    assert packed.nbytes == sum((trained_run / f).stat().st_size for f in packed.files)
    assert pack_run_dir(spec).digest == packed.digest  # content-addressed
    first = materialize(packed)
    assert materialize(packed) == first  # once per process
    for name, data in packed.files.items():
        assert (Path(first) / name).read_bytes() == data
    builtin = resolve_policy("hpa")
    with pytest.raises(ValueError, match="built in"):
        pack_run_dir(builtin)


# --------------------------------------------------------------------------- two-node cluster


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"{path} never said {text!r}:\n{path.read_text(errors='replace')[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop one `ray start --block` and every process of its session (its process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # raylet, GCS and workers left in the group
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_evaluate_on_a_two_node_cluster_gives_the_same_numbers(
    trained_run: Path, serial_results: dict[str, Any], tmp_path: Path
) -> None:
    """`ray start --head` + `ray start --address=...` on loopback addresses, token auth on;
    `opsworld evaluate backend=ray` with RAY_ADDRESS runs on both nodes and matches serial."""
    head_ip, worker_ip = "127.0.0.2", "127.0.0.3"
    port = _free_port(head_ip)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    procs: list[subprocess.Popen[bytes]] = []
    logs = {name: tmp_path / f"{name}.log" for name in ("head", "worker")}
    # Ray's socket paths must fit AF_UNIX's 107 bytes: short temp dirs, one per node
    short = Path(tempfile.mkdtemp(prefix="owr", dir="/tmp"))
    try:
        common = ["--block", "--num-cpus=1", "--disable-usage-stats"]
        head_cmd = [str(RAY), "start", "--head", f"--port={port}", f"--node-ip-address={head_ip}"]
        head_cmd += ["--include-dashboard=false", f"--temp-dir={short / 'head'}", *common]
        with open(logs["head"], "wb") as fh:
            procs.append(
                subprocess.Popen(
                    head_cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        _wait_for(logs["head"], "Ray runtime started", procs[0], 120)
        worker_cmd = [str(RAY), "start", f"--address={head_ip}:{port}"]
        worker_cmd += [f"--node-ip-address={worker_ip}", f"--temp-dir={short / 'worker'}"]
        with open(logs["worker"], "wb") as fh:
            procs.append(
                subprocess.Popen(
                    [*worker_cmd, *common],
                    env=env,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        _wait_for(logs["worker"], "Ray runtime started", procs[1], 120)
        client = {**env, "RAY_ADDRESS": f"{head_ip}:{port}"}
        nodes = subprocess.run(
            [
                sys.executable,
                "-c",
                "import ray; ray.init(log_to_driver=False); "
                "print(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']))",
            ],
            env=client,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert nodes.stdout.strip().splitlines()[-1] == str([head_ip, worker_ip]), nodes.stderr
        out = tmp_path / "eval"
        run = subprocess.run(
            [
                str(OPSWORLD),
                "evaluate",
                f"policies=[hpa,{trained_run}]",
                "suite=holdout",
                "topology=chain3",
                "limit=2",
                "seeds=2",
                "workers=2",
                "backend=ray",
                "timelines=0",
                f"out={out}",
            ],
            env=client,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,  # not the repo: the workers import opsworld from the venv
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert "Connected to Ray cluster" in run.stderr  # joined, did not start its own
        for label, expected in serial_results.items():
            got = json.loads((out / label / "results.json").read_text())
            assert _strip(got) == _strip(expected)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(short, ignore_errors=True)
    assert all(p.poll() is not None for p in procs)


# --------------------------------------------------------------------------- multi-seed


def test_multiseed_on_ray_one_run_dir_per_seed_and_a_summary(
    ray_local: None, tmp_path: Path
) -> None:
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from experiments import train as train_mod
    from experiments.cli import CONFIG_DIR

    base = ["debug=default", "logger=none", "checkpoint_freq=0", "eval.freq=0"]
    train_mod.register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        multi = compose(
            config_name="train",
            overrides=[*base, "seeds=[0,1]", "backend=ray", f"out={tmp_path / 'seeds'}"],
        )
        single = compose(config_name="train", overrides=[*base, f"out={tmp_path / 'one'}"])
    GlobalHydra.instance().clear()
    summary = train_mod.train(multi)
    one = train_mod.train(single)
    root = tmp_path / "seeds"
    assert summary["seeds"] == [0, 1] and summary["backend"] == "ray"
    rewards = []
    for s in (0, 1):
        run = root / f"seed_{s}"
        metrics = json.loads((run / "metrics.json").read_text())
        assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == s
        assert summary["runs"][str(s)]["eval_mean_reward"] == metrics["eval_mean_reward"]
        rewards.append(metrics["eval_mean_reward"])
    stats = summary["across_seeds"]["eval_mean_reward"]
    assert stats["mean"] == pytest.approx(sum(rewards) / 2)
    assert stats["min"] == min(rewards) and stats["max"] == max(rewards)
    assert json.loads((root / "seeds_summary.json").read_text()) == summary
    assert "| **mean** |" in (root / "seeds_summary.md").read_text()
    # seed 0 trained as a Ray task is the same run as seed 0 trained here
    assert one["eval_mean_reward"] == rewards[0]
    from stable_baselines3 import PPO

    a = PPO.load(root / "seed_0" / "model.zip").policy.state_dict()
    b = PPO.load(tmp_path / "one" / "model.zip").policy.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- tune

HPA_STUDY = [
    "tune=hpa",
    "tune.num_samples=3",
    "tune.rungs=2",
    "tune.select.topology=chain3",
    "tune.select.limit=2",
    "logger=none",
]


def _tune_cfg(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from experiments import tune as tune_mod
    from experiments.cli import CONFIG_DIR

    tune_mod.register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="tune", overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


def test_hpa_sweep_smoke_writes_table_plot_and_the_best_config(
    ray_local: None, tmp_path: Path
) -> None:
    from envs.kube.tuned import load_settings
    from experiments.tune import tune

    out = tmp_path / "study"
    result = tune(_tune_cfg([*HPA_STUDY, f"out={out}"]), log=None)
    trials = result["trials"]
    assert not result["interrupted"] and len(trials) == 3
    assert all(t["status"] == "TERMINATED" for t in trials)
    # the default HPA is tried first (points_to_evaluate): its cost is the reference itself
    default = [
        t
        for t in trials
        if t["params"] == {"target_cpu_utilization": 70, "scale_down_stabilization_s": 300}
    ]
    assert len(default) == 1
    assert default[0]["cost_rel"] == pytest.approx(1.0)
    assert default[0]["objective"] == pytest.approx(default[0]["slo_violation_min"])
    finished = [t for t in trials if t["rung"] == 2]
    best = result["best"]
    assert best["objective"] == min(t["objective"] for t in finished)
    assert best["runs"] == 2  # both selection runs scored by the last rung
    settings = load_settings(out / "tuned_hpa.yaml")
    assert settings.target_cpu_utilization == best["params"]["target_cpu_utilization"]
    assert settings.scale_down_stabilization_s == best["params"]["scale_down_stabilization_s"]
    assert (out / "COPY.txt").read_text().strip() == (
        f"cp {out / 'tuned_hpa.yaml'} configs/policy/tuned_hpa.yaml"
    )
    rows = (out / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3
    assert (out / "results.png").stat().st_size > 0
    assert "| trial | status |" in (out / "results.md").read_text()
    # a study already in `out` is not overwritten without resume=true
    from experiments.cli import ConfigError

    with pytest.raises(ConfigError, match="resume=true"):
        tune(_tune_cfg([*HPA_STUDY, f"out={out}"]), log=None)


def test_ppo_sweep_smoke_trains_in_rungs_and_writes_an_overlay(
    ray_local: None, tmp_path: Path
) -> None:
    from experiments.tune import tune

    out = tmp_path / "ppo"
    overrides = [
        "tune=ppo",
        "tune.num_samples=2",
        "tune.rungs=2",
        "tune.train=['debug=default','total_timesteps=256','eval.freq=0','checkpoint_freq=0']",
        "tune.select.limit=1",
        "logger=none",
        f"out={out}",
    ]
    result = tune(_tune_cfg(overrides), log=None)
    assert len(result["trials"]) == 2 and result["best"] is not None
    best = result["best"]
    trial_runs = out / "runs" / best["trial"]
    # rung 2 resumed rung 1: 128 then 256 steps in all
    assert json.loads((trial_runs / "rung_1" / "metrics.json").read_text())["timesteps"] == 128
    assert json.loads((trial_runs / "rung_2" / "metrics.json").read_text())["timesteps"] == 256
    saved = yaml.safe_load((trial_runs / "rung_2" / "config.yaml").read_text())
    assert saved["agent"]["learning_rate"] == pytest.approx(best["params"]["agent.learning_rate"])
    text = (out / "tuned_ppo.yaml").read_text()
    assert text.startswith("# @package _global_")
    overlay = yaml.safe_load(text)
    assert overlay["experiment"] == "tuned_ppo"
    assert overlay["agent"]["n_steps"] == best["params"]["agent.n_steps"]
    assert overlay["total_timesteps"] == 256
    assert "- override /debug: default" in text


@pytest.mark.slow
def test_interrupted_study_resumes_without_rerunning_finished_trials(
    ray_local: None, tmp_path: Path
) -> None:
    from experiments.tune import tune

    out = tmp_path / "study"
    args = [*HPA_STUDY, "tune.num_samples=6", "tune.max_concurrent=1", f"out={out}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [str(OPSWORLD), "tune", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 240
        done: list[Path] = []
        while time.monotonic() < deadline and proc.poll() is None:
            done = [p for p in (out / "study").glob("run_trial_*/result.json") if p.stat().st_size]
            if done:
                break
            time.sleep(0.2)
        assert done, proc.communicate(timeout=60)[0].decode()[-3000:]
        proc.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves the study and stops
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    before = {p.parent.name: p.read_text() for p in (out / "study").glob("run_trial_*/result.json")}
    finished_before = {k for k, v in before.items() if '"rung": 2' in v}
    assert len(before) < 6, "the study finished before the interrupt; nothing to resume"
    result = tune(_tune_cfg([*args, "resume=true"]), log=None)
    assert not result["interrupted"]
    assert len(result["trials"]) == 6
    assert all(t["status"] == "TERMINATED" for t in result["trials"])
    after = {p.parent.name: p.read_text() for p in (out / "study").glob("run_trial_*/result.json")}
    for name in finished_before:  # kept as they were, not run again
        assert after[name] == before[name]
    assert (out / "tuned_hpa.yaml").exists()
