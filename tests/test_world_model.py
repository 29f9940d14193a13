"""World model (agents/world_model): shapes at the seams, numerics, training behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agents.world_model import (
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
