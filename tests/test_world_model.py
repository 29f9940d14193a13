"""World model (agents/world_model): shapes at the seams, numerics, training behaviour."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.world_model import (
    LOSS_TERMS,
    RSSM,
    Carry,
    ObsLayout,
    States,
    TwoHot,
    WorldModel,
    WorldModelConfig,
    kl_categorical,
    kl_free_bits,
    symexp,
    symlog,
    unimix_logits,
    unimix_probs,
)
from envs.gym.encoder import ObsEncoder

torch.set_num_threads(1)

S, A = 3, 12  # 3 services: O = 2 * (3 * 14 + 5) + 4 = 98, A = 3 * 3 + 3
TINY = WorldModelConfig.preset(
    "tiny", deter=64, hidden=32, stoch=4, classes=8, gru_blocks=4, units=32
)


def make_model(cfg: WorldModelConfig = TINY, seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    return WorldModel(ObsLayout(S), A, cfg)


def make_batch(
    b: int, t: int, seed: int = 0, layout: ObsLayout | None = None
) -> dict[str, np.ndarray]:
    lay = layout or ObsLayout(S)
    rng = np.random.default_rng(seed)
    obs = np.zeros((b, t, lay.obs_size), np.float32)
    obs[..., lay.values] = rng.normal(size=(b, t, lay.value_size))
    obs[..., lay.time] = rng.uniform(-1, 1, size=(b, t, lay.time_size))
    obs[..., lay.mask] = rng.uniform(size=(b, t, lay.value_size)) < 0.9
    obs[..., lay.values] *= obs[..., lay.mask]
    is_first = np.zeros((b, t), np.float32)
    is_first[:, 0] = 1.0
    return {
        "obs": obs,
        "action": rng.normal(size=(b, t, A)).astype(np.float32),
        "reward": rng.normal(size=(b, t)).astype(np.float32),
        "cont": np.ones((b, t), np.float32),
        "is_first": is_first,
        "violation": (rng.uniform(size=(b, t)) < 0.3).astype(np.float32),
    }


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in batch.items()}


# --------------------------------------------------------------------------- config, layout


def test_presets_and_validation() -> None:
    tiny, small = WorldModelConfig.preset("tiny"), WorldModelConfig.preset("small")
    assert (tiny.deter, tiny.hidden, tiny.stoch, tiny.classes, tiny.gru_blocks, tiny.units) == (
        256,
        128,
        16,
        16,
        4,
        128,
    )
    assert (small.deter, small.hidden, small.stoch, small.classes, small.gru_blocks) == (
        512,
        256,
        32,
        16,
        8,
    )
    assert small.units == 256 and tiny.unimix == 0.01 and tiny.free_nats == 1.0
    assert (tiny.kl_dyn, tiny.kl_rep, tiny.bins, tiny.lr, tiny.eps, tiny.grad_clip) == (
        1.0,
        0.1,
        255,
        1e-4,
        1e-8,
        100.0,
    )
    assert (tiny.batch, tiny.seq_len) == (16, 64)
    assert WorldModelConfig.preset("small", deter=1024).deter == 1024
    with pytest.raises(ValueError, match="extra"):
        WorldModelConfig(detr=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="multiple of gru_blocks"):
        WorldModelConfig(deter=100, gru_blocks=8)
    with pytest.raises(ValueError, match="size"):
        WorldModelConfig.preset("huge")


def test_obs_layout_matches_encoder() -> None:
    enc = ObsEncoder(("a", "b", "c"))
    lay = ObsLayout.from_encoder(enc)
    assert lay.obs_size == enc.size == 98 and lay.value_size == 47
    assert (lay.values, lay.time, lay.mask) == (slice(0, 47), slice(47, 51), slice(51, 98))
    assert lay.service_index(1, "p99") == 14 + 3
    assert lay.cluster_index("nodes_ready") == 42
    assert ObsLayout(11).obs_size == 2 * (11 * 14 + 5) + 4 == 322


# --------------------------------------------------------------------------- numerics


def test_symlog_symexp_round_trip() -> None:
    x = torch.tensor([-1e6, -3.5, -1.0, 0.0, 1e-4, 2.0, 1e8])
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-5)
    assert symlog(torch.tensor(math.e - 1)).item() == pytest.approx(1.0)
    assert symlog(torch.tensor(-(math.e - 1))).item() == pytest.approx(-1.0)


def test_twohot_round_trip_and_loss() -> None:
    th = TwoHot(255, 20.0)
    assert th.bins[127].item() == 0.0
    x = torch.tensor([0.0, 0.3, -0.3, 1.0, -7.25, 123.4, -5e4, 1e7])
    probs = th.encode(x)
    assert probs.shape == (8, 255)
    assert torch.allclose(probs.sum(-1), torch.ones(8))
    assert ((probs > 0).sum(-1) <= 2).all()
    assert torch.allclose(th.mean_probs(probs), x, rtol=1e-4, atol=1e-5)
    # mean() of logits = log(two-hot) gives the value back too
    assert torch.allclose(th.mean(torch.log(probs)), x, rtol=1e-4, atol=1e-5)
    # out of range: clipped to the outer bucket, symexp(+-20)
    edge = float(symexp(torch.tensor(20.0)))
    out = th.mean_probs(th.encode(torch.tensor([1e12, -1e12])))
    assert out.tolist() == pytest.approx([edge, -edge], rel=1e-5)
    # uniform logits predict exactly zero (symmetric sum)
    assert th.mean(torch.zeros(255)).item() == 0.0
    # loss = cross-entropy against the two-hot target
    logits = torch.randn(8, 255)
    ce = -(probs * torch.log_softmax(logits, -1)).sum(-1)
    assert torch.allclose(th.loss(logits, x), ce)


def test_unimix_mixes_exactly_one_percent() -> None:
    logits = torch.tensor([[100.0, 0.0, 0.0, 0.0]])
    p = unimix_probs(logits, 0.01)
    assert p[0, 1:].tolist() == pytest.approx([0.0025] * 3, abs=1e-9)
    assert p[0, 0].item() == pytest.approx(0.99 + 0.0025)
    assert torch.allclose(unimix_logits(logits, 0.01).exp(), p)
    q = unimix_probs(torch.randn(5, 7, 16), 0.01)
    assert torch.allclose(q.sum(-1), torch.ones(5, 7))
    assert (q >= 0.01 / 16 - 1e-9).all()


def test_kl_free_bits_by_hand() -> None:
    # two latents of 2 classes: post (0.9, 0.1) and (0.5, 0.5); prior (0.5, 0.5) for both
    post = torch.log(torch.tensor([[0.9, 0.1], [0.5, 0.5]]))
    prior = torch.zeros(2, 2)
    kl1 = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # 0.368
    assert kl_categorical(post, prior).item() == pytest.approx(kl1 + 0.0, rel=1e-5)
    assert kl_free_bits(post, prior, 1.0).item() == pytest.approx(1.0)  # clipped at 1 nat
    assert kl_free_bits(post, prior, 0.1).item() == pytest.approx(kl1, rel=1e-5)
    # the clip acts per step after summing over latents: 3 latents of 0.368 = 1.105 > 1
    post3 = torch.log(torch.tensor([[0.9, 0.1]] * 3))
    assert kl_free_bits(post3, torch.zeros(3, 2), 1.0).item() == pytest.approx(3 * kl1, rel=1e-5)
    # batch axes are kept
    assert kl_free_bits(torch.randn(4, 5, 3, 6), torch.randn(4, 5, 3, 6), 1.0).shape == (4, 5)


# --------------------------------------------------------------------------- shapes at the seams


def test_shapes_at_the_seams() -> None:
    model = make_model()
    cfg = TINY
    b, t, h = 2, 5, 3
    batch = to_torch(make_batch(b, t))
    d, k, c = cfg.deter, cfg.stoch, cfg.classes
    assert model.embed(batch["obs"]).shape == (b, t, cfg.units)
    carry0 = model.initial(b)
    assert isinstance(carry0, Carry)
    assert carry0.deter.shape == (b, d) and carry0.stoch.shape == (b, k, c)
    carry, states = model.observe(batch["obs"], batch["action"], batch["is_first"], carry0)
    assert isinstance(states, States) and states.shape == (b, t)
    assert states.deter.shape == (b, t, d) and states.stoch.shape == (b, t, k, c)
    assert states.logits.shape == (b, t, k, c)
    assert states.prior_logits is not None and states.prior_logits.shape == (b, t, k, c)
    assert torch.equal(carry.deter, states.deter[:, -1])
    assert torch.allclose(states.stoch.sum(-1), torch.ones(b, t, k))  # one-hot values
    assert states.carry(2).deter.shape == (b, d)
    flat = states.flatten()
    assert flat.deter.shape == (b * t, d) and flat.stoch.shape == (b * t, k, c)
    assert torch.equal(flat.deter[1 * t + 2], states.deter[1, 2])

    feat = model.feat(states)
    assert feat.shape == (b, t, cfg.feat_size) and model.feat(carry).shape == (b, cfg.feat_size)
    mean, std = model.decode(feat)
    assert mean.shape == std.shape == (b, t, model.layout.value_size)
    assert (std >= cfg.min_std).all() and (std <= cfg.max_std).all()
    assert model.reward(feat).shape == (b, t)
    assert torch.equal(model.reward(feat), torch.zeros(b, t))  # zero-initialised output layer
    assert model.cont_prob(feat).shape == model.violation_prob(feat).shape == (b, t)

    nxt = model.img_step(carry, torch.zeros(b, A))
    assert nxt.deter.shape == (b, d) and nxt.stoch.shape == (b, k, c)
    img = model.imagine(carry, torch.zeros(b, h, A))
    assert img.deter.shape == (b, h, d) and img.logits.shape == (b, h, k, c)
    assert img.prior_logits is None
    big = model.imagine(flat, torch.zeros(b * t, h, A))
    assert big.shape == (b * t, h)

    loss, metrics, st = model.loss(batch)
    assert loss.shape == () and torch.isfinite(loss)
    for term in ("dec", "rew", "cont", "viol", "dyn", "rep", "loss"):
        assert f"wm/{term}" in metrics
    assert metrics["wm/dyn"] >= 1.0 and metrics["wm/rep"] >= 1.0  # free bits
    assert st.shape == (b, t)


def test_fused_observe_equals_step_by_step() -> None:
    """observe (fused, batched) gives the same states as obs_step in a loop, resets included."""
    model = make_model(
        WorldModelConfig.preset(
            "tiny", deter=64, hidden=32, stoch=4, classes=8, gru_blocks=4, units=32, dyn_layers=2
        )
    )
    b, t = 3, 6
    batch = to_torch(make_batch(b, t, seed=1))
    batch["is_first"][1, 3] = 1.0  # an episode starts inside row 1
    gen = torch.Generator().manual_seed(5)
    carry0 = Carry(torch.randn(b, 64), model.initial(b).stoch)
    _, states = model.observe(
        batch["obs"], batch["action"], batch["is_first"], carry0, sample=False
    )
    carry = carry0
    embed = model.embed(batch["obs"])
    for i in range(t):
        carry, logits = model.rssm.obs_step(
            carry, batch["action"][:, i], embed[:, i], batch["is_first"][:, i], sample=False
        )
        assert torch.allclose(carry.deter, states.deter[:, i], atol=1e-5)
        assert torch.allclose(logits, states.logits[:, i], atol=1e-5)
        assert torch.equal(carry.stoch, states.stoch[:, i])
    # a reset makes the state independent of the history before it
    other = dict(batch)
    other["obs"] = batch["obs"].clone()
    other["obs"][1, :3] += 1.0
    _, s2 = model.observe(other["obs"], other["action"], other["is_first"], carry0, sample=False)
    assert torch.allclose(s2.deter[1, 3:], states.deter[1, 3:], atol=1e-6)
    assert not torch.allclose(s2.deter[1, :3], states.deter[1, :3])
    del gen


@pytest.mark.parametrize(("dyn_layers", "blocks"), [(1, 4), (2, 2), (0, 1)])
def test_fused_observe_gradients_match_autograd(dyn_layers: int, blocks: int) -> None:
    """The hand-written backward through time equals autograd through obs_step (float64)."""
    cfg = WorldModelConfig.preset(
        "tiny",
        deter=16,
        hidden=8,
        stoch=3,
        classes=4,
        gru_blocks=blocks,
        units=8,
        dyn_layers=dyn_layers,
    )
    model = make_model(cfg).double()
    b, t = 3, 5
    batch = {k: v.double() for k, v in to_torch(make_batch(b, t, seed=2)).items()}
    batch["is_first"][2, 2] = 1.0
    carry0 = Carry(torch.randn(b, 16, dtype=torch.float64), model.initial(b).stoch)
    carry0.stoch[:, :, 0] = 1.0
    wd, ws, wl = (
        torch.randn(b, t, *shape, dtype=torch.float64) for shape in ((16,), (3, 4), (3, 4))
    )

    def objective(states: States) -> torch.Tensor:
        return (
            (states.deter * wd).sum()
            + (states.stoch * ws).sum()
            + (states.logits * wl).sum()
            + (states.deter[:, -1] ** 2).sum()
            + states.logits.square().sum()
        )

    params = dict(model.named_parameters())
    _, fused = model.observe(batch["obs"], batch["action"], batch["is_first"], carry0, sample=False)
    fused = States(fused.deter, fused.stoch, fused.logits)
    g_fused = torch.autograd.grad(objective(fused), list(params.values()), allow_unused=True)

    carry, embed = carry0, model.embed(batch["obs"])
    deters, stochs, logits = [], [], []
    for i in range(t):
        carry, lg = model.rssm.obs_step(
            carry, batch["action"][:, i], embed[:, i], batch["is_first"][:, i], sample=False
        )
        deters.append(carry.deter)
        stochs.append(carry.stoch)
        logits.append(lg)
    plain = States(torch.stack(deters, 1), torch.stack(stochs, 1), torch.stack(logits, 1))
    assert torch.equal(plain.stoch, fused.stoch)
    g_plain = torch.autograd.grad(objective(plain), list(params.values()), allow_unused=True)
    checked = 0
    for name, a, p in zip(params, g_fused, g_plain, strict=True):
        if p is None:  # not on this path (prior, decoder, heads)
            assert a is None or not a.any(), name
            continue
        assert a is not None, name
        assert torch.allclose(a, p, rtol=1e-7, atol=1e-9), name
        checked += 1
    assert checked >= 12


def test_sampling_is_one_hot_with_straight_through_and_seeded() -> None:
    rssm = RSSM(8, A, TINY)
    logits = torch.randn(2000, 1, 8, requires_grad=True)
    draw = rssm.sample(logits, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draw.detach().sum(-1), torch.ones(2000, 1))
    assert set(draw.detach().unique().tolist()) <= {0.0, 1.0}
    # frequencies follow the unimix probabilities
    freq = draw.detach().mean(0)[0]
    assert torch.allclose(freq, unimix_probs(logits.detach(), 0.01).mean(0)[0], atol=0.05)
    (draw * torch.arange(8.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    again = rssm.sample(logits, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draw, again)


def test_block_gru_with_one_block_is_a_dense_gru() -> None:
    from agents.world_model.nets import BlockGRU, BlockLinear

    lin = BlockLinear(8, 12, 4)
    x = torch.randn(5, 8)
    assert torch.allclose(lin(x), x @ lin.dense_weight() + lin.bias, atol=1e-6)
    w = lin.dense_weight()
    assert w[0:2, 3:].abs().sum() == 0  # off-diagonal blocks are zero
    gru = BlockGRU(6, 8, 1, dyn_layers=0)
    assert gru.in_h.dense_weight().shape == (8, 24)
    out = gru(torch.randn(5, 6), torch.zeros(5, 8))
    assert out.shape == (5, 8) and out.abs().max() < 1.0


# --------------------------------------------------------------------------- training


def test_overfits_two_fixed_sequences() -> None:
    """Two fixed random sequences of 16 steps: after 150 updates (lr 1e-2) the decoder's
    Gaussian NLL per observed value falls from ~1.7 to below 0 (fitting only the values'
    N(0, 1) marginal cannot go below 1.42), and the violation head memorises random labels."""
    from agents.world_model.trainer import WorldModelTrainer

    cfg = TINY.model_copy(update={"lr": 1e-2})
    trainer = WorldModelTrainer(make_model(cfg), cfg, seed=0)
    batch = make_batch(2, 16, seed=3)
    first = trainer.step(batch)
    for _ in range(149):
        last = trainer.step(batch)
    assert first["wm/dec_nll_per_value"] > 1.4
    assert last["wm/dec_nll_per_value"] < 0.0
    assert last["wm/viol"] < 0.05
    assert last["wm/loss"] < first["wm/loss"] - 50


def test_same_seed_same_losses() -> None:
    from agents.world_model.trainer import WorldModelTrainer

    def run(seed: int) -> list[float]:
        trainer = WorldModelTrainer(make_model(seed=seed), TINY, seed=seed)
        return [trainer.step(make_batch(2, 8, seed=i))["wm/loss"] for i in range(3)]

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_step_with_states_hands_back_the_posterior() -> None:
    """step_with_states: the same update as step, plus the loss's posterior (detached)."""
    from agents.world_model.trainer import WorldModelTrainer

    a = WorldModelTrainer(make_model(seed=0), TINY, seed=0)
    b = WorldModelTrainer(make_model(seed=0), TINY, seed=0)
    batch = make_batch(2, 8, seed=4)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        _, _, expected = b.model.loss_terms(
            {k: torch.as_tensor(v, dtype=torch.float32) for k, v in batch.items()}, gen
        )
    metrics, states = a.step_with_states(batch)
    assert metrics == b.step(batch)
    assert states.shape == (2, 8) and not states.deter.requires_grad
    assert torch.equal(states.deter, expected.deter)
    assert torch.equal(states.stoch, expected.stoch)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_nan_guard_on_poisoned_batch() -> None:
    from agents.world_model.trainer import NonFiniteError, WorldModelTrainer

    trainer = WorldModelTrainer(make_model(), TINY, seed=0)
    trainer.step(make_batch(2, 8))
    before, opt_before = _weights(trainer.model), trainer.optimizer.state_dict()["state"][0]
    exp_avg = opt_before["exp_avg"].clone()
    bad = make_batch(2, 8, seed=1)
    bad["obs"][1, 4, 7] = np.nan
    with pytest.raises(NonFiniteError, match=r"at step 1") as err:
        trainer.step(bad)
    e = err.value
    assert "dec" in e.terms and e.step == 1
    assert e.batch_stats["obs"]["nan"] == 1 and e.batch_stats["reward"]["nan"] == 0
    assert "obs: min" in str(e) and "nan 1" in str(e)
    after = _weights(trainer.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(trainer.optimizer.state_dict()["state"][0]["exp_avg"], exp_avg)
    assert trainer.steps == 1
    trainer.step(make_batch(2, 8, seed=2))  # still trains afterwards
    assert trainer.steps == 2


def test_nan_guard_on_infinite_loss_names_the_term() -> None:
    """A huge but finite observed value (1e30; the ObsEncoder clips at 100) makes only the
    decoder NLL infinite: the error names ``dec`` (and the total) and nothing moves."""
    from agents.world_model.trainer import NonFiniteError, WorldModelTrainer

    trainer = WorldModelTrainer(make_model(), TINY, seed=0)
    trainer.step(make_batch(2, 8))
    before = _weights(trainer.model)
    bad = make_batch(2, 8, seed=1)
    bad["obs"][0, 3, 0] = 1e30
    bad["obs"][0, 3, ObsLayout(S).mask.start] = 1.0
    with pytest.raises(NonFiniteError, match="non-finite world-model dec, loss at step 1") as err:
        trainer.step(bad)
    assert err.value.terms == ["dec", "loss"]
    assert err.value.values["dec"] == float("inf")
    assert err.value.batch_stats["obs"]["max"] == pytest.approx(1e30)
    assert all(torch.equal(before[k], v) for k, v in _weights(trainer.model).items())
    assert trainer.steps == 1


def test_nan_guard_on_gradient_norm() -> None:
    from agents.world_model.trainer import NonFiniteError, WorldModelTrainer

    trainer = WorldModelTrainer(make_model(), TINY, seed=0)
    before = _weights(trainer.model)
    w = trainer.model.encoder.layers[0].linear.weight
    w.register_hook(lambda g: g * float("inf"))
    with pytest.raises(NonFiniteError, match="grad_norm at step 0"):
        trainer.step(make_batch(2, 8))
    assert all(torch.equal(before[k], v) for k, v in _weights(trainer.model).items())
    assert all(p.grad is None for p in trainer.model.parameters())
    assert not trainer.optimizer.state


def _episodes(n: int, length: int, seed: int, ep0: int = 0) -> list[dict[str, np.ndarray]]:
    eps = []
    for i in range(n):
        batch = make_batch(1, length, seed=seed + i)
        ep = {k: v[0] for k, v in batch.items()}
        ep["ep"] = np.full(length, ep0 + i, np.int64)  # marker to check the invariant
        eps.append(ep)
    return eps


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    """k + k steps with a save/load in between (trainer and replay) == 2k steps, bit for bit."""
    from agents.world_model.replay import Replay
    from agents.world_model.trainer import WorldModelTrainer, load_model

    k = 3

    def fresh() -> tuple[WorldModelTrainer, Replay]:
        replay = Replay(capacity=200, seq_len=8, seed=7)
        for ep in _episodes(3, 30, seed=0):
            replay.add(ep)
        return WorldModelTrainer(make_model(seed=1), TINY, seed=2), replay

    trainer, replay = fresh()
    straight = [trainer.step(replay.sample(2))["wm/loss"] for _ in range(2 * k)]
    weights = _weights(trainer.model)

    trainer, replay = fresh()
    resumed = [trainer.step(replay.sample(2))["wm/loss"] for _ in range(k)]
    trainer.save(tmp_path / "wm.pt")
    replay.save(tmp_path / "replay.npz")
    for _ in range(2):  # diverge, to show that load() restores everything
        trainer.step(replay.sample(2))
    torch.rand(3)

    trainer2 = WorldModelTrainer(make_model(seed=99), TINY, seed=99)
    trainer2.load(tmp_path / "wm.pt")
    replay2 = Replay.from_file(tmp_path / "replay.npz")
    assert trainer2.steps == k and len(replay2) == 90
    resumed += [trainer2.step(replay2.sample(2))["wm/loss"] for _ in range(k)]
    assert resumed == straight
    after = _weights(trainer2.model)
    assert all(torch.equal(weights[n], after[n]) for n in weights)
    # the checkpoint holds tensors and primitives only and rebuilds the model alone
    state = torch.load(tmp_path / "wm.pt", weights_only=True)
    assert state["steps"] == k
    model = load_model(tmp_path / "wm.pt")
    assert model.cfg == TINY and model.layout == ObsLayout(S)


def test_checkpoint_refuses_another_shape(tmp_path: Path) -> None:
    from agents.world_model.trainer import WorldModelTrainer

    WorldModelTrainer(make_model(), TINY).save(tmp_path / "wm.pt")
    other = TINY.model_copy(update={"deter": 32})
    with pytest.raises(ValueError, match="deter"):
        WorldModelTrainer(make_model(other), other).load(tmp_path / "wm.pt")


# --------------------------------------------------------------------------- replay


@pytest.mark.parametrize("cross", [False, True])
def test_replay_boundaries_and_seeding(cross: bool) -> None:
    from agents.world_model.replay import Replay

    def filled(seed: int) -> Replay:
        replay = Replay(capacity=100, seq_len=10, seed=seed, cross_episodes=cross)
        lengths = [25, 6, 40, 12, 30]  # 113 steps: the first episode is dropped
        for i, n in enumerate(lengths):
            replay.add(_episodes(1, n, seed=10 * i, ep0=i)[0])
        return replay

    replay = filled(3)
    assert len(replay) == 6 + 40 + 12 + 30 and replay.num_episodes == 4
    batch = replay.sample(500)
    assert batch["obs"].shape == (500, 10, ObsLayout(S).obs_size)
    assert batch["is_first"].shape == batch["ep"].shape == (500, 10)
    ep = batch["ep"]
    assert 0 not in ep  # evicted
    changes = ep[:, 1:] != ep[:, :-1]
    # a sequence crosses into another episode only where that episode's first row is
    assert (batch["is_first"][:, 1:][changes] == 1).all()
    assert (np.diff(ep, axis=1) >= 0).all()  # in the order they were added
    if cross:
        assert changes.any()  # the 6-step episode can only be reached by crossing
        assert 1 in ep
    else:
        assert not changes.any() and 1 not in ep  # too short to hold a sequence
        assert (batch["is_first"][:, 1:] == 0).all()
    # rows are consecutive rows of the stored episodes
    for b in range(20):
        for t in range(10):
            e = replay.episodes[int(ep[b, t]) - 1]
            assert np.any(np.all(e["obs"] == batch["obs"][b, t], axis=1))
    # seeded: same seed, same sequences; another seed, others
    again = filled(3).sample(500)
    assert all(np.array_equal(batch[k], again[k]) for k in batch)
    assert not np.array_equal(filled(4).sample(500)["obs"], batch["obs"])


def test_replay_state_round_trip_and_checks(tmp_path: Path) -> None:
    from agents.world_model.replay import Replay

    replay = Replay(capacity=50, seq_len=5, seed=1)
    for ep in _episodes(2, 20, seed=0):
        replay.add(ep)
    replay.sample(3)
    replay.save(tmp_path / "r.npz")
    copy = Replay.from_file(tmp_path / "r.npz")
    a, b = replay.sample(4), copy.sample(4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    bad = _episodes(1, 10, seed=5)[0]
    bad["is_first"][0] = 0.0
    with pytest.raises(ValueError, match="is_first"):
        replay.add(bad)
    with pytest.raises(KeyError, match="violation"):
        replay.add({k: v for k, v in _episodes(1, 10, seed=5)[0].items() if k != "violation"})
    with pytest.raises(ValueError, match="cross_episodes"):
        short = Replay(capacity=50, seq_len=30, seed=0)
        short.add(_episodes(1, 10, seed=0)[0])
        short.sample(1)


# --------------------------------------------------------------------------- bench


def test_bench_world_model_quick(tmp_path: Path) -> None:
    from experiments import bench

    report = bench.bench(
        {
            "suite": "world_model",
            "quick": True,
            "results_dir": str(tmp_path),
            "world_model": {"sizes": ["tiny"], "quick": {"batch": 2, "seq_len": 4}},
        },
        log=None,
    )
    figs = report["figures"]
    assert figs["ours_updates_per_s"] > 0 and figs["reference_updates_per_s"] > 0
    assert figs["ours_env_steps_per_s"] == pytest.approx(8 * figs["ours_updates_per_s"])
    assert figs["wall_speedup"] == pytest.approx(
        figs["ours_updates_per_s"] / figs["reference_updates_per_s"]
    )
    # the headline: the median of the rounds' CPU-time ratios, their range beside it
    rounds = report["details"]["tiny"]["round_cpu_speedup"]
    cpu = report["details"]["tiny"]["cpu_s"]
    assert len(rounds) == 2 and len(cpu["ours"]) == len(cpu["reference"]) == 2 * 2
    first = float(np.median(cpu["reference"][:2]) / np.median(cpu["ours"][:2]))
    assert rounds[0] == pytest.approx(first)
    assert figs["cpu_speedup"] == pytest.approx(float(np.median(rounds)))
    assert (figs["cpu_speedup_min"], figs["cpu_speedup_max"]) == (min(rounds), max(rounds))
    assert "speedup" not in figs and report["targets"] == {}  # quick runs have no target
    assert report["details"]["obs_size"] == 322 and report["details"]["action_size"] == 36
    assert report["details"]["tiny"]["ours_params"] > 0
    assert (tmp_path / "world_model_bench_quick.md").exists()
    with pytest.raises(bench.ConfigError, match="sizes"):
        bench.bench({"suite": "world_model", "world_model": {"sizes": ["huge"]}}, log=None)


# --------------------------------------------------------------------------- overshooting

OVER = TINY.model_copy(update={"overshoot": 5, "overshoot_stride": 3})


def _over_cfg(**kw: object) -> WorldModelConfig:
    return WorldModelConfig.model_validate({**TINY.model_dump(), "overshoot": 5, **kw})


def test_overshoot_config_validation() -> None:
    assert TINY.overshoot == 0  # off by default: the DreamerV3 loss is unchanged
    assert _over_cfg().overshoot_stride == 8 and _over_cfg().overshoot_scale == 1.0
    with pytest.raises(ValueError, match="seq_len"):
        _over_cfg(overshoot=64)
    with pytest.raises(ValueError, match="overshoot_stride"):
        _over_cfg(overshoot_stride=0)
    with pytest.raises(ValueError, match="overshoot"):
        _over_cfg(overshoot=-1)
    with pytest.raises(ValueError, match="extra"):
        _over_cfg(overshot=3)


def test_overshoot_off_leaves_the_loss_bit_identical() -> None:
    """overshoot=0: the same six terms, the same loss bit for bit, whatever the other
    overshoot_* settings say, and the generator is not drawn from further."""
    batch = to_torch(make_batch(3, 12, seed=4))
    other = TINY.model_copy(
        update={"overshoot_stride": 2, "overshoot_heads": True, "overshoot_kl": 1.0}
    )
    results = []
    for cfg in (TINY, other):
        gen = torch.Generator().manual_seed(5)
        loss, metrics, _ = make_model(cfg).loss(batch, gen)
        results.append((loss, metrics, gen.get_state()))
        assert not any("over" in k for k in metrics)
        assert set(make_model(cfg).scales()) == set(LOSS_TERMS)
    (l0, m0, g0), (l1, m1, g1) = results
    assert torch.equal(l0, l1) and m0 == m1 and torch.equal(g0, g1)


def test_overshoot_term_by_hand() -> None:
    """The ``over`` term equals the masked NLL of the rollouts computed with explicit loops."""
    from agents.world_model.math import gaussian_nll

    b, t, h = 2, 14, 5
    model = make_model(OVER)
    batch = to_torch(make_batch(b, t, seed=6))
    batch["is_first"][1, 10] = 1.0  # an episode boundary inside row 1's last window
    starts = model.overshoot_starts(t)
    assert starts.tolist() == [2, 5, 8]  # counted back from t - 1 - h = 8

    gen = torch.Generator().manual_seed(3)
    terms, metrics, _ = model.loss_terms(batch, gen)
    assert set(terms) == {*LOSS_TERMS, "over"}
    assert metrics["wm/over_dec"] == pytest.approx(float(terms["over"].detach()))

    gen = torch.Generator().manual_seed(3)
    _, states = model.observe(batch["obs"], batch["action"], batch["is_first"], generator=gen)
    carry = Carry(
        states.deter[:, starts].reshape(-1, OVER.deter),
        states.stoch[:, starts].reshape(-1, OVER.stoch, OVER.classes),
    )
    acts = torch.stack([batch["action"][:, s + 1 : s + 1 + h] for s in starts.tolist()], 1)
    rollout = model.imagine(carry, acts.reshape(-1, h, A), generator=gen)
    mean, std = model.decode(model.feat(rollout))
    lay = model.layout
    total, count = 0.0, 0
    for bi in range(b):
        for j, s in enumerate(starts.tolist()):
            for k in range(h):
                pos = s + 1 + k
                if batch["is_first"][bi, s + 1 : pos + 1].any():
                    continue  # this step (or an earlier one of the window) starts an episode
                row = bi * len(starts) + j
                obs = batch["obs"][bi, pos]
                nll = gaussian_nll(obs[lay.values], mean[row, k], std[row, k]) * obs[lay.mask]
                total += float(nll.sum())
                count += 1
    assert count == 2 * 3 * 5 - 5  # row 1, start 8: steps 10..13 dropped; start 5: step 10
    assert float(terms["over"].detach()) == pytest.approx(total / count, rel=1e-5)


def test_overshoot_ignores_targets_after_an_episode_boundary() -> None:
    """One rollout (start 6, steps 7..11) with ``is_first`` at 9: changing the observations,
    rewards and violations from step 9 on leaves the term unchanged; changing step 8 does not."""
    cfg = _over_cfg(overshoot_heads=True, overshoot_kl=1.0)
    model = make_model(cfg)
    assert model.overshoot_starts(12).tolist() == [6]
    base = make_batch(2, 12, seed=8)
    base["is_first"][:, 9] = 1.0

    def over(batch: dict[str, np.ndarray]) -> float:
        gen = torch.Generator().manual_seed(1)
        return float(model.loss_terms(to_torch(batch), gen)[0]["over"].detach())

    ref = over(base)
    assert math.isfinite(ref)
    after = {k: v.copy() for k, v in base.items()}
    rng = np.random.default_rng(0)
    after["obs"][:, 9:] = rng.normal(size=after["obs"][:, 9:].shape) * 3
    after["reward"][:, 9:] = 100.0
    after["violation"][:, 9:] = 1.0 - after["violation"][:, 9:]
    assert over(after) == ref
    before = {k: v.copy() for k, v in base.items()}
    before["obs"][:, 8, :5] += 1.0
    assert over(before) != ref


def test_overshoot_trains_the_start_states_unless_detached() -> None:
    batch = to_torch(make_batch(2, 10, seed=2))
    grads = {}
    for detach in (False, True):
        model = make_model(_over_cfg(overshoot_detach=detach))
        loss, metrics, _ = model.loss(batch, torch.Generator().manual_seed(0))
        assert torch.isfinite(loss) and "wm/over" in metrics
        plain = make_model(TINY).loss(batch, torch.Generator().manual_seed(0))[0]
        assert float(loss.detach()) != float(plain.detach())
        terms, _, _ = model.loss_terms(batch, torch.Generator().manual_seed(0))
        terms["over"].backward()
        enc = model.encoder.layers[0].linear.weight.grad
        grads[detach] = 0.0 if enc is None else float(enc.abs().sum())
        assert model.rssm.prior_out.weight.grad is not None
        assert float(model.rssm.prior_out.weight.grad.abs().sum()) > 0
    assert grads[False] > 0 and grads[True] == 0.0


def test_overshoot_checkpoints_and_older_checkpoints(tmp_path: Path) -> None:
    """An overshooting config round-trips; a checkpoint written before the overshoot_*
    fields existed loads with them at their defaults (off)."""
    from agents.world_model.trainer import WorldModelTrainer, load_model

    cfg = _over_cfg(overshoot_heads=True)
    trainer = WorldModelTrainer(make_model(cfg), cfg, seed=0)
    trainer.step(make_batch(2, 10, seed=1))
    trainer.save(tmp_path / "over.pt")
    assert load_model(tmp_path / "over.pt").cfg == cfg
    WorldModelTrainer(make_model(cfg), cfg).load(tmp_path / "over.pt")
    with pytest.raises(ValueError, match="overshoot"):
        WorldModelTrainer(make_model(), TINY).load(tmp_path / "over.pt")

    state = WorldModelTrainer(make_model(), TINY).state_dict()
    state["config"] = {k: v for k, v in state["config"].items() if "overshoot" not in k}
    torch.save(state, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").cfg == TINY
    fresh = WorldModelTrainer(make_model(seed=5), TINY)
    fresh.load(tmp_path / "old.pt")
    assert fresh.steps == 0
