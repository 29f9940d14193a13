"""The CLI's run behaviours through the real console script (issue 13).

W&B receives the training metrics; a multirun writes one folder per job; Ctrl-C saves what a
run has and exits 130 with one line; a non-empty ``out`` is refused unless ``overwrite=true``;
``--version``; ``--help`` imports no torch, SB3 or simulator; plain progress lines and the
request-fidelity estimate off a terminal; no confidence interval on fewer than 5 runs.

Ctrl-C tests start a real subprocess, wait for a marker (a progress line, a log file with a
row) that shows the work has begun, send SIGINT, and check the files left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

OPSWORLD = Path(sys.executable).with_name("opsworld")
ENV = {**os.environ, "WANDB_MODE": "disabled", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}


def opsworld(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    assert OPSWORLD.exists(), f"console script missing: {OPSWORLD} (run make venv)"
    return subprocess.run(
        [str(OPSWORLD), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or ENV,
    )


def start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """Start the console script with its stdout and stderr piped (read them after it ends)."""
    return subprocess.Popen(
        [str(OPSWORLD), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def wait_for(ready: Callable[[], bool], proc: subprocess.Popen[str], limit_s: float = 240) -> None:
    """Poll ``ready`` until it holds; fail if the process ends first or ``limit_s`` passes."""
    deadline = time.monotonic() + limit_s
    while not ready():
        assert proc.poll() is None, f"ended before the marker: {proc.communicate()}"
        assert time.monotonic() < deadline, "no marker in time"
        time.sleep(0.05)


def first_stdout_line(proc: subprocess.Popen[str], prefix: str) -> str:
    """Read stdout until a line starting with ``prefix`` (the process keeps running)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting {prefix!r}; stderr: {proc.communicate()[1]}")


def interrupt(proc: subprocess.Popen[str]) -> tuple[int, list[str]]:
    """SIGINT, then the exit status and the non-empty stderr lines."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    return proc.returncode, [ln for ln in err.splitlines() if ln.strip()]


def has_rows(path: Path) -> Callable[[], bool]:
    """A marker: ``path`` (an SB3 ``progress.csv``) has a header and at least one row."""
    return lambda: path.is_file() and len(path.read_text().splitlines()) >= 2


# --------------------------------------------------------------------------- W&B


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of a W&B offline ``.wandb`` file (LevelDB-log framing of protobufs).

    The file starts with ``:W&B``, a 2-byte magic and a 1-byte version; records follow in
    32 KiB blocks, each chunk with a 7-byte header (CRC32, length, type 1 full / 2 first /
    3 middle / 4 last), and a block's tail shorter than a header is padding.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record
            buf = b""


@pytest.mark.parametrize(("agent", "metric"), [("ppo", "train/value_loss"), ("dreamer", "wm/loss")])
def test_wandb_offline_run_holds_the_training_metrics(
    tmp_path: Path, agent: str, metric: str
) -> None:
    env = {**ENV, "WANDB_MODE": "offline"}
    proc = opsworld(
        "train", "debug=default", f"agent={agent}", "logger=wandb", "out=run", cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list((tmp_path / "run" / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    keys: set[str] = set()
    for record in wandb_records(files[0]):
        if record.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    assert metric in keys and "env/ep_reward" in keys, sorted(keys)


# --------------------------------------------------------------------------- multirun, out


@pytest.mark.parametrize(
    ("args", "key", "values"),
    [
        (("simulate", "seed=0,1", "scenario=chain3", "horizon_s=60"), "seed", [0, 1]),
        (
            ("evaluate", "seeds=1,2", "limit=1", "timelines=0", "workers=1"),
            "seeds",
            [1, 2],
        ),
        (("train", "seed=0,1", "debug=default"), "seed", [0, 1]),
    ],
    ids=["simulate", "evaluate", "train"],
)
def test_multirun_writes_one_folder_per_job(
    tmp_path: Path, args: tuple[str, ...], key: str, values: list[int]
) -> None:
    proc = opsworld(args[0], "-m", *args[1:], "out=sw", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, value in zip(("0", "1"), values, strict=True):
        folder = tmp_path / "sw" / job
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert Path(config["out"]).resolve() == folder.resolve()
        assert config[key] == value
        assert (folder / ("metrics.json" if args[0] == "train" else "summary.json")).is_file()


def test_default_out_folders_of_runs_in_the_same_second_differ(tmp_path: Path) -> None:
    args = ("simulate", "scenario=chain3", "horizon_s=60", "progress=false")
    procs = [start(*args, cwd=tmp_path) for _ in range(2)]
    for p in procs:
        p.communicate(timeout=240)
        assert p.returncode == 0
    runs = sorted(tmp_path.glob("outputs/*/*"))
    assert len(runs) == 2 and all((r / "summary.json").is_file() for r in runs)


def test_non_empty_out_is_refused_unless_overwrite(tmp_path: Path) -> None:
    args = ("simulate", "scenario=chain3", "horizon_s=60", "progress=false", "out=run")
    assert opsworld(*args, "format=csv", cwd=tmp_path).returncode == 0
    again = opsworld(*args, cwd=tmp_path)
    assert again.returncode == 2 and "out=run: the folder is not empty" in again.stderr
    assert not (tmp_path / "run" / "telemetry.parquet").exists()
    cleared = opsworld(*args, "overwrite=true", cwd=tmp_path)
    assert cleared.returncode == 0, cleared.stderr
    assert (tmp_path / "run" / "telemetry.parquet").is_file()
    assert not (tmp_path / "run" / "telemetry.csv").exists()  # the old run's file is gone


@pytest.mark.parametrize(
    "args",
    [
        ("fit-world-model", "topology=chain3"),
        ("evaluate-forecast", "model=nowhere"),
    ],
    ids=["fit-world-model", "evaluate-forecast"],
)
def test_world_model_commands_refuse_a_non_empty_out(tmp_path: Path, args: tuple[str, ...]) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text("old run\n")
    proc = opsworld(*args, "out=run", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"opsworld {args[0]}: error: out=run")
    assert "overwrite=true" in lines[0]
    assert (tmp_path / "run" / "metrics.csv").read_text() == "old run\n"  # nothing lost


# --------------------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("agent", ["ppo", "dreamer"])
def test_ctrl_c_during_train_saves_and_prints_the_resume_command(
    tmp_path: Path, agent: str
) -> None:
    run = tmp_path / "run"
    proc = start(
        "train",
        "debug=default",
        f"agent={agent}",
        "total_timesteps=1000000",
        "checkpoint_freq=0",
        "eval.freq=0",
        "out=run",
        cwd=tmp_path,
    )
    wait_for(has_rows(run / "logs" / "progress.csv"), proc)
    status, lines = interrupt(proc)
    assert status == 130 and len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    assert lines[0].startswith("opsworld train: interrupted: stopped after ")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["interrupted"] is True
    steps = metrics["timesteps"]
    assert 0 < steps < 1_000_000
    checkpoint = Path(metrics["checkpoint"])  # relative to the run's working folder
    assert checkpoint.parts[:2] == ("run", "checkpoints")
    weights = ("model.zip", "vecnormalize.pkl") if agent == "ppo" else ("agent.pt",)
    assert all((run / w).is_file() for w in weights)
    assert (tmp_path / checkpoint).exists() and checkpoint.name.startswith(
        f"model_{steps}_steps" if agent == "ppo" else f"step_{steps}"
    )
    command = lines[0].split("continue with: ", 1)[1].split()
    assert command[:2] == ["opsworld", "train"]
    assert f"resume={checkpoint}" in command and "out=run" in command
    # the printed command continues the run (to a small total here)
    more = [
        w if not w.startswith("total_timesteps=") else f"total_timesteps={steps + 64}"
        for w in command[2:]
    ]
    resumed = opsworld("train", *more, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = json.loads((run / "metrics.json").read_text())
    assert after["timesteps"] >= steps + 64 and after["resumed_from"] == str(checkpoint)
    assert "interrupted" not in after


def test_ctrl_c_during_simulate_writes_the_partial_run(tmp_path: Path) -> None:
    proc = start(
        "simulate",
        "scenario=chain3",
        "fidelity=request",
        "scenario_overrides.traffic.base_rps=5000",
        "out=run",
        cwd=tmp_path,
    )
    first = first_stdout_line(proc, "simulate chain3:")  # the first decision interval is done
    assert "/3,600 sim s" in first and "ETA" in first
    status, lines = interrupt(proc)
    assert status == 130, lines
    assert re.fullmatch(
        r"simulate: about [\d,]+ requests expected at the entry \(request fidelity: every "
        r"request is simulated\)",
        lines[0],
    )
    assert lines[1].startswith("warning: at ~100,000 requests per wall second this takes")
    assert len(lines) == 3 and lines[2].startswith("opsworld simulate: interrupted: ")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["complete"] is False and 0 < summary["interrupted_at_s"] < 3600
    for f in ("telemetry.parquet", "timeline.png", "actions.csv", "scenario.yaml"):
        assert (tmp_path / "run" / f).is_file(), f


def test_ctrl_c_during_evaluate_marks_the_results_incomplete(tmp_path: Path) -> None:
    proc = start(
        "evaluate",
        "policies=[static,hpa]",
        "suite=holdout",
        "seeds=3",
        "workers=1",
        "timelines=0",
        "out=run",
        cwd=tmp_path,
    )
    first_stdout_line(proc, "evaluate: 1/")  # one run finished
    status, lines = interrupt(proc)
    assert status == 130 and len(lines) == 1, lines
    assert lines[0].startswith("opsworld evaluate: interrupted: stopped after ")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["complete"] is False
    assert len(summary["policies_done"]) < 2


# --------------------------------------------------------------------------- help, progress


def test_version_and_help_without_heavy_imports(tmp_path: Path) -> None:
    from importlib.metadata import version

    proc = opsworld("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"opsworld {version('opsworld')}"
    probe = (
        "import sys, contextlib, io\n"
        "from experiments.cli import main\n"
        "for cmd in ({cmds}):\n"
        "    sys.argv = ['opsworld', *cmd]\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main(list(cmd))\n"
        "        except SystemExit:\n"
        "            pass\n"
        "heavy = ('torch', 'stable_baselines3', 'envs.sim.simulator', 'gymnasium', 'scipy')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    ).format(
        cmds="('--help',), ('simulate', '--help'), ('train', '--help'), ('evaluate', '--help'),"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=ENV
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_off_a_terminal_simulate_and_evaluate_print_plain_progress(tmp_path: Path) -> None:
    sim = opsworld("simulate", "scenario=chain3", "horizon_s=60", "out=s", cwd=tmp_path)
    assert sim.returncode == 0, sim.stderr
    lines = [ln for ln in sim.stdout.splitlines() if ln.startswith("simulate chain3: ")]
    assert lines[0].startswith("simulate chain3: 15/60 sim s (25%), ")
    assert lines[-1].startswith("simulate chain3: 60/60 sim s (100%), ")
    ev = opsworld(
        "evaluate", "suite=holdout", "limit=2", "seeds=1", "timelines=0", "out=e", cwd=tmp_path
    )
    assert ev.returncode == 0, ev.stderr
    bars = [ln for ln in ev.stdout.splitlines() if ln.startswith("evaluate: ") and "runs (" in ln]
    assert bars[-1].startswith("evaluate: 2/2 runs (100%), ") and "ETA 0s" in bars[-1]
    assert "warning: no 95% CI for static (2): fewer than 5 runs" in ev.stdout
    summary = (tmp_path / "e" / "summary.md").read_text()
    assert "Note: no 95% CI for static (2)" in summary
    row = next(ln for ln in summary.splitlines() if ln.startswith("| `static` |"))
    assert "[" not in row  # means only, no interval
