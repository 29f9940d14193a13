"""Recording rules and alerts in configs/prometheus/, unit-tested with ``promtool test rules``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_fixture import RULES_DIR, need, repo_rule_files

RATIO_30M = "namespace_deployment:http_request_errors:ratio_rate30m > (6 * 0.001)"
TESTS = sorted((RULES_DIR / "tests").glob("*.test.yml"))


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_rule_files_are_valid() -> None:
    files = repo_rule_files()
    assert {f.name for f in files} == {"slo.rules.yml", "shadow.rules.yml"}
    done = promtool("check", "rules", *map(str, files), cwd=RULES_DIR)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    assert {t.name for t in TESTS} == {"slo.test.yml", "shadow.test.yml"}
    done = promtool("test", "rules", *(str(t.relative_to(RULES_DIR)) for t in TESTS), cwd=RULES_DIR)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(TESTS)


@pytest.mark.parametrize(
    ("rules", "before", "after"),
    [
        # a page at 1.44x instead of 14.4x: the 0.5 % case would page
        ("slo.rules.yml", "14.4 * 0.001", "1.44 * 0.001"),
        # one window only: without the 30m window an ended burn keeps paging for hours
        ("slo.rules.yml", "\n          and " + RATIO_30M, ""),
        ("shadow.rules.yml", "for: 15m", "for: 5m"),
        ("shadow.rules.yml", "abs >= 2", "abs >= 1"),
    ],
)
def test_unit_tests_catch_a_broken_rule(
    tmp_path: Path, rules: str, before: str, after: str
) -> None:
    """The rule tests can fail: each mutant of the rules is caught."""
    shutil.copytree(RULES_DIR, tmp_path / "prometheus")
    path = tmp_path / "prometheus" / rules
    text = path.read_text()
    assert before in text
    path.write_text(text.replace(before, after))
    assert path.read_text() != text
    test = "tests/slo.test.yml" if rules.startswith("slo") else "tests/shadow.test.yml"
    done = promtool("test", "rules", test, cwd=tmp_path / "prometheus")
    assert done.returncode != 0 and "FAILED" in done.stdout + done.stderr
