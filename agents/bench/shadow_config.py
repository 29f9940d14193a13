"""Settings of the ``shadow`` benchmark suite (``opsworld bench shadow``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ShadowSizes:
    """Workload sizes of the ``shadow`` suite.

    Attributes:
        latency_ticks: Live ticks timed against the exporter (after one warm-up tick).
        replay_hours: Hours of simulated history backfilled and replayed.
    """

    latency_ticks: int = 120
    replay_hours: float = 2.0


@dataclass
class ShadowSuiteConfig:
    """Settings of the ``shadow`` suite.

    Attributes:
        scenario: Built-in scenario of both parts (``mesh40``: 40 services).
        interval_s: Seconds between the timed live ticks.
        replay_step_s: Seconds between replayed frames (the scrape interval of the history).
        warmup_s: Seconds Prometheus scrapes the exporter before the first timed tick (one
            rate window of data).
        full: Sizes of a full run.
        quick: Sizes with ``quick=true`` (for tests).
        target_tick_p99_s: Live tick latency p99 must be at most this.
        target_replay_ticks_per_s: Replay must run at least this many ticks per second.
    """

    scenario: str = "mesh40"
    interval_s: float = 0.25
    replay_step_s: float = 15.0
    warmup_s: float = 20.0
    full: ShadowSizes = field(default_factory=ShadowSizes)
    quick: ShadowSizes = field(
        default_factory=lambda: ShadowSizes(latency_ticks=8, replay_hours=0.25)
    )
    target_tick_p99_s: float = 1.0
    target_replay_ticks_per_s: float = 20.0
