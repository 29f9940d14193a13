"""What ``opsworld simulate`` does: run one scenario under a policy and write what happened.

:func:`simulate_scenario` runs a scenario for its horizon under a policy and writes to ``out``:

* ``telemetry.parquet`` (or ``telemetry.csv`` with ``fmt=csv``): every scrape, one row per
  (time, service); see :mod:`envs.sim.export` for the columns;
* ``timeline.png``: traffic, latency, errors, replicas and cost (:mod:`envs.sim.plots`);
* ``summary.json``: :attr:`SimResult.summary` plus wall time and simulated seconds per wall
  second;
* ``actions.csv``: every action the policy took (``t, kind, service, replicas, fraction,
  node``);
* ``config.yaml`` (the run's resolved config, given by the caller) and ``scenario.yaml`` (the
  fully validated scenario, loadable with ``scenario=<out>/scenario.yaml``).

``experiments/simulate.py`` is the command (its schema and Hydra entry point).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from agents.rollout import RolloutInterrupted, rollout
from agents.run_config import Format, RunInterrupted, interrupts_held
from envs.core.actions import Action
from envs.core.policy import Policy
from envs.live.openmetrics import write_openmetrics
from envs.scenarios.schema import Scenario
from envs.sim.export import SUFFIXES, write_telemetry
from envs.sim.plots import plot_timeline
from envs.sim.simulator import SimResult, Simulator


def _action_row(t: float, action: Action) -> dict[str, Any]:
    row: dict[str, Any] = {"t": t, "kind": action.kind}
    row.update({k: v for k, v in asdict(action).items() if k != "kind"})
    return row


ACTION_COLUMNS: tuple[str, ...] = ("t", "kind", "service", "replicas", "fraction", "node")


def write_actions(actions: list[tuple[float, Action]], path: Path) -> Path:
    """Write the action log as CSV (one row per action; empty cells where not applicable)."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ACTION_COLUMNS), restval="")
        writer.writeheader()
        for t, action in actions:
            writer.writerow(_action_row(t, action))
    return path


def json_default(obj: object) -> Any:
    """``json.dumps`` ``default=``: numpy scalars and paths."""
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {obj!r}")


def _summary_table(summary: Mapping[str, Any], out: Path) -> Table:
    table = Table(title=f"opsworld simulate: {summary['scenario']}", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")

    def fmt(v: Any, unit: str = "") -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        if isinstance(v, float):
            return f"{v:,.0f}{unit}" if abs(v) >= 1000 else f"{v:.4g}{unit}"
        return f"{v}{unit}"

    rows = [
        ("fidelity / seed", f"{summary['fidelity']} / {summary['seed']}"),
        ("policy", summary["policy"]),
        ("simulated", fmt(summary["horizon_s"], " s")),
        ("wall time", fmt(summary["wall_time_s"], " s")),
        ("sim s / wall s", fmt(summary["sim_seconds_per_wall_second"])),
        ("entry requests", fmt(summary["entry_requests"])),
        ("entry error rate", fmt(summary["entry_error_rate"])),
        (
            "entry p99 mean / max",
            f"{fmt(summary['entry_p99_mean_s'])} / {fmt(summary['entry_p99_max_s'], ' s')}",
        ),
        ("cost", fmt(summary["cost_total"])),
        (
            "SLO violation",
            ", ".join(f"{k} {fmt(v, ' s')}" for k, v in summary["slo_violation_s"].items())
            or "n/a",
        ),
        ("outputs", str(out)),
    ]
    for k, v in rows:
        table.add_row(k, v)
    return table


def simulate_scenario(
    scenario: Scenario,
    policy: Policy,
    policy_name: str,
    out: str | Path,
    fmt: Format | str = Format.parquet,
    progress: bool | Callable[[float, float], None] = False,
    console: Console | None = None,
    config_yaml: str | None = None,
) -> dict[str, Any]:
    """Run ``scenario`` under ``policy`` and write the outputs listed in the module docstring.

    Args:
        scenario: The validated scenario (fidelity, seed and horizon included).
        policy: A fresh policy for it.
        policy_name: The name recorded in the summary.
        out: Output folder (created).
        fmt: Telemetry file format.
        progress: Show a progress bar over simulated seconds (True), or call this with
            ``(now, horizon)`` after each step (plain progress lines off a terminal).
        console: Where the summary table and progress bar go (default: stdout).
        config_yaml: The resolved run config for ``config.yaml`` (None: not written).

    Returns:
        The summary written to ``summary.json``; ``complete`` is False after Ctrl-C.

    Raises:
        RunInterrupted: After Ctrl-C, once the run so far is written (``summary.json`` has
            ``complete: false`` and ``interrupted_at_s``).
    """
    console = console if console is not None else Console()
    fmt = Format(fmt)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    sim = Simulator(scenario)
    start = time.perf_counter()
    try:
        result = _run(sim, policy, scenario, progress, console)
        complete = True
    except RolloutInterrupted as stop:
        result, complete = stop.result, False
    wall = time.perf_counter() - start
    with interrupts_held():
        summary = _write(result, scenario, sim, out, fmt, config_yaml)
        summary.update(
            policy=policy_name,
            wall_time_s=wall,
            sim_seconds_per_wall_second=scenario.horizon_s / wall if wall > 0 else None,
            complete=complete,
            interrupted_at_s=None if complete else float(result.frames[-1].t),
        )
        summary["out"] = str(out)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=json_default))
    if not complete:
        raise RunInterrupted(
            f"interrupted at t={result.frames[-1].t:g}s of {scenario.horizon_s:g}s; the run so "
            f"far is in {out} (summary.json: complete=false)"
        )
    console.print(_summary_table(summary, out))
    return summary


def _run(
    sim: Simulator,
    policy: Policy,
    scenario: Scenario,
    progress: bool | Callable[[float, float], None],
    console: Console,
) -> SimResult:
    if callable(progress):
        return rollout(sim, policy, progress=progress)
    if progress:
        with Progress(
            TextColumn(f"[bold]{scenario.name}[/] {scenario.fidelity}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} sim s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("simulate", total=scenario.horizon_s)
            return rollout(sim, policy, progress=lambda now, _h: bar.update(task, completed=now))
    return rollout(sim, policy)


def _write(
    result: SimResult,
    scenario: Scenario,
    sim: Simulator,
    out: Path,
    fmt: Format,
    config_yaml: str | None,
) -> dict[str, Any]:
    if fmt is Format.openmetrics:  # the run ends now (t = horizon); docs/live.md
        write_openmetrics(
            result.frames, sim.services, out / "metrics.om", time.time() // 1 - scenario.horizon_s
        )
    else:
        telemetry_path = out / f"telemetry{SUFFIXES[fmt.value]}"
        write_telemetry(result.frames, telemetry_path, "csv" if fmt is Format.csv else "parquet")
    plot_timeline(
        result.frames, scenario, out / "timeline.png", actions=result.actions, faults=result.faults
    )
    write_actions(result.actions, out / "actions.csv")
    if config_yaml is not None:
        (out / "config.yaml").write_text(config_yaml)
    (out / "scenario.yaml").write_text(
        yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False)
    )
    return {**result.summary, "frames": len(result.frames), "actions": len(result.actions)}
