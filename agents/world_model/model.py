"""The world model: encoder, RSSM, decoder and heads, and its training loss.

* Encoder: an MLP over the whole flat observation (values already symlog'd by the
  :class:`~envs.gym.encoder.ObsEncoder`, plus time and mask), batched over ``B * T``.
* Decoder: a Gaussian (mean, std) over the value vector in symlog space; its loss is the
  Gaussian NLL summed over the values that were observed (mask 1), so a missing value
  contributes nothing.
* Reward head: two-hot over 255 symexp-spaced bins (targets symlog'd), output layer
  zero-initialised, so the first predictions are 0.
* Continue and violation heads: Bernoulli logits.
* KL balancing with free bits: ``dyn = max(1, KL(sg(post) || prior))`` (scale 1.0) and
  ``rep = max(1, KL(post || sg(prior)))`` (scale 0.1), per step after summing over latents.

All heads read ``feat = [deter, flat stoch]`` and run over all ``B * T`` states at once.
Settings follow DreamerV3 (Hafner et al. 2023, arXiv:2301.04104).
"""

from __future__ import annotations

from typing import TypeAlias

import torch
from torch import Tensor, nn

from agents.world_model.config import ObsLayout, WorldModelConfig
from agents.world_model.math import (
    TwoHot,
    bernoulli_nll,
    gaussian_nll,
    kl_categorical,
    unimix_logits,
)
from agents.world_model.nets import MLP, Linear
from agents.world_model.rssm import RSSM, Carry, States

BATCH_KEYS: tuple[str, ...] = ("obs", "action", "reward", "cont", "is_first", "violation")
"""Keys of a training batch (``[B, T, ...]`` each; see the data contract)."""

LOSS_TERMS: tuple[str, ...] = ("dec", "rew", "cont", "viol", "dyn", "rep")
"""Names of the loss terms (each a mean over ``B * T``, before its scale)."""

StatesOrCarry: TypeAlias = States | Carry


class Head(nn.Module):
    """MLP + linear output.

    Args:
        inp: Input size.
        out: Output size.
        units: Hidden width.
        layers: Hidden layers.
        out_scale: Init scale of the output layer (0: zero-initialised).
    """

    def __init__(self, inp: int, out: int, units: int, layers: int, out_scale: float = 1.0) -> None:
        super().__init__()
        self.mlp = MLP(inp, units, layers)
        self.out = Linear(self.mlp.out_size, out, scale=out_scale)

    def forward(self, x: Tensor) -> Tensor:
        """Output pre-activations."""
        return self.out(self.mlp(x))


class WorldModel(nn.Module):
    """Encoder, RSSM, decoder and reward / continue / violation heads.

    Args:
        layout: Where values, time and mask sit in the flat observation.
        action_size: Length A of the action features (``ActionEncoder.size``).
        cfg: Sizes and loss settings.
    """

    def __init__(self, layout: ObsLayout, action_size: int, cfg: WorldModelConfig) -> None:
        super().__init__()
        self.layout = layout
        self.action_size = action_size
        self.cfg = cfg
        self.encoder = MLP(layout.obs_size, cfg.units, cfg.enc_layers)
        self.embed_size = self.encoder.out_size
        self.rssm = RSSM(self.embed_size, action_size, cfg)
        feat = cfg.feat_size
        self.decoder = Head(feat, 2 * layout.value_size, cfg.units, cfg.dec_layers)
        self.reward_head = Head(feat, cfg.bins, cfg.units, cfg.head_layers, out_scale=0.0)
        self.cont_head = Head(feat, 1, cfg.units, cfg.head_layers)
        self.violation_head = Head(feat, 1, cfg.units, cfg.head_layers)
        self.twohot = TwoHot(cfg.bins, cfg.bin_limit)

    # ------------------------------------------------------------------ latent dynamics
    def initial(self, batch: int) -> Carry:
        """Initial carry of ``batch`` streams."""
        return self.rssm.initial(batch)

    def embed(self, obs: Tensor) -> Tensor:
        """Encoder output ``[..., E]`` of flat observations ``[..., O]``."""
        assert obs.shape[-1] == self.layout.obs_size, (obs.shape, self.layout.obs_size)
        return self.encoder(obs)

    def observe(
        self,
        obs: Tensor,
        action: Tensor,
        is_first: Tensor,
        carry: Carry | None = None,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[Carry, States]:
        """Filter observations ``[B, T, O]`` (actions ``[B, T, A]``, ``is_first`` ``[B, T]``).

        ``carry`` defaults to :meth:`initial`. Returns the last carry and the posterior States.
        """
        if carry is None:
            carry = self.initial(obs.shape[0])
        return self.rssm.observe(self.embed(obs), action, is_first, carry, sample, generator)

    def obs_step(
        self,
        carry: Carry,
        obs: Tensor,
        action: Tensor,
        is_first: Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> Carry:
        """One filtering step for acting online: returns the posterior carry.

        ``obs`` is ``[B, O]``, ``action`` ``[B, A]`` (the action that led to ``obs``),
        ``is_first`` ``[B]``.
        """
        return self.rssm.obs_step(carry, action, self.embed(obs), is_first, sample, generator)[0]

    def img_step(
        self,
        carry: Carry,
        action: Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> Carry:
        """One prior step under ``action`` ``[B, A]``."""
        return self.rssm.img_step(carry, action, sample, generator)

    def imagine(
        self,
        carry: Carry,
        actions: Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> States:
        """Prior rollout under ``actions`` ``[B, H, A]`` (States ``[B, H, ...]``)."""
        return self.rssm.imagine(carry, actions, sample, generator)

    # ------------------------------------------------------------------ heads
    @staticmethod
    def feat(states: StatesOrCarry) -> Tensor:
        """``[deter, flat stoch]``: ``[..., D + K * C]``."""
        return torch.cat([states.deter, states.stoch.flatten(-2)], -1)

    def decode(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        """Gaussian ``(mean, std)`` ``[..., S*F + C]`` of the value vector (symlog space)."""
        out = self.decoder(feat)
        mean, raw_std = out.chunk(2, -1)
        lo, hi = self.cfg.min_std, self.cfg.max_std
        std = lo + (hi - lo) * torch.sigmoid(raw_std + 2.0)
        return mean, std

    def reward_logits(self, feat: Tensor) -> Tensor:
        """Two-hot logits ``[..., bins]`` of the reward."""
        return self.reward_head(feat)

    def reward(self, feat: Tensor) -> Tensor:
        """Expected reward (raw units) ``[...]``: symexp of the two-hot mean."""
        return self.twohot.mean(self.reward_logits(feat))

    def cont_prob(self, feat: Tensor) -> Tensor:
        """Probability that the episode continues ``[...]``."""
        return torch.sigmoid(self.cont_head(feat)[..., 0])

    def violation_prob(self, feat: Tensor) -> Tensor:
        """Probability of an SLO violation in the step that led to this state ``[...]``."""
        return torch.sigmoid(self.violation_head(feat)[..., 0])

    # ------------------------------------------------------------------ loss
    def loss_terms(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> tuple[dict[str, Tensor], dict[str, float], States]:
        """Unscaled loss terms, extra metrics and the posterior States of ``batch``.

        ``batch`` holds :data:`BATCH_KEYS` as ``[B, T, ...]`` tensors; each term (see
        :data:`LOSS_TERMS`) is a mean over the ``B * T`` steps.
        """
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {missing}; needs {list(BATCH_KEYS)}")
        obs = batch["obs"]
        b, t_len, o = obs.shape
        assert o == self.layout.obs_size, (o, self.layout.obs_size)
        assert batch["action"].shape == (b, t_len, self.action_size), batch["action"].shape
        _, states = self.observe(obs, batch["action"], batch["is_first"], generator=generator)
        assert states.prior_logits is not None
        feat = self.feat(states)  # [B, T, F]

        lay = self.layout
        target = obs[..., lay.values]
        mask = obs[..., lay.mask]
        mean, std = self.decode(feat)
        nll = gaussian_nll(target, mean, std) * mask
        terms = {
            "dec": nll.sum(-1).mean(),
            "rew": self.twohot.loss(self.reward_logits(feat), batch["reward"]).mean(),
            "cont": bernoulli_nll(self.cont_head(feat)[..., 0], batch["cont"]).mean(),
            "viol": bernoulli_nll(self.violation_head(feat)[..., 0], batch["violation"]).mean(),
        }
        post = unimix_logits(states.logits, self.cfg.unimix)
        prior = unimix_logits(states.prior_logits, self.cfg.unimix)
        free = self.cfg.free_nats
        kl_dyn = kl_categorical(post.detach(), prior)
        kl_rep = kl_categorical(post, prior.detach())
        terms["dyn"] = torch.clamp(kl_dyn, min=free).mean()
        terms["rep"] = torch.clamp(kl_rep, min=free).mean()

        with torch.no_grad():
            observed = mask.sum().clamp(min=1.0)
            metrics = {
                "wm/kl": float(kl_dyn.mean()),
                "wm/dec_nll_per_value": float(nll.sum() / observed),
                "wm/dec_abs_err": float(((target - mean).abs() * mask).sum() / observed),
                "wm/post_ent": float(_entropy(post)),
                "wm/prior_ent": float(_entropy(prior)),
            }
        return terms, metrics, states

    def scales(self) -> dict[str, float]:
        """Loss scale of each term."""
        c = self.cfg
        return {
            "dec": c.dec_scale,
            "rew": c.rew_scale,
            "cont": c.cont_scale,
            "viol": c.viol_scale,
            "dyn": c.kl_dyn,
            "rep": c.kl_rep,
        }

    def loss(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float], States]:
        """Total loss ``sum(scale * term)``, metrics and the posterior States of ``batch``.

        Metrics: ``wm/<term>`` (unscaled), ``wm/loss``, ``wm/kl``, ``wm/dec_nll_per_value``,
        ``wm/dec_abs_err``, ``wm/post_ent``, ``wm/prior_ent``.
        """
        terms, metrics, states = self.loss_terms(batch, generator)
        scales = self.scales()
        total = torch.stack([scales[k] * v for k, v in terms.items()]).sum()
        metrics = {**{f"wm/{k}": float(v.detach()) for k, v in terms.items()}, **metrics}
        metrics["wm/loss"] = float(total.detach())
        return total, metrics, states


def _entropy(logp: Tensor) -> Tensor:
    """Mean entropy (summed over latents) of normalised log-probs ``[..., K, C]``."""
    return -(logp.exp() * logp).sum((-2, -1)).mean()
