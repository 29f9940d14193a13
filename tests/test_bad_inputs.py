"""Every bad input of issue 13 through the real ``opsworld`` CLI: exit 2, one line, no traceback.

Each case runs the console script in a subprocess (as a user would) and checks the answer:
exit status 2, exactly one line on stderr that starts ``opsworld <command>: error:`` and names
the field or file (``expect``), and no traceback. Cases that need a trained run, a damaged
weight file or a fitted world model share the session fixture :func:`runs` (tiny
``debug=default`` runs, seconds each). ``docs/troubleshooting.md`` lists the same errors with
their fixes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

OPSWORLD = Path(sys.executable).with_name("opsworld")

TINY_FIT = [
    "topology=chain3",
    "limit=2",
    "calib_split=entries",
    "calib_every=2",
    "behaviours=[hpa,explore]",
    "replicates=1",
    "updates=3",
    "log_every=2",
    "batch=2",
    "seq_len=16",
    "wm.overshoot=4",
    "every=20",
    "n_samples=8",
    "workers=1",
    "calib_behaviours=[hpa]",
    "wm.deter=32",
    "wm.hidden=16",
    "wm.stoch=4",
    "wm.classes=4",
    "wm.units=16",
]


def opsworld(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the console script in ``cwd`` (W&B off, a wide terminal for rich)."""
    assert OPSWORLD.exists(), f"console script missing: {OPSWORLD} (run make venv)"
    env = {**os.environ, "WANDB_MODE": "disabled", "COLUMNS": "200"}
    return subprocess.run(
        [str(OPSWORLD), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def truncate(path: Path, keep: int) -> None:
    """Cut ``path`` to its first ``keep`` bytes (a download that stopped half-way)."""
    path.write_bytes(path.read_bytes()[:keep])


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with tiny trained runs, damaged copies of them, bad CSVs and a file.

    ``ppo``, ``a2c``, ``dreamer`` (``debug=default`` on chain3), ``wm`` (a tiny world model);
    ``bad_zip``, ``bad_stats``, ``bad_agent``, ``bad_wm``: copies with one file damaged;
    ``bad_resume/model_128_steps.zip`` and ``dreamer/checkpoints/step_128`` copies truncated;
    ``csv/<case>.csv`` replay files; ``a_file`` a plain file.
    """
    root = tmp_path_factory.mktemp("bad_inputs")
    for args in (
        ("train", "debug=default", "out=ppo"),
        ("train", "debug=default", "agent=a2c", "out=a2c"),
        ("train", "debug=default", "agent=dreamer", "out=dreamer"),
        ("fit-world-model", *TINY_FIT, "out=wm"),
    ):
        proc = opsworld(*args, cwd=root)
        assert proc.returncode == 0, proc.stderr[-2000:]
    for src, dst, name, keep in (
        ("ppo", "bad_zip", "model.zip", 300),
        ("ppo", "bad_stats", "vecnormalize.pkl", 40),
        ("dreamer", "bad_agent", "agent.pt", 1000),
        ("wm", "bad_wm", "checkpoint.pt", 2000),
    ):
        shutil.copytree(root / src, root / dst)
        truncate(root / dst / name, keep)
    (root / "bad_resume").mkdir()
    for f in (root / "ppo" / "checkpoints").glob("*_128_steps.*"):
        shutil.copy(f, root / "bad_resume" / f.name)
    truncate(root / "bad_resume" / "model_128_steps.zip", 500)
    shutil.copytree(root / "dreamer", root / "bad_dreamer")
    truncate(root / "bad_dreamer" / "checkpoints" / "step_128" / "state.pt", 800)
    csv = root / "csv"
    csv.mkdir()
    for name, text in CSV_FILES.items():
        (csv / f"{name}.csv").write_text(text)
    (root / "a_file").write_text("not a folder\n")
    (root / "used").mkdir()
    (root / "used" / "telemetry.parquet").write_text("an older run's file\n")
    return root


CSV_FILES = {
    "bad_row": "t,rps\n0,10\n1,abc\n",
    "nan": "t,rps\n0,10\n1,nan\n",
    "inf": "t,rps\n0,10\n1,inf\n",
    "negative": "t,rps\n0,10\n1,-5\n",
    "header": "time,rate\n0,10\n1,12\n",
    "no_rows": "t,rps\n",
}


@dataclass(frozen=True)
class Case:
    """One bad input: the command line and what its one error line must contain."""

    id: str
    args: tuple[str, ...]
    expect: tuple[str, ...]
    skip: Callable[[], str | None] = lambda: None


def _no_cuda() -> str | None:
    import torch

    return "this machine has a GPU" if torch.cuda.is_available() else None


def _replay(name: str) -> tuple[str, ...]:
    return (
        "simulate",
        "scenario=chain3",
        "horizon_s=60",
        f"++scenario_overrides.traffic.replay={{path:csv/{name}.csv}}",
        "out=o",
    )


CASES = [
    Case("train seed=-1", ("train", "debug=default", "seed=-1", "out=o"), ("seed=-1", ">= 0")),
    Case("simulate seed=-1", ("simulate", "scenario=chain3", "seed=-1", "out=o"), ("'seed'",)),
    Case("replay bad row", _replay("bad_row"), ("bad_row.csv", "line 3", "'abc'")),
    Case("replay NaN", _replay("nan"), ("nan.csv", "line 3", "finite")),
    Case("replay inf", _replay("inf"), ("inf.csv", "line 3", "finite")),
    Case("replay negative", _replay("negative"), ("negative.csv", "line 3", "negative rps")),
    Case("replay header", _replay("header"), ("header.csv", "missing column", "'t,rps'")),
    Case("replay no rows", _replay("no_rows"), ("no_rows.csv", "no data rows")),
    Case(
        "train replay NaN",
        (
            "train",
            "debug=default",
            "++scenario_overrides.traffic.replay={path:csv/nan.csv}",
            "out=o",
        ),
        ("nan.csv", "line 3"),
    ),
    Case(
        "corrupted model.zip",
        ("evaluate", "policy=bad_zip", "topology=chain3", "limit=1", "out=o"),
        ("policy=", "bad_zip/model.zip", "damaged"),
    ),
    Case(
        "corrupted vecnormalize.pkl",
        ("evaluate", "policy=bad_stats", "topology=chain3", "limit=1", "out=o"),
        ("bad_stats/vecnormalize.pkl", "damaged"),
    ),
    Case(
        "corrupted Dreamer agent.pt",
        ("evaluate", "policy=bad_agent", "topology=chain3", "limit=1", "out=o"),
        ("policy=", "bad_agent", "agent.pt"),
    ),
    Case(
        "truncated Dreamer checkpoint",
        (
            "train",
            "debug=default",
            "agent=dreamer",
            "total_timesteps=512",
            "resume=bad_dreamer/checkpoints/step_128",
            "out=o",
        ),
        ("resume=", "state.pt is damaged or truncated"),
    ),
    Case(
        "corrupted world-model checkpoint",
        ("evaluate-forecast", "model=bad_wm", "topology=chain3", "limit=1", "out=o"),
        ("model=bad_wm", "damaged or truncated"),
    ),
    Case(
        "corrupted world-model init",
        ("fit-world-model", *TINY_FIT, "init=bad_wm", "out=o"),
        ("init=bad_wm", "checkpoint.pt is damaged"),
    ),
    Case(
        "topology mismatch",
        ("evaluate", "policy=ppo", "suite=holdout", "topology=boutique", "limit=1", "out=o"),
        ("policy=", "trained on 3 services", "topology="),
    ),
    Case(
        "truncated resume zip",
        ("train", "debug=default", "resume=bad_resume/model_128_steps.zip", "out=o"),
        ("resume=bad_resume/model_128_steps.zip", "damaged or truncated"),
    ),
    Case("out= a file", ("simulate", "scenario=chain3", "out=a_file"), ("out=a_file", "a file")),
    Case(
        "out= under a file",
        ("simulate", "scenario=chain3", "out=a_file/run"),
        ("out=a_file/run", "cannot create"),
    ),
    Case(
        "out= not empty",
        ("simulate", "scenario=chain3", "horizon_s=60", "out=used"),
        ("out=used", "not empty", "overwrite=true"),
    ),
    Case(
        "train out= not empty",
        ("train", "debug=default", "out=used"),
        ("out=used", "not empty", "resume="),
    ),
    Case(
        "agent.learning_rate=-1",
        ("train", "debug=default", "agent.learning_rate=-1", "out=o"),
        ("agent.learning_rate=-1", "> 0"),
    ),
    Case(
        "traffic.resolution_s=1e-6",
        ("simulate", "scenario=chain3", "scenario_overrides.traffic.resolution_s=1e-6", "out=o"),
        ("traffic.resolution_s", "GiB", "resolution_s >="),
    ),
    Case(
        "agent.gamma=1.5",
        ("train", "debug=default", "agent.gamma=1.5", "out=o"),
        ("agent.gamma=1.5", "(0, 1]"),
    ),
    Case(
        "negative reward weight",
        ("train", "debug=default", "env.reward_weights.cost=-0.2", "out=o"),
        ("env.reward_weights.cost=-0.2", ">= 0"),
    ),
    Case(
        "device=cuda without a GPU",
        ("train", "debug=default", "device=cuda", "out=o"),
        ("device=cuda", "device=cpu"),
        skip=_no_cuda,
    ),
    Case(
        "A2C checkpoint under agent=ppo",
        ("train", "debug=default", "agent=ppo", "resume=a2c/checkpoints/model_128_steps.zip"),
        ("agent=a2c", "agent=ppo"),
    ),
    Case("evaluate seeds=0", ("evaluate", "seeds=0", "out=o"), ("seeds=0", ">= 1")),
    Case("unknown option", ("simulate", "horizon=60"), ("horizon", "did you mean 'horizon_s'")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line_naming_the_field(runs: Path, case: Case) -> None:
    reason = case.skip()
    if reason:
        pytest.skip(reason)
    shutil.rmtree(runs / "o", ignore_errors=True)
    proc = opsworld(*case.args, cwd=runs)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    line = lines[0]
    assert line.startswith(f"opsworld {case.args[0]}: error: "), line
    for text in case.expect:
        assert text in line, f"{text!r} not in {line!r}"


def test_every_documented_error_is_a_case() -> None:
    """docs/troubleshooting.md lists each case id (its table is the user-facing copy)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in doc]
    assert not missing, f"add these cases to docs/troubleshooting.md: {missing}"
