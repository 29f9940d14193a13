"""The shadow report renders in a real browser: headless Chromium, no console message.

Chromium is Debian's ``chromium`` package (``make chromium``, part of ``make test``); the test
fails, never skips, without it. :func:`render` loads a page with ``--dump-dom`` and
``--enable-logging=stderr``: Chromium then writes every console message (``console.*`` calls,
uncaught exceptions, refused loads) to stderr as ``INFO:CONSOLE:<line>] "<text>", source:
<url> (<line>)``, and the DOM after scripts ran to stdout. The report page logs nothing, so any
console message is a failure. The negative cases show the check sees a thrown error, a
console.error and a blocked network load, on a bare page and on the report itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from shadow_audit_fixture import write_audit

from agents.shadow.report import read_audit, write_report

CONSOLE = re.compile(r':CONSOLE(?::\d+|\(\d+\))\] "(?P<text>.*)", source: (?P<source>.*)$')


@dataclass
class Rendered:
    """What Chromium made of a page."""

    dom: str
    console: list[str]


def chromium() -> str:
    """Path of the Chromium binary; fails (not skips) with the fix when it is missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is missing: run 'make chromium' (Debian's chromium package)")
    return path


def render(page: Path, timeout_s: float = 120.0) -> Rendered:
    """Load ``page`` in headless Chromium; its DOM after scripts ran and its console messages."""
    proc = subprocess.run(
        [
            chromium(),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--enable-logging=stderr",
            "--v=0",
            f"--user-data-dir={page.parent / '.chromium-profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {proc.stderr[-3000:]}"
    console = [m.group("text") for m in map(CONSOLE.search, proc.stderr.splitlines()) if m]
    return Rendered(proc.stdout, console)


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    audit = read_audit(write_audit(tmp / "audit.jsonl"))
    return write_report(audit, tmp / "report")["html"]


def test_report_renders_with_no_console_message(report_html: Path) -> None:
    out = render(report_html)
    assert out.console == []
    # The page's script ran to its end: it marks the body with the would-have-acted rows.
    assert 'data-rendered="6"' in out.dom
    assert out.dom.count("<svg") == 3  # no counterfactual given: replicas, missing, drift
    assert "Would have acted (6)" in out.dom


def test_a_thrown_error_and_console_error_are_caught(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><body><p>x</p><script>"
        'console.error("something broke"); throw new Error("boom");'
        "</script></body></html>"
    )
    out = render(page)
    assert out.console == ["something broke", "Uncaught Error: boom"]


def test_an_error_in_the_report_script_is_caught(report_html: Path, tmp_path: Path) -> None:
    """The real report with its script broken (a typo in one name) fails the check."""
    page = tmp_path / "broken.html"
    text = report_html.read_text()
    assert 'document.getElementById("acted-filter")' in text
    page.write_text(text.replace('document.getElementById("acted-filter")', "documnet.x()"))
    out = render(page)
    assert len(out.console) == 1 and "ReferenceError: documnet is not defined" in out.console[0]
    assert 'data-rendered="' not in out.dom


def test_a_network_load_is_refused_and_reported(report_html: Path, tmp_path: Path) -> None:
    """The page's Content-Security-Policy blocks any fetch; the refusal is a console message."""
    page = tmp_path / "fetching.html"
    page.write_text(
        report_html.read_text().replace(
            "</body>", "<img src='http://127.0.0.1:9/pixel.png'></body>"
        )
    )
    out = render(page)
    assert len(out.console) == 1, out.console
    assert "http://127.0.0.1:9/pixel.png" in out.console[0]
    assert "violates the following Content Security Policy" in out.console[0]
