"""Every policy x entry x seed of an evaluation as one fan-out (local pool or Ray tasks).

:func:`run_policies` is what ``opsworld evaluate`` runs: the runs of all policies go to one
:func:`agents.parallel.parallel_map`, so a cluster sees ``policies x entries x seeds``
independent tasks, not one policy at a time. What every task needs (the suite's scenarios,
the policy specs and, for ``backend=ray``, the files of each trained run dir) is one
:class:`EvalShared` object, sent to each worker once (``ray.put`` once for Ray; one copy per
pool process locally), never once per task. A task is four small values
(:class:`EvalTask`).

Trained run dirs travel as bytes (:class:`RunDirFiles`: ``config.yaml`` and the weight
files only) so that a Ray worker on another node, which has no copy of the folder, can load
the policy: each worker process writes them once to a temporary folder keyed by their
SHA-256 and loads the policy from there (:func:`materialize`). The local backend reads the
run dir where it is.

Each run is fully determined by its scenario, its seed and its policy, so the scores are
the same for ``workers=1``, the local pool and Ray (``tests/test_ray.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agents.evaluation.evaluate import WEIGHT_FILES, PolicySpec, build_policy
from agents.evaluation.suite import RunScore, SuiteResult, run_one
from agents.parallel import Backend, check_backend, parallel_map
from envs.scenarios.schema import Scenario
from envs.scenarios.scoring import aggregate
from envs.scenarios.suites import Suite


@dataclass(frozen=True)
class RunDirFiles:
    """The files of a trained run dir that a policy needs, as bytes.

    Attributes:
        name: The run dir's folder name (kept for messages).
        files: Relative path -> content (``config.yaml`` and the weight files).
        digest: SHA-256 over the paths and contents (the worker-side cache key).
    """

    name: str
    files: dict[str, bytes]
    digest: str

    @property
    def nbytes(self) -> int:
        """Total size of the files."""
        return sum(len(b) for b in self.files.values())


def pack_run_dir(spec: PolicySpec) -> RunDirFiles:
    """Read the files of ``spec``'s run dir that :func:`build_policy` loads.

    Raises:
        ValueError: ``spec`` is a built-in policy (it has no run dir).
    """
    if spec.run_dir is None:
        raise ValueError(f"policy {spec.label!r} is built in: it has no run dir to pack")
    root = Path(spec.run_dir)
    names = ("config.yaml", *WEIGHT_FILES[spec.weights][spec.kind])
    files = {n: (root / n).read_bytes() for n in names}
    h = hashlib.sha256()
    for n in names:
        h.update(n.encode())
        h.update(len(files[n]).to_bytes(8, "little"))
        h.update(files[n])
    return RunDirFiles(root.name, files, h.hexdigest())


_MATERIALIZED: dict[str, str] = {}
"""digest -> temporary folder holding those files, per worker process."""


def materialize(packed: RunDirFiles) -> str:
    """Write ``packed`` to a temporary folder once per process and return its path."""
    if packed.digest not in _MATERIALIZED:
        folder = Path(tempfile.mkdtemp(prefix=f"opsworld-run-{packed.digest[:12]}-"))
        for name, data in packed.files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        _MATERIALIZED[packed.digest] = str(folder)
    return _MATERIALIZED[packed.digest]


@dataclass(frozen=True)
class EvalShared:
    """What every task of an evaluation needs; sent to each worker once.

    Attributes:
        scenarios: Entry id -> scenario.
        specs: The policies, in order.
        packed: Per policy: its run dir's files (Ray), or None (built in, or read in place).
        fidelity: Simulator fidelity.
    """

    scenarios: dict[str, Scenario]
    specs: tuple[PolicySpec, ...]
    packed: tuple[RunDirFiles | None, ...]
    fidelity: str

    def spec(self, index: int) -> PolicySpec:
        """Policy ``index``, pointing at a local copy of its run dir when it was packed."""
        spec, packed = self.specs[index], self.packed[index]
        if packed is None:
            return spec
        return dataclasses.replace(spec, run_dir=materialize(packed))


@dataclass(frozen=True)
class EvalTask:
    """One run: policy index, suite entry, replicate and the simulator seed."""

    policy: int
    entry: str
    replicate: int
    seed: int


def eval_task(shared: EvalShared, task: EvalTask) -> RunScore:
    """Run and score one task (what a worker executes)."""
    scenario = shared.scenarios[task.entry]
    spec = shared.spec(task.policy)
    return run_one(
        task.entry,
        scenario,
        task.replicate,
        task.seed,
        shared.fidelity,
        functools.partial(build_policy, spec, scenario),
    )


def plan(
    suite: Suite,
    specs: Sequence[PolicySpec],
    replicates: Sequence[int],
    fidelity: str,
    backend: Backend | str = Backend.local,
) -> tuple[EvalShared, list[EvalTask]]:
    """The shared object and the tasks (policy-major, then suite order, then replicate)."""
    backend = check_backend(backend)
    packed = tuple(
        pack_run_dir(s) if backend is Backend.ray and s.run_dir is not None else None for s in specs
    )
    shared = EvalShared({e.id: e.scenario for e in suite.entries}, tuple(specs), packed, fidelity)
    tasks = [
        EvalTask(p, e.id, k, e.run_seed(k))
        for p in range(len(specs))
        for e in suite.entries
        for k in replicates
    ]
    return shared, tasks


def run_policies(
    suite: Suite,
    specs: Sequence[PolicySpec],
    replicates: Sequence[int],
    workers: int,
    fidelity: str,
    backend: Backend | str = Backend.local,
    progress: Callable[[int, int, RunScore], None] | None = None,
) -> list[SuiteResult]:
    """Run every policy on every entry x replicate of ``suite`` as one fan-out.

    Args:
        suite: The suite.
        specs: The policies (:func:`agents.evaluation.evaluate.resolve_policy`).
        replicates: Replicate indices (entry ``e`` runs with seed ``e.run_seed(k)``).
        workers: Processes (local) or Ray tasks in flight; 1 runs in this process.
        fidelity: ``fluid`` or ``request``.
        backend: ``local`` or ``ray`` (:mod:`agents.parallel`).
        progress: Called as ``progress(done, total, run)`` after each finished run.

    Returns:
        One :class:`SuiteResult` per policy, in ``specs`` order; ``wall_s`` of each is the
        wall time of the whole fan-out (the policies ran interleaved).
    """
    shared, tasks = plan(suite, specs, replicates, fidelity, backend)
    workers = max(1, min(workers, len(tasks)))
    got: dict[int, RunScore] = {}

    def report(i: int, run: RunScore) -> None:
        got[i] = run
        if progress is not None:
            progress(len(got), len(tasks), run)

    start = time.perf_counter()
    per_policy = len(tasks) // max(1, len(specs))
    try:
        runs = parallel_map(
            eval_task, tasks, workers, backend=backend, on_result=report, shared=shared
        )
    except KeyboardInterrupt:
        wall = time.perf_counter() - start
        done = []
        for p, spec in enumerate(specs):
            span = range(p * per_policy, (p + 1) * per_policy)
            if all(k in got for k in span):
                mine = [got[k] for k in span]
                done.append(_result(suite, spec, replicates, fidelity, mine, wall, workers))
        raise FanoutInterrupted(done, len(got), len(tasks)) from None
    wall = time.perf_counter() - start
    return [
        _result(
            suite,
            spec,
            replicates,
            fidelity,
            runs[p * per_policy : (p + 1) * per_policy],
            wall,
            workers,
        )
        for p, spec in enumerate(specs)
    ]


class FanoutInterrupted(Exception):
    """Ctrl-C stopped :func:`run_policies`; carries what finished.

    Attributes:
        results: The policies all of whose runs had finished, in ``specs`` order.
        done: Runs finished (of every policy).
        total: Runs planned.
    """

    def __init__(self, results: list[SuiteResult], done: int, total: int) -> None:
        super().__init__(f"interrupted after {done} of {total} runs")
        self.results, self.done, self.total = results, done, total


def _result(
    suite: Suite,
    spec: PolicySpec,
    replicates: Sequence[int],
    fidelity: str,
    runs: list[RunScore],
    wall: float,
    workers: int,
) -> SuiteResult:
    return SuiteResult(
        suite=suite.name,
        policy=spec.label,
        fidelity=fidelity,
        replicates=list(replicates),
        runs=runs,
        summary=aggregate([r.score for r in runs]),
        wall_s=wall,
        workers=workers,
        entries=suite.ids,
    )
