"""Behaviour learning in imagination: actor, two-hot critic, lambda-returns, return norm.

DreamerV3's actor-critic (Hafner et al. 2023, arXiv:2301.04104, section "Actor-critic
learning"; danijar/dreamerv3 ``agent.py``) for opsworld's discrete action spaces:

* :class:`ActionSpec`: one categorical per action dimension (``Discrete(n)`` is one
  dimension, ``MultiDiscrete(nvec)`` ``len(nvec)``); ``onehot(action) @ M`` with the env's
  :meth:`~envs.gym.envs.ClusterEnv.action_feature_matrix` is the world model's action input;
* :class:`Actor`: an MLP over world-model features ``[deter, stoch]`` giving logits for every
  dimension, 1% unimix, optional action mask (Remediate/ClusterOps), as
  :class:`ActionDist`;
* :class:`Critic`: an MLP giving logits over 255 symexp-spaced bins (two-hot regression,
  :class:`agents.world_model.math.TwoHot`) with a zero-initialised output layer;
* :func:`lambda_returns` and :class:`ReturnNorm` (EMA of the 5th and 95th percentiles);
* :func:`imagine`: from posterior states, H steps of actor samples through the world
  model's prior, with predicted rewards and continue probabilities (no gradient);
* :class:`ActorCritic`: the update. The actor's loss is REINFORCE with the advantage
  ``(R_t - v(s_t)) / max(limit, P95 - P5)`` plus an entropy bonus; the critic's is the
  two-hot cross-entropy toward the lambda-return plus a regulariser toward a slow critic
  (EMA of the critic's weights, rate 0.02), both weighted by the cumulative discount and
  continue probability of the imagined step.

Shapes: imagination is time-major: ``[H + 1, N, ...]`` for ``N`` start states, row 0 the
start state.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from agents.dreamer.config import DreamerAgentConfig
from agents.world_model.math import TwoHot
from agents.world_model.nets import MLP, Linear
from agents.world_model.rssm import Carry
from envs.gym.codec import ActionCodec


class NonFiniteError(RuntimeError):
    """A loss or gradient norm of the actor-critic became NaN or infinite."""


# --------------------------------------------------------------------------------------------
# action spaces


@dataclass(frozen=True)
class ActionSpec:
    """A discrete action space as the actor sees it.

    Attributes:
        nvec: Choices per dimension (``Discrete(n)``: ``(n,)``).
        matrix: ``[sum(nvec), A]``: ``onehot(action) @ matrix`` = the action features.
        masked: Whether the env has meaningful action masks (``action_masks()``).
        discrete: The env's space is ``Discrete`` (actions are ints, not arrays).
    """

    nvec: tuple[int, ...]
    matrix: np.ndarray
    masked: bool = False
    discrete: bool = False

    def __post_init__(self) -> None:
        if self.matrix.shape[0] != sum(self.nvec):
            raise ValueError(
                f"ActionSpec: matrix has {self.matrix.shape[0]} rows for nvec {self.nvec}"
            )

    @classmethod
    def from_codec(cls, codec: ActionCodec) -> ActionSpec:
        """The spec of an :class:`~envs.gym.codec.ActionCodec` (an env's ``codec``)."""
        return cls(
            codec.nvec,
            np.asarray(codec.feature_matrix(), dtype=np.float32),
            masked=codec.has_remediation,
            discrete=codec.space_spec.discrete,
        )

    @classmethod
    def from_env(cls, env: Any) -> ActionSpec:
        """The spec of a :class:`~envs.gym.envs.ClusterEnv` (unwrapped or not)."""
        return cls.from_codec(env.unwrapped.codec)

    @property
    def size(self) -> int:
        """Length of the concatenated one-hots (and of a flat mask)."""
        return sum(self.nvec)

    @property
    def dims(self) -> int:
        """Number of categorical dimensions."""
        return len(self.nvec)

    @property
    def feature_size(self) -> int:
        """Length A of the action features."""
        return int(self.matrix.shape[1])

    def onehot(self, index: Tensor) -> Tensor:
        """``[..., dims]`` indices -> ``[..., size]`` concatenated one-hots (float)."""
        parts = [nn.functional.one_hot(index[..., d], n).float() for d, n in enumerate(self.nvec)]
        return torch.cat(parts, -1)

    def features(self, index: Tensor) -> Tensor:
        """``[..., dims]`` indices -> ``[..., A]`` world-model action features."""
        m = torch.as_tensor(self.matrix, device=index.device)
        return self.onehot(index) @ m

    def to_env(self, index: np.ndarray) -> Any:
        """One ``[dims]`` index vector -> an element of the env's action space."""
        idx = np.asarray(index, dtype=np.int64)
        return int(idx[0]) if self.discrete else idx


# --------------------------------------------------------------------------------------------
# distributions and networks


_TINY = 1e-30


class ActionDist:
    """Independent categoricals, one per dimension, with unimix and an optional mask.

    ``p = (1 - unimix) softmax(logits | mask) + unimix * mask / n_valid`` per dimension:
    masked choices get probability 0; a dimension whose mask is all False counts as
    all valid (the env's no-op is always valid, so that only happens in hand-made masks).

    Args:
        logits: ``[..., sum(nvec)]``.
        nvec: Choices per dimension.
        unimix: Uniform share.
        mask: ``[..., sum(nvec)]`` bool (True = valid), broadcastable; None: all valid.
    """

    def __init__(
        self, logits: Tensor, nvec: tuple[int, ...], unimix: float, mask: Tensor | None = None
    ) -> None:
        self.nvec = nvec
        self.logp: list[Tensor] = []
        self.probs: list[Tensor] = []
        for d, part in enumerate(logits.split(list(nvec), -1)):
            if mask is not None:
                m = mask.split(list(nvec), -1)[d].expand_as(part)
                m = m | ~m.any(-1, keepdim=True)
                probs = torch.softmax(part.masked_fill(~m, -torch.inf), -1)
                if unimix > 0:
                    valid = m.float()
                    probs = (1 - unimix) * probs + unimix * valid / valid.sum(-1, keepdim=True)
            else:
                probs = torch.softmax(part, -1)
                if unimix > 0:
                    probs = (1 - unimix) * probs + unimix / part.shape[-1]
            self.probs.append(probs)
            # clamped, so that masked choices (p = 0) give finite values and gradients
            self.logp.append(torch.log(probs.clamp_min(_TINY)))

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """``[..., dims]`` long indices."""
        out = []
        for p in self.probs:
            flat = p.reshape(-1, p.shape[-1])
            idx = torch.multinomial(flat, 1, generator=generator).reshape(p.shape[:-1])
            out.append(idx)
        return torch.stack(out, -1)

    def mode(self) -> Tensor:
        """``[..., dims]`` most likely choices."""
        return torch.stack([p.argmax(-1) for p in self.probs], -1)

    def log_prob(self, index: Tensor) -> Tensor:
        """``[...]`` log-probability of ``[..., dims]`` indices (sum over dimensions)."""
        return sum(
            (lp.gather(-1, index[..., d : d + 1]).squeeze(-1) for d, lp in enumerate(self.logp)),
            torch.zeros((), device=index.device),
        )

    def entropy(self) -> Tensor:
        """``[...]`` entropy in nats (sum over dimensions; masked choices add 0)."""
        return sum(
            (-(p * lp).sum(-1) for p, lp in zip(self.probs, self.logp, strict=True)),
            torch.zeros(()),
        )


def _mlp_head(inp: int, hidden: list[int], out: int, out_scale: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    size = inp
    for units in hidden:
        layers.append(MLP(size, units, 1))
        size = units
    layers.append(Linear(size, out, scale=out_scale))
    return nn.Sequential(*layers)


def prior_logits(spec: ActionSpec, noop_prob: float | None) -> Tensor:
    """``[size]`` logits: 0 everywhere, except the no-op of the remediation dimension.

    The remediation dimension is the last one of a masked space (Remediate, ClusterOps,
    HPATune), its index 0 the no-op. Its logit is the log-odds that give the no-op
    probability ``noop_prob`` when every choice of the dimension is valid (masked choices
    raise it a little). ``noop_prob`` None: all zeros (uniform).

    Raises:
        ValueError: ``noop_prob`` for a space without a remediation dimension.
    """
    out = torch.zeros(spec.size)
    if noop_prob is None:
        return out
    if not spec.masked:
        raise ValueError(
            f"agent.noop_prob={noop_prob}: the action space {spec.nvec} has no remediation "
            "dimension (env=autoscale); leave it null"
        )
    n = spec.nvec[-1]
    out[spec.size - n] = math.log(noop_prob * (n - 1) / (1.0 - noop_prob))
    return out


class Actor(nn.Module):
    """Policy over world-model features: logits of every action dimension.

    Args:
        feat_size: Size of a world-model feature ``[deter, flat stoch]``.
        spec: The action space.
        hidden: Hidden layer sizes (RMSNorm + SiLU).
        unimix: Uniform share of every categorical.
        noop_prob: Initial probability of the remediation no-op (:func:`prior_logits`,
            added to the output layer's bias, which then learns freely); None: uniform.
    """

    def __init__(
        self,
        feat_size: int,
        spec: ActionSpec,
        hidden: list[int],
        unimix: float,
        noop_prob: float | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.unimix = unimix
        self.net = _mlp_head(feat_size, hidden, spec.size, out_scale=1.0)
        if noop_prob is not None:
            out = self.net[-1]
            assert isinstance(out, Linear) and out.bias is not None
            with torch.no_grad():
                out.bias.add_(prior_logits(spec, noop_prob))

    def forward(self, feat: Tensor, mask: Tensor | None = None) -> ActionDist:
        """The action distribution at ``feat`` ``[..., F]`` (``mask`` ``[..., size]``)."""
        return ActionDist(self.net(feat), self.spec.nvec, self.unimix, mask)


class Critic(nn.Module):
    """Value over world-model features as a two-hot distribution (zero-initialised output).

    Args:
        feat_size: Size of a world-model feature.
        hidden: Hidden layer sizes.
        bins: Two-hot bins (symexp-spaced).
    """

    def __init__(self, feat_size: int, hidden: list[int], bins: int) -> None:
        super().__init__()
        self.twohot = TwoHot(bins)
        self.net = _mlp_head(feat_size, hidden, bins, out_scale=0.0)

    def forward(self, feat: Tensor) -> Tensor:
        """Bin logits ``[..., bins]``."""
        out: Tensor = self.net(feat)
        return out

    def value(self, feat: Tensor) -> Tensor:
        """Expected value ``[...]`` in reward units."""
        return self.twohot.mean(self(feat))

    def loss(self, feat: Tensor, target: Tensor) -> Tensor:
        """Two-hot cross-entropy ``[...]`` toward ``target`` ``[...]`` (raw units)."""
        return self.twohot.loss(self(feat), target)


# --------------------------------------------------------------------------------------------
# returns


def lambda_returns(
    reward: Tensor, value: Tensor, cont: Tensor, discount: float, lam: float
) -> Tensor:
    """TD(lambda) returns of an imagined trajectory (time-major).

    ``R_t = r_{t+1} + discount * c_{t+1} * ((1 - lam) v_{t+1} + lam R_{t+1})`` for
    ``t = H-1 .. 0``, bootstrapped with ``R_H = v_H``.

    Args:
        reward: ``[H + 1, ...]``; ``reward[t]`` is the reward for arriving at state ``t``
            (``reward[0]`` is unused).
        value: ``[H + 1, ...]`` value of each state.
        cont: ``[H + 1, ...]`` continue probability of each state (``cont[0]`` unused).
        discount: Per-step discount.
        lam: Lambda (1: Monte-Carlo returns bootstrapped at H; 0: one-step TD targets).

    Returns:
        ``[H, ...]`` returns of states ``0 .. H-1``.
    """
    assert reward.shape == value.shape == cont.shape, (reward.shape, value.shape, cont.shape)
    horizon = reward.shape[0] - 1
    disc = discount * cont[1:]
    interm = reward[1:] + disc * (1.0 - lam) * value[1:]
    out = [value[-1]]
    for t in reversed(range(horizon)):
        out.append(interm[t] + disc[t] * lam * out[-1])
    return torch.stack(out[::-1][:-1])


class ReturnNorm(nn.Module):
    """Scale of the returns: EMA of their 5th and 95th percentiles (DreamerV3).

    ``scale = max(limit, high - low)``, with ``low`` and ``high`` EMAs (``rate``) of the
    batch percentiles, starting at zero (DreamerV3's ``perc_ema`` moments).

    Args:
        rate: EMA rate per update.
        low: Lower percentile (0-100).
        high: Upper percentile (0-100).
        limit: Smallest scale.
    """

    low: Tensor
    high: Tensor

    def __init__(
        self, rate: float = 0.01, low: float = 5.0, high: float = 95.0, limit: float = 1.0
    ) -> None:
        super().__init__()
        self.rate, self.q_low, self.q_high, self.limit = rate, low / 100.0, high / 100.0, limit
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))

    @torch.no_grad()
    def update(self, x: Tensor) -> Tensor:
        """Fold the percentiles of ``x`` into the EMAs; return the new :meth:`scale`."""
        q = torch.quantile(x.detach().flatten().float(), torch.tensor([self.q_low, self.q_high]))
        self.low.lerp_(q[0], self.rate)
        self.high.lerp_(q[1], self.rate)
        return self.scale()

    def scale(self) -> Tensor:
        """``max(limit, high - low)``."""
        return torch.clamp(self.high - self.low, min=self.limit)


# --------------------------------------------------------------------------------------------
# imagination


class LatentModel(Protocol):
    """What imagination needs of :class:`agents.world_model.model.WorldModel`."""

    def img_step(
        self,
        carry: Carry,
        action: Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> Carry:
        """Prior step."""
        ...

    def feat(self, states: Any) -> Tensor:
        """Features ``[..., D + K*C]``."""
        ...

    def reward(self, feat: Tensor) -> Tensor:
        """Expected reward ``[...]``."""
        ...

    def cont_prob(self, feat: Tensor) -> Tensor:
        """Continue probability ``[...]``."""
        ...


@dataclass
class Imagination:
    """An imagined batch of trajectories (time-major, no gradient history).

    Attributes:
        feat: ``[H + 1, N, F]`` features of the states, row 0 the start.
        action: ``[H, N, dims]`` the actor's choice in state ``t``.
        reward: ``[H + 1, N]`` predicted reward for arriving at state ``t`` (row 0: 0).
        cont: ``[H + 1, N]`` continue probability of state ``t`` (row 0: the data's).
        weight: ``[H + 1, N]`` ``prod_{i<=t} discount * cont_i / discount``: how much
            state ``t`` counts (1 for the start).
        mask: ``[N, size]`` action mask used at every step (None: all valid).
    """

    feat: Tensor
    action: Tensor
    reward: Tensor
    cont: Tensor
    weight: Tensor
    mask: Tensor | None = None


@torch.no_grad()
def imagine(
    wm: LatentModel,
    actor: Actor,
    start: Carry,
    horizon: int,
    discount: float,
    mask: Tensor | None = None,
    start_cont: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Imagination:
    """Roll ``horizon`` prior steps from ``start`` (``N`` states) under actor samples.

    Draws (actions and latents) come from ``generator`` (default: torch's global one).

    The start states' action mask (``mask`` ``[N, size]``) applies to every imagined step:
    the world model does not predict masks, and what they depend on (a previous version,
    replicas at the maximum, the shed level) changes rarely within a horizon.
    """
    feats = [wm.feat(start)]
    actions = []
    carry = start
    for _ in range(horizon):
        a = actor(feats[-1], mask).sample(generator)
        actions.append(a)
        carry = wm.img_step(carry, actor.spec.features(a), generator=generator)
        feats.append(wm.feat(carry))
    feat = torch.stack(feats)
    reward = wm.reward(feat)
    cont = wm.cont_prob(feat)
    first = start_cont if start_cont is not None else torch.ones_like(cont[0])
    reward = torch.cat([torch.zeros_like(reward[:1]), reward[1:]])
    cont = torch.cat([first[None], cont[1:]])
    weight = torch.cumprod(discount * cont, 0) / discount
    return Imagination(feat, torch.stack(actions), reward, cont, weight, mask)


# --------------------------------------------------------------------------------------------
# the learner


def _check_finite(values: dict[str, Tensor], context: str) -> None:
    bad = [k for k, v in values.items() if not bool(torch.isfinite(v).all())]
    if bad:
        stats = ", ".join(f"{k}={float(values[k].detach().float().mean()):.4g}" for k in bad)
        raise NonFiniteError(
            f"{context}: non-finite {bad} ({stats}); lower agent.actor_lr/agent.critic_lr "
            "or check the world model's reward predictions (wm/ metrics)"
        )


class ActorCritic(nn.Module):
    """Actor, critic, slow critic, return normalisation and their optimisers.

    Args:
        feat_size: Size of a world-model feature.
        spec: The action space.
        cfg: The agent settings (horizon, discount, lambda, entropy, learning rates, ...).
    """

    def __init__(self, feat_size: int, spec: ActionSpec, cfg: DreamerAgentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.spec = spec
        self.actor = Actor(feat_size, spec, cfg.hidden, cfg.unimix, cfg.noop_prob)
        self.critic = Critic(feat_size, cfg.hidden, cfg.bins)
        self.slow_critic = copy.deepcopy(self.critic)
        self.slow_critic.requires_grad_(False)
        self.retnorm = ReturnNorm(
            cfg.retnorm_rate, cfg.retnorm_low, cfg.retnorm_high, cfg.retnorm_limit
        )
        self.actor_opt = torch.optim.Adam(
            self.actor.parameters(), lr=cfg.actor_lr, eps=cfg.adam_eps
        )
        self.critic_opt = torch.optim.Adam(
            self.critic.parameters(), lr=cfg.critic_lr, eps=cfg.adam_eps
        )
        self.updates = 0

    def update(
        self,
        wm: LatentModel,
        start: Carry,
        mask: Tensor | None = None,
        start_cont: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, float]:
        """One actor and one critic step on trajectories imagined from ``start``.

        Args:
            wm: The world model (only evaluated; no gradient reaches it).
            start: ``N`` posterior states (e.g. ``States.flatten()`` of a replay batch).
            mask: ``[N, size]`` action masks of the start states (None: all valid).
            start_cont: ``[N]`` continue flags of the start states (None: 1).
            generator: Source of the imagination's draws (default: torch's global one).

        Returns:
            ``actor/...``, ``critic/...`` and ``imag/...`` metrics.

        Raises:
            NonFiniteError: A loss or gradient norm is not finite; nothing is updated.
        """
        cfg = self.cfg
        start = start.detach()
        traj = imagine(
            wm, self.actor, start, cfg.horizon, cfg.discount, mask, start_cont, generator
        )
        logits = self.critic(traj.feat)  # one pass: values of all states, loss of 0..H-1
        with torch.no_grad():
            value = self.critic.twohot.mean(logits.detach())
            slow = self.slow_critic.value(traj.feat)
            target = slow if cfg.slow_target else value
            ret = lambda_returns(traj.reward, target, traj.cont, cfg.discount, cfg.return_lambda)
            scale = self.retnorm.update(ret)
            adv = (ret - value[:-1]) / scale
        weight = traj.weight[:-1]
        feat = traj.feat[:-1]
        step_mask = None if traj.mask is None else traj.mask.expand(feat.shape[0], -1, -1)

        dist = self.actor(feat, step_mask)
        logp = dist.log_prob(traj.action)
        ent = dist.entropy()
        actor_loss = -(weight * (logp * adv + cfg.entropy * ent)).mean()

        twohot = self.critic.twohot
        critic_loss_t = twohot.loss(logits[:-1], ret) + cfg.slow_reg * twohot.loss(
            logits[:-1], slow[:-1]
        )
        critic_loss = (weight * critic_loss_t).mean()
        _check_finite(
            {"actor_loss": actor_loss, "critic_loss": critic_loss},
            f"actor-critic update {self.updates}",
        )

        self.actor_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        critic_loss.backward()
        actor_norm = nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.grad_clip)
        critic_norm = nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
        _check_finite(
            {"actor_grad_norm": actor_norm, "critic_grad_norm": critic_norm},
            f"actor-critic update {self.updates}",
        )
        self.actor_opt.step()
        self.critic_opt.step()
        with torch.no_grad():
            for slow_p, p in zip(
                self.slow_critic.parameters(), self.critic.parameters(), strict=True
            ):
                slow_p.lerp_(p, cfg.slow_critic_rate)
        self.updates += 1
        return {
            "actor/loss": float(actor_loss.detach()),
            "actor/entropy": float(ent.detach().mean()),
            "actor/grad_norm": float(actor_norm),
            "actor/adv_abs": float(adv.abs().mean()),
            "critic/loss": float(critic_loss.detach()),
            "critic/grad_norm": float(critic_norm),
            "critic/value": float(value[:-1].mean()),
            "critic/return": float(ret.mean()),
            "critic/return_scale": float(scale),
            "imag/reward": float(traj.reward[1:].mean()),
            "imag/cont": float(traj.cont[1:].mean()),
        }

    def act(self, feat: Tensor, mask: Tensor | None = None, deterministic: bool = False) -> Tensor:
        """``[B, dims]`` actions at ``feat`` ``[B, F]`` (mode or sample)."""
        with torch.no_grad():
            dist = self.actor(feat, mask)
            return dist.mode() if deterministic else dist.sample()

    def optim_state(self) -> dict[str, Any]:
        """Optimiser states and the update count (the module's own state is ``state_dict``)."""
        return {
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "updates": self.updates,
        }

    def load_optim_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`optim_state`."""
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.updates = int(state["updates"])
