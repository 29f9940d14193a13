"""A reference RSSM world model, written as tutorials and ports write it (benchmark only).

:func:`reference_world_model` builds a straightforward PyTorch RSSM with the sizes and losses of
:class:`agents.world_model.WorldModel`; ``opsworld bench world_model``
(:mod:`agents.bench.world_model`) times both on the same batches.
"""

from __future__ import annotations

from typing import Any


def reference_world_model(
    obs_size: int, value_size: int, action_size: int, cfg: Any
) -> Any:  # returns torch.nn.Module; torch is imported lazily (bench sim does not need it)
    """THE REFERENCE: a straightforward PyTorch RSSM world model, as tutorials and ports write it.

    Same sizes as :class:`agents.world_model.WorldModel` with ``cfg``.
    Per time step inside the Python loop: the reset mask, the input layer, ``nn.GRUCell``
    (dense), the prior MLP and the posterior layer with ``torch.distributions``
    (``OneHotCategoricalStraightThrough`` with 1% unimix, ``rsample``), the decoder
    (``Normal``), the reward (two-hot), continue and violation heads (``Bernoulli``) and
    the KL terms (``kl_divergence``, free bits); the encoder runs once before the loop.
    Same losses and scales as ours. Only the benchmark uses it.
    """
    import torch
    import torch.nn.functional as F
    from torch import distributions as td
    from torch import nn

    def mlp(inp: int, units: int, layers: int) -> list[nn.Module]:
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [nn.Linear(inp if i == 0 else units, units), nn.RMSNorm(units), nn.SiLU()]
        return mods

    k, c, d, h, u = cfg.stoch, cfg.classes, cfg.deter, cfg.hidden, cfg.units
    feat_size = d + k * c
    bins = torch.linspace(-cfg.bin_limit, cfg.bin_limit, cfg.bins)

    def dist(logits: torch.Tensor) -> td.Distribution:
        probs = torch.softmax(logits, -1)
        probs = (1 - cfg.unimix) * probs + cfg.unimix / c
        return td.Independent(td.OneHotCategoricalStraightThrough(probs=probs), 1)

    def twohot(y: torch.Tensor) -> torch.Tensor:
        y = torch.sign(y) * torch.log1p(y.abs())
        y = y.clamp(-cfg.bin_limit, cfg.bin_limit)
        below = (bins <= y[..., None]).sum(-1) - 1
        below = below.clamp(0, cfg.bins - 2)
        w_above = (y - bins[below]) / (bins[below + 1] - bins[below])
        return (
            F.one_hot(below, cfg.bins) * (1 - w_above[..., None])
            + F.one_hot(below + 1, cfg.bins) * w_above[..., None]
        )

    class ReferenceWorldModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(*mlp(obs_size, u, cfg.enc_layers))
            self.img_in = nn.Sequential(*mlp(k * c + action_size, h, 1))
            self.gru = nn.GRUCell(h, d)
            self.prior = nn.Sequential(*mlp(d, h, cfg.img_layers), nn.Linear(h, k * c))
            self.post = nn.Sequential(*mlp(d + u, h, 1), nn.Linear(h, k * c))
            self.decoder = nn.Sequential(
                *mlp(feat_size, u, cfg.dec_layers), nn.Linear(u, 2 * value_size)
            )
            reward_out = nn.Linear(u, cfg.bins)
            nn.init.zeros_(reward_out.weight)  # zero-initialised as in DreamerV3
            nn.init.zeros_(reward_out.bias)
            self.reward = nn.Sequential(*mlp(feat_size, u, cfg.head_layers), reward_out)
            self.cont = nn.Sequential(*mlp(feat_size, u, cfg.head_layers), nn.Linear(u, 1))
            self.viol = nn.Sequential(*mlp(feat_size, u, cfg.head_layers), nn.Linear(u, 1))

        def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            obs, action = batch["obs"], batch["action"]
            b, t_len, _ = obs.shape
            embed = self.encoder(obs)
            deter = torch.zeros(b, d)
            stoch = torch.zeros(b, k, c)
            losses: dict[str, list[torch.Tensor]] = {
                n: [] for n in ("dec", "rew", "cont", "viol", "dyn", "rep")
            }
            for t in range(t_len):
                keep = 1.0 - batch["is_first"][:, t, None]
                deter, stoch = deter * keep, stoch * keep[..., None]
                act = action[:, t] * keep
                x = self.img_in(torch.cat([stoch.flatten(1), act], -1))
                deter = self.gru(x, deter)
                prior_logits = self.prior(deter).view(b, k, c)
                post_logits = self.post(torch.cat([deter, embed[:, t]], -1)).view(b, k, c)
                post = dist(post_logits)
                stoch = post.rsample()
                feat = torch.cat([deter, stoch.flatten(1)], -1)
                mean, raw_std = self.decoder(feat).chunk(2, -1)
                std = cfg.min_std + (cfg.max_std - cfg.min_std) * torch.sigmoid(raw_std + 2.0)
                target = obs[:, t, :value_size]
                mask = obs[:, t, obs_size - value_size :]
                nll = -td.Normal(mean, std).log_prob(target) * mask
                losses["dec"].append(nll.sum(-1))
                rew_logp = torch.log_softmax(self.reward(feat), -1)
                losses["rew"].append(-(twohot(batch["reward"][:, t]) * rew_logp).sum(-1))
                cont = td.Bernoulli(logits=self.cont(feat)[:, 0])
                losses["cont"].append(-cont.log_prob(batch["cont"][:, t]))
                viol = td.Bernoulli(logits=self.viol(feat)[:, 0])
                losses["viol"].append(-viol.log_prob(batch["violation"][:, t]))
                dyn = td.kl_divergence(dist(post_logits.detach()), dist(prior_logits))
                rep = td.kl_divergence(dist(post_logits), dist(prior_logits.detach()))
                losses["dyn"].append(torch.clamp(dyn, min=cfg.free_nats))
                losses["rep"].append(torch.clamp(rep, min=cfg.free_nats))
            scales = {
                "dec": 1.0,
                "rew": 1.0,
                "cont": 1.0,
                "viol": 1.0,
                "dyn": cfg.kl_dyn,
                "rep": cfg.kl_rep,
            }
            return sum(scales[n] * torch.stack(v).mean() for n, v in losses.items())

    return ReferenceWorldModel()
