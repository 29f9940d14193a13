"""``tests/mutation/run_mutation.py``'s report: a one-module run keeps the other modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

RUNNER = Path(__file__).parent / "mutation" / "run_mutation.py"


def _runner() -> ModuleType:
    if "run_mutation" in sys.modules:
        return sys.modules["run_mutation"]
    spec = importlib.util.spec_from_file_location("run_mutation", RUNNER)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["run_mutation"] = mod  # its dataclass looks its module up by name
    spec.loader.exec_module(mod)
    return mod


def _score(module: str, killed: int, survivors: list[dict[str, object]]) -> dict[str, object]:
    return {
        "module": module,
        "tests": ["tests/test_x.py"],
        "wall_s": 1.5,
        "killed": killed,
        "survived": len(survivors),
        "total": killed + len(survivors),
        "survivors": survivors,
    }


def test_a_one_module_run_keeps_the_other_modules_rows_notes_and_survivors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rm = _runner()
    monkeypatch.setattr(rm, "RESULTS", tmp_path / "mutation.md")
    old: dict[str, object] = {
        "id": "a.x_f__mutmut_1",
        "status": "survived",
        "diff": ["- x = 1", "+ x = 2"],
    }
    first = {
        "a": {**_score("pkg/a.py", 9, [old]), "note": "the first run"},
        "b": _score("pkg/b.py", 4, []),
    }
    rm.write_report(first, "make mutation")
    # a later run scores b only (a's scores are not on this machine): a stays as it was
    eq: dict[str, object] = {
        "id": "b.x_g__mutmut_7",
        "status": "survived",
        "diff": ["-    x = y.astype(np.float64)", "+    x = y.astype(None)"],
    }
    rm.write_report({"b": _score("pkg/b.py", 5, [eq])}, "make mutation")
    text = (tmp_path / "mutation.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| `pkg/")]
    assert rows == [
        "| `pkg/a.py` | `tests/test_x.py` | 10 | 9 | 1 | 0 | 90.0% | 90.0% | 1.5 |",
        "| `pkg/b.py` | `tests/test_x.py` | 6 | 5 | 1 | 1 | 83.3% | 100.0% | 1.5 |",
    ]
    assert "`pkg/a.py`: the first run" in text
    assert "## Survivors in `pkg/a.py`" in text and "a.x_f__mutmut_1" in text
    assert "`b.x_g__mutmut_7` (survived)" in text and "astype(None) is float64" in text
    # rewriting from the same scores changes nothing but the date and load lines
    rm.write_report({"b": _score("pkg/b.py", 5, [eq])}, "make mutation")
    again = (tmp_path / "mutation.md").read_text()

    def body(report: str) -> list[str]:
        return [ln for ln in report.splitlines() if not ln.startswith(("Date:", "Machine:"))]

    assert body(again) == body(text)
    assert text.count("## Survivors in") == 2


def test_module_scoped_equivalences_apply_to_their_module_only() -> None:
    rm = _runner()
    diff = ["-        dtype=np.float64,", "+        dtype=None,"]
    assert rm._explain(diff, module="envs/sim/engine.py") is not None
    assert rm._explain(diff, module="envs/kube/hpa.py") is None
    assert rm._explain(diff) is None
