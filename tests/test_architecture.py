"""The architecture is enforced: import-linter's contracts in pyproject.toml hold.

``make test`` runs this, so an import that breaks a layer (envs importing agents, envs.core
importing the simulator, the world model importing SB3) fails CI with the offending chain.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(*args: str) -> subprocess.CompletedProcess[str]:
    assert LINT.exists(), f"{LINT} missing: import-linter is a dev dependency (make venv)"
    return subprocess.run(
        [str(LINT), "--no-cache", *args], cwd=REPO, capture_output=True, text=True, check=False
    )


def test_import_contracts_are_kept() -> None:
    proc = _lint()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    for contract in (
        "Layers: experiments -> agents -> envs",
        "Inside envs: gym -> sim -> scenarios -> kube -> core",
        "envs.core imports nothing else of the project",
        "Nothing under envs imports agents",
        "The world model does not need Stable-Baselines3",
        "Shadow mode never imports the simulator or SB3",
    ):
        assert f"{contract}" in proc.stdout and "KEPT" in proc.stdout, contract
    assert "0 broken" in proc.stdout


def test_a_broken_contract_fails(tmp_path: Path) -> None:
    """The linter does see the project's imports: agents -> envs is everywhere."""
    cfg = tmp_path / "broken.toml"
    cfg.write_text(
        "[tool.importlinter]\n"
        'root_packages = ["envs", "agents"]\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "agents without envs"\n'
        'type = "forbidden"\n'
        'source_modules = ["agents.rollout"]\n'
        'forbidden_modules = ["envs.sim"]\n'
    )
    proc = _lint(str(cfg))
    assert proc.returncode == 1
    assert "agents without envs BROKEN" in proc.stdout
    assert "agents.rollout -> envs.sim.simulator" in proc.stdout
