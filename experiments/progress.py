"""Progress for long commands: a rich bar on a terminal, plain periodic lines elsewhere.

Off a terminal (a CI log, ``nohup``, a pipe) a bar would print nothing useful, so
:class:`Progress` prints ``<label>: <done>/<total> <unit> (<pct>%), <elapsed> elapsed, ETA
<eta>`` after the first unit of work (the run is alive), then at most every ``every_s``
seconds, and once at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


def duration(seconds: float) -> str:
    """``seconds`` as ``1h02m``, ``3m05s`` or ``12s``."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """Progress over ``total`` units of work (runs, simulated seconds, env steps).

    Args:
        label: What is running (``evaluate``, ``simulate chain3``).
        total: Units in all.
        unit: Their name (``runs``, ``sim s``).
        bar: A rich bar (a terminal) instead of plain lines; None: when ``stream`` is a
            terminal.
        every_s: Plain lines: at most one per this many wall seconds (and one at the end).
        stream: Where plain lines go (default stdout).
        clock: Wall clock in seconds (monotonic).
    """

    def __init__(
        self,
        label: str,
        total: float,
        unit: str,
        *,
        bar: bool | None = None,
        every_s: float = 10.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.unit = label, float(total), unit
        self.stream = stream if stream is not None else sys.stdout
        self.every_s, self.clock = every_s, clock
        self.start = self.last = clock()
        self.done = 0.0
        self.lines: list[str] = []
        self._bar: Any = None
        if bar if bar is not None else self.stream.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn(f"[bold]{label}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(unit),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(label, total=self.total)

    def line(self, now: float | None = None) -> str:
        """The plain progress line for the work done so far."""
        elapsed = (self.clock() if now is None else now) - self.start
        pct = 100.0 * self.done / self.total if self.total > 0 else 100.0
        eta = elapsed * (self.total - self.done) / self.done if self.done > 0 else None
        return (
            f"{self.label}: {self.done:,.0f}/{self.total:,.0f} {self.unit} ({pct:.0f}%), "
            f"{duration(elapsed)} elapsed, ETA {duration(eta) if eta is not None else '?'}"
        )

    def update(self, done: float, _total: float | None = None) -> None:
        """Record ``done`` units finished (the signature fits progress callbacks)."""
        self.done = float(done)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
            return
        now = self.clock()
        if not self.lines or now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            text = self.line(now)
            self.lines.append(text)
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """Stop the bar (plain lines need nothing)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
