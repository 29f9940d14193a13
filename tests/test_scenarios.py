"""Built-in scenarios (calibration, shape, determinism) and the loader (files, overrides)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from envs.scenarios.builtin import (
    BUILTIN_SCENARIOS,
    builtin_scenario,
    describe,
    flow_rates,
    offered_load,
)
from envs.scenarios.loader import ScenarioError, apply_overrides, deep_merge, load_scenario
from envs.scenarios.schema import (
    SLO,
    Burst,
    Cluster,
    ClusterAutoscaler,
    Distribution,
    Diurnal,
    Edge,
    Noise,
    PodSpec,
    Replay,
    Replicas,
    Scenario,
    Service,
    Step,
    Topology,
    Traffic,
    Trend,
)
from envs.sim.validation import run_frames, run_stats, utilisation, visit_ratios

BOUTIQUE_EDGES = {
    ("frontend", d)
    for d in (
        "adservice",
        "recommendationservice",
        "productcatalogservice",
        "cartservice",
        "shippingservice",
        "currencyservice",
        "checkoutservice",
    )
} | {
    ("recommendationservice", "productcatalogservice"),
    ("cartservice", "redis-cart"),
    *(
        ("checkoutservice", d)
        for d in (
            "productcatalogservice",
            "cartservice",
            "shippingservice",
            "currencyservice",
            "paymentservice",
            "emailservice",
        )
    ),
}


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------------------------------ built-ins


@pytest.mark.parametrize("name", BUILTIN_SCENARIOS)
def test_builtin_validates_with_common_settings(name: str) -> None:
    sc = Scenario.model_validate(builtin_scenario(name))
    assert sc.name == name
    assert sc.horizon_s == 3600.0
    assert sc.scrape_interval_s == 15.0 and sc.decision_interval_s == 15.0
    assert sc.seed == 0 and sc.fidelity == "fluid"
    t = sc.traffic
    assert t.noise is None and t.diurnal is None and t.replay is None
    assert not t.steps and not t.bursts and t.trend is None
    assert list(sc.slos) == [sc.topology.entry]
    sc.topology.topological_order()  # a DAG


@pytest.mark.parametrize("name", BUILTIN_SCENARIOS)
def test_builtin_offered_load_is_calibrated(name: str) -> None:
    sc = load_scenario(name)
    load = offered_load(sc)
    assert list(load) == sc.service_names
    bad = {k: round(v, 3) for k, v in load.items() if not 0.3 <= v <= 0.6}
    assert not bad, f"{name}: services outside [0.3, 0.6]: {bad}"


@pytest.mark.parametrize("name", BUILTIN_SCENARIOS)
def test_offered_load_is_the_engines_utilisation(name: str) -> None:
    sc = load_scenario(name)
    assert list(offered_load(sc).values()) == pytest.approx(utilisation(sc), abs=1e-9, rel=0)
    assert list(offered_load(sc, rps=37.0).values()) == pytest.approx(
        utilisation(sc, rps=37.0), abs=1e-9, rel=0
    )
    lam = flow_rates(sc)
    assert list(lam.values()) == pytest.approx(sc.traffic.base_rps * visit_ratios(sc), rel=1e-12)


@pytest.mark.parametrize(
    ("name", "max_pods", "max_attempts"),
    [("chain3", 8, 1000.0), ("boutique", 25, 3000.0), ("mesh40", 60, 5000.0)],
)
def test_builtin_sizes_stay_modest(name: str, max_pods: int, max_attempts: float) -> None:
    """Few pods, no giant pods, and few enough attempts for the request-level engine."""
    sc = load_scenario(name)
    assert sum(s.replicas.initial for s in sc.topology.services) <= max_pods
    assert all(s.replicas.initial >= 1 for s in sc.topology.services)
    assert all(1 <= s.pod.concurrency <= 16 for s in sc.topology.services)
    assert sum(flow_rates(sc).values()) <= max_attempts


@pytest.mark.parametrize("name", BUILTIN_SCENARIOS)
def test_builtin_timeouts_and_slo_fit_normal_latency(name: str) -> None:
    """Timeouts are >= 10 normal mean responses; the SLO p99 is a few normal p99s."""
    sc = load_scenario(name)
    stats = run_stats(run_frames(sc.model_copy(update={"horizon_s": 300.0})))
    assert float(stats.error_rate.max()) < 1e-4
    for i, s in enumerate(sc.topology.services):
        if s.name == sc.topology.entry:
            assert s.pod.timeout_s is None and s.pod.retries == 0
            continue
        assert s.pod.timeout_s is not None and 1 <= s.pod.retries <= 2, s.name
        assert s.pod.timeout_s >= 10 * stats.mean_latency[i], s.name
    entry = sc.service_names.index(sc.topology.entry)
    normal_p99 = float(stats.p99[entry])
    assert 2.0 * normal_p99 <= sc.slos[sc.topology.entry].p99_latency_s <= 4.0 * normal_p99


@pytest.mark.parametrize("name", BUILTIN_SCENARIOS)
def test_builtin_fits_cluster_with_room_to_double(name: str) -> None:
    sc = load_scenario(name)
    cpu = sum(s.replicas.initial * s.pod.cpu_request for s in sc.topology.services)
    mem = sum(s.replicas.initial * s.pod.memory_request_mb for s in sc.topology.services)
    assert 2 * cpu <= sc.cluster.nodes * sc.cluster.node_cpu
    assert 2 * mem <= sc.cluster.nodes * sc.cluster.node_memory_mb
    assert all(2 * s.replicas.initial <= s.replicas.max for s in sc.topology.services)


def test_builtin_returns_fresh_copies() -> None:
    a = builtin_scenario("chain3")
    a["topology"]["services"][0]["replicas"]["initial"] = 99
    assert builtin_scenario("chain3")["topology"]["services"][0]["replicas"]["initial"] != 99


def test_unknown_builtin_lists_names() -> None:
    with pytest.raises(ValueError, match=r"unknown built-in scenario 'nope'.*chain3.*mesh40"):
        builtin_scenario("nope")


def test_offered_load_by_hand_chain3() -> None:
    sc = load_scenario("chain3")
    s = {x.name: x for x in sc.topology.services}
    rps = sc.traffic.base_rps
    assert flow_rates(sc) == pytest.approx(dict.fromkeys(s, rps))
    load = offered_load(sc)
    for name in s:  # a slot is held for the own service time only
        slots = s[name].replicas.initial * s[name].pod.concurrency
        assert load[name] == pytest.approx(rps * s[name].pod.service_time.mean / slots)
    # Load is linear in the rate; zero replicas with traffic is infinite.
    assert offered_load(sc, rps=2 * rps)["api"] == pytest.approx(2 * load["api"])
    zero = load_scenario(
        "chain3",
        {"topology.services.db.replicas.initial": 0, "topology.services.db.replicas.min": 0},
    )
    assert offered_load(zero)["db"] == float("inf")
    idle = load_scenario(zero, {"topology.edges.1.probability": 0.0})
    assert offered_load(idle)["db"] == 0.0


def test_offered_load_uses_probability_and_calls() -> None:
    sc = Scenario.model_validate(
        {
            "topology": {
                "entry": "a",
                "services": [
                    {"name": "a", "pod": {"service_time": {"mean": 0.01}, "concurrency": 4}},
                    {"name": "b", "pod": {"service_time": {"mean": 0.02}, "concurrency": 2}},
                    {"name": "c", "pod": {"service_time": {"mean": 0.005}, "concurrency": 1}},
                ],
                "edges": [
                    {"src": "a", "dst": "b", "probability": 0.5, "calls": 3},
                    {"src": "a", "dst": "c", "probability": 1.0, "calls": 2},
                    {"src": "b", "dst": "c", "probability": 0.2, "calls": 1},
                ],
            },
            "traffic": {"base_rps": 10.0},
        }
    )
    lam = flow_rates(sc)
    assert lam == pytest.approx({"a": 10.0, "b": 15.0, "c": 20.0 + 3.0})
    # Default replicas.initial is 2: slots are 8, 4 and 2.
    assert offered_load(sc) == pytest.approx(
        {"a": 10 * 0.01 / 8, "b": 15 * 0.02 / 4, "c": 23 * 0.005 / 2}
    )
    assert list(offered_load(sc).values()) == pytest.approx(utilisation(sc))


def test_chain3_shape() -> None:
    sc = load_scenario("chain3")
    assert sc.service_names == ["frontend", "api", "db"]
    assert [(e.src, e.dst, e.probability, e.calls) for e in sc.topology.edges] == [
        ("frontend", "api", 1.0, 1.0),
        ("api", "db", 1.0, 1.0),
    ]
    internal = [s for s in sc.topology.services if s.name != "frontend"]
    assert all(s.pod.timeout_s is not None and s.pod.timeout_s <= 0.5 for s in internal)
    assert all(1 <= s.pod.retries <= 2 for s in internal)
    assert sum(s.replicas.initial for s in sc.topology.services) <= 8


def test_boutique_shape() -> None:
    sc = load_scenario("boutique")
    assert len(sc.service_names) == 11 and sc.topology.entry == "frontend"
    assert {(e.src, e.dst) for e in sc.topology.edges} == BOUTIQUE_EDGES
    pods = sum(s.replicas.initial for s in sc.topology.services)
    assert 15 <= pods <= 25
    ms = {s.name: s.pod.service_time.mean * 1000 for s in sc.topology.services}
    assert ms["redis-cart"] < ms["currencyservice"] < ms["frontend"] < ms["checkoutservice"]
    slow = ("checkoutservice", "paymentservice", "emailservice")  # orders, external systems
    assert min(ms[n] for n in slow) > max(ms[n] for n in ms if n not in slow)
    lam = flow_rates(sc)
    # Browsing dominates: checkout is a small fraction of page views.
    assert lam["checkoutservice"] < 0.1 * lam["frontend"]
    assert lam["currencyservice"] > 2 * lam["frontend"]


def test_mesh40_is_deterministic_layered_dag() -> None:
    a, b = builtin_scenario("mesh40"), builtin_scenario("mesh40")
    assert a == b
    sc = Scenario.model_validate(a)
    names = sc.service_names
    assert len(names) == 40 and len(set(names)) == 40
    order = [names[i] for i in sc.topology.topological_order()]
    assert order[0] == sc.topology.entry == "gateway"

    def layer(n: str) -> int:
        return 0 if n == "gateway" else int(n[1])

    callees: dict[str, list[str]] = {n: [] for n in names}
    callers: dict[str, list[str]] = {n: [] for n in names}
    for e in sc.topology.edges:
        assert layer(e.dst) > layer(e.src)
        assert 0.2 <= e.probability <= 1.0
        callees[e.src].append(e.dst)
        callers[e.dst].append(e.src)
    deepest = max(layer(n) for n in names)
    assert 3 <= deepest <= 4
    for n in names:
        if layer(n) < deepest:
            assert 1 <= len(callees[n]) <= 4, n
        if n != "gateway":
            assert callers[n], f"{n} is unreachable"
    assert all(1.0 <= s.pod.service_time.mean * 1000 <= 20.0 for s in sc.topology.services)
    assert all(s.pod.concurrency <= 4 for s in sc.topology.services)
    assert 40 <= sum(s.replicas.initial for s in sc.topology.services) <= 60


# ------------------------------------------------------------------------------ loader


def test_load_spec_kinds_agree(tmp_path: Path) -> None:
    by_name = load_scenario("chain3")
    by_mapping = load_scenario(builtin_scenario("chain3"))
    assert by_name == by_mapping
    assert load_scenario(by_name) is by_name
    f = write(tmp_path / "c.yaml", "base: chain3\nname: chain3\n")
    assert load_scenario(f) == by_name
    assert load_scenario(str(f)) == by_name


def test_overrides_by_index_and_name() -> None:
    sc = load_scenario(
        "chain3",
        {
            "traffic.base_rps": 50,
            "topology.services.0.replicas.initial": 3,
            "topology.services.db.pod.concurrency": 7,
            "topology.edges.1.probability": 0.5,
            "fidelity": "request",
            "traffic.noise.cv": 0.2,  # creates the missing section
            "slos.frontend.p99_latency_s": 0.1,
        },
    )
    s = {x.name: x for x in sc.topology.services}
    assert sc.traffic.base_rps == 50.0
    assert s["frontend"].replicas.initial == 3
    assert s["db"].pod.concurrency == 7
    assert sc.topology.edges[1].probability == 0.5
    assert sc.fidelity == "request"
    assert sc.traffic.noise is not None and sc.traffic.noise.cv == 0.2
    assert sc.slos["frontend"].p99_latency_s == 0.1
    # Overrides on a Scenario object work too and leave the original alone.
    base = load_scenario("chain3")
    again = load_scenario(base, {"topology.services.api.replicas.initial": 4})
    assert {x.name: x.replicas.initial for x in again.topology.services}["api"] == 4
    assert base.topology.services[1].replicas.initial == 2


def test_override_replaces_whole_values_and_lists() -> None:
    raw = {"a": {"b": [1, 2, {"name": "x", "v": 1}]}}
    out = apply_overrides(raw, {"a.b.x.v": 2, "a.b.-3": 9, "a.c": [1]})
    assert out == {"a": {"b": [9, 2, {"name": "x", "v": 2}], "c": [1]}}
    assert raw == {"a": {"b": [1, 2, {"name": "x", "v": 1}]}}


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        (
            "topology.services.nope.replicas.initial",
            "no service named 'nope' in 'topology.services'; the names are "
            "['frontend', 'api', 'db'], or use an index 0..2",
        ),
        ("topology.services.fronted.pod.concurrency", "did you mean 'frontend'?"),
        ("topology.services.5.pod.concurrency", "index 5 is out of range for 'topology.services'"),
        ("traffic.base_rps.x", "'traffic.base_rps' is a value (300.0), not a section"),
        ("topology.edges.src", "address its items by index 0..1, not 'src'"),
        ("traffic..base_rps", "keys are dotted paths"),
    ],
)
def test_bad_override_path(key: str, fragment: str) -> None:
    with pytest.raises(ScenarioError) as err:
        load_scenario("chain3", {key: 1})
    assert f"override {key!r}" in str(err.value)
    assert fragment in str(err.value)


def test_yaml_with_base_merges_and_resolves_paths(tmp_path: Path) -> None:
    (tmp_path / "traces").mkdir()
    write(tmp_path / "traces" / "day.csv", "t,rps\n0,100\n60,200\n")
    sub = tmp_path / "variants"
    sub.mkdir()
    write(
        sub / "noisy_boutique.yaml",
        """\
        base: boutique
        description: boutique with noise and a replayed trace
        traffic:
          noise: {cv: 0.2, tau_s: 10}
          replay: {path: ../traces/day.csv, scale: 2}
        overrides:
          topology.services.frontend.replicas.initial: 6
        """,
    )
    sc = load_scenario(sub / "noisy_boutique.yaml")
    assert sc.name == "noisy_boutique"  # named after the file
    assert sc.description == "boutique with noise and a replayed trace"
    assert sc.traffic.base_rps == 250.0  # kept from the base (deep merge)
    assert sc.traffic.noise is not None and sc.traffic.noise.cv == 0.2
    assert sc.traffic.replay is not None
    assert sc.traffic.replay.path == str((tmp_path / "traces" / "day.csv").resolve())
    assert Path(sc.traffic.replay.path).is_absolute()
    assert len(sc.service_names) == 11
    assert sc.topology.services[0].replicas.initial == 6

    # A file based on that file, with a list that replaces the base's list.
    write(
        tmp_path / "child.yaml",
        """\
        base: variants/noisy_boutique.yaml
        name: child
        slos:
          checkoutservice: {p99_latency_s: 0.5}
        traffic:
          steps: [{at_s: 600, factor: 2}]
        """,
    )
    child = load_scenario(str(tmp_path / "child.yaml"), {"traffic.base_rps": 10})
    assert child.name == "child"
    assert set(child.slos) == {"frontend", "checkoutservice"}
    assert len(child.traffic.steps) == 1
    assert child.traffic.replay == sc.traffic.replay  # resolved against its own file
    assert child.traffic.base_rps == 10.0


def test_yaml_base_loop_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ScenarioError, match="'base:' loops"):
        load_scenario(tmp_path / "a.yaml")


def test_deep_merge_semantics() -> None:
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 1}
    top = {"a": {"y": [3], "z": None}, "c": {"d": 1}}
    assert deep_merge(base, top) == {"a": {"x": 1, "y": [3], "z": None}, "b": 1, "c": {"d": 1}}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 1}


# ------------------------------------------------------------------------------ errors


def test_validation_error_names_fields_and_services() -> None:
    with pytest.raises(ScenarioError) as err:
        load_scenario(
            "chain3",
            {"topology.services.0.pod.concurrency": 0, "traffic.noise.cv": 5, "seed": "x"},
        )
    e = err.value
    assert isinstance(e, ValueError)
    assert isinstance(e.__cause__, ValidationError)  # the original is kept
    assert "invalid scenario (built-in 'chain3'): 3 problems" in str(e)
    assert (
        "scenario field 'topology.services.0.pod.concurrency' (service 'frontend'): "
        "Input should be greater than or equal to 1, got 0"
    ) in e.problems
    assert (
        "scenario field 'traffic.noise.cv': Input should be less than or equal to 2, got 5"
        in e.problems
    )
    assert any(
        p.startswith("scenario field 'seed': Input should be a valid integer") for p in e.problems
    )
    for p in e.problems:
        assert f"  - {p}" in str(e)


def test_unknown_key_lists_allowed_keys() -> None:
    with pytest.raises(ScenarioError) as err:
        load_scenario("chain3", {"traffic.base_rsp": 5, "topology.services.api.pod.cpu": 1})
    msg = str(err.value)
    assert (
        "scenario field 'traffic.base_rsp': Extra inputs are not permitted, got 5; allowed "
        "keys at 'traffic': base_rps, bursts, diurnal, noise, replay, resolution_s, steps, "
        "trend; did you mean 'base_rps'?"
    ) in msg
    assert "scenario field 'topology.services.1.pod.cpu' (service 'api'): Extra inputs" in msg
    assert "allowed keys at 'topology.services.1.pod': concurrency, cpu_full_load," in msg


def test_unknown_top_level_key_and_slo_key() -> None:
    with pytest.raises(ScenarioError) as err:
        load_scenario({"base": "chain3", "horizon": 10, "slos": {"frontend": {"p99": 1}}})
    msg = str(err.value)
    assert (
        "scenario field 'horizon': Extra inputs are not permitted, got 10; allowed keys at " in msg
    )
    assert "at the top level: actuation_delay_s, autoscaling, cluster," in msg
    assert "did you mean 'horizon_s'?" in msg
    assert "allowed keys at 'slos.frontend': error_rate, p99_latency_s" in msg


def test_cycle_is_rejected_with_the_cycle_named() -> None:
    edges = [
        {"src": "frontend", "dst": "api"},
        {"src": "api", "dst": "db"},
        {"src": "db", "dst": "api"},
    ]
    with pytest.raises(ScenarioError) as err:
        load_scenario("chain3", {"topology.edges": edges})
    assert (
        "scenario field 'topology.edges': the call graph has a cycle through ['api', 'db']"
    ) in str(err.value)


def test_model_level_errors_are_attributed_to_their_field() -> None:
    with pytest.raises(ScenarioError) as err:
        load_scenario("chain3", {"topology.services.api.replicas.initial": 50})
    assert (
        "scenario field 'topology.services.1.replicas.initial' (service 'api'): "
        "replicas.initial (50) must lie in [min, max] = [1, 20]"
    ) in str(err.value)
    with pytest.raises(ScenarioError) as err:
        load_scenario("chain3", {"topology.edges.0.dst": "dbx"})
    assert (
        "scenario field 'topology.edges.0.dst' (edge frontend -> dbx): unknown service 'dbx'"
    ) in str(err.value)
    with pytest.raises(ScenarioError) as err:
        load_scenario("chain3", {"decision_interval_s": 20})
    assert "scenario field 'decision_interval_s': decision_interval_s must be a whole multiple" in (
        str(err.value)
    )
    with pytest.raises(ScenarioError) as err:
        load_scenario("chain3", {"slos.nosuch": {}})
    assert "scenario field 'slos.nosuch': unknown service" in str(err.value)


def test_load_errors_say_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"unknown built-in scenario 'boutiqe'.*chain3"):
        load_scenario("boutiqe")
    with pytest.raises(ScenarioError, match=r"missing\.yaml' not found.*built-in"):
        load_scenario(str(tmp_path / "missing.yaml"))
    bad = write(tmp_path / "bad.yaml", "topology:\n  entry: [a\n")
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    assert "is not valid YAML" in str(err.value) and "line" in str(err.value)
    listy = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ScenarioError, match="must hold a mapping"):
        load_scenario(listy)
    with pytest.raises(ScenarioError, match="is not a file"):
        load_scenario(tmp_path)
    with pytest.raises(ScenarioError, match="'base' must be a built-in name"):
        load_scenario({"base": 3})
    with pytest.raises(ScenarioError, match="'overrides' must be a mapping"):
        load_scenario({"base": "chain3", "overrides": ["x"]})
    with pytest.raises(ScenarioError, match="cannot load a scenario from a int"):
        load_scenario(3)  # type: ignore[arg-type]


def test_yaml_error_in_file_names_file_and_field(tmp_path: Path) -> None:
    f = write(
        tmp_path / "svc.yaml",
        """\
        base: chain3
        overrides:
          topology.services.db.pod.service_time.mean: -1
        """,
    )
    with pytest.raises(ScenarioError) as err:
        load_scenario(f)
    msg = str(err.value)
    assert f"invalid scenario (file {str(f.resolve())!r}): 1 problem" in msg
    assert (
        "scenario field 'topology.services.2.pod.service_time.mean' (service 'db'): "
        "Input should be greater than 0, got -1"
    ) in msg


# ------------------------------------------------------------------------------ docs

DOC = Path(__file__).resolve().parents[1] / "docs" / "scenarios.md"


@pytest.mark.parametrize("name", BUILTIN_SCENARIOS)
def test_docs_show_the_builtin_call_graphs(name: str) -> None:
    assert describe(load_scenario(name)) in DOC.read_text(), (
        f"docs/scenarios.md is out of date for {name}; paste describe(load_scenario({name!r}))"
    )


def test_docs_name_every_schema_field() -> None:
    text = DOC.read_text()
    models = [Scenario, Topology, Service, PodSpec, Distribution, Replicas, Edge, Cluster]
    models += [ClusterAutoscaler, Traffic, Diurnal, Step, Burst, Trend, Noise, Replay, SLO]
    missing = [f"{m.__name__}.{f}" for m in models for f in m.model_fields if f"`{f}`" not in text]
    assert not missing


def test_docs_full_example_validates(tmp_path: Path) -> None:
    text = DOC.read_text()
    block = text.split("<!-- full-example -->\n```yaml\n", 1)[1].split("```", 1)[0]
    sc = load_scenario(write(tmp_path / "shop.yaml", block))
    assert sc.name == "shop" and sc.cluster.autoscaler is not None
    assert sc.traffic.noise is not None and len(sc.traffic.bursts) == 1
