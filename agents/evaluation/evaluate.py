"""What ``opsworld evaluate`` does: score one or more policies on a scenario suite, in parallel.

``opsworld evaluate policy=hpa suite=holdout seeds=3 out=runs/eval`` runs the policy on every
entry of the suite x ``seeds`` replicates (:func:`agents.evaluation.suite.run_one`; every
policy x entry x replicate of a call is one fan-out, :mod:`agents.evaluation.fanout`, on a
process pool or, with ``backend=ray``, on Ray; fluid fidelity by default), scores each run with
:func:`envs.scenarios.scoring.score_episode` and writes to ``out``:

* ``<policy>/results.json`` and ``<policy>/results.md``: every run's score, per-entry means
  and the aggregate (mean and IQM with bootstrap 95 % CIs), as
  :class:`~agents.evaluation.suite.SuiteResult` renders them;
* ``summary.json`` and ``summary.md``: the aggregate of every policy side by side;
* ``pareto.png``: mean allocated cost vs mean SLO-violation minutes, one point per policy, with the
  95 % CIs of both means as error bars;
* ``timelines/<policy>/<entry>.png``: the timeline (:func:`envs.sim.plots.plot_timeline`) of
  replicate 0 of the first ``timelines`` entries;
* ``config.yaml``: this run's resolved config.

``policy`` is a built-in name (``static``, ``hpa``, ``tuned_hpa``, ``runbook``,
``tuned_runbook``; knobs from
``configs/policy/<name>.yaml``) or an ``opsworld train`` run dir, loaded with
:class:`agents.sb3.policy.SB3Policy` (pickles: trusted dirs only). ``policies=[static,hpa]``
evaluates several (it replaces ``policy``). The baselines need the entry's scenario, which
:func:`~agents.evaluation.suite.run_suite`'s argument-less factory cannot give, so this
module feeds :func:`~agents.evaluation.suite.run_one` a picklable per-entry factory
(``functools.partial(build_policy, spec, scenario)``) from its own fan-out
(:mod:`agents.evaluation.fanout`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from matplotlib.figure import Figure

from agents.evaluation.suite import RunScore, SuiteResult, execute
from agents.registry import POLICIES, PolicyConfig, make_policy, policy_config
from agents.rollout import rollout
from agents.run_config import RunConfigError, RunInterrupted, interrupts_held
from envs.core.policy import Policy
from envs.scenarios.schema import Scenario
from envs.scenarios.scoring import aggregate
from envs.scenarios.suites import Suite, SuiteError, load_suite
from envs.sim.plots import plot_timeline
from envs.sim.simulator import Simulator


class EvaluateSettings(Protocol):
    """What :func:`evaluate` reads from the command's config (``experiments.evaluate``)."""

    policy: str
    policies: list[str]
    suite: str
    seeds: int
    workers: int
    backend: Any
    fidelity: Any
    topology: str | None
    limit: int | None
    timelines: int
    weights: str
    deterministic: bool | None
    out: str
    guard: bool


# --------------------------------------------------------------------------------------------
# policies


@dataclass(frozen=True)
class PolicySpec:
    """A policy to build per scenario (picklable).

    Attributes:
        label: Name used for output folders and tables.
        config: Built-in policy config (None for a trained run dir).
        run_dir: ``opsworld train`` run dir (None for a built-in).
        kind: ``sb3`` or ``dreamer`` (for a run dir).
        weights: ``final`` or ``best`` (see :class:`EvaluateConfig`).
        deterministic: Mode (True), seeded sample (False) or the kind's default (None).
        guard: Put the policy behind the safety guard (:func:`agents.guard.guard_policy`,
            default limits, for the scenario's cluster).
    """

    label: str
    config: PolicyConfig | None = None
    run_dir: str | None = None
    kind: str = "sb3"
    weights: str = "final"
    deterministic: bool | None = None
    guard: bool = False


WEIGHT_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "final": {"sb3": ("model.zip", "vecnormalize.pkl"), "dreamer": ("agent.pt",)},
    "best": {
        "sb3": ("best/best_model.zip", "best/vecnormalize.pkl"),
        "dreamer": ("best/agent.pt",),
    },
}
"""The weight files of a trained run dir, per ``weights`` choice and run kind."""

_SB3_CACHE: dict[tuple[str, str, bool | None], Policy] = {}


def build_policy(spec: PolicySpec, scenario: Scenario) -> Policy:
    """A fresh policy for one run on ``scenario`` (a trained model loads once per process).

    With ``spec.guard`` the policy comes behind the safety guard for the scenario's cluster.
    """
    if spec.guard:
        from agents.guard import guard_policy
        from envs.gym.codec import control_spec

        inner = build_policy(dataclasses.replace(spec, guard=False), scenario)
        return guard_policy(inner, control_spec(scenario))
    if spec.config is not None:
        return make_policy(spec.config, scenario)
    assert spec.run_dir is not None
    key = (spec.run_dir, spec.weights, spec.deterministic)
    if key not in _SB3_CACHE:
        files = WEIGHT_FILES[spec.weights][spec.kind]
        if spec.kind == "dreamer":
            from agents.dreamer.policy import DreamerPolicy

            _SB3_CACHE[key] = DreamerPolicy(
                spec.run_dir, weights=files[0], deterministic=spec.deterministic
            )
        else:
            from agents.sb3.policy import SB3Policy

            deterministic = True if spec.deterministic is None else spec.deterministic
            _SB3_CACHE[key] = SB3Policy(
                spec.run_dir, model=files[0], vecnormalize=files[1], deterministic=deterministic
            )
    policy = _SB3_CACHE[key]
    for_scenario = getattr(policy, "for_scenario", None)  # residual runs: rules per entry
    return for_scenario(scenario) if callable(for_scenario) else policy


def check_trained(spec: PolicySpec, suite: Suite) -> None:
    """Load a trained policy once, here, and check that it fits every entry of ``suite``.

    Run before any run starts, so a corrupted weight file or a policy trained on another
    topology is one clear error instead of a failure inside a worker (a policy's observation
    and action sizes follow its topology's services).

    Raises:
        RunConfigError: Naming the run dir and file, or the mismatching topology and the fix.
    """
    if spec.run_dir is None or not suite.entries:
        return
    files = ", ".join(["config.yaml", *WEIGHT_FILES[spec.weights][spec.kind]])
    try:
        policy = build_policy(spec, suite.entries[0].scenario)
    except Exception as err:  # unpickling a damaged file raises anything
        raise RunConfigError(
            f"policy={spec.run_dir}: cannot load its weights ({files}): {str(err)[:240]}; "
            "retrain it, or try weights=best"
        ) from None
    trained = list(policy.scenario.service_names)  # type: ignore[attr-defined]  # SB3, Dreamer
    for e in suite.entries:
        if e.scenario.service_names != trained:
            here = e.scenario.service_names
            raise RunConfigError(
                f"policy={spec.run_dir} was trained on {len(trained)} services ({brief(trained)}), "
                f"but suite entry {e.id!r} has {len(here)} ({brief(here)}); a trained policy "
                "fits one topology: "
                "add topology=<its topology> (e.g. topology=chain3) or evaluate it on a suite "
                "of that topology"
            )


def brief(names: Sequence[str], n: int = 4) -> str:
    """The first ``n`` names joined by ``, `` (``...`` when there are more)."""
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def run_dir_algo(path: Path) -> Any:
    """``agent.algo`` of a train run dir's ``config.yaml`` (None when unreadable)."""
    try:
        saved = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
        return saved["agent"]["algo"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def load_policy_config(name: str) -> PolicyConfig:
    """The built-in policy ``name`` with its knobs from ``configs/policy/<name>.yaml``."""
    try:
        return policy_config(name)
    except RunConfigError:
        raise


def resolve_policy(
    name: str, key: str = "policy", weights: str = "final", deterministic: bool | None = None
) -> PolicySpec:
    """A :class:`PolicySpec` for a built-in name or a trained run dir.

    A run dir's label gets ``-best`` for ``weights=best`` and ``-mode`` / ``-sample`` for
    an explicit ``deterministic``, so variants of one run can be evaluated side by side.

    Raises:
        RunConfigError: Naming ``key`` for an unknown name or a dir that is not a train run,
            ``weights`` when it is not ``final`` or ``best`` or its files are missing.
    """
    if weights not in WEIGHT_FILES:
        raise RunConfigError(f"weights={weights!r}: use one of {sorted(WEIGHT_FILES)}")
    if name in POLICIES:
        return PolicySpec(name, config=load_policy_config(name))
    path = Path(name)
    if not path.is_dir():
        raise RunConfigError(
            f"{key}={name!r} is neither a known policy ({sorted(POLICIES)}) nor a trained "
            "run dir (an 'opsworld train' output folder)"
        )
    kind = "dreamer" if run_dir_algo(path) == "dreamer" else "sb3"
    needed = {"dreamer": ("config.yaml", "agent.pt")}.get(
        kind, ("config.yaml", "model.zip", "vecnormalize.pkl")
    )
    missing = [f for f in needed if not (path / f).exists()]
    if missing:
        raise RunConfigError(
            f"{key}={name!r}: not an 'opsworld train' run dir (missing {', '.join(missing)})"
        )
    files = WEIGHT_FILES[weights][kind]
    absent = [f for f in files if not (path / f).exists()]
    if absent:
        raise RunConfigError(
            f"weights={weights}: {name} has no {', '.join(absent)} (was it trained with "
            "evaluations? weights=final uses the last weights)"
        )
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.resolve().name) or "trained"
    if weights != "final":
        label += f"-{weights}"
    if deterministic is not None:
        label += "-mode" if deterministic else "-sample"
    return PolicySpec(
        f"{kind}-{label}",
        run_dir=str(path.resolve()),
        kind=kind,
        weights=weights,
        deterministic=deterministic,
    )


# --------------------------------------------------------------------------------------------
# running


def run_policy(
    suite: Suite,
    spec: PolicySpec,
    replicates: Sequence[int],
    workers: int,
    fidelity: str,
    progress: Callable[[int, int, RunScore], None] | None = None,
) -> SuiteResult:
    """Run ``spec`` on every entry x replicate of ``suite`` (in a spawn pool when workers>1)."""
    tasks = [
        (
            e.id,
            e.scenario,
            k,
            e.run_seed(k),
            fidelity,
            functools.partial(build_policy, spec, e.scenario),
        )
        for e in suite.entries
        for k in replicates
    ]
    workers = max(1, min(workers, len(tasks)))
    start = time.perf_counter()
    runs = execute(tasks, workers, progress)
    return SuiteResult(
        suite=suite.name,
        policy=spec.label,
        fidelity=fidelity,
        replicates=list(replicates),
        runs=runs,
        summary=aggregate([r.score for r in runs]),
        wall_s=time.perf_counter() - start,
        workers=workers,
        entries=suite.ids,
    )


# --------------------------------------------------------------------------------------------
# outputs


def plot_pareto(results: Sequence[SuiteResult], path: str | Path) -> Path:
    """Mean cost vs mean SLO-violation minutes per policy, with 95 % CI error bars."""
    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    for r in results:
        cost, slo = r.summary["allocated_cost"], r.summary["slo_violation_min"]
        if cost.mean is None or slo.mean is None:
            continue
        xerr = (
            [[cost.mean - cost.mean_ci[0]], [cost.mean_ci[1] - cost.mean]] if cost.mean_ci else None
        )
        yerr = [[slo.mean - slo.mean_ci[0]], [slo.mean_ci[1] - slo.mean]] if slo.mean_ci else None
        ax.errorbar(cost.mean, slo.mean, xerr=xerr, yerr=yerr, fmt="o", capsize=4, label=r.policy)
        ax.annotate(r.policy, (cost.mean, slo.mean), textcoords="offset points", xytext=(6, 6))
    suite = results[0].suite if results else ""
    ax.set_xlabel("mean allocated cost per episode (pods' CPU requests at node price)")
    ax.set_ylabel("mean SLO-violation minutes per episode")
    ax.set_title(f"suite {suite}: cost vs SLO violation (95% CI)")
    ax.grid(True, alpha=0.3)
    if results:
        ax.legend(loc="best")
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


MIN_CI_RUNS = 5
"""Fewer runs than this give no confidence interval in the tables (a bootstrap over 1-4
runs says little: one run gives ``13 [13, 13]``)."""


def ci_warning(results: Sequence[SuiteResult]) -> str | None:
    """A warning line when some policy has fewer than :data:`MIN_CI_RUNS` runs, else None."""
    few = [f"{r.policy} ({len(r.runs)})" for r in results if len(r.runs) < MIN_CI_RUNS]
    if not few:
        return None
    return (
        f"warning: no 95% CI for {', '.join(few)}: fewer than {MIN_CI_RUNS} runs; raise seeds= "
        "(or use a larger suite) for intervals"
    )


def summary_markdown(results: Sequence[SuiteResult]) -> str:
    """The aggregates of every policy side by side (mean [95% CI]).

    A policy with fewer than :data:`MIN_CI_RUNS` runs shows its means without an interval,
    and a note under the table says why (:func:`ci_warning`).
    """
    metrics = (
        "slo_violation_min",
        "error_budget_burn",
        "allocated_cost",
        "mitigated",
        "time_to_mitigate_s",
    )
    lines = [
        "| policy | runs | " + " | ".join(f"`{m}` mean [95% CI]" for m in metrics) + " |",
        "|---|---:|" + "---|" * len(metrics),
    ]
    for r in results:
        cells = []
        for m in metrics:
            s = r.summary[m]
            ci = f" [{s.mean_ci[0]:.3g}, {s.mean_ci[1]:.3g}]" if s.mean_ci else ""
            if len(r.runs) < MIN_CI_RUNS:
                ci = ""
            cells.append("" if s.mean is None else f"{s.mean:.3g}{ci}")
        lines.append(f"| `{r.policy}` | {len(r.runs)} | " + " | ".join(cells) + " |")
    few = ci_warning(results)
    if few:
        lines += ["", few.replace("warning: ", "Note: ", 1)]
    return "\n".join(lines)


def write_timelines(
    suite: Suite, spec: PolicySpec, fidelity: str, n: int, folder: Path
) -> list[Path]:
    """Rerun replicate 0 of the first ``n`` entries in-process and plot each timeline."""
    paths = []
    for e in suite.entries[: max(0, n)]:
        policy = build_policy(spec, e.scenario)
        result = rollout(Simulator(e.scenario, fidelity=fidelity, seed=e.run_seed(0)), policy)
        paths.append(
            plot_timeline(
                result.frames,
                e.scenario,
                folder / f"{e.id}.png",
                actions=result.actions,
                faults=result.faults,
            )
        )
    return paths


def evaluate(
    conf: EvaluateSettings,
    config_yaml: str,
    log: Callable[[str], None] | None = print,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate the configured policies and write the outputs of the module docstring.

    Args:
        conf: A validated ``opsworld evaluate`` config (``experiments.evaluate.EvaluateConfig``:
            ``policy``, ``policies``, ``suite``, ``seeds``, ``workers``, ``backend``, ``fidelity``,
            ``topology``, ``limit``, ``timelines``, ``weights``, ``deterministic``, ``out``).
        config_yaml: The resolved config, written to ``<out>/config.yaml``.
        log: Where progress lines and the table go (None: nowhere).
        progress: Called as ``progress(done, total)`` after each run, over all policies.

    Returns:
        ``{"out": ..., "results": {label: SuiteResult.to_dict()}, "files": [...],
        "complete": bool}``.

    Raises:
        RunConfigError: Before anything runs, naming the field (policy, policies, suite, seeds,
            workers, limit, timelines), a trained policy's damaged file or its topology.
        RunInterrupted: After Ctrl-C, once the policies finished so far are written
            (``summary.json`` has ``complete: false``).
    """
    names = list(conf.policies) or [conf.policy]
    key = "policies" if len(names) > 1 else "policy"  # `policy=X` arrives as policies=['X']
    specs = [resolve_policy(n, key, conf.weights, conf.deterministic) for n in names]
    if getattr(conf, "guard", False):  # opsworld evaluate guard=true
        specs = [dataclasses.replace(s, label=f"{s.label}-guard", guard=True) for s in specs]
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise RunConfigError(f"{key}={names}: a policy appears twice")
    try:
        suite = load_suite(conf.suite)
    except (SuiteError, OSError) as err:
        raise RunConfigError(f"suite={conf.suite}: {err}") from None
    for name, value, low in (("seeds", conf.seeds, 1), ("workers", conf.workers, 1)):
        if value < low:
            raise RunConfigError(f"{name}={value}: must be >= {low}")
    if conf.topology is not None:
        try:
            suite = suite.on_topology(conf.topology)
        except SuiteError as err:
            raise RunConfigError(f"topology={conf.topology}: {err}") from None
    if conf.limit is not None:
        if conf.limit < 1:
            raise RunConfigError(f"limit={conf.limit}: must be >= 1 (or null for all entries)")
        suite = suite.subset(first=conf.limit)
    if conf.timelines < 0:
        raise RunConfigError(f"timelines={conf.timelines}: must be >= 0")
    for spec in specs:
        check_trained(spec, suite)
    fidelity = conf.fidelity.value
    out = Path(conf.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config_yaml)

    from agents.evaluation.fanout import FanoutInterrupted, run_policies

    backend = getattr(conf, "backend", "local")  # settings objects that predate the field
    if log is not None:
        log(
            f"evaluate: {', '.join(labels)} on {suite.name} ({len(suite)} entries x "
            f"{conf.seeds} seeds, backend {backend}, {conf.workers} workers)"
        )
    total = len(specs) * len(suite) * conf.seeds
    done = total
    complete = True

    def bump(n: int, _total: int, _run: RunScore) -> None:
        if progress is not None:
            progress(n, total)

    try:
        results = run_policies(
            suite, specs, range(conf.seeds), conf.workers, fidelity, backend=backend, progress=bump
        )
    except FanoutInterrupted as stop:
        results, done, complete = stop.results, stop.done, False
    files: list[Path] = []
    for spec, res in zip(specs, results, strict=False):
        folder = out / res.policy
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(res.to_json())
        (folder / "results.md").write_text(res.to_markdown())
        files += [folder / "results.json", folder / "results.md"]
        if complete:
            files += write_timelines(
                suite, spec, fidelity, conf.timelines, out / "timelines" / spec.label
            )

    summary = {
        "suite": suite.name,
        "fidelity": fidelity,
        "seeds": conf.seeds,
        "entries": len(suite),
        "complete": complete,
        "policies_done": [r.policy for r in results],
        "policies": {r.policy: {k: v.as_dict() for k, v in r.summary.items()} for r in results},
    }
    if not complete:
        with interrupts_held():
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
        raise RunInterrupted(
            f"stopped after {len(results)} of {len(specs)} policies ({done} of {total} runs); "
            f"the finished policies are in {out} (summary.json: complete=false)"
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    table = summary_markdown(results)
    (out / "summary.md").write_text(
        f"# Evaluation on suite `{suite.name}`\n\n{len(suite)} entries x {conf.seeds} seed(s), "
        f"{fidelity} fidelity. Definitions: docs/scoring.md.\n\n{table}\n\n![Pareto](pareto.png)\n"
    )
    files += [out / "summary.json", out / "summary.md", plot_pareto(results, out / "pareto.png")]
    if log is not None:
        log(table)
        few = ci_warning(results)
        if few:
            log(few)
        log(f"wrote {len(files)} files to {out}")
    return {
        "out": str(out),
        "results": {r.policy: r.to_dict() for r in results},
        "files": [str(f) for f in files],
        "complete": True,
    }
