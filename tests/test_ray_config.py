"""Configs of the scale-out commands, without Ray: tune studies, multi-seed requests, the
evaluate backend, the objective and ASHA's chunks (no Ray is started here)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import DictConfig

from agents.multiseed import MultiSeed, split_request, summarize
from agents.run_config import RunConfigError
from agents.tune.config import ParamSpec, Sample, SelectConfig, TrialKind, TuneSpec, objective
from agents.tune.study import overlay_yaml
from agents.tune.trials import SelectTask, StudyContext, rung_config, set_dotted
from experiments import evaluate as ev
from experiments import train as train_mod
from experiments import tune as tune_mod
from experiments.cli import CONFIG_DIR, ConfigError, main

TUNE_DIR = Path(CONFIG_DIR) / "tune"


@pytest.fixture(scope="module")
def compose_cfg() -> Iterator[object]:
    tune_mod.register_configs()
    train_mod.register_configs()
    ev.register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):

        def _compose(name: str, overrides: list[str]) -> DictConfig:
            return compose(config_name=name, overrides=overrides)

        yield _compose
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("name", sorted(p.stem for p in TUNE_DIR.glob("*.yaml")))
def test_every_study_composes_and_checks(compose_cfg, name: str) -> None:
    conf = tune_mod.to_config(compose_cfg("tune", [f"tune={name}"]))
    assert conf.tune.name == name
    assert conf.tune.select.suite == "train:validation"
    if conf.tune.kind is TrialKind.train:  # its trials' train config composes and validates
        base = tune_mod.compose_train([*conf.tune.train, "logger=none"])
        assert base["logger"]["kind"] == "none"
        for p in conf.tune.space:  # every searched key exists in the train config
            node = base
            for part in p.key.split(".")[:-1]:
                node = node[part]
            assert p.key.split(".")[-1] in node, p.key


def test_studies_never_select_on_the_holdout_suite(compose_cfg) -> None:
    with pytest.raises(ConfigError, match=r"tune.select.suite=holdout.*never"):
        tune_mod.to_config(compose_cfg("tune", ["tune=hpa", "tune.select.suite=holdout"]))
    with pytest.raises(ConfigError, match=r"suite=holdout.*never"):
        tune_mod.to_config(
            compose_cfg("tune", ["tune=ppo", "tune.train=['agent=ppo','suite=holdout']"])
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"space": []}, "tune.space is empty"),
        ({"num_samples": 0}, "tune.num_samples=0"),
        ({"rungs": 2, "asha_grace": 3}, "grace_period=3"),
        (
            {"space": [ParamSpec("agent.learning_rate", Sample.loguniform, 0.0, 1.0)]},
            "loguniform needs low > 0",
        ),
        ({"space": [ParamSpec("x", Sample.choice)]}, "choice needs values"),
        ({"space": [ParamSpec("x", Sample.uniform, 2.0, 1.0)]}, "low < high"),
        ({"kind": TrialKind.train}, "tune.train is empty"),
        (
            {"space": [ParamSpec("agent.gamma", Sample.uniform, 0.9, 0.99)]},
            "kind hpa searches only",
        ),
    ],
)
def test_bad_studies_are_rejected_naming_the_field(change: dict, message: str) -> None:
    spec = TuneSpec(space=[ParamSpec("target_cpu_utilization", Sample.randint, 40, 90)])
    for key, value in change.items():
        if key == "asha_grace":
            spec.asha.grace_period = value
        else:
            setattr(spec, key, value)
    with pytest.raises(RunConfigError, match=message):
        spec.check()


def test_objective_is_slo_minutes_plus_the_budget_penalty() -> None:
    sel = SelectConfig(cost_cap=1.0, penalty=100.0)
    assert objective(3.5, 0.9, 1.0, sel) == 3.5  # under budget: the minutes alone
    assert objective(3.5, 1.0, 1.0, sel) == 3.5
    assert objective(3.5, 1.1, 1.0, sel) == pytest.approx(3.5 + 100 * 0.1)
    assert objective(3.5, 5.0, 0.0, SelectConfig(penalty=0.0)) == 3.5  # no penalty, no nan


@given(n=st.integers(1, 60), k=st.integers(1, 8))
def test_rung_chunks_partition_the_selection_runs(n: int, k: int) -> None:
    spec = TuneSpec(rungs=k)
    tasks = tuple(SelectTask(f"e{i}", 0, i) for i in range(n))
    ctx = StudyContext(spec, None, "/tmp", {}, tasks, tuple((0.0, 1.0) for _ in tasks))
    chunks = ctx.chunks()
    assert len(chunks) == k
    assert [i for c in chunks for i in c] == list(range(n))
    sizes = [len(c) for c in chunks]
    assert max(sizes) - min(sizes) <= 1


def test_rung_config_splits_the_budget_and_resumes() -> None:
    base = {"total_timesteps": 1000, "agent": {"learning_rate": 3e-4}, "out": "x"}
    conf = rung_config(base, {"agent.learning_rate": 1e-3, "env.reward_weights.cost": 0.3}, 2, 3,
                       "/runs/t/rung_2", "/runs/t/rung_1")  # fmt: skip
    assert conf["total_timesteps"] == 667  # ceil(1000 * 2 / 3)
    assert conf["agent"]["learning_rate"] == 1e-3
    assert conf["env"]["reward_weights"]["cost"] == 0.3
    assert (conf["out"], conf["resume"]) == ("/runs/t/rung_2", "/runs/t/rung_1")
    assert base["agent"]["learning_rate"] == 3e-4  # the base is not changed
    d: dict = {}
    set_dotted(d, "a.b.c", 1)
    assert d == {"a": {"b": {"c": 1}}}


def test_overlay_composes_as_an_experiment_with_the_best_values(compose_cfg, tmp_path) -> None:
    spec = TuneSpec(name="ppo", kind=TrialKind.train, train=["agent=ppo", "env=remediate",
                    "scenario=chain3", "total_timesteps=5000"])  # fmt: skip
    text = overlay_yaml(spec, {"agent.learning_rate": 0.001, "agent.n_steps": 128}, 2.5, "a b")
    assert text.startswith("# @package _global_\n")
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "tuned_ppo.yaml").write_text(text)
    cfg = compose_cfg("train", [f"hydra.searchpath=[file://{tmp_path}]", "experiment=tuned_ppo"])
    assert cfg.experiment == "tuned_ppo" and cfg.env.name == "remediate"  # group selected
    assert (cfg.scenario, cfg.total_timesteps) == ("chain3", 5000)
    assert (cfg.agent.algo, cfg.agent.learning_rate, cfg.agent.n_steps) == ("ppo", 0.001, 128)


def test_multiseed_requests_are_checked() -> None:
    with pytest.raises(RunConfigError, match="appears twice"):
        MultiSeed((0, 0))
    with pytest.raises(RunConfigError, match="integers >= 0"):
        MultiSeed((0, -1))
    with pytest.raises(RunConfigError, match="workers=0"):
        MultiSeed((0, 1), workers=0)
    with pytest.raises(RunConfigError, match="backend='dask'"):
        MultiSeed((0, 1), backend="dask")
    rest, req = split_request({"seed": 3, "seeds": [], "backend": "ray", "workers": None})
    assert req is None and rest == {"seed": 3}
    rest, req = split_request({"seed": 3, "seeds": [1, 2], "backend": "ray", "workers": 1})
    assert rest == {"seed": 3} and req == MultiSeed((1, 2), "ray", 1)


def test_seeds_summary_statistics(tmp_path: Path) -> None:
    metrics = [
        {"eval_mean_reward": -10.0, "timesteps": 100, "steps_per_s": None},
        {"eval_mean_reward": -14.0, "timesteps": 100, "steps_per_s": None},
        {"eval_mean_reward": -12.0, "timesteps": 100, "steps_per_s": None},
    ]
    s = summarize(tmp_path, [0, 1, 2], metrics, "local")
    r = s["across_seeds"]["eval_mean_reward"]
    assert (r["mean"], r["std"], r["min"], r["max"]) == (-12.0, 2.0, -14.0, -10.0)
    assert s["across_seeds"]["steps_per_s"]["mean"] is None  # None in every run: no statistic
    assert (tmp_path / "seeds_summary.md").read_text().count("\n| ") >= 3 + 4


def test_train_and_evaluate_take_the_scale_out_keys(compose_cfg, capsys) -> None:
    cfg = compose_cfg("train", ["seeds=[0,1,2]", "backend=ray", "workers=2"])
    assert list(cfg.seeds) == [0, 1, 2] and cfg.backend == "ray"
    assert compose_cfg("evaluate", ["backend=ray"]).backend == "ray"
    with pytest.raises(ConfigError, match=r"(?s)dask.*local, ray.*full_key: backend"):
        ev.to_config({"backend": "dask"})
    # the dispatcher knows the keys (a typo still fails with a hint)
    assert main(["train", "sedes=[0,1]"]) == 2
    assert "did you mean 'seeds'" in capsys.readouterr().err
    assert main(["tune", "worker=2"]) == 2
    assert "did you mean 'workers'" in capsys.readouterr().err


def test_steady_rate_leaves_out_each_workers_first_run() -> None:
    from agents.bench.scale import steady_rate

    # worker 1: runs at [0, 5] (first, dropped), [5, 6], [6, 7]; worker 2: [0, 4] (first), [4, 6]
    timed = [(1, 0.0, 5.0, None), (1, 5.0, 6.0, None), (1, 6.0, 7.0, None)]
    timed += [(2, 0.0, 4.0, None), (2, 4.0, 6.0, None)]
    assert steady_rate(timed) == pytest.approx(3 / (7.0 - 4.0))
    assert math.isnan(steady_rate([(1, 0.0, 1.0, None), (2, 0.0, 1.0, None)]))
