"""Suites: both load, are realistic, and the holdout differs from train as documented.

Also the suite format's expansion and error messages, and the parallel suite runner.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.evaluation.suite import SuiteRunError, run_suite
from agents.policy import StaticPolicy
from agents.rollout import rollout
from envs.scenarios.schema import FAULT_KINDS
from envs.scenarios.scoring import METRICS, slo_timeline
from envs.scenarios.suites import (
    SEED_STRIDE,
    SUITE_DIR,
    Suite,
    SuiteError,
    build_suite,
    fault_signature,
    load_suite,
    overlapping,
    traffic_features,
)
from envs.sim.simulator import Simulator


@pytest.fixture(scope="module")
def train() -> Suite:
    return load_suite("train")


@pytest.fixture(scope="module")
def holdout() -> Suite:
    return load_suite("holdout")


# --------------------------------------------------------------------------- shipped suites


def test_both_suites_load_with_unique_ids_and_seeds(train: Suite, holdout: Suite) -> None:
    assert train.name == "train" and holdout.name == "holdout"
    assert 20 <= len(train) <= 30
    assert len(holdout) >= 40
    for suite in (train, holdout):
        assert len(set(suite.ids)) == len(suite)
        assert len({e.seed for e in suite}) == len(suite)
        for e in suite:
            assert e.scenario.name == e.id
            assert e.scenario.seed == e.run_seed(0) == SEED_STRIDE * e.seed
    assert load_suite(SUITE_DIR / "train.yaml").ids == train.ids  # a path works too


def test_every_entry_is_a_realistic_incident(train: Suite, holdout: Suite) -> None:
    for e in (*train, *holdout):
        sc = e.scenario
        assert 1800 <= sc.horizon_s <= 3600, e.id
        assert sc.faults, e.id
        assert 300 <= min(f.at_s for f in sc.faults) <= 600, e.id
        assert sc.effective_slos() and sc.slos, e.id  # SLOs stated, not defaulted
        assert sc.description, e.id


def test_quiet_period_is_quiet(train: Suite, holdout: Suite) -> None:
    """Before the first onset, the static policy meets every SLO (the incident is the fault)."""
    for e in (*train, *holdout):
        onset = min(f.at_s for f in e.scenario.faults)
        quiet = e.scenario.model_copy(update={"faults": [], "horizon_s": onset})
        r = rollout(Simulator(quiet, seed=e.run_seed(0)), StaticPolicy())
        assert not slo_timeline(r).violating.any(), e.id


def test_train_covers_every_fault_kind_on_chain3_and_boutique(train: Suite) -> None:
    kinds = Counter(f.kind for e in train for f in e.scenario.faults)
    assert set(kinds) == set(FAULT_KINDS)
    assert {e.scenario.topology.name for e in train} == {"chain3", "boutique"}
    for e in train:
        assert len(e.scenario.faults) == 1, e.id
        assert traffic_features(e.scenario) <= {"constant", "diurnal", "noise"}, e.id
    assert any("diurnal" in traffic_features(e.scenario) for e in train)
    assert any("constant" in traffic_features(e.scenario) for e in train)


def test_holdout_differs_from_train(train: Suite, holdout: Suite) -> None:
    # seeds: entry seeds and every run seed (replicates 0..9) are disjoint
    assert not {e.seed for e in train} & {e.seed for e in holdout}
    runs = {e.run_seed(k) for e in train for k in range(10)}
    assert not runs & {e.run_seed(k) for e in holdout for k in range(10)}

    # topology: mesh40 appears, and only in holdout
    train_topos = {e.scenario.topology.name for e in train}
    holdout_topos = Counter(e.scenario.topology.name for e in holdout)
    assert "mesh40" not in train_topos and holdout_topos["mesh40"] >= 8

    # traffic: patterns train never shows
    train_traffic = set().union(*(traffic_features(e.scenario) for e in train))
    new = Counter(f for e in holdout for f in traffic_features(e.scenario) - train_traffic)
    assert new["replay"] >= 5 and new["trend"] >= 3 and new["weekly"] >= 3

    # combinations: overlapping faults, which train never has
    combos = [e for e in holdout if len(e.scenario.faults) >= 2]
    assert len(combos) >= 12
    assert all(overlapping(e.scenario) for e in combos)
    kinds = [{f.kind for f in e.scenario.faults} for e in combos]
    assert {"bad_deploy", "flash_crowd"} in kinds and {"node_failure", "memory_leak"} in kinds

    # fault parameters: for every kind, holdout uses a parameterisation train never does,
    # and no holdout entry repeats a train entry's topology and faults
    for kind in FAULT_KINDS:
        tr = {fault_signature(f) for e in train for f in e.scenario.faults if f.kind == kind}
        ho = {fault_signature(f) for e in holdout for f in e.scenario.faults if f.kind == kind}
        assert ho - tr, kind
    same = {
        (e.scenario.topology.name, tuple(fault_signature(f) for f in e.scenario.faults))
        for e in train
    }
    for e in holdout:
        key = (e.scenario.topology.name, tuple(fault_signature(f) for f in e.scenario.faults))
        assert key not in same, e.id

    # episode lengths train never uses
    assert {e.scenario.horizon_s for e in train} == {2400.0}
    assert {1800.0, 2700.0, 3600.0} <= {e.scenario.horizon_s for e in holdout}


def test_replay_trace_is_committed_and_resolved(holdout: Suite) -> None:
    replayed = [e for e in holdout if e.scenario.traffic.replay is not None]
    for e in replayed:
        path = Path(e.scenario.traffic.replay.path)  # type: ignore[union-attr]
        assert path.is_absolute() and path == SUITE_DIR / "storefront_trace.csv"
    lines = (SUITE_DIR / "storefront_trace.csv").read_text().splitlines()
    assert lines[0] == "t,rps" and 100 <= len(lines) <= 200  # small


# --------------------------------------------------------------------------- the format


def _suite(*entries: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"name": "t", "entries": list(entries), **top}


def _entry(**kw: Any) -> dict[str, Any]:
    base = {
        "id": "e1",
        "base": "chain3",
        "faults": [{"kind": "bad_deploy", "service": "api", "at_s": 420}],
    }
    return {**base, **kw}


def test_matrix_expansion_keeps_types_and_numbers_seeds() -> None:
    s = build_suite(
        _suite(
            _entry(
                id="hog-${node}-x${slowdown}",
                description="node ${node}",
                seed=40,
                matrix={"node": [1, 2], "slowdown": [2.5, 4.0]},
                faults=[
                    {"kind": "cpu_hog", "node": "${node}", "slowdown": "${slowdown}", "at_s": 400}
                ],
            ),
            _entry(id="plain", overrides={"traffic.base_rps": 200}),
            seed_base=7,
            defaults={"horizon_s": 1800},
        )
    )
    assert s.ids == ["hog-1-x2.5", "hog-1-x4.0", "hog-2-x2.5", "hog-2-x4.0", "plain"]
    assert [e.seed for e in s] == [40, 41, 42, 43, 7 + 4]
    first = s.entries[0]
    assert first.params == {"node": 1, "slowdown": 2.5}
    fault = first.scenario.faults[0]
    assert fault.node == 1 and fault.slowdown == 2.5  # type: ignore[union-attr]
    assert first.scenario.description == "node 1"
    assert all(e.scenario.horizon_s == 1800 for e in s)
    assert s.entries[-1].scenario.traffic.base_rps == 200
    assert s.entry("plain").id == "plain" and len(s.subset(first=2)) == 2
    with pytest.raises(KeyError, match="no entry 'nope'"):
        s.entry("nope")


@pytest.mark.parametrize(
    ("entry", "top", "needles"),
    [
        (
            _entry(faults=[{"kind": "bad_deploy", "service": "apx", "at_s": 420}]),
            {},
            ["entry 'e1'", "field 'faults.0.service'", "unknown service 'apx'"],
        ),
        (
            _entry(faults=[{"kind": "bad_deploy", "service": "api", "at_s": 420, "eror": 1}]),
            {},
            ["entry 'e1'", "field 'faults.0.bad_deploy.eror'"],
        ),
        (_entry(fautls=[]), {}, ["entry 'e1'", "field 'fautls'", "Extra inputs"]),
        (_entry(faults=[]), {}, ["entry 'e1'", "field 'faults'"]),
        (_entry(base="chain4"), {}, ["entry 'e1'", "field 'base'", "chain3"]),
        (
            _entry(overrides={"topology.services.apx.replicas.initial": 3}),
            {},
            ["entry 'e1'", "field 'overrides'", "no service named 'apx'"],
        ),
        (
            _entry(overrides={"traffic.base_rsp": 3}),
            {},
            ["entry 'e1'", "field 'traffic.base_rsp'", "base_rps"],
        ),
        (
            _entry(faults=[{"kind": "bad_deploy", "service": "api", "at_s": 60}]),
            {"require": {"first_onset_s": [300, 600]}},
            ["entry 'e1'", "field 'faults.0.at_s'", "quiet period"],
        ),
        (
            _entry(),
            {"require": {"horizon_s": [1800, 2400]}},
            ["entry 'e1'", "field 'horizon_s'", "3600"],
        ),
        (
            _entry(id="e-${svc}", matrix={"service": ["api"]}),
            {},
            ["entry 'e-${svc}'", "field 'id'", "['service']"],
        ),
        (
            _entry(id="e-${service}", matrix={"service": ["api"]}, description="${srvice}"),
            {},
            ["entry 'e-${service}'", "'${srvice}' is not a matrix variable"],
        ),
        (_entry(id="Bad Id"), {}, ["entry 'Bad Id'", "field 'id'"]),
        (
            _entry(overrides={"traffic.replay": {"path": "nope.csv"}}),
            {},
            ["entry 'e1'", "field 'traffic.replay.path'", "nope.csv"],
        ),
    ],
)
def test_bad_entry_names_the_entry_and_field(
    entry: dict[str, Any], top: dict[str, Any], needles: list[str]
) -> None:
    with pytest.raises(SuiteError) as info:
        build_suite(_suite(entry, **top))
    for needle in needles:
        assert needle in str(info.value)


def test_duplicates_and_bad_suite_files(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"entry 'e1': field 'id': duplicate id"):
        build_suite(_suite(_entry(), _entry()))
    with pytest.raises(SuiteError, match=r"entry 'e2': field 'seed': seed 3 is also used"):
        build_suite(_suite(_entry(seed=3), _entry(id="e2", seed=3)))
    with pytest.raises(SuiteError, match="field 'entries'"):
        build_suite({"name": "empty", "entries": []})
    with pytest.raises(SuiteError, match=r"unknown suite 'holdot'.*'holdout'"):
        load_suite("holdot")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nentries: [\n")
    with pytest.raises(SuiteError, match="not valid YAML"):
        load_suite(str(bad))


def test_suite_file_resolves_relative_paths_against_its_folder(tmp_path: Path) -> None:
    (tmp_path / "trace.csv").write_text("t,rps\n0,100\n60,120\n")
    (tmp_path / "base.yaml").write_text("base: chain3\ntraffic: {base_rps: 150}\n")
    (tmp_path / "mine.yaml").write_text(
        "name: mine\n"
        "x-traffic: &trace\n"
        "  traffic.replay: {path: trace.csv, scale: 2.0}\n"
        "entries:\n"
        "  - id: a\n"
        "    base: base.yaml\n"
        "    faults: [{kind: flash_crowd, at_s: 400}]\n"
        "  - id: b\n"
        "    base: chain3\n"
        "    overrides: *trace\n"
        "    faults: [{kind: flash_crowd, at_s: 400}]\n"
    )
    s = load_suite(str(tmp_path / "mine.yaml"))
    assert s.entry("a").scenario.traffic.base_rps == 150
    replay = s.entry("b").scenario.traffic.replay
    assert replay is not None and replay.path == str(tmp_path / "trace.csv")


def test_run_seed() -> None:
    e = load_suite("train").entries[0]
    assert e.run_seed(2) == SEED_STRIDE * e.seed + 2
    with pytest.raises(ValueError, match="replicate"):
        e.run_seed(SEED_STRIDE)


# --------------------------------------------------------------------------- the runner


def test_runner_same_scores_in_process_and_in_a_pool(holdout: Suite) -> None:
    small = holdout.subset(["chain3-h-crash-loop-db", "mesh40-h-flash-crowd"])
    seen: list[tuple[int, int]] = []
    one = run_suite(
        small, StaticPolicy, [0, 1], workers=1, progress=lambda d, n, r: seen.append((d, n))
    )
    two = run_suite(small, StaticPolicy, [0, 1], workers=2)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [r.score for r in one.runs] == [r.score for r in two.runs]
    assert [(r.entry_id, r.replicate) for r in one.runs] == [
        ("chain3-h-crash-loop-db", 0),
        ("chain3-h-crash-loop-db", 1),
        ("mesh40-h-flash-crowd", 0),
        ("mesh40-h-flash-crowd", 1),
    ]
    assert one.runs[1].seed == small.entries[0].run_seed(1)
    assert one.runs[0].score.seed == one.runs[0].seed
    assert one.summary == two.summary and one.workers == 1 and two.workers == 2
    assert one.policy == "static" and one.runs_per_s > 0

    data = json.loads(one.to_json())
    assert data["runs"] == 4 and data["entries"] == 2 and list(data["summary"]) == list(METRICS)
    assert data["per_run"][0]["entry"] == "chain3-h-crash-loop-db"
    md = one.to_markdown()
    assert "| `slo_violation_min` |" in md and "`mesh40-h-flash-crowd`" in md
    per = one.per_entry()
    assert per["chain3-h-crash-loop-db"]["slo_violation_min"] == pytest.approx(
        np.mean([r.score.slo_violation_min for r in one.runs[:2]])
    )


class _Broken:
    name = "broken"

    def reset(self, n: int = 1) -> None:
        return None

    def act(self, obs: Any, state: Any) -> Any:
        raise RuntimeError("boom")


def test_runner_rejects_bad_arguments_and_names_failing_runs(train: Suite) -> None:
    small = train.subset(first=1)
    with pytest.raises(TypeError, match="cannot be pickled"):
        run_suite(train.subset(first=2), lambda: StaticPolicy(), [0], workers=2)
    with pytest.raises(ValueError, match="seeds is empty"):
        run_suite(small, StaticPolicy, [], workers=1)
    with pytest.raises(ValueError, match="workers"):
        run_suite(small, StaticPolicy, [0], workers=0)
    with pytest.raises(SuiteRunError, match=r"entry 'chain3-crash-loop-api' replicate 0.*boom"):
        run_suite(small, _Broken, [0], workers=1)
    with pytest.raises(SuiteRunError, match="boom"):
        run_suite(train.subset(first=2), _Broken, [0], workers=2)


# --------------------------------------------------------------------------------------------
# splits (docs/protocol.md: choose on train:validation, never on holdout)


def test_train_validation_split_is_disjoint_and_keeps_every_fault_kind_in_fit() -> None:
    full = load_suite("train")
    val, fit = load_suite("train:validation"), load_suite("train:fit")
    assert (val.name, fit.name) == ("train:validation", "train:fit")
    assert set(val.ids).isdisjoint(fit.ids)
    assert sorted(val.ids + fit.ids) == sorted(full.ids)
    assert len(val) == 8
    fit_kinds = {f.kind for e in fit for f in e.scenario.faults}
    train_kinds = {f.kind for e in full for f in e.scenario.faults}
    assert fit_kinds == train_kinds
    # every topology of train is validated on, and split entries keep their seeds
    assert val.topologies == full.topologies
    assert [e.seed for e in val] == [full.entry(i).seed for i in val.ids]


def _split_suite(splits: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "s",
        "splits": splits,
        "entries": [
            {"id": f"e{k}", "base": "chain3", "faults": [{"kind": "flash_crowd", "at_s": 300}]}
            for k in range(3)
        ],
    }


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        ({"validation": ["e9"]}, "field 'splits.validation': no entry 'e9'"),
        ({"validation": ["e1"], "test": ["e1"]}, "is also in split 'validation'"),
        ({"fit": ["e1"]}, "'fit' is reserved"),
    ],
)
def test_bad_splits_name_the_field(splits: dict[str, Any], message: str) -> None:
    with pytest.raises(SuiteError, match=message):
        build_suite(_split_suite(splits))


def test_unknown_split_lists_the_known_ones() -> None:
    suite = build_suite(_split_suite({"validation": ["e2", "e0"]}))
    assert suite.split("validation").ids == ["e0", "e2"]  # file order, not list order
    assert suite.split("fit").ids == ["e1"]
    with pytest.raises(SuiteError, match=r"no split 'valid'; its splits: \['fit', 'validation'\]"):
        suite.split("valid")
    with pytest.raises(SuiteError, match="no split 'validation'; its splits: none"):
        load_suite("holdout:validation")
