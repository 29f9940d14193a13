"""The RSSM's filtering recurrence as one autograd function with a hand-written backward.

Training spends most of its time in the time loop of :meth:`RSSM.observe`, where a batch
of 16 rows makes every op small, so per-op overhead (autograd bookkeeping, kernel launch)
and skinny weight-gradient matmuls dominate. :class:`FusedObserve` runs the loop without
autograd and back-propagates through time by hand:

* forward: per step only the recurrence (the two input layers that read the previous
  state, the block-diagonal GRU, the posterior layer and the straight-through draw); the
  layers that do not depend on the recurrence are applied to all steps before the call
  (``pre_act``, ``pre_embed``);
* backward: per step only the gradients that flow through time (input gradients); the
  weight gradients of all steps are computed after the loop, one ``[T*B, in]^T @ [T*B, out]``
  matmul (or one batched matmul for block-diagonal weights) per weight.

The maths is exactly :meth:`RSSM.obs_step`'s (see its docstring); tests compare the values
and the gradients of both paths. Notation: ``H`` hidden, ``D`` deter, ``G`` GRU blocks,
``F`` the width of the GRU's first layer (``D``, or ``3 D`` without hidden layers),
``K x C`` latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class FusedSpec:
    """Static settings of one :class:`FusedObserve` call.

    Attributes:
        hidden: H.
        deter: D.
        stoch: K.
        classes: C.
        blocks: G.
        dyn_layers: Hidden layers of the GRU before its gates (0: none).
        unimix: Uniform share mixed into the categoricals.
        norm_eps: RMSNorm epsilon.
        sample: Draw latents with ``noise`` (else take the modes).
        resets: Per step, whether any row starts an episode there.
    """

    hidden: int
    deter: int
    stoch: int
    classes: int
    blocks: int
    dyn_layers: int
    unimix: float
    norm_eps: float
    sample: bool
    resets: tuple[bool, ...]


# --------------------------------------------------------------------------- pieces


_aten = torch.ops.aten


def _rms(x: Tensor, scale: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(x * r * scale, r)`` with ``r = rsqrt(mean(x^2) + eps)`` (as ``F.rms_norm``)."""
    y, r = _aten._fused_rms_norm(x, [x.shape[-1]], scale, eps)
    return y, r


def _rms_bwd(gy: Tensor, x: Tensor, r: Tensor, scale: Tensor) -> Tensor:
    """Input gradient of :func:`_rms` (the scale's gradient is summed later)."""
    gxh = gy * scale
    xhat = x * r
    return r * (gxh - xhat * (gxh * xhat).mean(-1, keepdim=True))


def _silu_bwd(g: Tensor, z: Tensor) -> Tensor:
    return _aten.silu_backward(g, z)


def _bmm(x: Tensor, w: Tensor) -> Tensor:
    """Block-diagonal ``x [N, G*i] -> [N, G*o]`` for ``w [G, i, o]``."""
    g = w.shape[0]
    if g == 1:
        return x @ w[0]
    n = x.shape[0]
    return torch.bmm(x.view(n, g, -1).transpose(0, 1), w).transpose(0, 1).reshape(n, -1)


def _bmm_t(gy: Tensor, w: Tensor) -> Tensor:
    """Input gradient of :func:`_bmm`: ``gy [N, G*o] -> [N, G*i]``."""
    g = w.shape[0]
    if g == 1:
        return gy @ w[0].t()
    n = gy.shape[0]
    out = torch.bmm(gy.view(n, g, -1).transpose(0, 1), w.transpose(1, 2))
    return out.transpose(0, 1).reshape(n, -1)


def _bmm_wgrad(x: Tensor, gy: Tensor, g: int) -> Tensor:
    """Weight gradient of :func:`_bmm` over all rows: ``[G, i, o]``."""
    if g == 1:
        return (x.t() @ gy)[None]
    n = x.shape[0]
    xs = x.reshape(n, g, -1).permute(1, 2, 0)  # [G, i, N]
    return torch.bmm(xs, gy.reshape(n, g, -1).transpose(0, 1))


def _wgrad(x: list[Tensor], gy: list[Tensor]) -> Tensor:
    """``sum_t x_t^T gy_t`` as one matmul."""
    return torch.cat(x).t() @ torch.cat(gy)


def _scale_grad(gy: list[Tensor], x: list[Tensor], r: list[Tensor]) -> Tensor:
    """Gradient of an RMSNorm scale over all steps: ``sum gy * x * r``."""
    return (torch.cat(gy) * torch.cat(x) * torch.cat(r)).sum(0)


# --------------------------------------------------------------------------- function


class FusedObserve(torch.autograd.Function):
    """Filtering over T steps; see the module docstring.

    Inputs (after ``spec``): ``pre_act [B, T, F]`` (the action layer's contribution to the
    GRU's first layer), ``pre_embed [B, T, H]`` (the embedding's contribution to the
    posterior layer), ``keep [B, T]`` (0 where ``is_first``), ``noise [B, T, K, 1]``
    (uniforms; ignored when not sampling), ``deter0 [B, D]``, ``stoch0 [B, K, C]``,
    ``proj0 = deter0 @ w_deter[:, H:]``, and the weights ``w_stoch [K*C, H]``, ``s0``,
    ``s1`` (norm scales of the deter and stoch input layers), ``w_x01 [2H, F]``,
    ``w_deter [D, 2H]`` (the posterior's and the deter input layer's deter parts),
    ``w_in_h [G, D/G, F/G]`` (the GRU's recurrent blocks), ``s_post``,
    ``w_logit [H, K*C]``, ``b_logit``, ``gate_b``
    (gate bias), then per hidden layer its norm scale, then the block weights of the later
    hidden layers and of the gates (``[G, i, o]``).

    Outputs: ``deter [B, T, D]``, ``stoch [B, T, K, C]`` (one-hot, straight-through),
    ``logits [B, T, K, C]`` (raw posterior logits).
    """

    @staticmethod
    def forward(
        ctx: Any,
        spec: FusedSpec,
        pre_act: Tensor,
        pre_embed: Tensor,
        keep: Tensor,
        noise: Tensor,
        deter0: Tensor,
        stoch0: Tensor,
        proj0: Tensor,
        w_stoch: Tensor,
        s0: Tensor,
        s1: Tensor,
        w_x01: Tensor,
        w_deter: Tensor,
        w_in_h: Tensor,
        s_post: Tensor,
        w_logit: Tensor,
        b_logit: Tensor,
        gate_b: Tensor,
        *layer_params: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Run the T steps without autograd; keep what the backward needs on ``ctx``."""
        h, d, k, c, g, n_hid = (
            spec.hidden,
            spec.deter,
            spec.stoch,
            spec.classes,
            spec.blocks,
            spec.dyn_layers,
        )
        eps = spec.norm_eps
        hid_scales = layer_params[:n_hid]
        blocks_w = layer_params[n_hid:]  # later hidden layers, then the gates (if n_hid > 0)
        b, t_len = pre_act.shape[:2]
        dg = d // g
        mix = spec.unimix

        deter, stoch, proj = deter0, stoch0.flatten(1), proj0
        sv: dict[str, list[Tensor]] = {
            name: []
            for name in (
                "keep",
                "deter_p",
                "stoch_p",
                "n0",
                "x0",
                "r0",
                "n1",
                "x1",
                "r1",
                "x01",
                "rs",
                "cc",
                "cand",
                "us",
                "deter",
                "np",
                "xp_in",
                "rp",
                "xp",
                "sm",
            )
        }
        hid: list[dict[str, list[Tensor]]] = [
            {"n": [], "x": [], "r": [], "out": []} for _ in range(n_hid)
        ]
        deters, stochs, logits = [], [], []
        for t in range(t_len):
            if spec.resets[t]:
                kt = keep[:, t, None]
                deter, proj, stoch = deter * kt, proj * kt, stoch * kt
            sv["deter_p"].append(deter)
            sv["stoch_p"].append(stoch)
            a0 = proj[:, :h]
            n0, r0 = _rms(a0, s0, eps)
            a1 = stoch @ w_stoch
            n1, r1 = _rms(a1, s1, eps)
            x01 = torch.cat([torch.nn.functional.silu(n0), torch.nn.functional.silu(n1)], 1)
            first = torch.addmm(pre_act[:, t] + _bmm(deter, w_in_h), x01, w_x01)
            for name, v in (
                ("n0", n0),
                ("x0", a0),
                ("r0", r0),
                ("n1", n1),
                ("x1", a1),
                ("r1", r1),
                ("x01", x01),
            ):
                sv[name].append(v)
            if n_hid:
                z = first
                for i in range(n_hid):
                    if i > 0:
                        z = _bmm(z, blocks_w[i - 1])
                    n, r = _rms(z, hid_scales[i], eps)
                    hid[i]["x"].append(z)
                    z = torch.nn.functional.silu(n)
                    hid[i]["n"].append(n)
                    hid[i]["r"].append(r)
                    hid[i]["out"].append(z)
                gates = _bmm(z, blocks_w[-1]) + gate_b
            else:
                gates = first + gate_b
            grouped = gates.view(b, g, 3, dg)
            rs = torch.sigmoid(grouped[:, :, 0].reshape(b, d))
            cc = grouped[:, :, 1].reshape(b, d)
            cand = torch.tanh(rs * cc)
            us = torch.sigmoid(grouped[:, :, 2].reshape(b, d) - 1.0)
            deter = torch.lerp(deter, cand, us)
            proj_all = deter @ w_deter
            xhp = proj_all[:, :h] + pre_embed[:, t]
            npost, rp = _rms(xhp, s_post, eps)
            xp = torch.nn.functional.silu(npost)
            lg = torch.addmm(b_logit, xp, w_logit).view(b, k, c)
            sm = torch.softmax(lg, -1)
            probs = (1.0 - mix) * sm + mix / c if mix > 0 else sm
            if spec.sample:
                idx = (probs.cumsum(-1) < noise[:, t]).sum(-1, keepdim=True).clamp_(max=c - 1)
            else:
                idx = probs.argmax(-1, keepdim=True)
            onehot = torch.zeros_like(probs).scatter_(-1, idx, 1.0)
            stoch = onehot.view(b, k * c)
            proj = proj_all[:, h:]
            for name, v in (
                ("rs", rs),
                ("cc", cc),
                ("cand", cand),
                ("us", us),
                ("deter", deter),
                ("np", npost),
                ("xp_in", xhp),
                ("rp", rp),
                ("xp", xp),
                ("sm", sm),
            ):
                sv[name].append(v)
            deters.append(deter)
            stochs.append(onehot)
            logits.append(lg)

        ctx.spec = spec
        ctx.sv = sv
        ctx.hid = hid
        ctx.keep = keep
        ctx.weights = (
            w_stoch,
            s0,
            s1,
            w_x01,
            w_deter,
            w_in_h,
            s_post,
            w_logit,
            hid_scales,
            blocks_w,
        )
        return torch.stack(deters, 1), torch.stack(stochs, 1), torch.stack(logits, 1)

    @staticmethod
    def backward(
        ctx: Any,
        g_deter_seq: Tensor | None,
        g_stoch_seq: Tensor | None,
        g_logits_seq: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        """Back-propagate through time; weight gradients of all steps after the loop."""
        spec: FusedSpec = ctx.spec
        sv, hid, keep = ctx.sv, ctx.hid, ctx.keep
        w_stoch, s0, s1, w_x01, w_deter, w_in_h, s_post, w_logit, hid_scales, blocks_w = ctx.weights
        h, d, k, c, g, n_hid = (
            spec.hidden,
            spec.deter,
            spec.stoch,
            spec.classes,
            spec.blocks,
            spec.dyn_layers,
        )
        t_len = len(sv["deter"])
        b = sv["deter"][0].shape[0]
        dg = d // g
        mix = spec.unimix
        zeros_d = sv["deter"][0].new_zeros(b, d)
        # gradients flowing back in time into the state after step t
        g_deter = zeros_d
        g_stoch = sv["stoch_p"][0].new_zeros(b, k * c)
        g_proj = sv["deter"][0].new_zeros(b, w_deter.shape[1] - h)
        w_deter_t = w_deter.t()
        w_x01_t = w_x01.t()
        w_stoch_t = w_stoch.t()
        w_logit_t = w_logit.t()
        rec: dict[str, list[Tensor]] = {
            n: [] for n in ("lg", "proj_all", "gates", "first", "a1", "n0", "n1", "np")
        }
        g_hid: list[dict[str, list[Tensor]]] = [{"z": [], "n": []} for _ in range(n_hid)]
        for t in range(t_len - 1, -1, -1):
            # posterior logits and the straight-through draw
            g_probs = g_stoch.view(b, k, c)
            if g_stoch_seq is not None:
                g_probs = g_probs + g_stoch_seq[:, t]
            sm = sv["sm"][t]
            g_sm = g_probs * (1.0 - mix) if mix > 0 else g_probs
            g_lg = _aten._softmax_backward_data(g_sm, sm, -1, sm.dtype)
            if g_logits_seq is not None:
                g_lg = g_lg + g_logits_seq[:, t]
            g_lg = g_lg.reshape(b, k * c)
            g_np = _silu_bwd(g_lg @ w_logit_t, sv["np"][t])
            g_post = _rms_bwd(g_np, sv["xp_in"][t], sv["rp"][t], s_post)
            g_proj_all = torch.cat([g_post, g_proj], 1)
            g_dt = g_deter + g_proj_all @ w_deter_t
            if g_deter_seq is not None:
                g_dt = g_dt + g_deter_seq[:, t]
            # GRU update: deter = deter_p + us * (cand - deter_p)
            us, cand, rs, cc = sv["us"][t], sv["cand"][t], sv["rs"][t], sv["cc"][t]
            deter_p = sv["deter_p"][t]
            g_u = _aten.sigmoid_backward(g_dt * (cand - deter_p), us)
            g_pre = _aten.tanh_backward(g_dt * us, cand)
            g_r = _aten.sigmoid_backward(g_pre * cc, rs)
            g_c = g_pre * rs
            g_gates = torch.stack(
                [g_r.view(b, g, dg), g_c.view(b, g, dg), g_u.view(b, g, dg)], 2
            ).view(b, 3 * d)
            g_deter_p = torch.addcmul(g_dt, g_dt, us, value=-1.0)
            if n_hid:
                g_z = _bmm_t(g_gates, blocks_w[-1])
                for i in range(n_hid - 1, -1, -1):
                    g_n = _silu_bwd(g_z, hid[i]["n"][t])
                    g_hid[i]["n"].append(g_n)
                    g_z = _rms_bwd(g_n, hid[i]["x"][t], hid[i]["r"][t], hid_scales[i])
                    if i > 0:
                        g_hid[i]["z"].append(g_z)
                        g_z = _bmm_t(g_z, blocks_w[i - 1])
                g_first = g_z
            else:
                g_first = g_gates
            # first layer: pre_act + proj_p[:, H:] + [x0, x1] @ w_x01
            g_x01 = g_first @ w_x01_t
            g_n0 = _silu_bwd(g_x01[:, :h], sv["n0"][t])
            g_n1 = _silu_bwd(g_x01[:, h:], sv["n1"][t])
            g_a0 = _rms_bwd(g_n0, sv["x0"][t], sv["r0"][t], s0)
            g_a1 = _rms_bwd(g_n1, sv["x1"][t], sv["r1"][t], s1)
            g_proj = g_a0
            g_stoch = g_a1 @ w_stoch_t
            g_deter = g_deter_p + _bmm_t(g_first, w_in_h)
            if spec.resets[t]:
                kt = keep[:, t, None]
                g_deter, g_proj, g_stoch = g_deter * kt, g_proj * kt, g_stoch * kt
            for name, v in (
                ("lg", g_lg),
                ("proj_all", g_proj_all),
                ("gates", g_gates),
                ("first", g_first),
                ("a1", g_a1),
                ("n0", g_n0),
                ("n1", g_n1),
                ("np", g_np),
            ):
                rec[name].append(v)

        # weight gradients of all steps at once (rec lists run backwards in time)
        for v in rec.values():
            v.reverse()
        for gh in g_hid:
            for v in gh.values():
                v.reverse()
        g_w_stoch = _wgrad(sv["stoch_p"], rec["a1"])
        g_s0 = _scale_grad(rec["n0"], sv["x0"], sv["r0"])
        g_s1 = _scale_grad(rec["n1"], sv["x1"], sv["r1"])
        g_w_x01 = _wgrad(sv["x01"], rec["first"])
        g_w_deter = _wgrad(sv["deter"], rec["proj_all"])
        g_w_in_h = _bmm_wgrad(torch.cat(sv["deter_p"]), torch.cat(rec["first"]), g)
        g_s_post = _scale_grad(rec["np"], sv["xp_in"], sv["rp"])
        g_w_logit = _wgrad(sv["xp"], rec["lg"])
        g_b_logit = torch.cat(rec["lg"]).sum(0)
        g_gate_b = torch.cat(rec["gates"]).sum(0)
        g_hid_scales = [_scale_grad(g_hid[i]["n"], hid[i]["x"], hid[i]["r"]) for i in range(n_hid)]
        g_blocks: list[Tensor] = []
        for i in range(1, n_hid):
            g_blocks.append(_bmm_wgrad(torch.cat(hid[i - 1]["out"]), torch.cat(g_hid[i]["z"]), g))
        if n_hid:
            g_blocks.append(_bmm_wgrad(torch.cat(hid[-1]["out"]), torch.cat(rec["gates"]), g))
        g_pre_act = torch.stack(rec["first"], 1)
        g_pre_embed = torch.stack([ga[:, :h] for ga in rec["proj_all"]], 1)
        return (
            None,  # spec
            g_pre_act,
            g_pre_embed,
            None,  # keep
            None,  # noise
            g_deter,
            g_stoch.view(b, k, c),
            g_proj,
            g_w_stoch,
            g_s0,
            g_s1,
            g_w_x01,
            g_w_deter,
            g_w_in_h,
            g_s_post,
            g_w_logit,
            g_b_logit,
            g_gate_b,
            *g_hid_scales,
            *g_blocks,
        )
