"""One policy registry, one trainer registry, one run schema: every consumer reads them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from agents.dreamer.config import PREFILL_POLICIES, PrefillPolicy
from agents.registry import (
    POLICIES,
    HPAPolicyConfig,
    make_policy,
    policy_config,
    validate_policy,
)
from agents.run_config import (
    ENV_IDS,
    Bounds,
    EnvName,
    RunConfigError,
    check_values,
)
from agents.trainers import TRAINERS
from agents.world_model.data import BEHAVIOURS, behaviour_policy
from envs.gym import ENV_IDS as GYM_IDS
from envs.scenarios.loader import load_scenario
from experiments import cli
from experiments import evaluate as ev
from experiments import simulate as sim_mod
from experiments import train as train_mod
from experiments.cli import CONFIG_DIR

CONFIGS = Path(CONFIG_DIR)


@pytest.fixture(scope="module")
def hydra_dir() -> Iterator[None]:
    train_mod.register_configs()
    sim_mod.register_configs()
    ev.register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


# --------------------------------------------------------------------------- policies


def test_every_policy_has_a_config_file_that_matches_its_schema() -> None:
    on_disk = {p.stem for p in (CONFIGS / "policy").glob("*.yaml")}
    assert on_disk == set(POLICIES)
    chain3 = load_scenario("chain3")
    for name, entry in POLICIES.items():
        conf = policy_config(name)
        assert type(conf) is entry.schema and conf.name == name
        policy = make_policy(name, chain3)
        actions, _, _ = policy.act(_first_frame(chain3), policy.reset(1))
        assert isinstance(actions, list)
    assert policy_config("tuned_hpa").target_cpu_utilization == 50  # type: ignore[attr-defined]


def _first_frame(scenario: object) -> object:
    from envs.sim.simulator import Simulator

    sim = Simulator(scenario)  # type: ignore[arg-type]
    return sim.reset()


def test_collection_and_prefill_read_the_registry() -> None:
    assert set(BEHAVIOURS) - {"explore"} <= set(POLICIES)
    assert set(PREFILL_POLICIES) - {"random"} <= set(POLICIES)
    assert [p.value for p in PrefillPolicy] == list(PREFILL_POLICIES)
    chain3 = load_scenario("chain3")
    for b in BEHAVIOURS:
        expected = make_policy("hpa" if b == "explore" else b, chain3)
        assert type(behaviour_policy(b, chain3)) is type(expected)
    with pytest.raises(ValueError, match="behaviour 'nope' is not one of"):
        behaviour_policy("nope", chain3)


def test_policy_knobs_are_checked_naming_the_field() -> None:
    with pytest.raises(RunConfigError, match=r"policy.target_cpu_utilization=0: must be >= 1"):
        validate_policy(HPAPolicyConfig(target_cpu_utilization=0))
    with pytest.raises(RunConfigError, match=r"policy.name='nope' is not a known policy"):
        validate_policy({"name": "nope"})
    with pytest.raises(RunConfigError, match="target_cpu"):
        validate_policy({"name": "static", "target_cpu_utilization": 3})


# --------------------------------------------------------------------------- trainers


def test_every_trainer_has_an_agent_yaml_backed_by_its_schema(hydra_dir: None) -> None:
    assert {p.stem for p in (CONFIGS / "agent").glob("*.yaml")} == {str(a) for a in TRAINERS}
    for algo, trainer in TRAINERS.items():
        agent = OmegaConf.to_container(
            compose(config_name="train", overrides=[f"agent={algo}"]).agent
        )
        assert isinstance(agent, dict)
        assert set(agent) == {f.name for f in fields(trainer.schema)}, algo
        with pytest.raises(Exception, match="no_such_key"):
            compose(config_name="train", overrides=[f"agent={algo}", "agent.no_such_key=1"])


def test_one_env_id_table() -> None:
    from agents.residual import ENV_ID as RESIDUAL_ID

    assert set(ENV_IDS) == set(EnvName)
    # envs.gym registers the simulator's envs; the residual env (it runs the runbook, an
    # agents module) registers itself from agents.residual
    assert set(ENV_IDS.values()) == set(GYM_IDS) | {RESIDUAL_ID}


def test_help_lists_come_from_the_registries(hydra_dir: None) -> None:
    cli.register_help_resolver()
    for name, registry in (("train", "agents"), ("simulate", "policies"), ("evaluate", "policies")):
        cfg = compose(config_name=name, return_hydra_config=True)
        text = str(cfg.hydra.help.template)
        assert cli.choices(registry) in text, name
    assert cli.choices("policies") == " | ".join(POLICIES)
    assert "dreamer" in cli.choices("agents") and "hpa_tune" in cli.choices("envs")
    with pytest.raises(KeyError):
        cli.choices("nope")


# --------------------------------------------------------------------------- value bounds


@given(
    st.floats(-10, 10, allow_nan=False),
    st.floats(-10, 10, allow_nan=False),
    st.floats(-20, 20, allow_nan=False),
)
@settings(max_examples=200, deadline=None)
def test_bounds_hold_exactly_inside_the_interval(a: float, b: float, x: float) -> None:
    low, high = min(a, b), max(a, b)
    assert Bounds(gt=low, le=high).holds(x) == (low < x <= high)
    assert Bounds(ge=low, lt=high).holds(x) == (low <= x < high)
    assert Bounds(ge=low).holds(x) == (x >= low)
    assert not Bounds(ge=low).holds(float("nan"))


def test_bounds_describe_the_interval() -> None:
    assert Bounds(gt=0, le=1).describe() == "in (0, 1]"
    assert Bounds(ge=0, lt=1).describe() == "in [0, 1)"
    assert Bounds(gt=0).describe() == "> 0"
    assert Bounds(ge=1, odd=True).describe() == ">= 1 and odd"
    assert Bounds(le=0.5).describe() == "<= 0.5"


def test_check_values_names_the_dotted_field(hydra_dir: None) -> None:
    conf = train_mod.to_config(compose(config_name="train", overrides=["agent=a2c"]))
    check_values(conf)
    conf.eval.episodes = 0
    with pytest.raises(RunConfigError, match=r"^eval.episodes=0: must be >= 1$"):
        check_values(conf)
    conf.eval.episodes = 1
    conf.agent.gae_lambda = 1.5  # type: ignore[attr-defined]
    with pytest.raises(RunConfigError, match=r"^agent.gae_lambda=1.5: must be in \[0, 1\]$"):
        check_values(conf)


def test_a_dreamer_run_dir_saved_before_the_one_schema_still_loads(tmp_path: Path) -> None:
    from agents.dreamer.config import DreamerTrainConfig
    from agents.dreamer.train import load_run_config

    old = {  # what the pydantic DreamerTrainConfig wrote (W&B keys for every logger kind)
        "agent": {"algo": "dreamer", "size": "tiny", "prefill_policy": "random"},
        "env": {"name": "ops", "fidelity": "fluid", "obs": "box"},
        "logger": {"kind": "csv", "project": "opsworld", "entity": None, "tags": [], "mode": None},
        "scenario": "chain3",
        "n_envs": 1,
    }
    import yaml

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    conf = load_run_config(tmp_path)
    assert isinstance(conf, DreamerTrainConfig)
    assert conf.logger.kind == "csv" and conf.env.name == "ops" and conf.agent.seq_len == 64
