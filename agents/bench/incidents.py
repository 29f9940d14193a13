"""Benchmark suite ``incidents``: the incident suite runner's throughput and scores."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console

from agents.bench.config import BenchConfig
from agents.evaluation.suite import RunScore, run_suite
from agents.policy import StaticPolicy
from agents.run_config import RunConfigError as ConfigError
from envs.core.policy import Policy
from envs.scenarios.suites import SuiteError, load_suite

POLICIES: dict[str, Callable[[], Policy]] = {"static": StaticPolicy}
"""Policies the ``incidents`` suite can run, by name (module-level factories: picklable)."""


def run_incidents_suite(conf: BenchConfig, log: Console) -> dict[str, Any]:
    """Time :func:`~agents.evaluation.suite.run_suite` on a scenario suite; scores too."""
    c = conf.incidents
    sizes = c.quick if conf.quick else c.full
    if c.policy not in POLICIES:
        raise ConfigError(f"incidents.policy={c.policy}: unknown policy; one of {sorted(POLICIES)}")
    if c.workers < 1 or sizes.seeds < 1 or sizes.entries < 0:
        raise ConfigError(
            "incidents: workers and seeds must be >= 1 and entries >= 0 (0: all), got "
            f"workers={c.workers}, seeds={sizes.seeds}, entries={sizes.entries}"
        )
    if c.fidelity not in ("fluid", "request"):
        raise ConfigError(f"incidents.fidelity={c.fidelity}: one of fluid, request")
    try:
        suite = load_suite(c.suite)
    except SuiteError as err:
        raise ConfigError(f"incidents.suite={c.suite}: {err}") from None
    if sizes.entries:
        suite = suite.subset(first=sizes.entries)
    total = len(suite) * sizes.seeds
    seeds = f"{sizes.seeds} seed{'s' if sizes.seeds != 1 else ''}"
    log.print(
        f"incidents: {c.policy} policy on {len(suite)} {suite.name} entries x {seeds} "
        f"= {total} runs, {c.workers} worker(s)"
    )

    def tick(done: int, n: int, run: RunScore) -> None:
        if done == n or done % 20 == 0:
            log.print(f"  {done}/{n} runs")

    result = run_suite(
        suite,
        POLICIES[c.policy],
        range(sizes.seeds),
        workers=c.workers,
        fidelity=c.fidelity,
        progress=tick,
        bootstrap_seed=conf.seed,
    )
    figures = {
        "wall_s": result.wall_s,
        "runs": float(len(result.runs)),
        "runs_per_s": result.runs_per_s,
    }
    targets = {} if conf.quick else {"wall_s": c.target_wall_s}
    as_dict = result.to_dict()
    details = {
        "suite": suite.name,
        "entries": len(suite),
        "seeds": sizes.seeds,
        "policy": result.policy,
        "workers": result.workers,
        "fidelity": c.fidelity,
        "summary": as_dict["summary"],
        "per_run": as_dict["per_run"],
    }
    method = (
        f"One timed run of the `{suite.name}` suite: {len(suite)} entries x {seeds}, "
        f"`{result.policy}` policy, {c.fidelity} fidelity, {result.workers} worker "
        "process(es), pool start-up included."
    )
    markdown = "\n".join(
        [
            "## Scores",
            "",
            "Aggregate over all runs: mean and interquartile mean (IQM) with seeded bootstrap "
            "95% CIs; n/a counts runs where the metric does not apply. Definitions: "
            "[docs/scoring.md](../../docs/scoring.md).",
            "",
            result.summary_markdown(),
            "",
            "Per entry (mean over seeds):",
            "",
            result.entries_markdown(),
        ]
    )
    return {
        "figures": figures,
        "targets": targets,
        "lower_is_better": ["wall_s"],
        "details": details,
        "method": method,
        "markdown": markdown,
    }
