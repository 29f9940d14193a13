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
* Optional multi-step ("overshooting") term ``over`` (``cfg.overshoot > 0``; off by
  default): from the posterior state at every ``overshoot_stride``-th step (counted back
  from the last step whose rollout ends inside the sequence) the prior is
  rolled ``overshoot`` steps forward under the batch's actions (all starts in one batch),
  and the rollout is decoded against the observed values (masked Gaussian NLL; steps at or
  after an ``is_first`` inside the window do not count). Observation overshooting after
  the latent overshooting of PlaNet (Hafner et al. 2019, arXiv:1811.04551); it trains the
  open-loop rollouts that forecasts and imagination use, which the one-step loss never does.

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
"""Names of the loss terms (each a mean over ``B * T``, before its scale); with
``cfg.overshoot > 0`` a seventh, ``over``, follows (see :meth:`WorldModel.overshoot_loss`)."""

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


def loss_scales(cfg: WorldModelConfig) -> dict[str, float]:
    """Loss scale of each term of a world model with config ``cfg`` (flat and graph models)."""
    return {
        "dec": cfg.dec_scale,
        "rew": cfg.rew_scale,
        "cont": cfg.cont_scale,
        "viol": cfg.viol_scale,
        "dyn": cfg.kl_dyn,
        "rep": cfg.kl_rep,
        **({"over": cfg.overshoot_scale} if cfg.overshoot > 0 else {}),
    }


def overshoot_starts(cfg: WorldModelConfig, t_len: int) -> Tensor:
    """Start steps ``[N]`` of the overshooting rollouts in a sequence of ``t_len`` steps.

    Every ``overshoot_stride``-th step counted back from the last start whose rollout of
    ``overshoot`` steps ends inside the sequence (``s = t_len - 1 - overshoot``), so the
    latest, best-filtered states start rollouts (a sequence's first states have seen
    only a few observations). Ascending.
    """
    return torch.arange(t_len - 1 - cfg.overshoot, -1, -cfg.overshoot_stride).flip(0)


def kl_terms(
    cfg: WorldModelConfig, logits: Tensor, prior_logits: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """DreamerV3's dynamics and representation terms with free bits, from raw logits.

    Returns ``(dyn, rep, kl_dyn, post, prior)``: the two clamped means, the unclamped
    dynamics KL (for metrics) and the unimix log-probabilities of posterior and prior.
    Shared by the flat and the graph world model.
    """
    post = unimix_logits(logits, cfg.unimix)
    prior = unimix_logits(prior_logits, cfg.unimix)
    kl_dyn = kl_categorical(post.detach(), prior)
    kl_rep = kl_categorical(post, prior.detach())
    dyn = torch.clamp(kl_dyn, min=cfg.free_nats).mean()
    rep = torch.clamp(kl_rep, min=cfg.free_nats).mean()
    return dyn, rep, kl_dyn, post, prior


def total_loss(
    terms: dict[str, Tensor], metrics: dict[str, float], scales: dict[str, float]
) -> tuple[Tensor, dict[str, float]]:
    """``sum(scale * term)`` and the metrics with every unscaled term and the total added."""
    total = torch.stack([scales[k] * v for k, v in terms.items()]).sum()
    out = {**{f"wm/{k}": float(v.detach()) for k, v in terms.items()}, **metrics}
    out["wm/loss"] = float(total.detach())
    return total, out


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

    def _nll_weight(self, std: Tensor) -> Tensor | float:
        """beta-NLL weight ``sg(std) ** (2 * dec_beta)`` of each value (1.0 when beta is 0)."""
        beta = self.cfg.dec_beta
        return std.detach() ** (2.0 * beta) if beta > 0 else 1.0

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
            "dec": (nll * self._nll_weight(std)).sum(-1).mean(),
            "rew": self.twohot.loss(self.reward_logits(feat), batch["reward"]).mean(),
            "cont": bernoulli_nll(self.cont_head(feat)[..., 0], batch["cont"]).mean(),
            "viol": bernoulli_nll(self.violation_head(feat)[..., 0], batch["violation"]).mean(),
        }
        terms["dyn"], terms["rep"], kl_dyn, post, prior = kl_terms(
            self.cfg, states.logits, states.prior_logits
        )

        with torch.no_grad():
            observed = mask.sum().clamp(min=1.0)
            metrics = {
                "wm/kl": float(kl_dyn.mean()),
                "wm/dec_nll_per_value": float(nll.sum() / observed),
                "wm/dec_abs_err": float(((target - mean).abs() * mask).sum() / observed),
                "wm/post_ent": float(_entropy(post)),
                "wm/prior_ent": float(_entropy(prior)),
            }
        if self.cfg.overshoot > 0:
            terms["over"], over_metrics = self.overshoot_loss(batch, states, generator)
            metrics.update(over_metrics)
        return terms, metrics, states

    def overshoot_starts(self, t_len: int) -> Tensor:
        """Start steps ``[N]`` of the overshooting rollouts (:func:`overshoot_starts`)."""
        return overshoot_starts(self.cfg, t_len)

    def overshoot_loss(
        self,
        batch: dict[str, Tensor],
        states: States,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """The multi-step term ``over`` and its metrics (``cfg.overshoot = H > 0``).

        From the posterior state at each start ``s`` (:meth:`overshoot_starts`) the prior
        is rolled forward under the actions of steps ``s + 1 .. s + H`` (all ``B * N``
        rollouts in one batch, latents sampled with ``generator``), and each imagined
        state ``s + k`` is scored against step ``s + k`` of the batch: the decoder's
        Gaussian NLL summed over the observed values (mask 1), plus, with
        ``overshoot_heads``, the reward and violation losses and, with ``overshoot_kl > 0``,
        ``overshoot_kl * max(free_nats, KL(sg(post_{s+k}) || prior_k))``. A step at or after
        an ``is_first`` inside the window (``s + 1 .. s + k``) belongs to another episode
        and counts for nothing. The term is the mean over the counted ``(b, s, k)``.

        Metrics: ``wm/over_dec`` (the NLL part), ``wm/over_abs_err`` (mean absolute error
        of the decoded mean, symlog units, over counted values) and ``wm/over_abs_err_last``
        (the same at ``k = H``).
        """
        cfg = self.cfg
        h = cfg.overshoot
        obs = batch["obs"]
        b, t_len, _ = obs.shape
        starts = self.overshoot_starts(t_len).to(obs.device)
        n = int(starts.numel())
        if n == 0:
            raise ValueError(f"overshoot={h} needs sequences of more than {h} steps, got {t_len}")
        idx = starts[:, None] + torch.arange(1, h + 1, device=obs.device)[None]  # [N, H]

        deter0, stoch0 = states.deter[:, starts], states.stoch[:, starts]  # [B, N, ...]
        if cfg.overshoot_detach:
            deter0, stoch0 = deter0.detach(), stoch0.detach()
        carry = Carry(deter0.reshape(b * n, -1), stoch0.reshape(b * n, *stoch0.shape[-2:]))
        actions = batch["action"][:, idx].reshape(b * n, h, -1)  # [B * N, H, A]
        rollout = self.imagine(carry, actions, generator=generator)
        feat = self.feat(rollout).reshape(b, n, h, -1)  # [B, N, H, F]

        # a step counts while no episode started inside the window up to and including it
        valid = (batch["is_first"][:, idx].cumsum(-1) == 0).to(obs.dtype)  # [B, N, H]
        counted = valid.sum().clamp(min=1.0)
        lay = self.layout
        target = obs[:, idx][..., lay.values]  # [B, N, H, V]
        mask = obs[:, idx][..., lay.mask] * valid[..., None]
        mean, std = self.decode(feat)
        nll = (gaussian_nll(target, mean, std) * mask).sum(-1)  # [B, N, H]
        dec = nll.sum() / counted
        per_step = nll
        if cfg.overshoot_heads:
            rew = self.twohot.loss(self.reward_logits(feat), batch["reward"][:, idx])
            viol = bernoulli_nll(self.violation_head(feat)[..., 0], batch["violation"][:, idx])
            per_step = per_step + (rew + viol) * valid
        if cfg.overshoot_kl > 0:
            post = unimix_logits(states.logits[:, idx], cfg.unimix).detach()
            prior = unimix_logits(rollout.logits, cfg.unimix).reshape(post.shape)
            kl = torch.clamp(kl_categorical(post, prior), min=cfg.free_nats)
            per_step = per_step + cfg.overshoot_kl * kl * valid
        term = per_step.sum() / counted

        with torch.no_grad():
            err = (target - mean).abs() * mask
            metrics = {
                "wm/over_dec": float(dec),
                "wm/over_abs_err": float(err.sum() / mask.sum().clamp(min=1.0)),
                "wm/over_abs_err_last": float(
                    err[:, :, -1].sum() / mask[:, :, -1].sum().clamp(min=1.0)
                ),
            }
        return term, metrics

    def scales(self) -> dict[str, float]:
        """Loss scale of each term."""
        return loss_scales(self.cfg)

    def loss(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float], States]:
        """Total loss ``sum(scale * term)``, metrics and the posterior States of ``batch``.

        Metrics: ``wm/<term>`` (unscaled), ``wm/loss``, ``wm/kl``, ``wm/dec_nll_per_value``,
        ``wm/dec_abs_err``, ``wm/post_ent``, ``wm/prior_ent``; with overshooting also
        ``wm/over`` and the metrics of :meth:`overshoot_loss`.
        """
        terms, metrics, states = self.loss_terms(batch, generator)
        total, metrics = total_loss(terms, metrics, self.scales())
        return total, metrics, states


def _entropy(logp: Tensor) -> Tensor:
    """Mean entropy (summed over latents) of normalised log-probs ``[..., K, C]``."""
    return -(logp.exp() * logp).sum((-2, -1)).mean()
