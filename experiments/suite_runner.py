"""Run a policy over a scenario suite, in parallel, and score every run.

:func:`run_suite` runs every (entry, replicate) of a :class:`~envs.scenarios.suites.Suite`
with a fresh policy from ``policy_factory``: ``rollout(Simulator(entry.scenario, fidelity=fidelity,
seed=entry.run_seed(replicate)), policy)``, then
:func:`~envs.scenarios.scoring.score_episode`. Runs are independent and each is fully
determined by its scenario and seed, so the result is the same for any number of workers.
With ``workers > 1`` they go to a :class:`concurrent.futures.ProcessPoolExecutor` (spawned
processes), so ``policy_factory`` must be picklable: a module-level function or class such
as :class:`~agents.policy.StaticPolicy`, not a lambda or a local function.

The :class:`SuiteResult` holds every run's score and the :func:`~envs.scenarios.scoring.aggregate`
over all of them, and renders itself as JSON (:meth:`SuiteResult.to_json`) or Markdown
(:meth:`SuiteResult.to_markdown`). This module is a library; ``opsworld bench incidents``
(``experiments/bench.py``) is its command-line use.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from agents.rollout import rollout
from envs.core.policy import Policy
from envs.scenarios.schema import Scenario
from envs.scenarios.scoring import METRICS, EpisodeScore, MetricSummary, aggregate, score_episode
from envs.scenarios.suites import Suite
from envs.sim.simulator import Simulator

PolicyFactory = Callable[[], Policy]
"""Makes a fresh policy for one run (picklable when ``workers > 1``)."""


class SuiteRunError(RuntimeError):
    """A run of a suite failed; the message names the suite entry, the seed and the cause."""


@dataclass(frozen=True)
class RunScore:
    """The score of one run.

    Attributes:
        entry_id: Suite entry id.
        replicate: Replicate index (the ``seeds`` item it came from).
        seed: The simulator seed used (``entry.run_seed(replicate)``).
        score: The episode score.
        wall_s: Wall seconds of the run and its scoring.
    """

    entry_id: str
    replicate: int
    seed: int
    score: EpisodeScore
    wall_s: float

    def as_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict: the run's identity, then every score field."""
        return {
            "entry": self.entry_id,
            "replicate": self.replicate,
            "seed": self.seed,
            "wall_s": self.wall_s,
            **self.score.as_dict(),
        }


@dataclass
class SuiteResult:
    """Every run's score and their aggregate.

    Attributes:
        suite: Suite name.
        policy: Policy name.
        fidelity: Simulator fidelity.
        replicates: The replicate indices run for every entry.
        runs: One :class:`RunScore` per (entry, replicate), in suite order then replicate.
        summary: :func:`~envs.scenarios.scoring.aggregate` over all runs.
        wall_s: Wall seconds of the whole suite (pool start-up included).
        workers: Worker processes used (1: in-process).
    """

    suite: str
    policy: str
    fidelity: str
    replicates: list[int]
    runs: list[RunScore]
    summary: dict[str, MetricSummary]
    wall_s: float
    workers: int
    entries: list[str] = field(default_factory=list)

    @property
    def runs_per_s(self) -> float:
        """Runs per wall second."""
        return len(self.runs) / self.wall_s if self.wall_s > 0 else math.inf

    def per_entry(self) -> dict[str, dict[str, float | None]]:
        """Mean of each metric per entry over its replicates (None where none applied)."""
        out: dict[str, dict[str, float | None]] = {}
        for eid in self.entries or list(dict.fromkeys(r.entry_id for r in self.runs)):
            mine = [r.score.metrics() for r in self.runs if r.entry_id == eid]
            row: dict[str, float | None] = {}
            for m in METRICS:
                vals: list[float] = []
                for v in mine:
                    x = v[m]
                    if x is not None:
                        vals.append(x)
                row[m] = sum(vals) / len(vals) if vals else None
            out[eid] = row
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: settings, timing, the aggregate and every run."""
        return {
            "suite": self.suite,
            "policy": self.policy,
            "fidelity": self.fidelity,
            "replicates": self.replicates,
            "entries": len(self.entries) or len({r.entry_id for r in self.runs}),
            "runs": len(self.runs),
            "workers": self.workers,
            "wall_s": self.wall_s,
            "runs_per_s": self.runs_per_s,
            "summary": {k: v.as_dict() for k, v in self.summary.items()},
            "per_run": [r.as_dict() for r in self.runs],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    def summary_markdown(self) -> str:
        """The aggregate as a Markdown table (one row per metric)."""
        lines = [
            "| metric | n | n/a | mean | 95% CI | IQM | 95% CI |",
            "|---|---:|---:|---:|---|---:|---|",
        ]
        for name, s in self.summary.items():
            lines.append(
                f"| `{name}` | {s.n} | {s.n_missing} | {_num(s.mean)} | {_ci(s.mean_ci)} "
                f"| {_num(s.iqm)} | {_ci(s.iqm_ci)} |"
            )
        return "\n".join(lines)

    def entries_markdown(self) -> str:
        """Per-entry means over replicates as a Markdown table."""
        cols = (
            ("slo_violation_min", "SLO viol. min"),
            ("error_budget_burn", "budget burn"),
            ("p99_max_s", "p99 max s"),
            ("mitigated", "mitigated"),
            ("time_to_mitigate_s", "TTM s"),
            ("cost", "cost"),
            ("disruptive_actions", "disruptive"),
            ("unknown_state_rate", "unknown state"),
        )
        head = "| entry | " + " | ".join(c[1] for c in cols) + " |"
        lines = [head, "|---|" + "---:|" * len(cols)]
        for eid, row in self.per_entry().items():
            lines.append(f"| `{eid}` | " + " | ".join(_num(row[c[0]]) for c in cols) + " |")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """A Markdown page: settings, the aggregate table and the per-entry table."""
        n_entries = len(self.entries) or len({r.entry_id for r in self.runs})
        return "\n".join(
            [
                f"# Suite `{self.suite}`: policy `{self.policy}`",
                "",
                f"{n_entries} entries x {len(self.replicates)} seed(s) = {len(self.runs)} runs, "
                f"{self.fidelity} fidelity, {self.workers} worker(s), {self.wall_s:.1f} s wall "
                f"({self.runs_per_s:.2f} runs/s).",
                "",
                "Aggregate over all runs (mean and interquartile mean, IQM, with seeded "
                "bootstrap 95% CIs; n/a counts runs where the metric does not apply). "
                "Definitions: docs/scoring.md.",
                "",
                self.summary_markdown(),
                "",
                "Per entry (mean over seeds):",
                "",
                self.entries_markdown(),
                "",
            ]
        )


def _num(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if v == 0:
        return "0"
    return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def _ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{_num(ci[0])}, {_num(ci[1])}]"


# --------------------------------------------------------------------------------------------
# running


def run_one(
    entry_id: str,
    scenario: Scenario,
    replicate: int,
    seed: int,
    fidelity: str,
    policy_factory: PolicyFactory,
) -> RunScore:
    """Run and score one (entry, replicate) with a fresh policy (what a worker executes).

    Raises:
        SuiteRunError: Wrapping any failure, with the entry id and the seed.
    """
    start = time.perf_counter()
    try:
        policy = policy_factory()
        result = rollout(Simulator(scenario, fidelity=fidelity, seed=seed), policy)
        score = score_episode(result)
    except Exception as exc:
        raise SuiteRunError(
            f"entry {entry_id!r} replicate {replicate} (seed {seed}): {type(exc).__name__}: {exc}"
        ) from exc
    return RunScore(entry_id, replicate, seed, score, time.perf_counter() - start)


def execute(
    tasks: Sequence[tuple[Any, ...]],
    workers: int,
    progress: Callable[[int, int, RunScore], None] | None = None,
) -> list[RunScore]:
    """Run each task (the arguments of :func:`run_one`) and return the scores in task order.

    ``workers == 1`` runs in this process; otherwise a spawn pool of ``workers`` processes.
    The first failure cancels the rest and is raised.
    """
    done: dict[int, RunScore] = {}
    if workers == 1:
        for i, task in enumerate(tasks):
            done[i] = run_one(*task)
            if progress is not None:
                progress(len(done), len(tasks), done[i])
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures: dict[Future[RunScore], int] = {
                pool.submit(run_one, *task): i for i, task in enumerate(tasks)
            }
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in finished:
                    failure = fut.exception()
                    if failure is not None:
                        for other in pending:
                            other.cancel()
                        raise failure
                    i = futures[fut]
                    done[i] = fut.result()
                    if progress is not None:
                        progress(len(done), len(tasks), done[i])
    return [done[i] for i in range(len(tasks))]


def run_suite(
    suite: Suite,
    policy_factory: PolicyFactory,
    seeds: Sequence[int],
    workers: int | None = os.cpu_count(),
    fidelity: str = "fluid",
    progress: Callable[[int, int, RunScore], None] | None = None,
    bootstrap_seed: int = 0,
) -> SuiteResult:
    """Run ``policy_factory()`` on every entry x replicate of ``suite`` and score each run.

    Args:
        suite: The suite (e.g. ``load_suite("holdout")``).
        policy_factory: Makes a fresh policy per run; picklable when ``workers > 1``.
        seeds: Replicate indices ``k`` (``0 <= k < SEED_STRIDE``); entry ``e`` runs with
            seed ``e.run_seed(k)``, so suites never share a run seed. ``range(3)``: three
            seeds per entry.
        workers: Processes to use; 1 (or one run in all) runs in this process, no pool.
            Defaults to ``os.cpu_count()``.
        fidelity: ``"fluid"`` or ``"request"``.
        progress: Called as ``progress(done, total, run)`` after each finished run (in
            completion order).
        bootstrap_seed: Seed of the aggregate's bootstrap CIs.

    Returns:
        Every run's score (suite order, then replicate) and the aggregate.

    Raises:
        ValueError: For no seeds, a bad replicate, an empty suite or ``workers < 1``.
        TypeError: For a policy factory that cannot be pickled when ``workers > 1``.
        SuiteRunError: When a run fails (the first failure; the others are cancelled).
    """
    if not suite.entries:
        raise ValueError(f"suite {suite.name!r} has no entries")
    replicates = [int(s) for s in seeds]
    if not replicates:
        raise ValueError("seeds is empty; give replicate indices, e.g. range(3)")
    if len(set(replicates)) != len(replicates):
        raise ValueError(f"seeds {replicates} repeat a replicate index")
    workers = int(workers) if workers is not None else 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if fidelity not in ("fluid", "request"):
        raise ValueError(f"fidelity must be 'fluid' or 'request', got {fidelity!r}")
    tasks = [
        (e.id, e.scenario, k, e.run_seed(k), fidelity, policy_factory)
        for e in suite.entries
        for k in replicates
    ]
    policy_name = str(getattr(policy_factory(), "name", type(policy_factory).__name__))
    workers = min(workers, len(tasks))
    if workers > 1:
        try:
            pickle.dumps(policy_factory)
        except Exception as exc:
            raise TypeError(
                f"policy_factory {policy_factory!r} cannot be pickled for worker processes "
                f"({exc}); pass a module-level function or class (e.g. StaticPolicy), or "
                "use workers=1"
            ) from exc

    start = time.perf_counter()
    runs = execute(tasks, workers, progress)
    wall = time.perf_counter() - start
    return SuiteResult(
        suite=suite.name,
        policy=policy_name,
        fidelity=fidelity,
        replicates=replicates,
        runs=runs,
        summary=aggregate([r.score for r in runs], seed=bootstrap_seed),
        wall_s=wall,
        workers=workers,
        entries=suite.ids,
    )
