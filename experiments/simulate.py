"""``opsworld simulate``: run one scenario under a policy and write what happened.

``opsworld simulate scenario=boutique fidelity=fluid policy=static out=runs/demo`` loads the
scenario (a built-in name or a YAML path), runs it for its horizon under the policy and
writes to ``out``:

* ``telemetry.parquet`` (or ``telemetry.csv`` with ``format=csv``): every scrape, one row per
  (time, service); see :mod:`envs.sim.export` for the columns;
* ``timeline.png``: traffic, latency, errors, replicas and cost (:mod:`envs.sim.plots`);
* ``summary.json``: :attr:`SimResult.summary` plus wall time and simulated seconds per wall
  second;
* ``actions.csv``: every action the policy took (``t, kind, service, replicas, fraction,
  node``);
* ``config.yaml`` (this run's resolved config) and ``scenario.yaml`` (the fully validated
  scenario, loadable with ``scenario=<out>/scenario.yaml``).

The Hydra entry point only calls :func:`simulate`, which tests call directly with a composed
config. Policies come from :data:`POLICIES` (name -> factory); ``configs/policy/<name>.yaml``
selects one.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import hydra
import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from agents.baselines.hpa import HPAConfig, HPAPolicy
from agents.baselines.runbook import RunbookPolicy
from agents.policy import StaticPolicy
from agents.rollout import rollout
from envs.core.actions import Action
from envs.core.policy import Policy
from envs.live.openmetrics import write_openmetrics
from envs.scenarios.loader import ScenarioError, flatten, load_scenario
from envs.scenarios.schema import Scenario
from envs.sim.export import SUFFIXES, write_telemetry
from envs.sim.plots import plot_timeline
from envs.sim.simulator import Simulator
from experiments.cli import CONFIG_DIR, EXIT_USAGE, ConfigError


class Fidelity(StrEnum):
    """Simulator fidelity (see DESIGN.md: request level is the ground truth, fluid is fast)."""

    fluid = "fluid"
    request = "request"


class Format(StrEnum):
    """File format of the telemetry table."""

    parquet = "parquet"
    csv = "csv"
    openmetrics = "openmetrics"  # for promtool backfill (envs/live/openmetrics.py)


@dataclass
class PolicyConfig:
    """Base schema of the ``policy`` group; each policy adds its own fields in a subclass."""

    name: str = MISSING


@dataclass
class StaticPolicyConfig(PolicyConfig):
    """``policy=static``: keep the initial replicas, never act."""

    name: str = "static"


@dataclass
class HPAPolicyConfig(PolicyConfig):
    """``policy=hpa``: the Kubernetes HPA on CPU utilisation (``docs/baselines.md``)."""

    name: str = "hpa"
    target_cpu_utilization: int = 70


@dataclass
class RunbookPolicyConfig(PolicyConfig):
    """``policy=runbook``: runbook remediation with the HPA scaling underneath."""

    name: str = "runbook"
    target_cpu_utilization: int = 70


@dataclass
class TunedHPAPolicyConfig(PolicyConfig):
    """``policy=tuned_hpa``: the HPA with grid-searched knobs (``agents/baselines/tuned.py``)."""

    name: str = "tuned_hpa"
    target_cpu_utilization: int = 70
    scale_down_stabilization_s: int = 300


@dataclass
class TunedRunbookPolicyConfig(PolicyConfig):
    """``policy=tuned_runbook``: the runbook's rules over the tuned HPA.

    The HPA's knobs are the tuned HPA's, read from ``configs/policy/tuned_hpa.yaml`` (one
    source of truth: re-tuning the HPA re-tunes this policy too).
    """

    name: str = "tuned_runbook"


@dataclass
class SimulateConfig:
    """Schema of ``configs/simulate.yaml``; a wrong key or type fails at composition.

    Attributes:
        scenario: Built-in scenario name (``chain3``, ``boutique``, ``mesh40``) or a YAML path.
        fidelity: ``fluid`` or ``request``; None keeps the scenario's.
        seed: Overrides the scenario's seed when given.
        horizon_s: Overrides the scenario's horizon (seconds) when given.
        policy: The policy (config group ``policy``).
        out: Output folder (Hydra's run dir too).
        format: Telemetry file format.
        progress: Show a progress bar; None shows it only when stdout is a terminal.
        scenario_overrides: Nested overrides applied to the scenario before validation,
            e.g. ``scenario_overrides.traffic.base_rps=50``.
    """

    scenario: str = "boutique"
    fidelity: Fidelity | None = None
    seed: int | None = None
    horizon_s: float | None = None
    policy: PolicyConfig = MISSING
    out: str = "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}"
    format: Format = Format.parquet
    progress: bool | None = None
    scenario_overrides: dict[str, Any] = field(default_factory=dict)


SCHEMA = SimulateConfig
"""The config schema (used by the ``opsworld`` dispatcher to check override keys)."""

PolicyFactory = Callable[[PolicyConfig, Scenario], Policy]


def _hpa(cfg: PolicyConfig, scenario: Scenario) -> Policy:
    target = getattr(cfg, "target_cpu_utilization", 70)
    return HPAPolicy(HPAConfig.cpu(target), scenario)


def _runbook(cfg: PolicyConfig, scenario: Scenario) -> Policy:
    target = getattr(cfg, "target_cpu_utilization", 70)
    return RunbookPolicy(scenario, hpa_config=HPAConfig.cpu(target))


def _tuned_hpa(cfg: PolicyConfig, scenario: Scenario) -> Policy:
    from agents.baselines.tuned import TunedHPASettings, make_hpa

    settings = TunedHPASettings(
        getattr(cfg, "target_cpu_utilization", 70), getattr(cfg, "scale_down_stabilization_s", 300)
    )
    return make_hpa(settings, scenario)


def _tuned_runbook(cfg: PolicyConfig, scenario: Scenario) -> Policy:
    from agents.baselines.tuned import load_settings

    policy = RunbookPolicy(scenario, hpa_config=load_settings().hpa_config())
    policy.name = "tuned_runbook"
    return policy


POLICIES: dict[str, PolicyFactory] = {
    "static": lambda cfg, scenario: StaticPolicy(),
    "hpa": _hpa,
    "runbook": _runbook,
    "tuned_hpa": _tuned_hpa,
    "tuned_runbook": _tuned_runbook,
}
"""Policy name -> factory; each has a ``configs/policy/<name>.yaml``."""


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent; call before composing)."""
    cs = ConfigStore.instance()
    cs.store(name="simulate_schema", node=SimulateConfig)
    cs.store(group="schema/policy", name="static", node=StaticPolicyConfig)
    cs.store(group="schema/policy", name="hpa", node=HPAPolicyConfig)
    cs.store(group="schema/policy", name="runbook", node=RunbookPolicyConfig)
    cs.store(group="schema/policy", name="tuned_hpa", node=TunedHPAPolicyConfig)
    cs.store(group="schema/policy", name="tuned_runbook", node=TunedRunbookPolicyConfig)


def check_policy(cfg: PolicyConfig) -> None:
    """Raise :class:`ConfigError` unless ``cfg.name`` is in :data:`POLICIES`."""
    if cfg.name not in POLICIES:
        raise ConfigError(
            f"policy.name={cfg.name!r} is not a known policy; use policy=<name> with one of "
            f"{sorted(POLICIES)}"
        )


def make_policy(cfg: PolicyConfig, scenario: Scenario) -> Policy:
    """Build the policy named ``cfg.name`` from :data:`POLICIES`."""
    check_policy(cfg)
    return POLICIES[cfg.name](cfg, scenario)


def to_config(cfg: DictConfig | SimulateConfig | Mapping[str, Any]) -> SimulateConfig:
    """Validate a composed config (or a plain mapping) against :class:`SimulateConfig`."""
    if isinstance(cfg, SimulateConfig):
        return cfg
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SimulateConfig), cfg)
        if OmegaConf.is_missing(merged, "policy"):
            merged.policy = StaticPolicyConfig()
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad simulate config: {err}") from None
    assert isinstance(obj, SimulateConfig)
    return obj


def scenario_overrides(conf: SimulateConfig) -> dict[str, Any]:
    """Dotted overrides for :func:`load_scenario`.

    ``scenario_overrides`` flattened, then ``fidelity``, ``seed`` and ``horizon_s`` where given.
    """
    out = flatten(conf.scenario_overrides)
    if conf.fidelity is not None:
        out["fidelity"] = conf.fidelity.value
    if conf.seed is not None:
        out["seed"] = conf.seed
    if conf.horizon_s is not None:
        out["horizon_s"] = conf.horizon_s
    return out


def _show_progress(conf: SimulateConfig) -> bool:
    return conf.progress if conf.progress is not None else sys.stdout.isatty()


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


def simulate(
    cfg: DictConfig | SimulateConfig | Mapping[str, Any], console: Console | None = None
) -> dict[str, Any]:
    """Run one scenario under a policy and write the outputs listed in the module docstring.

    Args:
        cfg: A config composed from ``configs/simulate.yaml`` (or anything
            :func:`to_config` accepts).
        console: Where the summary table and progress bar go (default: stdout).

    Returns:
        The summary written to ``summary.json``.

    Raises:
        ConfigError: Before anything runs, for a bad policy, scenario or override; the message
            names the field and what to do.
    """
    conf = to_config(cfg)
    console = console if console is not None else Console()
    check_policy(conf.policy)
    try:
        scenario = load_scenario(conf.scenario, scenario_overrides(conf))
    except ScenarioError as err:
        raise ConfigError(f"scenario={conf.scenario}: {err}") from None
    policy = make_policy(conf.policy, scenario)
    out = Path(conf.out)
    out.mkdir(parents=True, exist_ok=True)

    sim = Simulator(scenario)
    start = time.perf_counter()
    if _show_progress(conf):
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
            result = rollout(sim, policy, progress=lambda now, _h: bar.update(task, completed=now))
    else:
        result = rollout(sim, policy)
    wall = time.perf_counter() - start

    if conf.format is Format.openmetrics:  # t = horizon is now; docs/live.md
        write_openmetrics(
            result.frames, sim.services, out / "metrics.om", time.time() // 1 - scenario.horizon_s
        )
    else:
        telemetry_path = out / f"telemetry{SUFFIXES[conf.format.value]}"
        write_telemetry(result.frames, telemetry_path, "csv" if conf.format is Format.csv else None)
    plot_timeline(
        result.frames, scenario, out / "timeline.png", actions=result.actions, faults=result.faults
    )
    write_actions(result.actions, out / "actions.csv")
    resolved = OmegaConf.structured(conf)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(resolved, resolve=True))
    (out / "scenario.yaml").write_text(
        yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False)
    )
    summary: dict[str, Any] = {
        **result.summary,
        "policy": conf.policy.name,
        "frames": len(result.frames),
        "actions": len(result.actions),
        "wall_time_s": wall,
        "sim_seconds_per_wall_second": scenario.horizon_s / wall if wall > 0 else None,
        "out": str(out),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=json_default))
    console.print(_summary_table(summary, out))
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="simulate")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        simulate(cfg)
    except ConfigError as err:
        print(f"opsworld simulate: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def main() -> None:
    """Console entry: register the schemas, then let Hydra parse ``sys.argv``."""
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
