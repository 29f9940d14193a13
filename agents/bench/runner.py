"""What ``opsworld bench <suite>`` does: run a benchmark suite and write its results.

``opsworld bench sim`` (suite ``sim``) measures the simulator's speed, prints one JSON object
and writes ``<results_dir>/sim_bench.json`` and ``<results_dir>/sim_bench.md`` (with
``quick=true``: ``sim_bench_quick.*``, so a smoke run never overwrites the committed
numbers). Figures (rates are the best of ``repeats`` runs of the same seeded workload):

* ``fluid_steps_per_s`` / ``fluid_sim_seconds_per_wall_second`` (boutique) and
  ``mesh40_fluid_steps_per_s`` / ``mesh40_fluid_sim_seconds_per_wall_second``: fluid engine,
  static policy (no actions), 15 s decision steps: ``Simulator.reset()`` (not timed), then
  ``Simulator.step([])`` until the horizon (one simulated day) or the wall budget;
* ``fluid_varying_traffic_steps_per_s``: boutique again with diurnal and noisy traffic, so
  no segment can reuse the previous one's solution (the constant-traffic figure above
  benefits from that reuse);
* ``batched_fluid_varying_n{N}_steps_per_s`` (``N`` in ``sim.batched_envs``) and
  ``batched_fluid_varying_steps_per_s`` (the last ``N``): the batched vector env
  (:class:`envs.gym.batched.BatchedAutoscaleEnv`) on the same varying traffic, sub-env steps
  per wall second on one thread, no-op actions; ``..._random_steps_per_s``: the last ``N``
  with uniformly random actions;
* ``request_level_requests_per_s``: request-level engine on an M/M/c scenario (one service,
  Poisson arrivals, exponential service, no timeouts, retries or drops; ``c = pods x
  concurrency``), requests counted from the telemetry counters of the last frame;
* ``request_level_boutique_requests_per_s``: attempts at all services per wall second on
  boutique at request level;
* ``bare_simpy_requests_per_s``: the same M/M/c queue as a plain SimPy program in the
  idiomatic style (a source process spawning one process per customer that requests a
  ``simpy.Resource(capacity=c)``, holds an exponential service time and releases), same
  ``c``, utilisation and number of customers;
* ``request_level_vs_bare_ratio``: request level / bare SimPy.

``opsworld bench incidents`` (suite ``incidents``) times the incident suite runner
(``agents/evaluation/suite.py``): the static policy over every entry of the ``holdout``
suite x 3 seeds on 2 worker processes (``quick=true``: 4 entries x 1 seed), and writes
``incidents_bench[_quick].json`` / ``.md`` with the wall time, runs, runs per second, the
target (wall time <= 120 s) and the aggregate score table (``docs/scoring.md``).

Suites live in :data:`SUITES` (name -> function); add one there and in ``BenchSuite``. A
suite returns ``figures`` and ``targets`` (met when the figure is at least the target, or
at most it for names in ``lower_is_better``), ``details``, and optionally ``method`` (the
line saying how figures were measured) and ``markdown`` (extra sections for the page).

"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from rich.console import Console

from agents.bench.config import BenchConfig
from agents.bench.incidents import run_incidents_suite
from agents.bench.scale import run_scale_suite
from agents.bench.serve import run_serve_suite
from agents.bench.shadow import run_shadow_suite
from agents.bench.sim import run_sim_suite
from agents.bench.world_model import run_world_model_suite
from agents.run_config import RunConfigError as ConfigError

SUITES: dict[str, Callable[[BenchConfig, Console], dict[str, Any]]] = {
    "sim": run_sim_suite,
    "incidents": run_incidents_suite,
    "world_model": run_world_model_suite,
    "serve": run_serve_suite,
    "shadow": run_shadow_suite,
    "scale": run_scale_suite,
}
"""Suite name -> function measuring it."""


# --------------------------------------------------------------------------- reporting


def machine_info() -> dict[str, Any]:
    """CPU model, cores, OS and the versions that matter for the figures."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "simpy": metadata.version("simpy"),
    }


def command_line(conf: BenchConfig) -> str:
    """The ``opsworld bench`` command that reproduces this run."""
    words = ["opsworld", "bench", conf.suite.value]
    if HydraConfig.initialized():
        words += [o for o in HydraConfig.get().overrides.task if not o.startswith("suite=")]
    elif conf.quick:
        words.append("quick=true")
    return " ".join(words)


def _fmt(v: float) -> str:
    return f"{v:,.3g}" if abs(v) < 10 else f"{v:,.0f}"


def to_markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown page: figures with targets, command, date, machine."""
    m = report["machine"]
    lines = [
        f"# `{report['suite']}` benchmark" + (" (quick sizes)" if report["quick"] else ""),
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['os']}  ",
        f"Versions: Python {m['python']}, numpy {m['numpy']}, simpy {m['simpy']}",
        "",
        report.get("method")
        or f"Rates are the best of {report['repeats']} repeats, single process.",
        "",
        "| figure | value | target | status |",
        "|---|---:|---:|---|",
    ]
    lower = set(report.get("lower_is_better", []))
    for name, value in report["figures"].items():
        target = report["targets"].get(name)
        sign = "<= " if name in lower else ">= "
        status = report["status"].get(name, "")
        lines.append(
            f"| `{name}` | {_fmt(value)} | {sign + _fmt(target) if target is not None else ''} "
            f"| {status} |"
        )
    lines.append("")
    lines.append("Parameters and per-repeat rates: see the JSON file next to this one.")
    if report.get("markdown"):
        lines += ["", report["markdown"]]
    return "\n".join(lines) + "\n"


def run_bench(conf: BenchConfig, log: Console | None = None) -> dict[str, Any]:
    """Run one suite, write ``<suite>_bench[_quick].json`` and ``.md``; return the report.

    Args:
        conf: A validated ``opsworld bench`` config.
        log: Where progress lines go (default: stderr, so stdout carries only the JSON).
    """
    log = log if log is not None else Console(stderr=True)
    suite = conf.suite.value
    if suite not in SUITES:
        raise ConfigError(f"suite={suite}: unknown suite; one of {sorted(SUITES)}")
    start = time.perf_counter()
    measured = SUITES[suite](conf, log)
    lower = set(measured.get("lower_is_better", []))
    status = {}
    for name, target in measured["targets"].items():
        value = measured["figures"][name]
        met = value <= target if name in lower else value >= target
        status[name] = "pass" if met else "miss"
    report: dict[str, Any] = {
        "suite": suite,
        "quick": conf.quick,
        "command": command_line(conf),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "repeats": conf.repeats,
        "figures": measured["figures"],
        "targets": measured["targets"],
        "status": status,
        "details": measured["details"],
        "bench_wall_s": time.perf_counter() - start,
    }
    for key in ("lower_is_better", "method"):
        if key in measured:
            report[key] = measured[key]
    out = Path(conf.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{suite}_bench" + ("_quick" if conf.quick else "")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(to_markdown({**report, "markdown": measured.get("markdown")}))
    report["files"] = [str(out / f"{stem}.json"), str(out / f"{stem}.md")]
    return report
