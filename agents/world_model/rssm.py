"""Recurrent state-space model with discrete latents (DreamerV3's RSSM, arXiv:2301.04104).

State: ``deter`` ``[B, D]`` (block-diagonal GRU) and ``stoch`` ``[B, K, C]`` (K one-hot
categoricals of C classes, sampled with straight-through gradients). One step:

* ``deter_t = GRU(deter_{t-1}, [f0(deter_{t-1}), f1(stoch_{t-1}), f2(action_t)])``
  (each ``f`` a linear + RMSNorm + SiLU layer; ``action_t`` is the action that led to
  observation ``t`` and is divided by ``max(1, |a|)``);
* prior ``p(stoch_t | deter_t)``: an MLP on ``deter_t``;
* posterior ``q(stoch_t | deter_t, embed_t)``: one layer on ``[deter_t, embed_t]``;
* both with 1% unimix; ``is_first_t`` resets the carry (and the action) to
  :meth:`RSSM.initial` (zeros) before the step, as DreamerV3 does.

:meth:`RSSM.observe` is written for CPU throughput: only the recurrence runs in the Python
time loop; the action and embedding projections are computed for all steps at once before
it, the prior after it; the two dense layers that read ``deter_t`` (the posterior's and
the next step's ``f0``) are one matmul; sampling noise is drawn once; and the loop is one
autograd function with a hand-written backward through time
(:mod:`agents.world_model.fused`). :meth:`RSSM.obs_step` is the plain one-step version
(for acting online, and the reference the tests compare values and gradients with).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from agents.world_model.config import WorldModelConfig
from agents.world_model.fused import FusedObserve, FusedSpec
from agents.world_model.math import unimix_probs
from agents.world_model.nets import MLP, BlockGRU, Dense, Linear


@dataclass
class Carry:
    """Recurrent state of B streams.

    Attributes:
        deter: ``[B, D]`` GRU state.
        stoch: ``[B, K, C]`` one-hot sample (straight-through); zeros in the initial state.
    """

    deter: Tensor
    stoch: Tensor

    def detach(self) -> Carry:
        """The same state without gradient history."""
        return Carry(self.deter.detach(), self.stoch.detach())

    def __len__(self) -> int:
        return int(self.deter.shape[0])


@dataclass
class States:
    """Latent states of B sequences of T steps.

    Attributes:
        deter: ``[B, T, D]``.
        stoch: ``[B, T, K, C]`` one-hot samples.
        logits: ``[B, T, K, C]`` raw logits (before unimix) of the distribution ``stoch``
            was drawn from: the posterior for :meth:`RSSM.observe`, the prior for
            :meth:`RSSM.imagine`.
        prior_logits: ``[B, T, K, C]`` raw prior logits (``observe`` only, else None).
    """

    deter: Tensor
    stoch: Tensor
    logits: Tensor
    prior_logits: Tensor | None = None

    def carry(self, t: int) -> Carry:
        """The carry after step ``t`` (negative ``t`` counts from the end)."""
        return Carry(self.deter[:, t], self.stoch[:, t])

    def flatten(self) -> Carry:
        """All ``B * T`` states as one carry (row ``b * T + t``), e.g. to start imagination."""
        d, s = self.deter, self.stoch
        return Carry(d.reshape(-1, d.shape[-1]), s.reshape(-1, *s.shape[-2:]))

    def detach(self) -> States:
        """The same states without gradient history."""
        prior = self.prior_logits
        return States(
            self.deter.detach(),
            self.stoch.detach(),
            self.logits.detach(),
            None if prior is None else prior.detach(),
        )

    @property
    def shape(self) -> tuple[int, int]:
        """``(B, T)``."""
        return int(self.deter.shape[0]), int(self.deter.shape[1])


class RSSM(nn.Module):
    """DreamerV3's RSSM with discrete latents; see the module docstring.

    Args:
        embed_size: Size E of the observation embedding.
        action_size: Size A of the action features.
        cfg: Sizes (``deter``, ``hidden``, ``stoch``, ``classes``, ``gru_blocks``,
            ``dyn_layers``, ``img_layers``) and ``unimix``.
    """

    def __init__(self, embed_size: int, action_size: int, cfg: WorldModelConfig) -> None:
        super().__init__()
        self.embed_size = embed_size
        self.action_size = action_size
        self.deter = cfg.deter
        self.stoch = cfg.stoch
        self.classes = cfg.classes
        self.unimix = cfg.unimix
        h = cfg.hidden
        self.hidden = h
        self.in_deter = Dense(cfg.deter, h)
        self.in_stoch = Dense(cfg.stoch * cfg.classes, h)
        self.in_action = Dense(action_size, h)
        self.gru = BlockGRU(3 * h, cfg.deter, cfg.gru_blocks, cfg.dyn_layers)
        self.prior_mlp = MLP(cfg.deter, h, cfg.img_layers)
        self.prior_out = Linear(self.prior_mlp.out_size, cfg.stoch * cfg.classes)
        self.post_in = Dense(cfg.deter + embed_size, h)
        self.post_out = Linear(h, cfg.stoch * cfg.classes)

    # ------------------------------------------------------------------ state
    def initial(self, batch: int) -> Carry:
        """The initial state: zeros (DreamerV3), ``deter [B, D]``, ``stoch [B, K, C]``."""
        p = self.prior_out.weight
        return Carry(
            torch.zeros(batch, self.deter, dtype=p.dtype, device=p.device),
            torch.zeros(batch, self.stoch, self.classes, dtype=p.dtype, device=p.device),
        )

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _norm_action(action: Tensor) -> Tensor:
        return action / torch.clamp(action.abs(), min=1.0).detach()

    def _core(self, deter: Tensor, stoch: Tensor, action: Tensor) -> Tensor:
        """``deter_t`` ``[B, D]`` from ``deter_{t-1}``, ``stoch_{t-1}`` and ``action_t``."""
        x = torch.cat(
            [
                self.in_deter(deter),
                self.in_stoch(stoch.flatten(-2)),
                self.in_action(self._norm_action(action)),
            ],
            -1,
        )
        return self.gru(x, deter)

    def prior_logits(self, deter: Tensor) -> Tensor:
        """Raw prior logits ``[..., K, C]`` from ``deter`` ``[..., D]``."""
        out = self.prior_out(self.prior_mlp(deter))
        return out.unflatten(-1, (self.stoch, self.classes))

    def post_logits(self, deter: Tensor, embed: Tensor) -> Tensor:
        """Raw posterior logits ``[..., K, C]`` from ``deter`` and ``embed``."""
        out = self.post_out(self.post_in(torch.cat([deter, embed], -1)))
        return out.unflatten(-1, (self.stoch, self.classes))

    def sample(
        self, logits: Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> Tensor:
        """One-hot draw (or mode) from the unimix distribution of ``logits`` ``[..., K, C]``.

        Gradients pass straight through: ``onehot + (p - sg(p))`` (exactly one-hot values).
        """
        probs = unimix_probs(logits, self.unimix)
        if sample:
            u = torch.rand(
                (*probs.shape[:-1], 1), generator=generator, dtype=probs.dtype, device=probs.device
            )
            return self._draw(probs, u)
        idx = probs.argmax(-1, keepdim=True)
        onehot = torch.zeros_like(probs).scatter_(-1, idx, 1.0)
        return onehot + (probs - probs.detach())

    @staticmethod
    def _draw(probs: Tensor, u: Tensor) -> Tensor:
        """Inverse-CDF draw with uniform noise ``u`` ``[..., 1]``; straight-through."""
        with torch.no_grad():
            idx = (probs.cumsum(-1) < u).sum(-1, keepdim=True).clamp_(max=probs.shape[-1] - 1)
            onehot = torch.zeros_like(probs).scatter_(-1, idx, 1.0)
        return onehot + (probs - probs.detach())

    @staticmethod
    def _reset(carry: Carry, action: Tensor, is_first: Tensor) -> tuple[Carry, Tensor]:
        keep = 1.0 - is_first.to(carry.deter.dtype)
        return (
            Carry(carry.deter * keep[:, None], carry.stoch * keep[:, None, None]),
            action * keep[:, None],
        )

    # ------------------------------------------------------------------ one step
    def obs_step(
        self,
        carry: Carry,
        action: Tensor,
        embed: Tensor,
        is_first: Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[Carry, Tensor]:
        """Filter one step (plain, unfused): returns the posterior carry and its raw logits.

        Args:
            carry: State after the previous step.
            action: ``[B, A]`` action that led to this observation.
            embed: ``[B, E]`` embedding of this observation.
            is_first: ``[B]`` 1 where a new episode starts (resets the carry first).
            sample: Draw the latent (else take the mode).
            generator: Torch RNG for the draw (default: the global one).
        """
        carry, action = self._reset(carry, action, is_first)
        deter = self._core(carry.deter, carry.stoch, action)
        logits = self.post_logits(deter, embed)
        return Carry(deter, self.sample(logits, sample, generator)), logits

    def img_step(
        self,
        carry: Carry,
        action: Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> Carry:
        """Predict one step from the prior: ``action`` ``[B, A]`` -> next carry."""
        return self._img_step(carry, action, sample, generator)[0]

    def _img_step(
        self,
        carry: Carry,
        action: Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[Carry, Tensor]:
        deter = self._core(carry.deter, carry.stoch, action)
        logits = self.prior_logits(deter)
        return Carry(deter, self.sample(logits, sample, generator)), logits

    # ------------------------------------------------------------------ sequences
    def imagine(
        self,
        carry: Carry,
        actions: Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> States:
        """Roll the prior forward under ``actions`` ``[B, H, A]`` from ``carry``.

        Returns States of ``[B, H, ...]``, the state after each action; ``logits`` are prior
        logits and ``prior_logits`` is None.
        """
        deters, stochs, logits = [], [], []
        for t in range(actions.shape[1]):
            carry, lg = self._img_step(carry, actions[:, t], sample, generator)
            deters.append(carry.deter)
            stochs.append(carry.stoch)
            logits.append(lg)
        return States(torch.stack(deters, 1), torch.stack(stochs, 1), torch.stack(logits, 1))

    def observe(
        self,
        embed: Tensor,
        action: Tensor,
        is_first: Tensor,
        carry: Carry,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[Carry, States]:
        """Filter B sequences of T steps (fused; same result as T :meth:`obs_step` calls).

        Args:
            embed: ``[B, T, E]`` observation embeddings.
            action: ``[B, T, A]`` action that led to each observation.
            is_first: ``[B, T]`` 1 where an episode starts (resets to :meth:`initial`).
            carry: State before the first step.
            sample: Draw the latents (else take the modes).
            generator: Torch RNG for the draws (default: the global one).

        Returns:
            The carry after the last step, and the posterior States with prior logits.
        """
        b, t_len, _ = embed.shape
        assert action.shape[:2] == (b, t_len), (action.shape, embed.shape)
        assert is_first.shape == (b, t_len), (is_first.shape, embed.shape)
        assert carry.deter.shape == (b, self.deter), (carry.deter.shape, b)
        h, k = self.hidden, self.stoch
        gru = self.gru
        keep = 1.0 - is_first.to(embed.dtype)  # [B, T]

        # everything that does not depend on the recurrence, for all T at once
        act = self._norm_action(action) * keep[..., None]
        pre_act = self.in_action(act) @ gru.in_x[2 * h :]  # [B, T, F]
        w_post = self.post_in.linear.weight  # [D + E, H]
        pre_embed = embed @ w_post[self.deter :]  # [B, T, H]
        # the two dense maps of deter_t: the posterior's and the next step's f0
        w_deter = torch.cat([w_post[: self.deter], self.in_deter.linear.weight], 1)
        if sample:
            noise = torch.rand(
                (b, t_len, k, 1), generator=generator, dtype=embed.dtype, device=embed.device
            )
        else:
            noise = embed.new_zeros(())
        spec = FusedSpec(
            hidden=h,
            deter=self.deter,
            stoch=k,
            classes=self.classes,
            blocks=gru.blocks,
            dyn_layers=len(gru.hidden_norms),
            unimix=self.unimix,
            norm_eps=self.post_in.norm.eps,
            sample=sample,
            resets=tuple(bool(r) for r in (is_first > 0).any(0).tolist()),
        )
        if gru.gates is not None:
            assert gru.gates.bias is not None
            gate_b = gru.gates.bias
            blocks_w = [layer.weight for layer in gru.hidden] + [gru.gates.weight]
        else:
            assert gru.gate_bias is not None
            gate_b, blocks_w = gru.gate_bias, []
        assert self.post_out.bias is not None
        deter_seq, stoch_seq, logits_seq = FusedObserve.apply(
            spec,
            pre_act,
            pre_embed,
            keep,
            noise,
            carry.deter,
            carry.stoch,
            carry.deter @ w_deter[:, h:],
            self.in_stoch.linear.weight,
            self.in_deter.norm.scale,
            self.in_stoch.norm.scale,
            gru.in_x[: 2 * h],
            w_deter,
            gru.in_h.weight,
            self.post_in.norm.scale,
            self.post_out.weight,
            self.post_out.bias,
            gate_b,
            *[norm.scale for norm in gru.hidden_norms],
            *blocks_w,
        )
        states = States(deter_seq, stoch_seq, logits_seq, self.prior_logits(deter_seq))
        return states.carry(-1), states
