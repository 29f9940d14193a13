"""Dreamer agent: returns and normalisation by hand, critic, actor masks, imagination."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agents.dreamer.actor_critic import (
    ActionDist,
    ActionSpec,
    ActorCritic,
    Critic,
    ReturnNorm,
    imagine,
    lambda_returns,
)
from agents.dreamer.config import DreamerAgentConfig
from agents.world_model import ObsLayout, WorldModel
from agents.world_model.rssm import Carry
from envs.gym.envs import AutoscaleEnv, ClusterOpsEnv, RemediateEnv

TINY_WM = {"deter": 32, "hidden": 16, "stoch": 4, "classes": 4, "gru_blocks": 2, "units": 16}


def tiny_agent(**overrides: object) -> DreamerAgentConfig:
    return DreamerAgentConfig(
        world_model=TINY_WM, net_arch=[16], batch=2, seq_len=8, horizon=5, **overrides
    )


# --------------------------------------------------------------------------- returns


def test_lambda_returns_match_a_hand_computation() -> None:
    g, lam = 0.9, 0.5
    r = [0.0, 1.0, -2.0, 3.0]  # r[t]: reward for arriving at state t (r[0] unused)
    v = [0.5, 1.5, -1.0, 4.0]
    c = [1.0, 1.0, 0.5, 1.0]
    # R_3 = v_3; R_t = r_{t+1} + g c_{t+1} ((1 - lam) v_{t+1} + lam R_{t+1})
    r3 = 4.0
    r2 = 3.0 + g * 1.0 * ((1 - lam) * 4.0 + lam * r3)
    r1 = -2.0 + g * 0.5 * ((1 - lam) * -1.0 + lam * r2)
    r0 = 1.0 + g * 1.0 * ((1 - lam) * 1.5 + lam * r1)
    t = lambda x: torch.tensor(x)[:, None].repeat(1, 2)  # [T+1, N=2]
    got = lambda_returns(t(r), t(v), t(c), g, lam)
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got[:, 0].numpy(), [r0, r1, r2], rtol=1e-6)
    # lam = 0: one-step TD targets; lam = 1: discounted sum bootstrapped at the end
    td = lambda_returns(t(r), t(v), t(c), g, 0.0)[:, 0].numpy()
    np.testing.assert_allclose(td, [1 + g * 1.5, -2 + g * 0.5 * -1.0, 3 + g * 4.0], rtol=1e-6)
    mc = lambda_returns(t(r), t(v), t(c), g, 1.0)[:, 0].numpy()
    np.testing.assert_allclose(mc[2], 3 + g * 4.0, rtol=1e-6)
    np.testing.assert_allclose(mc[0], 1 + g * (-2 + g * 0.5 * (3 + g * 4.0)), rtol=1e-6)


def test_return_norm_tracks_the_percentiles_with_a_floor() -> None:
    norm = ReturnNorm(rate=0.01, low=5.0, high=95.0, limit=1.0)
    x = torch.arange(101, dtype=torch.float32)  # 5th percentile 5, 95th 95
    scale = norm.update(x)
    assert float(norm.low) == pytest.approx(0.05) and float(norm.high) == pytest.approx(0.95)
    assert float(scale) == 1.0  # 0.9 < limit
    for _ in range(2000):
        scale = norm.update(x)
    assert float(norm.low) == pytest.approx(5.0, rel=1e-3)
    assert float(scale) == pytest.approx(90.0, rel=1e-3)
    small = ReturnNorm()
    for _ in range(2000):
        small.update(torch.linspace(0, 0.5, 50))
    assert float(small.scale()) == 1.0  # a spread below the limit is not magnified
    state = norm.state_dict()
    assert set(state) == {"low", "high"}


def test_two_hot_critic_starts_at_zero_and_learns_a_constant() -> None:
    torch.manual_seed(0)
    critic = Critic(feat_size=8, hidden=[32], bins=255)
    feat = torch.randn(64, 8)
    assert torch.equal(critic.value(feat), torch.zeros(64))  # zero-initialised output
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    for _ in range(400):
        loss = critic.loss(feat, torch.full((64,), -37.5)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    np.testing.assert_allclose(critic.value(feat).detach().numpy(), -37.5, rtol=0.05)


# --------------------------------------------------------------------------- actor


def test_action_specs_of_the_three_envs() -> None:
    auto = ActionSpec.from_env(AutoscaleEnv(scenario="chain3"))
    assert auto.nvec == (5, 5, 5) and not auto.masked and not auto.discrete
    assert auto.matrix.shape == (15, 12)
    rem = ActionSpec.from_env(RemediateEnv(scenario="chain3"))
    assert rem.dims == 1 and rem.masked and rem.discrete and rem.to_env(np.array([3])) == 3
    ops = ActionSpec.from_env(ClusterOpsEnv(scenario="chain3"))
    assert ops.nvec[:3] == (5, 5, 5) and ops.nvec[3] == rem.nvec[0] and ops.masked
    # features = onehot @ M: +1 replica of service 1 is symlog(1) in its scale slot
    f = auto.features(torch.tensor([[2, 3, 2]]))
    expected = np.zeros(12, np.float32)
    expected[3] = math.log(2.0)
    np.testing.assert_allclose(f[0].numpy(), expected, rtol=1e-6)


def test_action_dist_shapes_unimix_and_masks() -> None:
    torch.manual_seed(0)
    nvec = (3, 4)
    logits = torch.randn(10, 7) * 5
    mask = torch.ones(10, 7, dtype=torch.bool)
    mask[:, 1] = False  # dim 0, choice 1
    mask[:, 4:6] = False  # dim 1, choices 1 and 2
    dist = ActionDist(logits, nvec, unimix=0.01, mask=mask)
    a = dist.sample()
    assert a.shape == (10, 2) and a.dtype == torch.long
    for _ in range(20):
        s = dist.sample()
        assert not (s[:, 0] == 1).any() and not ((s[:, 1] == 1) | (s[:, 1] == 2)).any()
    p0, p1 = dist.probs
    assert torch.all(p0[:, 1] == 0) and torch.all(p1[:, 1:3] == 0)
    assert torch.all(p0[:, [0, 2]] >= 0.01 / 2 - 1e-7)  # unimix over the valid choices
    torch.testing.assert_close(p1.sum(-1), torch.ones(10))
    assert dist.log_prob(a).shape == (10,) and torch.isfinite(dist.log_prob(a)).all()
    assert dist.mode().shape == (10, 2)
    ent = dist.entropy()
    assert (
        ent.shape == (10,) and torch.all(ent >= 0) and torch.all(ent <= math.log(2) + math.log(2))
    )
    # gradients stay finite through masked choices
    lg = logits.clone().requires_grad_(True)
    d = ActionDist(lg, nvec, 0.01, mask)
    (d.log_prob(a).sum() + d.entropy().sum()).backward()
    assert lg.grad is not None and torch.isfinite(lg.grad).all()
    assert torch.all(lg.grad[:, 1] == 0)
    # no mask: every choice has at least unimix / n
    free = ActionDist(logits, nvec, 0.01)
    assert torch.all(free.probs[1] >= 0.01 / 4 - 1e-7)


# --------------------------------------------------------------------------- imagination


def _model_and_learner(
    env_cls: type = AutoscaleEnv, **overrides: object
) -> tuple[WorldModel, ActorCritic, ActionSpec]:
    env = env_cls(scenario="chain3")
    spec = ActionSpec.from_env(env)
    cfg = tiny_agent(**overrides)
    wcfg = cfg.world_model_config()
    wm = WorldModel(ObsLayout.from_encoder(env.encoder), spec.feature_size, wcfg)
    return wm, ActorCritic(wcfg.feat_size, spec, cfg), spec


def _start(wm: WorldModel, n: int) -> Carry:
    c = wm.cfg
    idx = torch.randint(0, c.classes, (n, c.stoch))
    return Carry(torch.randn(n, c.deter), torch.nn.functional.one_hot(idx, c.classes).float())


def test_imagination_shapes_and_weights() -> None:
    torch.manual_seed(0)
    wm, ac, spec = _model_and_learner()
    traj = imagine(wm, ac.actor, _start(wm, 6), horizon=5, discount=0.9)
    f = wm.cfg.feat_size
    assert traj.feat.shape == (6, 6, f) and traj.action.shape == (5, 6, spec.dims)
    assert traj.reward.shape == traj.cont.shape == traj.weight.shape == (6, 6)
    assert torch.all(traj.reward[0] == 0) and torch.all(traj.cont[0] == 1)
    assert torch.all(traj.weight[0] == 1)
    torch.testing.assert_close(traj.weight[1], 0.9 * traj.cont[1])
    assert not traj.feat.requires_grad


def test_update_trains_actor_and_critic_only() -> None:
    torch.manual_seed(0)
    wm, ac, _ = _model_and_learner(RemediateEnv)
    before = {k: v.clone() for k, v in wm.state_dict().items()}
    actor0 = [p.clone() for p in ac.actor.parameters()]
    slow0 = [p.clone() for p in ac.slow_critic.parameters()]
    mask = torch.ones(8, ac.spec.size, dtype=torch.bool)
    mask[:, 2] = False
    metrics = ac.update(wm, _start(wm, 8), mask=mask)
    assert all(math.isfinite(v) for v in metrics.values())
    assert {"actor/loss", "critic/loss", "critic/return_scale", "imag/reward"} <= set(metrics)
    assert all(torch.equal(before[k], v) for k, v in wm.state_dict().items())
    assert all(p.grad is None for p in wm.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(actor0, ac.actor.parameters(), strict=True))
    # the slow critic moved 2% of the way toward the critic
    for s0, s1, c in zip(slow0, ac.slow_critic.parameters(), ac.critic.parameters(), strict=True):
        torch.testing.assert_close(s1, s0 + 0.02 * (c - s0))
    assert ac.updates == 1
