"""``opsworld simulate``: run one scenario under a policy and write what happened.

``opsworld simulate scenario=boutique fidelity=fluid policy=static out=runs/demo`` loads the
scenario (a built-in name or a YAML path), runs it for its horizon under the policy and
writes telemetry, ``timeline.png``, ``summary.json``, ``actions.csv``, ``config.yaml`` and
``scenario.yaml`` to ``out`` (:func:`agents.evaluation.simulate.simulate_scenario` does the
work). Policies come from the one registry, :data:`agents.registry.POLICIES` (name ->
schema + factory); ``configs/policy/<name>.yaml`` selects one.

This module is the command's schema (:class:`SimulateConfig`) and its Hydra entry point;
tests call :func:`simulate` directly with a composed config.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from agents.registry import POLICIES, PolicyConfig, StaticPolicyConfig, validate_policy
from agents.registry import register_configs as register_policies
from agents.run_config import Fidelity, Format, RunConfigError, prepare_out
from experiments.cli import CONFIG_DIR, ConfigError, fail, job_out, register_help_resolver
from experiments.progress import Progress

if TYPE_CHECKING:
    from envs.core.policy import Policy
    from envs.scenarios.schema import Scenario

__all__ = ["SCHEMA", "Format", "SimulateConfig", "main", "make_policy", "simulate"]
# also, imported on first use (module __getattr__): ACTION_COLUMNS, flatten, json_default,
# write_actions


@dataclass
class SimulateConfig:
    """Schema of ``configs/simulate.yaml``; a wrong key or type fails at composition.

    Attributes:
        scenario: Built-in scenario name (``chain3``, ``boutique``, ``mesh40``) or a YAML path.
        fidelity: ``fluid`` or ``request``; None keeps the scenario's.
        seed: Overrides the scenario's seed when given.
        horizon_s: Overrides the scenario's horizon (seconds) when given.
        policy: The policy (config group ``policy``).
        out: Output folder (Hydra's run dir too); a multirun job writes to ``<out>/<job>``.
        overwrite: Clear a non-empty ``out`` first (a non-empty ``out`` is refused otherwise).
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
    out: str = "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}-${opsworld_pid:}"
    overwrite: bool = False
    format: Format = Format.parquet
    progress: bool | None = None
    scenario_overrides: dict[str, Any] = field(default_factory=dict)


SCHEMA = SimulateConfig
"""The config schema (used by the ``opsworld`` dispatcher to check override keys)."""


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent; call before composing)."""
    register_help_resolver()
    ConfigStore.instance().store(name="simulate_schema", node=SimulateConfig)
    register_policies()


def check_policy(cfg: PolicyConfig) -> PolicyConfig:
    """``cfg`` validated against its registry schema (:func:`agents.registry.validate_policy`).

    Raises:
        ConfigError: Unknown policy name or a bad knob, naming the field.
    """
    try:
        return validate_policy(cfg)
    except RunConfigError as err:
        raise ConfigError(str(err)) from None


def __getattr__(name: str) -> Any:
    """Lazy re-exports: ``--help`` must not import the simulator (see ``docs/cli.md``)."""
    if name in ("ACTION_COLUMNS", "json_default", "write_actions"):
        from agents.evaluation import simulate as library

        return getattr(library, name)
    if name == "flatten":
        from envs.scenarios.loader import flatten

        return flatten
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_policy(cfg: PolicyConfig, scenario: Scenario) -> Policy:
    """Build the policy ``cfg.name`` from the registry (:data:`agents.registry.POLICIES`)."""
    return POLICIES[check_policy(cfg).name].factory(cfg, scenario)


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
    from envs.scenarios.loader import flatten

    out = flatten(conf.scenario_overrides)
    if conf.fidelity is not None:
        out["fidelity"] = conf.fidelity.value
    if conf.seed is not None:
        out["seed"] = conf.seed
    if conf.horizon_s is not None:
        out["horizon_s"] = conf.horizon_s
    return out


def simulate(
    cfg: DictConfig | SimulateConfig | Mapping[str, Any], console: Console | None = None
) -> dict[str, Any]:
    """Validate the config, load the scenario and the policy, and simulate.

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
    from agents.evaluation.simulate import simulate_scenario
    from envs.scenarios.loader import ScenarioError, load_scenario

    conf = to_config(cfg)
    conf.policy = check_policy(conf.policy)
    try:
        scenario = load_scenario(conf.scenario, scenario_overrides(conf))
    except ScenarioError as err:
        raise ConfigError(f"scenario={conf.scenario}: {err}") from None
    arrivals = expected_arrivals(scenario)
    policy = make_policy(conf.policy, scenario)
    try:
        prepare_out(conf.out, overwrite=conf.overwrite)
    except RunConfigError as err:
        raise ConfigError(str(err)) from None
    if scenario.fidelity == "request":
        hours = arrivals / REQUESTS_PER_S / 3600.0
        print(
            f"simulate: about {arrivals:,.0f} requests expected at the entry "
            f"(request fidelity: every request is simulated)",
            file=sys.stderr,
        )
        if arrivals > WARN_REQUESTS:
            print(
                f"warning: at ~{REQUESTS_PER_S:,.0f} requests per wall second this takes about "
                f"{hours:,.1f} h; use fidelity=fluid, a lower traffic.base_rps or a shorter "
                "horizon_s for a quick look",
                file=sys.stderr,
            )
    show: bool | Callable[[float, float], None] = (
        conf.progress if conf.progress is not None else sys.stdout.isatty()
    )
    lines = None
    if conf.progress is None and not show:  # off a terminal: plain periodic lines
        lines = Progress(f"simulate {scenario.name}", scenario.horizon_s, "sim s", bar=False)
        show = lines.update
    resolved = OmegaConf.to_yaml(OmegaConf.structured(conf), resolve=True)
    return simulate_scenario(
        scenario, policy, conf.policy.name, conf.out, conf.format, show, console, resolved
    )


REQUESTS_PER_S = 100_000.0
"""Rough request-fidelity speed, requests per wall second (``experiments/results/sim_bench.md``:
91,928 on boutique, 130,041 on chain3)."""
WARN_REQUESTS = 10_000_000.0
"""Above this many expected requests (a few minutes of wall time) request fidelity warns."""


def expected_arrivals(scenario: Scenario) -> float:
    """Expected requests at the entry service over the horizon (the traffic's integral).

    Builds the scenario's traffic model, which also reads a replay CSV: a bad file is
    reported here, before anything runs.

    Raises:
        ConfigError: The traffic cannot be built (a replay CSV's bad row, header, NaN, ...);
            the message names the file, the line and the fix.
    """
    import numpy as np

    from envs.sim.traffic import TrafficModel

    try:
        model = TrafficModel(scenario.traffic, scenario.horizon_s, np.random.default_rng(0))
    except ValueError as err:
        raise ConfigError(f"scenario={scenario.name}: {err}") from None
    return model.cumulative(scenario.horizon_s)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="simulate")
def _hydra_main(cfg: DictConfig) -> None:
    job_out(cfg)
    try:
        simulate(cfg)
    except ConfigError as err:
        fail("simulate", err)


def main() -> None:
    """Console entry: register the schemas, then let Hydra parse ``sys.argv``."""
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
