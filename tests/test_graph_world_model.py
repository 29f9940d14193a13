"""The topology-free world model (``wm.arch=graph``, agents/world_model/graph.py).

Shapes and weight sharing on chain3, boutique, mesh40 and a topology no suite has;
permutation equivariance; an untrained model forecasts exactly persistence; determinism by
seed; checkpoints; a tiny ``fit-world-model`` on two topologies that then forecasts a third.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.world_model.config import WorldModelConfig
from agents.world_model.forecast import forecast_batch, forecast_origins, planned_actions
from agents.world_model.graph import BoundGraphModel, GraphWorldModel, TopologyGraph
from agents.world_model.trainer import WorldModelTrainer, load_model
from envs.gym.encoder import ActionEncoder
from envs.scenarios.suites import load_suite

TINY = {
    "arch": "graph",
    "deter": 16,
    "hidden": 16,
    "stoch": 4,
    "classes": 4,
    "gru_blocks": 1,
    "units": 16,
    "mp_rounds": 1,
}


def _cfg(**kw: object) -> WorldModelConfig:
    return WorldModelConfig(**{**TINY, **kw})


def _graphs() -> dict[str, TopologyGraph]:
    out: dict[str, TopologyGraph] = {}
    for e in load_suite("holdout").entries:
        t = e.scenario.topology
        out.setdefault(t.name, TopologyGraph.from_topology(t))
    return out


GRAPHS = _graphs()
# a topology no suite has: a star with a diamond below the hub
UNSEEN = TopologyGraph(
    ("edge", "hub", "a", "b", "c", "store"),
    ((0, 1), (1, 2), (1, 3), (1, 4), (2, 5), (3, 5)),
    "unseen6",
)


def _batch(model: BoundGraphModel, b: int, t: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random batch in the encoder's ranges (values symlog'd, a few missing)."""
    g = torch.Generator().manual_seed(seed)
    lay = model.layout
    obs = torch.zeros(b, t, lay.obs_size)
    obs[..., lay.values] = torch.randn(b, t, lay.value_size, generator=g).abs() * 2.0
    mask = (torch.rand(b, t, lay.value_size, generator=g) > 0.05).float()
    obs[..., lay.values] *= mask
    obs[..., lay.mask] = mask
    obs[..., lay.time] = torch.rand(b, t, 4, generator=g) * 2 - 1
    action = torch.zeros(b, t, model.action_size)
    action[..., 0::3] = torch.randint(-1, 2, (b, t, model.action_size // 3 + 1), generator=g)[
        ..., : action[..., 0::3].shape[-1]
    ].float()
    is_first = torch.zeros(b, t)
    is_first[:, 0] = 1.0
    return {
        "obs": obs,
        "action": action,
        "reward": torch.randn(b, t, generator=g),
        "cont": torch.ones(b, t),
        "is_first": is_first,
        "violation": (torch.rand(b, t, generator=g) > 0.8).float(),
    }


def test_topology_graph_from_schema_and_bad_edges() -> None:
    chain = GRAPHS["chain3"]
    assert chain.services == ("frontend", "api", "db") and chain.edges == ((0, 1), (1, 2))
    assert GRAPHS["mesh40"].n_services == 40 and len(GRAPHS["mesh40"].edges) == 70
    assert TopologyGraph.from_dict(chain.to_dict()) == chain
    with pytest.raises(ValueError, match="out of range or self-loops"):
        TopologyGraph(("a", "b"), ((0, 2),))
    with pytest.raises(ValueError, match="out of range or self-loops"):
        TopologyGraph(("a", "b"), ((1, 1),))


@pytest.mark.parametrize("name", ["chain3", "boutique", "mesh40", "unseen6"])
def test_same_weights_run_on_every_topology(name: str) -> None:
    torch.manual_seed(0)
    core = GraphWorldModel(_cfg(overshoot=3, overshoot_stride=2, overshoot_heads=True))
    n_params = sum(p.numel() for p in core.parameters())
    graph = UNSEEN if name == "unseen6" else GRAPHS[name]
    model = core.bind(graph)
    s = graph.n_services
    # no parameter depends on the topology: binding adds none and shares all
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert all(a is b for a, b in zip(model.core.parameters(), core.parameters(), strict=True))
    assert model.action_size == ActionEncoder(graph.services).size == 3 * s + 3
    batch = _batch(model, 2, 8)
    total, metrics, states = model.loss(batch)
    assert torch.isfinite(total) and states.deter.shape == (2, 8, s + 1, 16)
    assert states.stoch.shape == (2, 8, s + 1, 4, 4)
    total.backward()
    grads = [p.grad for p in core.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    feat = model.feat(states)
    mean, std = model.decode(feat)
    assert mean.shape == std.shape == (2, 8, model.layout.value_size)
    assert model.violation_prob(feat).shape == model.reward(feat).shape == (2, 8)
    assert set(metrics) >= {"wm/dec", "wm/over", "wm/over_abs_err", "wm/persist_abs_err"}


def test_permuting_services_permutes_outputs() -> None:
    torch.manual_seed(1)
    core = GraphWorldModel(_cfg())
    graph = GRAPHS["boutique"]
    model = core.bind(graph)
    order = list(np.random.default_rng(3).permutation(graph.n_services))
    permuted = core.bind(graph.permuted(order))
    batch = _batch(model, 2, 6, seed=4)
    s, f = graph.n_services, model.layout.n_service_features
    lay = model.layout

    def perm_values(v: torch.Tensor) -> torch.Tensor:
        svc = v[..., : s * f].unflatten(-1, (s, f))[..., order, :].flatten(-2)
        return torch.cat([svc, v[..., s * f :]], -1)

    obs = batch["obs"]
    obs_p = torch.cat(
        [perm_values(obs[..., lay.values]), obs[..., lay.time], perm_values(obs[..., lay.mask])],
        -1,
    )
    act = batch["action"]
    act_p = torch.cat(
        [act[..., : 3 * s].unflatten(-1, (s, 3))[..., order, :].flatten(-2), act[..., 3 * s :]],
        -1,
    )
    with torch.no_grad():
        carry, st = model.observe(obs, act, batch["is_first"], sample=False)
        carry_p, st_p = permuted.observe(obs_p, act_p, batch["is_first"], sample=False)
        nodes = [*order, s]  # the global node stays last
        torch.testing.assert_close(st_p.deter, st.deter[:, :, nodes], rtol=1e-5, atol=1e-5)
        mean, _ = model.decode(model.feat(st))
        mean_p, _ = permuted.decode(permuted.feat(st_p))
        torch.testing.assert_close(mean_p, perm_values(mean), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            permuted.violation_prob(permuted.feat(st_p)),
            model.violation_prob(model.feat(st)),
            rtol=1e-5,
            atol=1e-6,
        )
        roll = model.imagine(carry, act[:, :4], sample=False)
        roll_p = permuted.imagine(carry_p, act_p[:, :4], sample=False)
        torch.testing.assert_close(
            permuted.decode(permuted.feat(roll_p))[0],
            perm_values(model.decode(model.feat(roll))[0]),
            rtol=1e-5,
            atol=1e-5,
        )


@pytest.mark.parametrize("name", ["chain3", "mesh40"])
def test_untrained_model_forecasts_exactly_persistence(name: str) -> None:
    torch.manual_seed(2)
    model = GraphWorldModel(_cfg()).bind(GRAPHS[name])
    batch = _batch(model, 1, 12, seed=5)
    lay = model.layout
    with torch.no_grad():
        carry, states = model.observe(batch["obs"], batch["action"], batch["is_first"])
        # the carry continues from the last observation (the last known value where missing)
        obs, mask = batch["obs"][0, -1, lay.values], batch["obs"][0, -1, lay.mask] > 0
        assert torch.equal(carry.last[0][mask], obs[mask])
        prev = states.last[0, -2]
        assert torch.equal(carry.last[0][~mask], prev[~mask])
        roll = model.imagine(carry, batch["action"][:, :7])
        mean, _ = model.decode(model.feat(roll))
    assert torch.equal(mean[0], carry.last[0].expand(7, -1))
    # a sequence cut from the middle of an episode (no is_first) starts from its own values
    mid = {k: v[:, 3:] for k, v in batch.items()}
    assert not mid["is_first"].any()
    with torch.no_grad():
        _, st = model.observe(mid["obs"], mid["action"], mid["is_first"])
    assert torch.equal(st.base[:, 0], mid["obs"][:, 0, lay.values])
    assert torch.equal(
        st.base[:, 1:][mid["obs"][:, :-1, lay.mask] > 0],
        mid["obs"][:, :-1, lay.values][mid["obs"][:, :-1, lay.mask] > 0],
    )
    # forecast_batch: the draws scatter (observation noise, std 0.13 in symlog space before
    # training) around the last known values; their median is persistence within the
    # sampling error of 801 draws (~0.006)
    n_svc = GRAPHS[name].n_services
    sf = forecast_batch(
        model,
        batch["obs"][0].numpy(),
        batch["action"][0].numpy(),
        [11],
        np.zeros((1, 5, model.action_size), np.float32),
        n_services=n_svc,
        n_samples=801,
        seed=0,
    )
    idx = [lay.service_index(i, "rps") for i in range(n_svc)]
    last = carry.last[0, idx].double().numpy()
    med = np.log1p(np.median(sf.samples["rps"][0], axis=0))  # [H, S] symlog
    np.testing.assert_allclose(med, np.broadcast_to(last, med.shape), atol=0.04)
    assert sf.decoded["rps"].shape == (1, n_svc)


def test_one_step_forecast_is_what_the_decoder_loss_trains() -> None:
    # dec_stoch=False: the residual reads [deter, base], so the first imagined step from the
    # posterior at t decodes exactly what the posterior decoded at t + 1 (the decoder loss'
    # prediction): the one-step forecast is the trained one, whatever the latents sampled.
    # With dec_stoch=True (the earlier default) the posterior's decode reads the latent drawn
    # after seeing obs[t + 1] and the forecast cannot match it.
    for dec_stoch, scaled, same in (
        (False, False, True),
        (False, True, True),
        (True, False, False),
    ):
        torch.manual_seed(4)
        cfg = _cfg(dec_stoch=dec_stoch, dec_scaled=scaled)
        model = GraphWorldModel(cfg).bind(GRAPHS["chain3"])
        for head in (model.core.svc_dec, model.core.glob_dec):
            torch.nn.init.normal_(head.out.weight, std=0.3)  # a residual that is not zero
        batch = _batch(model, 2, 9, seed=3)
        with torch.no_grad():
            _, post = model.observe(batch["obs"], batch["action"], batch["is_first"])
            t = 5
            roll = model.imagine(post.carry(t), batch["action"][:, t + 1 : t + 2])
            one_step, _ = model.decode(model.feat(roll))
            trained, _ = model.decode(model.feat(post))
        assert torch.equal(roll.base[:, 0], post.base[:, t + 1])
        assert torch.allclose(one_step[:, 0], trained[:, t + 1], atol=1e-6) == same


def _drift_batch(
    model: BoundGraphModel, b: int, t_len: int, slope: float, seed: int
) -> dict[str, np.ndarray]:
    """Episodes whose values stay put except every service's rps, which rises by ``slope``
    (symlog units) per step from a random level; no actions."""
    g = np.random.default_rng(seed)
    lay = model.layout
    obs = np.zeros((b, t_len, lay.obs_size), np.float32)
    values = np.repeat(g.uniform(0.5, 3.0, (b, 1, lay.value_size)), t_len, 1)
    rps = [lay.service_index(i, "rps") for i in range(lay.n_services)]
    start = g.uniform(0, 40, (b, 1, 1))
    values[..., rps] += slope * (start + np.arange(t_len)[None, :, None])
    obs[..., lay.values] = values
    obs[..., lay.mask] = 1.0
    first = np.zeros((b, t_len), np.float32)
    first[:, 0] = 1.0
    return {
        "obs": obs,
        "action": np.zeros((b, t_len, model.action_size), np.float32),
        "reward": np.zeros((b, t_len), np.float32),
        "cont": np.ones((b, t_len), np.float32),
        "is_first": first,
        "violation": np.zeros((b, t_len), np.float32),
    }


@pytest.mark.parametrize("scaled", [False, True])
def test_short_fit_learns_a_drift_persistence_misses(scaled: bool) -> None:
    # A known drift of 0.05 (symlog) per step on rps: persistence is off by 0.25 five steps
    # ahead, and stays exact on the values that do not move. 150 updates of the fixed
    # objective (absolute error, residual from the deterministic state) must forecast the
    # drift: 5-step error at most a third of persistence's on rps, and no worse than
    # persistence + 0.02 on the still values.
    torch.manual_seed(0)
    cfg = _cfg(
        dec_loss="mae",
        dec_stoch=False,
        dec_scaled=scaled,
        overshoot=5,
        overshoot_stride=4,
        seq_len=24,
        lr=3e-3,
    )
    graph = TopologyGraph(("front", "back"), ((0, 1),), "pair")
    model = GraphWorldModel(cfg).bind(graph)
    trainer = WorldModelTrainer(model, seed=0)
    lay = model.layout
    for i in range(150):
        trainer.step(_drift_batch(model, 8, 24, 0.05, seed=i))
    model.eval()
    test = {k: torch.as_tensor(v) for k, v in _drift_batch(model, 16, 30, 0.05, seed=999).items()}
    with torch.no_grad():
        _, post = model.observe(test["obs"], test["action"], test["is_first"])
        roll = model.imagine(post.carry(19), test["action"][:, 20:25], sample=True)
        mean, _ = model.decode(model.feat(roll))
    truth = test["obs"][:, 24, lay.values]
    pers = test["obs"][:, 19, lay.values]
    rps = [lay.service_index(i, "rps") for i in range(2)]
    still = [j for j in range(lay.value_size) if j not in rps]
    err_m, err_p = (mean[:, -1] - truth).abs(), (pers - truth).abs()
    assert float(err_p[:, rps].mean()) == pytest.approx(0.25, abs=1e-5)
    assert float(err_m[:, rps].mean()) <= float(err_p[:, rps].mean()) / 3
    assert float(err_m[:, still].mean()) <= 0.02
    if scaled:  # the recent scale: the EMA of |one-step change| reached ~0.05 on rps, 0 else
        torch.testing.assert_close(post.scale[:, 1:], post.scale_last[:, :-1])
        sc = post.scale_last[:, 19]
        assert float(sc[:, rps].min()) > 0.04 and float(sc[:, rps].max()) <= 0.05 + 1e-6
        assert float(sc[:, still].abs().max()) < 1e-6


def test_mase_weight_of_the_decoder_error() -> None:
    # dec_mase_floor > 0: each value's error is divided by its mean one-step change in the
    # sequence (floored), then normalised to mean 1; rps moves 0.1 per step, the rest not
    graph = TopologyGraph(("front", "back"), ((0, 1),), "pair")
    model = GraphWorldModel(_cfg(dec_mase_floor=0.01)).bind(graph)
    obs = torch.as_tensor(_drift_batch(model, 2, 10, 0.1, seed=0)["obs"])
    w = model.error_weight(obs)
    rps = [model.layout.service_index(i, "rps") for i in range(2)]
    still = [j for j in range(model.layout.value_size) if j not in rps]
    torch.testing.assert_close(w.mean(-1), torch.ones(2))
    torch.testing.assert_close(w[:, rps] / w[:, still[:1]], torch.full((2, 2), 0.1))
    assert torch.equal(GraphWorldModel(_cfg()).bind(graph).error_weight(obs), torch.ones_like(w))
    with pytest.raises(ValueError, match="dec_mase_floor"):
        _cfg(dec_mase_floor=-1.0)


def _jump_batch(model: BoundGraphModel, b: int, t_len: int, seed: int) -> dict[str, np.ndarray]:
    """Step-like series: every value jumps up by 0.5 (symlog) at random steps (p = 0.15)
    and stays there; nothing tells when (no actions, no trend)."""
    batch = _drift_batch(model, b, t_len, 0.0, seed)
    g = np.random.default_rng(seed + 10_000)
    lay = model.layout
    jumps = 0.5 * (g.random((b, t_len, lay.value_size)) < 0.15)
    batch["obs"][..., lay.values] += np.cumsum(jumps, 1).astype(np.float32)
    return batch


def _one_step_ratio(dec_loss: str, dec_stoch: bool) -> float:
    torch.manual_seed(0)
    cfg = _cfg(
        dec_loss=dec_loss,
        dec_stoch=dec_stoch,
        overshoot=3,
        overshoot_stride=4,
        seq_len=16,
        lr=3e-3,
    )
    model = GraphWorldModel(cfg).bind(TopologyGraph(("only",), (), "one"))
    trainer = WorldModelTrainer(model, seed=0)
    for i in range(120):
        trainer.step(_jump_batch(model, 8, 16, seed=i))
    model.eval()
    test = {k: torch.as_tensor(v) for k, v in _jump_batch(model, 64, 24, seed=999).items()}
    lay = model.layout
    with torch.no_grad():
        _, post = model.observe(
            test["obs"][:, :20], test["action"][:, :20], test["is_first"][:, :20]
        )
        roll = model.imagine(post.carry(19), test["action"][:, 20:21])
        mean, _ = model.decode(model.feat(roll))
    truth = test["obs"][:, 20, lay.values]
    err_m = (mean[:, 0] - truth).abs().mean()
    err_p = (test["obs"][:, 19, lay.values] - truth).abs().mean()
    return float(err_m / err_p)


def test_unpredictable_jumps_keep_the_forecast_at_persistence() -> None:
    # Where the change cannot be predicted, the best median forecast is persistence. The
    # absolute-error objective (dec_loss=mae, what MASE scores) stays there; the squared
    # error trains the mean, which spreads the expected jump (0.15 x 0.5) over every step
    # and loses to persistence in absolute error by ~1.7x: the issue-17 fits' failure.
    assert _one_step_ratio("mae", False) <= 1.1
    assert _one_step_ratio("mse", True) >= 1.3


def test_determinism_by_seed_and_checkpoint_round_trip(tmp_path) -> None:
    def build(seed: int) -> WorldModelTrainer:
        torch.manual_seed(seed)
        return WorldModelTrainer(GraphWorldModel(_cfg()).bind(GRAPHS["chain3"]), seed=seed)

    a, b, c = build(0), build(0), build(1)
    batch = {k: v.numpy() for k, v in _batch(a.model, 2, 8).items()}
    ma, mb, mc = a.step(batch), b.step(batch), c.step(batch)
    assert ma["wm/loss"] == mb["wm/loss"] != mc["wm/loss"]
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    a.save(tmp_path / "ck.pt")
    loaded = load_model(tmp_path / "ck.pt")
    assert isinstance(loaded, BoundGraphModel) and loaded.graph == GRAPHS["chain3"]
    on_mesh = loaded.bind(GRAPHS["mesh40"])
    ep = _batch(on_mesh, 1, 10, seed=9)
    args = (ep["obs"][0].numpy(), ep["action"][0].numpy(), [5, 8])
    plan = np.zeros((2, 4, on_mesh.action_size), np.float32)
    one = forecast_batch(on_mesh, *args, plan, n_services=40, n_samples=4, seed=3)
    two = forecast_batch(
        a.model.bind(GRAPHS["mesh40"]).eval(), *args, plan, n_services=40, n_samples=4, seed=3
    )
    other = forecast_batch(on_mesh, *args, plan, n_services=40, n_samples=4, seed=4)
    assert one.samples["p99"].shape == (2, 4, 4, 40)
    for m in one.samples:
        np.testing.assert_array_equal(one.samples[m], two.samples[m])
    assert not np.array_equal(one.samples["rps"], other.samples["rps"])


def test_graph_config_switch_and_presets() -> None:
    flat, graph = WorldModelConfig(), WorldModelConfig(arch="graph")
    assert (flat.arch, flat.deter) == ("flat", 256)
    assert (graph.arch, graph.deter, graph.stoch, graph.units) == ("graph", 64, 8, 64)
    assert WorldModelConfig(arch="graph", size="small", deter=96).deter == 96
    with pytest.raises(ValueError, match="arch"):
        WorldModelConfig(arch="mesh")


# ------------------------------------------------------------------------------ end to end
@pytest.fixture
def composer():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from experiments import fit_world_model as fw
    from experiments.cli import CONFIG_DIR

    fw.register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield lambda name, overrides: compose(config_name=name, overrides=overrides)
    GlobalHydra.instance().clear()


def test_fit_on_two_topologies_then_forecast_a_third(composer, tmp_path) -> None:
    from agents.run_config import RunConfigError
    from agents.world_model.data import run_episode
    from agents.world_model.fit import load_fit
    from experiments.fit_world_model import fit

    out = tmp_path / "wm"
    summary = fit(
        composer(
            "fit_world_model",
            [
                "topology=chain3+boutique",
                "wm.arch=graph",
                "limit=2",
                "calib_every=2",
                "behaviours=[hpa]",
                "replicates=1",
                "updates=4",
                "log_every=2",
                "batch=2",
                "seq_len=12",
                "wm.overshoot=3",
                "every=40",
                "n_samples=4",
                "workers=1",
                "calib_behaviours=[hpa]",
                "save_data=true",
                f"out={out}",
                *[f"wm.{k}={v}" for k, v in TINY.items() if k != "arch"],
            ],
        ),
        log=None,
    )
    # one entry of each topology trains, the other calibrates
    assert summary["updates"] == 4 and summary["episodes"] == 2
    assert len(summary["calibration_split"]["entries"]) == 2
    fitted = load_fit(out)
    assert fitted.spec["topologies"] == ["chain3", "boutique"]
    assert set(fitted.spec["graphs"]) == {"chain3", "boutique"}
    assert fitted.spec["world_model"]["arch"] == "graph"
    # the calibration was fitted on both topologies' held-out entries, services folded
    assert fitted.calibration.n["rps"] > 0
    mesh = next(e for e in load_suite("holdout").entries if e.scenario.topology.name == "mesh40")
    scenario = mesh.scenario.model_copy(update={"horizon_s": 450.0})
    ep = run_episode(scenario, "hpa", 0)
    model = fitted.model_for(scenario.topology)
    origins = forecast_origins(len(ep["obs"]), 5, 10, 8)
    sf = forecast_batch(
        model,
        ep["obs"],
        ep["action"],
        origins,
        planned_actions(ep, origins, 5),
        n_services=40,
        n_samples=4,
        calibration=fitted.calibration,
    )
    assert sf.samples["p99"].shape == (origins.size, 4, 5, 40)
    for m, lo, hi in (("p99", 0.0, np.inf), ("error_rate", 0.0, 1.0)):
        assert (sf.samples[m] >= lo).all() and (sf.samples[m] <= hi).all()
    assert ((sf.p_violation >= 0) & (sf.p_violation <= 1)).all()

    # episodes= trains on saved episodes instead of collecting them (same data, same model)
    args = [
        "topology=chain3+boutique",
        "wm.arch=graph",
        "limit=2",
        "calib_every=2",
        "updates=1",
        "batch=2",
        "seq_len=12",
        "wm.overshoot=3",
        "every=40",
        "n_samples=4",
        "workers=1",
        "calib_behaviours=[hpa]",
        *[f"wm.{k}={v}" for k, v in TINY.items() if k != "arch"],
    ]
    again = fit(
        composer(
            "fit_world_model",
            [*args, f"episodes={out / 'episodes.npz'}", f"out={tmp_path / 'again'}"],
        ),
        log=None,
    )
    assert (again["episodes"], again["steps"]) == (summary["episodes"], summary["steps"])
    with pytest.raises(RunConfigError, match="no such file"):
        fit(
            composer(
                "fit_world_model",
                [*args, f"episodes={tmp_path / 'nope.npz'}", f"out={tmp_path / 'x'}"],
            ),
            log=None,
        )

    # a flat fit refuses several topologies, and another topology at forecast time
    with pytest.raises(RunConfigError, match=r"wm\.arch=graph"):
        fit(
            composer(
                "fit_world_model",
                ["topology=chain3+boutique", "updates=1", f"out={tmp_path / 'flat'}"],
            ),
            log=None,
        )


def test_flat_fit_refuses_another_topology(tmp_path) -> None:
    from agents.run_config import RunConfigError
    from agents.world_model.fit import FittedModel

    fitted = FittedModel(
        tmp_path,
        {"services": ["frontend", "api", "db"], "topology": "chain3"},
        None,
        None,
        None,
        None,
        None,  # type: ignore[arg-type]
    )
    mesh = next(e for e in load_suite("holdout").entries if e.scenario.topology.name == "mesh40")
    with pytest.raises(
        RunConfigError, match=r"cannot forecast mesh40; fit one with wm\.arch=graph"
    ):
        fitted.model_for(mesh.scenario.topology)


def _cell(e: dict) -> str:
    return f"{e['skill']:+.3f} [{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}]"


def doc_rows(path: str) -> dict[str, str]:
    """Topology -> the table cells docs/world_model.md quotes from a wm_graph_skill result."""
    import json
    from pathlib import Path

    summary = json.loads(Path(path).read_text())["summary"]
    names = ("p99_last", "rps_last", "error_rate_last", "replicas_ready_last", "violation")
    return {topo: " | ".join(_cell(res[n]) for n in names) + " |" for topo, res in summary.items()}


@pytest.mark.parametrize("name", ["wm_graph_validation", "wm_graph_holdout"])
def test_docs_quote_the_graph_model_figures(name: str) -> None:
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    text = (repo / "docs" / "world_model.md").read_text()
    for topo, row in doc_rows(str(repo / "experiments" / "results" / f"{name}.json")).items():
        assert f"| {topo} | {row}" in text, f"docs/world_model.md should quote {topo}: {row}"


def test_docs_quote_the_training_curve() -> None:
    # docs/world_model.md quotes the last point of the kept configuration as
    # `python -m experiments.wm_graph_curve report` wrote it
    import json
    from pathlib import Path

    from experiments.wm_graph_curve import markdown

    repo = Path(__file__).resolve().parent.parent
    res = json.loads((repo / "experiments" / "results" / "wm_graph_curve.json").read_text())
    kept = [r for r in res["rows"] if r["label"] == "mae_det_scaled" and len(r["seeds"]) >= 2]
    assert kept, "the curve should hold the kept configuration with >= 2 seeds"
    last = max(kept, key=lambda r: min(r["updates"]))
    lines = markdown([last], res["meta"]).splitlines()
    text = (repo / "docs" / "world_model.md").read_text()
    rows = [ln for ln in lines if ln.startswith("| mae_det_scaled |")]
    assert len(rows) == 4  # two topology tables, two horizon rows
    for ln in rows:
        assert ln in text, f"docs/world_model.md should quote: {ln}"
