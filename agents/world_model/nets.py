"""Network pieces: RMSNorm + SiLU MLPs, block-linear layers and DreamerV3's block-diagonal GRU.

Weights are stored as ``[in, out]`` matrices (``x @ w``), so that the RSSM can fuse several
layers that read the same input into one matmul (see :mod:`agents.world_model.rssm`).
Initialisation: truncated normal with standard deviation ``1 / sqrt(fan_in)``, zero biases.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def init_weight(shape: tuple[int, ...], fan_in: int, scale: float = 1.0) -> nn.Parameter:
    """A ``[.., in, out]`` weight, truncated normal with std ``scale / sqrt(fan_in)``."""
    w = torch.empty(shape)
    if scale == 0.0:
        nn.init.zeros_(w)
    else:
        std = scale / math.sqrt(fan_in)
        nn.init.trunc_normal_(w, std=std, a=-2.0 * std, b=2.0 * std)
    return nn.Parameter(w)


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last axis with a learned scale.

    Args:
        size: Length of the last axis.
        eps: Added to the mean square.
    """

    def __init__(self, size: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(size))

    def forward(self, x: Tensor) -> Tensor:
        """``x / rms(x) * scale``."""
        return F.rms_norm(x, (x.shape[-1],), self.scale, self.eps)


class Linear(nn.Module):
    """``x @ w + b`` with ``w`` stored ``[in, out]``.

    Args:
        inp: Input size.
        out: Output size.
        bias: Whether to add a bias.
        scale: Init scale (0 gives a zero-initialised layer, as DreamerV3's reward head).
    """

    def __init__(self, inp: int, out: int, bias: bool = True, scale: float = 1.0) -> None:
        super().__init__()
        self.weight = init_weight((inp, out), inp, scale)
        self.bias = nn.Parameter(torch.zeros(out)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """Affine map of the last axis."""
        if self.bias is None:
            return x @ self.weight
        if x.dim() == 2:
            return torch.addmm(self.bias, x, self.weight)
        return torch.matmul(x, self.weight) + self.bias


class Dense(nn.Module):
    """``silu(rmsnorm(x @ w))``: DreamerV3's hidden layer (the norm makes a bias redundant).

    Args:
        inp: Input size.
        out: Output size.
    """

    def __init__(self, inp: int, out: int) -> None:
        super().__init__()
        self.linear = Linear(inp, out, bias=False)
        self.norm = RMSNorm(out)

    def forward(self, x: Tensor) -> Tensor:
        """One hidden layer."""
        return F.silu(self.norm(self.linear(x)))


class MLP(nn.Module):
    """``layers`` :class:`Dense` layers of ``units`` (an identity when ``layers == 0``).

    Args:
        inp: Input size.
        units: Width of every layer.
        layers: Number of layers.
    """

    def __init__(self, inp: int, units: int, layers: int) -> None:
        super().__init__()
        sizes = [inp] + [units] * layers
        self.layers = nn.ModuleList(Dense(a, b) for a, b in itertools.pairwise(sizes))
        self.out_size = sizes[-1]

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layers in order."""
        for layer in self.layers:
            x = layer(x)
        return x


class BlockLinear(nn.Module):
    """Block-diagonal linear map: ``blocks`` independent ``[in/g, out/g]`` weights.

    Args:
        inp: Input size (a multiple of ``blocks``).
        out: Output size (a multiple of ``blocks``).
        blocks: Number of blocks g (1 = a dense layer).
        bias: Whether to add a bias.
    """

    def __init__(self, inp: int, out: int, blocks: int, bias: bool = True) -> None:
        super().__init__()
        if inp % blocks or out % blocks:
            raise ValueError(f"BlockLinear: {inp} and {out} must be multiples of {blocks}")
        self.blocks = blocks
        self.weight = init_weight((blocks, inp // blocks, out // blocks), inp // blocks)
        self.bias = nn.Parameter(torch.zeros(out)) if bias else None

    def dense_weight(self) -> Tensor:
        """The equivalent dense ``[in, out]`` matrix (zeros off the diagonal blocks)."""
        if self.blocks == 1:
            return self.weight[0]
        return torch.block_diag(*self.weight.unbind(0))

    def forward(self, x: Tensor) -> Tensor:
        """Each block of ``x``'s last axis maps to the same block of the output."""
        g = self.blocks
        if g == 1:
            y = x @ self.weight[0]
        else:
            xs = x.reshape(*x.shape[:-1], g, x.shape[-1] // g)
            y = torch.einsum("...gi,gio->...go", xs, self.weight).flatten(-2)
        return y if self.bias is None else y + self.bias


def split_gates(gates: Tensor, blocks: int) -> tuple[Tensor, Tensor, Tensor]:
    """Reset, candidate and update pre-activations ``[..., D]`` from ``[..., 3 D]``.

    Block ``g`` of a block-diagonal gate layer outputs ``[reset_g, cand_g, update_g]`` for
    its own ``D / blocks`` units (DreamerV3 splits within each group), so a unit's three
    gates come from the block that reads that unit's slice of the state.
    """
    grouped = gates.unflatten(-1, (blocks, 3, gates.shape[-1] // (3 * blocks)))
    reset, cand, update = grouped.unbind(-2)
    return reset.flatten(-2), cand.flatten(-2), update.flatten(-2)


def gru_update(gates: Tensor, deter: Tensor, blocks: int = 1) -> Tensor:
    """DreamerV3's GRU update from fused gate pre-activations ``[B, 3 D]``.

    ``deter' = u * tanh(r * c) + (1 - u) * deter`` with ``r = sigmoid(.)`` and
    ``u = sigmoid(. - 1)`` (the -1 biases the cell towards keeping its state).
    """
    reset, cand, update = split_gates(gates, blocks)
    cand = torch.tanh(torch.sigmoid(reset) * cand)
    update = torch.sigmoid(update - 1.0)
    return torch.lerp(deter, cand, update)


class BlockGRU(nn.Module):
    """DreamerV3's recurrent cell: block-diagonal GRU over ``deter`` with a shared input.

    Each of the ``blocks`` groups of the state sees its own slice of ``deter`` and the whole
    input ``x``. ``dyn_layers`` hidden layers (RMSNorm + SiLU) come before the gates: the
    first reads ``[deter block, x]``, later ones and the gate layer are block-diagonal.
    The input part of a block's weights is stored as one dense ``[inp, D]`` matrix (every
    block reads all of ``x``), the recurrent part as ``blocks`` square ``[D/g, D/g]`` ones,
    which is the same map as DreamerV3's ``BlockLinear`` over the repeated input.

    Args:
        inp: Input size.
        deter: State size D (a multiple of ``blocks``).
        blocks: Number of blocks g (1 = a dense GRU).
        dyn_layers: Hidden layers before the gates (0: gates read ``[deter, x]`` directly).
    """

    def __init__(self, inp: int, deter: int, blocks: int, dyn_layers: int = 1) -> None:
        super().__init__()
        if deter % blocks:
            raise ValueError(f"BlockGRU: deter={deter} is not a multiple of blocks={blocks}")
        self.deter = deter
        self.blocks = blocks
        first_out = deter if dyn_layers > 0 else 3 * deter
        fan_in = inp + deter // blocks
        self.in_x = init_weight((inp, first_out), fan_in)
        self.in_h = BlockLinear(deter, first_out, blocks, bias=False)
        with torch.no_grad():
            self.in_h.weight.mul_(math.sqrt(deter // blocks / fan_in))
        self.hidden_norms = nn.ModuleList(RMSNorm(deter) for _ in range(dyn_layers))
        self.hidden = nn.ModuleList(
            BlockLinear(deter, deter, blocks, bias=False) for _ in range(max(dyn_layers - 1, 0))
        )
        self.gates = BlockLinear(deter, 3 * deter, blocks) if dyn_layers > 0 else None
        self.gate_bias = None if dyn_layers > 0 else nn.Parameter(torch.zeros(3 * deter))

    def after_first(self, first: Tensor, deter: Tensor) -> Tensor:
        """From the first layer's pre-activation ``x @ in_x + blocks(deter)`` to ``deter'``."""
        if self.gates is None:
            assert self.gate_bias is not None
            return gru_update(first + self.gate_bias, deter, self.blocks)
        h = F.silu(self.hidden_norms[0](first))
        for layer, norm in zip(self.hidden, self.hidden_norms[1:], strict=True):
            h = F.silu(norm(layer(h)))
        return gru_update(self.gates(h), deter, self.blocks)

    def forward(self, x: Tensor, deter: Tensor) -> Tensor:
        """One step: input ``x`` ``[B, inp]``, state ``deter`` ``[B, D]`` -> ``[B, D]``."""
        return self.after_first(x @ self.in_x + self.in_h(deter), deter)
