"""One registry of the built-in policies: name -> config schema + factory.

``opsworld simulate policy=<name>``, ``opsworld evaluate policy=<name>``, world-model episode
collection (:data:`agents.world_model.data.BEHAVIOURS`) and Dreamer's prefill
(``agent.prefill_policy``) all build their policies here, so a policy is added once and every
command (and its help text) knows it.

Each policy has a dataclass schema (a :class:`PolicyConfig`: its knobs), registered in Hydra's
ConfigStore as ``schema/policy/<name>`` (:func:`register_configs`) and backing
``configs/policy/<name>.yaml``, whose values are the knobs a command uses by default
(:func:`policy_config`). Trained policies (SB3 and Dreamer run dirs) are loaded by
``opsworld evaluate`` from their run dirs, not from this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import MISSING

from agents.run_config import RunConfigError, bounded, check_values

if TYPE_CHECKING:
    from agents.policy import Policy
    from envs.scenarios.schema import Scenario

POLICY_DIR = Path(__file__).resolve().parents[1] / "configs" / "policy"
"""``configs/policy/``: the default knobs of the built-in policies."""


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
    target_cpu_utilization: int = bounded(70, ge=1)


@dataclass
class RunbookPolicyConfig(PolicyConfig):
    """``policy=runbook``: runbook remediation with the HPA scaling underneath."""

    name: str = "runbook"
    target_cpu_utilization: int = bounded(70, ge=1)


@dataclass
class TunedHPAPolicyConfig(PolicyConfig):
    """``policy=tuned_hpa``: the HPA with grid-searched knobs (``agents/baselines/tuned.py``)."""

    name: str = "tuned_hpa"
    target_cpu_utilization: int = bounded(70, ge=1)
    scale_down_stabilization_s: int = bounded(300, ge=0)


@dataclass
class TunedRunbookPolicyConfig(PolicyConfig):
    """``policy=tuned_runbook``: the runbook's rules over the tuned HPA.

    The HPA's knobs are the tuned HPA's, read from ``configs/policy/tuned_hpa.yaml`` (one
    source of truth: re-tuning the HPA re-tunes this policy too).
    """

    name: str = "tuned_runbook"


PolicyFactory = Callable[[Any, "Scenario"], "Policy"]
"""Builds a fresh policy from its config for one scenario."""


def _static(cfg: StaticPolicyConfig, scenario: Scenario) -> Policy:
    from agents.policy import StaticPolicy

    return StaticPolicy()


def _hpa(cfg: HPAPolicyConfig, scenario: Scenario) -> Policy:
    from agents.baselines.hpa import HPAConfig, HPAPolicy

    return HPAPolicy(HPAConfig.cpu(cfg.target_cpu_utilization), scenario)


def _runbook(cfg: RunbookPolicyConfig, scenario: Scenario) -> Policy:
    from agents.baselines.hpa import HPAConfig
    from agents.baselines.runbook import RunbookPolicy

    return RunbookPolicy(scenario, hpa_config=HPAConfig.cpu(cfg.target_cpu_utilization))


def _tuned_hpa(cfg: TunedHPAPolicyConfig, scenario: Scenario) -> Policy:
    from agents.baselines.tuned import TunedHPASettings, make_hpa

    settings = TunedHPASettings(cfg.target_cpu_utilization, cfg.scale_down_stabilization_s)
    return make_hpa(settings, scenario)


def _tuned_runbook(cfg: TunedRunbookPolicyConfig, scenario: Scenario) -> Policy:
    from agents.baselines.runbook import RunbookPolicy
    from agents.baselines.tuned import load_settings

    policy = RunbookPolicy(scenario, hpa_config=load_settings().hpa_config())
    policy.name = "tuned_runbook"
    return policy


@dataclass(frozen=True)
class PolicyEntry:
    """One built-in policy.

    Attributes:
        name: The name every command takes (``policy=<name>``).
        schema: Its knobs (a :class:`PolicyConfig` subclass).
        factory: ``factory(config, scenario) -> Policy``.
        help: One line for help texts.
    """

    name: str
    schema: type[PolicyConfig]
    factory: PolicyFactory
    help: str


POLICIES: dict[str, PolicyEntry] = {
    e.name: e
    for e in (
        PolicyEntry("static", StaticPolicyConfig, _static, "keep the initial replicas"),
        PolicyEntry("hpa", HPAPolicyConfig, _hpa, "the Kubernetes HPA on CPU"),
        PolicyEntry("tuned_hpa", TunedHPAPolicyConfig, _tuned_hpa, "the HPA with tuned knobs"),
        PolicyEntry("runbook", RunbookPolicyConfig, _runbook, "runbook remediation over the HPA"),
        PolicyEntry(
            "tuned_runbook",
            TunedRunbookPolicyConfig,
            _tuned_runbook,
            "runbook remediation over the tuned HPA",
        ),
    )
}
"""Policy name -> schema and factory; each has a ``configs/policy/<name>.yaml``."""


def register_configs() -> None:
    """Register every policy schema as ``schema/policy/<name>`` in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for entry in POLICIES.values():
        cs.store(group="schema/policy", name=entry.name, node=entry.schema)


def entry(name: str, key: str = "policy") -> PolicyEntry:
    """The registry entry of ``name``.

    Raises:
        RunConfigError: For an unknown name, listing the known ones.
    """
    if name not in POLICIES:
        raise RunConfigError(f"{key}={name!r} is not a known policy; use one of {sorted(POLICIES)}")
    return POLICIES[name]


def validate_policy(cfg: Any, key: str = "policy") -> PolicyConfig:
    """A policy config (a mapping, DictConfig or dataclass) checked against its schema.

    The schema is picked by ``name``; unknown keys, wrong types and out-of-range knobs fail
    naming ``<key>.<field>``.

    Raises:
        RunConfigError: Naming the field.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    name = cfg.name if isinstance(cfg, PolicyConfig) else OmegaConf.create(cfg).get("name")
    schema = entry(str(name), f"{key}.name").schema
    if type(cfg) is schema:
        obj: Any = cfg
    else:
        try:
            obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))
        except OmegaConfBaseException as err:
            raise RunConfigError(f"{key}: {err}") from None
    check_values(obj, f"{key}.")
    assert isinstance(obj, PolicyConfig)
    return obj


def policy_config(name: str, key: str = "policy") -> PolicyConfig:
    """The built-in policy ``name`` with its knobs from ``configs/policy/<name>.yaml``.

    Raises:
        RunConfigError: Unknown name, or a bad knob in the YAML file (naming the file).
    """
    import yaml

    entry(name, key)
    path = POLICY_DIR / f"{name}.yaml"
    values: dict[str, Any] = {"name": name}
    if path.exists():
        values.update(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
        values.pop("defaults", None)
    try:
        return validate_policy(values, key)
    except RunConfigError as err:
        raise RunConfigError(f"{key}={name}: bad {path}: {err}") from None


def make_policy(cfg: PolicyConfig | str, scenario: Scenario) -> Policy:
    """A fresh policy: a config (validated) or a name (knobs from ``configs/policy/``)."""
    conf = policy_config(cfg) if isinstance(cfg, str) else validate_policy(cfg)
    return POLICIES[conf.name].factory(conf, scenario)
