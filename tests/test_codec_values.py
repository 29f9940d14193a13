"""The action codec by exact values: the initial belief, what a frame changes in it, masks
(and the dtype their consumers index with), decoding of every dimension, and the feature map
``onehot(choice) @ feature_matrix()`` against the :class:`ActionEncoder` for every choice.

Written against the surviving mutants of ``make mutation MODULES=codec`` (issue 15).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from envs.core.actions import Restart, Scale, SetHPATarget
from envs.core.spec import ControlSpec
from envs.core.telemetry import (
    CLUSTER_FIELDS,
    CLUSTER_INDEX,
    COUNTER_FIELDS,
    FIELD_INDEX,
    LATENCY_BUCKETS_S,
    SERVICE_FIELDS,
    Telemetry,
    make_frame,
)
from envs.gym.codec import (
    HPA_TARGETS,
    LAYOUTS,
    SCALE_DELTAS,
    ActionCodec,
    ControlBelief,
    control_spec,
)
from envs.scenarios.loader import load_scenario

SPEC = ControlSpec(("a", "b"), (1, 2), (4, 6), (2, 3), n_nodes=3)
# wide bounds: no delta of +-2 from 5 is clamped
WIDE = ControlSpec(("a", "b"), (1, 1), (10, 10), (5, 5), n_nodes=2)
KEEP = SCALE_DELTAS.index(0)


def frame(t: float, cluster: dict[str, float] | None = None, **columns: list[float]) -> Telemetry:
    values = np.full((2, len(SERVICE_FIELDS)), np.nan)
    for name, col in columns.items():
        values[:, FIELD_INDEX[name]] = col
    c = np.full(len(CLUSTER_FIELDS), np.nan)
    for name, v in (cluster or {}).items():
        c[CLUSTER_INDEX[name]] = v
    return make_frame(
        t,
        ("a", "b"),
        values,
        np.zeros((2, len(COUNTER_FIELDS))),
        np.zeros(2),
        np.zeros((2, len(LATENCY_BUCKETS_S))),
        c,
    )


# ---------------------------------------------------------------------------- the belief


def test_control_spec_carries_the_actuation_delay() -> None:
    sc = load_scenario("chain3")
    assert control_spec(sc).actuation_delay_s == sc.actuation_delay_s == 2.0
    slow = load_scenario("chain3", {"actuation_delay_s": 7.5})
    assert control_spec(slow).actuation_delay_s == 7.5


def test_initial_belief_values() -> None:
    # before any frame: the configured replicas, version 0 (no rollback), no shedding, no
    # action yet (-inf), no HPA target set (0), time and start nodes unknown (NaN)
    b = ControlBelief.initial(SPEC)
    assert math.isnan(b.t) and math.isnan(b.nodes_at_start)
    assert (b.desired, b.ready, b.deploy_version, b.shed_fraction) == (
        (2, 3),
        (2.0, 3.0),
        (0.0, 0.0),
        0.0,
    )
    assert (b.drained, b.last_action_t, b.hpa_targets) == (
        frozenset(),
        (-math.inf, -math.inf),
        (0, 0),
    )
    # so rollback and the shed level in force (0) are masked, the rest is valid
    codec = ActionCodec("remediate", SPEC)
    assert np.flatnonzero(~codec.remediation_mask(b)).tolist() == [2, 5, 7]
    # an action before any frame happened at an unknown time
    assert math.isnan(b.after([Restart("b")], SPEC.services).last_action_t[1])


def test_observe_replaces_observed_values_and_keeps_missing_ones() -> None:
    b = ControlBelief.initial(SPEC)
    f = frame(
        15.0,
        {"shed_fraction": 0.25, "nodes_ready": 2.0},
        replicas_desired=[3.6, np.nan],
        replicas_ready=[1.0, np.nan],
        deploy_version=[2.0, np.nan],
    )
    seen = b.observe(f)
    assert (seen.t, seen.nodes_at_start, seen.shed_fraction) == (15.0, 2.0, 0.25)
    assert seen.desired == (4, 3)  # rounded; b's desired kept where unobserved
    assert (seen.ready, seen.deploy_version) == ((1.0, 3.0), (2.0, 0.0))
    # a frame without the shed gauge keeps the level; nodes at start stay the first frame's
    gap = seen.observe(frame(30.0, {"nodes_ready": 3.0}, replicas_desired=[np.nan, 5.0]))
    assert (gap.shed_fraction, gap.nodes_at_start, gap.desired) == (0.25, 2.0, (4, 5))
    assert gap.ready == (1.0, 3.0)
    back = gap.observe(frame(45.0, {"shed_fraction": 0.0}))
    assert back.shed_fraction == 0.0


def test_after_sets_hpa_targets_on_a_belief_without_any() -> None:
    # a belief built without hpa_targets (the field's default, ()) reads as none set
    b = ControlBelief(0.0, (2, 3), (2.0, 3.0), (0.0, 0.0), 0.0, 3.0, frozenset(), (-math.inf,) * 2)
    assert b.after([SetHPATarget("b", 40)], SPEC.services).hpa_targets == (0, 40)
    assert b.after([], SPEC.services).hpa_targets == (0, 0)


def test_drainable_nodes_are_the_start_nodes() -> None:
    def drainable(nodes_at_start: float, n_nodes: int) -> list[bool]:
        b = ControlBelief(
            0.0, (2, 3), (2.0, 3.0), (0.0, 0.0), 0.0, nodes_at_start, frozenset(), (0.0,) * 2
        )
        return [b.drainable(n, n_nodes) for n in range(n_nodes + 1)]

    assert drainable(2.0, 3) == [True, True, False, False]  # 2 ready at start, of 3
    assert drainable(5.0, 3) == [True, True, True, False]  # never beyond the spec's nodes
    assert drainable(math.nan, 3) == [True, True, True, False]  # before any frame: the spec


# ---------------------------------------------------------------------------- masks


@pytest.mark.parametrize(
    ("layout", "invalid"),
    [
        ("autoscale", []),
        # rollback a (2), rollback b (5), shed level 0.0 in force (7), after the free part
        ("remediate", [2, 5, 7]),
        ("cluster_ops", [12, 15, 17]),
        ("hpa_tune", [12, 15, 17]),
    ],
)
def test_masks_are_boolean_and_select_in_torch(layout: str, invalid: list[int]) -> None:
    codec = ActionCodec(layout, SPEC)
    masks = codec.masks(ControlBelief.initial(SPEC))
    assert masks.shape == (sum(codec.nvec),) and masks.dtype == np.bool_
    assert np.flatnonzero(~masks).tolist() == invalid
    # masked logits as sb3-contrib and the bundles form them: torch.where needs a bool mask
    logits = torch.zeros(masks.shape)
    masked = torch.where(torch.as_tensor(masks), logits, torch.full_like(logits, -1e8))
    assert torch.nonzero(masked < 0).flatten().tolist() == invalid


def test_shed_level_within_1e_9_of_the_one_in_force_is_masked() -> None:
    codec = ActionCodec("remediate", SPEC)
    b = ControlBelief.initial(SPEC)
    shed = slice(7, 10)  # levels 0.0, 0.25, 0.5
    assert codec.remediation_mask(b)[shed].tolist() == [False, True, True]
    near = ControlBelief(0.0, (2, 3), (2.0, 3.0), (0.0, 0.0), 1e-9, 3.0, frozenset(), (0.0,) * 2)
    assert codec.remediation_mask(near)[shed].tolist() == [False, True, True]
    off = ControlBelief(0.0, (2, 3), (2.0, 3.0), (0.0, 0.0), 2e-9, 3.0, frozenset(), (0.0,) * 2)
    assert codec.remediation_mask(off)[shed].tolist() == [True, True, True]
    # shedding 25%: that level is masked, 0 (stop shedding) and 50% are valid
    quarter = ControlBelief(0.0, (2, 3), (2.0, 3.0), (0.0, 0.0), 0.25, 3.0, frozenset(), (0.0,) * 2)
    assert codec.remediation_mask(quarter)[shed].tolist() == [True, False, True]


@pytest.mark.parametrize(
    ("layout", "rollback_a", "restart_a"),
    [
        ("remediate", 2, 1),
        ("cluster_ops", [KEEP, KEEP, 2], [KEEP, KEEP, 1]),
        ("hpa_tune", [2, 2, 2], [2, 2, 1]),
    ],
)
def test_masked_out_names_the_masked_remediation(
    layout: str, rollback_a: object, restart_a: object
) -> None:
    codec = ActionCodec(layout, SPEC)
    masks = codec.masks(ControlBelief.initial(SPEC))  # version 0: no rollback
    assert codec.masked_out(rollback_a, masks)
    assert not codec.masked_out(restart_a, masks)


def test_masked_out_is_false_without_a_remediation() -> None:
    codec = ActionCodec("autoscale", SPEC)
    assert not codec.masked_out([0, 4], codec.masks(ControlBelief.initial(SPEC)))


# ---------------------------------------------------------------------------- decoding


def test_cluster_ops_decodes_every_service_delta_and_the_remediation() -> None:
    codec = ActionCodec("cluster_ops", SPEC)
    b = ControlBelief.initial(SPEC)  # desired (2, 3)
    up, down = SCALE_DELTAS.index(1), SCALE_DELTAS.index(-1)
    scale_up = [1 + 3 * s + 2 for s in range(2)]
    assert codec.decode([KEEP, up, 0], b) == [Scale("b", 4)]  # the last service's delta
    assert codec.decode([up, down, 0], b) == [Scale("a", 3), Scale("b", 2)]
    # a remediation's scale-up of b replaces b's Scale only; a's stays
    assert codec.decode([up, down, scale_up[1]], b) == [Scale("a", 3), Scale("b", 4)]
    assert codec.decode([down, KEEP, scale_up[0]], b) == [Scale("a", 3)]
    assert codec.decode([up, KEEP, 1], b) == [Scale("a", 3), Restart("a")]


def test_targets_error_names_the_layout() -> None:
    with pytest.raises(ValueError, match=r"^targets: layout 'cluster_ops' has no HPA targets$"):
        ActionCodec("cluster_ops", SPEC).targets([2, 2, 0])


# ---------------------------------------------------------------------------- features


def _belief(spec: ControlSpec) -> ControlBelief:
    # rollback possible everywhere; shed 0.25 in force
    n = len(spec.services)
    return ControlBelief(
        0.0,
        tuple(spec.replicas_initial),
        tuple(float(r) for r in spec.replicas_initial),
        (1.0,) * n,
        0.25,
        float(spec.n_nodes),
        frozenset(),
        (0.0,) * n,
    )


def _remediation_choices(codec: ActionCodec) -> list[object]:
    if codec.layout == "remediate":
        return list(range(codec.n_remediations))
    free = [KEEP] * len(codec.services)
    return [[*free, k] for k in range(codec.n_remediations)]


@pytest.mark.parametrize("layout", [x for x in LAYOUTS if x != "autoscale"])
def test_choice_features_of_every_remediation_are_its_encoded_actions(layout: str) -> None:
    # onehot(choice) @ feature_matrix() = the ActionEncoder features of what the remediation
    # does (unmasked, unclamped): restart, rollback and scale-up per service, shed levels, drains
    codec = ActionCodec(layout, WIDE)
    b = _belief(WIDE)
    choices = _remediation_choices(codec)
    if layout == "hpa_tune":
        choices = [[2, 2, k] for k in range(codec.n_remediations)]  # 50%: feature 0
    for k, choice in enumerate(choices):
        want = codec.action_encoder.encode(codec.remediation(k, b), b.desired)
        got = codec.choice_features(choice)
        np.testing.assert_array_equal(got, want, err_msg=f"{layout} remediation {k}")
        assert got.dtype == np.float32


@pytest.mark.parametrize("layout", ["autoscale", "cluster_ops"])
def test_choice_features_of_every_delta_are_its_encoded_scale(layout: str) -> None:
    codec = ActionCodec(layout, WIDE)
    b = _belief(WIDE)
    tail = [0] if codec.has_remediation else []
    for s in range(len(WIDE.services)):
        for k in range(len(SCALE_DELTAS)):
            deltas = [KEEP] * len(WIDE.services)
            deltas[s] = k
            want = codec.action_encoder.encode(codec.scaling(np.array(deltas), b), b.desired)
            np.testing.assert_array_equal(codec.choice_features([*deltas, *tail]), want)


def test_hpa_tune_features_hold_the_target_of_every_service() -> None:
    codec = ActionCodec("hpa_tune", WIDE)
    for s in range(len(WIDE.services)):
        for k, target in enumerate(HPA_TARGETS):
            choice = [2] * len(WIDE.services) + [0]
            choice[s] = k
            want = np.zeros(codec.action_encoder.size, dtype=np.float32)
            want[3 * s] = (50.0 - target) / 20.0
            np.testing.assert_array_equal(codec.choice_features(choice), want)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_feature_map_runs_in_torch_with_the_encoder_dtype(layout: str) -> None:
    # a world model imagines with onehot @ M in torch, next to the encoder's float32
    # features: M must be float32 too (torch does not mix float32 and float64 in a matmul)
    codec = ActionCodec(layout, WIDE)
    m = codec.feature_matrix()
    onehot = torch.zeros((1, m.shape[0]), dtype=torch.float32)
    onehot[0, 0] = 1.0
    got = onehot @ torch.as_tensor(m)
    np.testing.assert_array_equal(got[0].numpy(), m[0])
    # and the features of a choice feed a float32 torch layer as they are
    layer = torch.nn.Linear(codec.action_encoder.size, 1)
    choice = 0 if layout == "remediate" else [0] * len(codec.nvec)
    assert layer(torch.as_tensor(codec.choice_features(choice))).shape == (1,)
