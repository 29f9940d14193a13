"""Numerics of the world model: symlog/symexp, two-hot targets, unimix and KL with free bits.

Conventions (DreamerV3, Hafner et al. 2023, arXiv:2301.04104): a categorical latent is
given by logits ``[..., K, C]`` (K latents of C classes); "unimix" mixes 1% of the uniform
distribution into its probabilities; KL terms are summed over the K latents, then clipped
below at the free bits per step; two-hot regression puts a target's probability mass on the
two nearest of ``bins`` buckets that are evenly spaced in symlog space.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def symlog(x: Tensor) -> Tensor:
    """``sign(x) * log(1 + |x|)``."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: Tensor) -> Tensor:
    """``sign(x) * (exp(|x|) - 1)``, the inverse of :func:`symlog`."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def unimix_probs(logits: Tensor, eps: float) -> Tensor:
    """``(1 - eps) softmax(logits) + eps / C`` over the last axis."""
    probs = torch.softmax(logits, -1)
    if eps > 0.0:
        probs = (1.0 - eps) * probs + eps / logits.shape[-1]
    return probs


def unimix_logits(logits: Tensor, eps: float) -> Tensor:
    """Log-probabilities of :func:`unimix_probs` (normalised logits of the mixture)."""
    if eps <= 0.0:
        return torch.log_softmax(logits, -1)
    return torch.log(unimix_probs(logits, eps))


def kl_categorical(post_logits: Tensor, prior_logits: Tensor) -> Tensor:
    """``KL(post || prior)`` of K categoricals ``[..., K, C]``, summed over K: ``[...]``.

    Both arguments are logits (normalised or not); apply :func:`unimix_logits` first to
    get the mixed distributions.
    """
    post_logp = torch.log_softmax(post_logits, -1)
    prior_logp = torch.log_softmax(prior_logits, -1)
    return (post_logp.exp() * (post_logp - prior_logp)).sum((-2, -1))


def kl_free_bits(post_logits: Tensor, prior_logits: Tensor, free: float) -> Tensor:
    """``max(free, KL(post || prior))`` per step, the KL summed over the latents: ``[...]``.

    Stop-gradients are the caller's (the dynamics loss detaches ``post``, the
    representation loss ``prior``).
    """
    kl = kl_categorical(post_logits, prior_logits)
    return torch.clamp(kl, min=free) if free > 0.0 else kl


class TwoHot:
    """Two-hot encoding over ``bins`` buckets evenly spaced in symlog space.

    Targets are squashed with :func:`symlog`, so the buckets are ``symexp``-spaced in raw
    units; values beyond the outer buckets land on them. ``mean`` undoes the squashing.

    Args:
        bins: Number of buckets (odd, so that one sits at zero).
        limit: The outer buckets are at ``+-limit`` in symlog space.
    """

    def __init__(self, bins: int = 255, limit: float = 20.0) -> None:
        if bins < 3 or bins % 2 == 0:
            raise ValueError(f"TwoHot: bins={bins} must be odd and >= 3")
        self.n = bins
        self.limit = limit
        self._step = 2.0 * limit / (bins - 1)
        half = torch.arange(1, (bins - 1) // 2 + 1, dtype=torch.float64) * self._step
        # exactly symmetric, with an exact zero in the middle
        self.bins = torch.cat([-half.flip(0), torch.zeros(1, dtype=torch.float64), half]).float()

    def encode(self, x: Tensor) -> Tensor:
        """Two-hot probabilities ``[..., bins]`` of raw values ``x`` ``[...]``."""
        y = symlog(x.float()).clamp(-self.limit, self.limit)
        pos = (y + self.limit) / self._step
        below = pos.floor().clamp(0, self.n - 1)
        frac = pos - below
        below_i = below.long()
        above_i = (below_i + 1).clamp(max=self.n - 1)
        out = torch.zeros(*x.shape, self.n, dtype=torch.float32, device=x.device)
        out.scatter_add_(-1, below_i.unsqueeze(-1), (1.0 - frac).unsqueeze(-1))
        out.scatter_add_(-1, above_i.unsqueeze(-1), frac.unsqueeze(-1))
        return out

    def mean_probs(self, probs: Tensor) -> Tensor:
        """Raw-unit mean of two-hot probabilities ``[..., bins]``: ``[...]``.

        The sum is symmetric (the halves around the zero bucket are added from the middle
        outwards), so uniform probabilities give exactly 0 as in DreamerV3.
        """
        bins = self.bins.to(probs.device)
        m = (self.n - 1) // 2
        lo = (probs[..., :m] * bins[:m]).flip(-1)
        hi = probs[..., m + 1 :] * bins[m + 1 :]
        return symexp((lo + hi).sum(-1) + probs[..., m] * bins[m])

    def mean(self, logits: Tensor) -> Tensor:
        """Raw-unit expectation of the distribution with ``logits`` ``[..., bins]``: ``[...]``."""
        return self.mean_probs(torch.softmax(logits, -1))

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy of ``logits`` ``[..., bins]`` against the two-hot of raw ``target``."""
        return -(self.encode(target.detach()) * torch.log_softmax(logits, -1)).sum(-1)


def gaussian_nll(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Elementwise negative log-density of ``x`` under ``Normal(mean, std)``."""
    z = (x - mean) / std
    return 0.5 * z * z + torch.log(std) + 0.5 * math.log(2.0 * math.pi)


def bernoulli_nll(logits: Tensor, target: Tensor) -> Tensor:
    """Elementwise negative log-likelihood of 0/1 ``target`` under ``Bernoulli(logits)``."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
