"""One world model for any topology: per-service weights, messages along the call graph.

:class:`GraphWorldModel` holds the weights; none of them depends on the number of services or
on who calls whom, so the same weights run on chain3, boutique, mesh40 or a topology they
never saw. :meth:`GraphWorldModel.bind` ties them to one :class:`TopologyGraph` and returns a
:class:`BoundGraphModel`, which has the interface of the flat
:class:`~agents.world_model.model.WorldModel` (``layout``, ``action_size``, ``initial``,
``observe``, ``obs_step``, ``imagine``, ``feat``, ``decode``, ``violation_prob``,
``loss_terms``, ``loss``, ``scales``), so the trainer and the forecaster take either.

Nodes: the S services plus one global node (the cluster). Every node has a DreamerV3 state,
``deter`` (GRU) and ``stoch`` (K categoricals of C classes, 1% unimix, straight-through
samples); services share one set of weights, the global node has its own.

* **Encoder** (a graph network, Battaglia et al. 2018, arXiv:1806.01261): service ``i``
  reads ``u_i = [values_i, mask_i, cluster values, cluster mask, time, log(1 + #callers),
  log(1 + #callees)]``, the global node ``[cluster values, cluster mask, time]``;
  ``h_i = MLP(u_i)``, ``g = MLP([u_g, mean_i h_i])``, then ``mp_rounds`` residual rounds
  ``h_i += MLP([h_i, mean_{j calls i} h_j, mean_{i calls j} h_j, g])``,
  ``g += MLP([g, mean_i h_i])``. Means (not sums) keep the scale free of the fan-in.
* **Dynamics** per node: ``deter_i' = GRU(deter_i, [f(deter_i), f(stoch_i), f(a_i), f(m_i)])``
  with the message ``m_i = [mean_{callers} deter_j, mean_{callees} deter_j, deter_g]`` for a
  service (``a_i`` its ``(scale, restart, rollback)`` action features) and
  ``m_g = [mean_i deter_i, max_i deter_i]`` for the global node (``a_g`` the cluster action
  features). Prior ``p(stoch_i | deter_i)``, posterior ``q(stoch_i | deter_i, embed_i)``.
* **Decoder, persistence plus a learned residual**: each state carries ``base``, the value
  vector (symlog) the step starts from: the previous observation while filtering (the
  current one on an episode's first step; the last known value where one is missing), the
  previous decoded mean while imagining. The decoder predicts ``mean = base + r(feat_i,
  base_i)`` per node; the output layer of ``r`` starts at zero, so an untrained model
  forecasts exactly persistence and training can only add the change persistence misses.
  With ``dec_stoch=False`` ``r`` reads ``[deter_i, base_i]`` (not the step's latent, which
  the posterior drew after seeing the value it decodes).
* **Heads**: reward (two-hot), continue and violation read ``[feat_g, mean_i feat_i,
  max_i feat_i]``.
* **Loss** (DreamerV3, Hafner et al. 2023, arXiv:2301.04104): decoder ``dec_loss="mse"``:
  symlog squared error (``dec_loss="mae"``: absolute error) of the mean plus the Gaussian
  NLL of the std on the detached mean
  (the std only sets the forecast's noise), summed over observed values and divided by the
  number of nodes, so a large topology does not outweigh a small one; KL balancing with free
  bits per node (``dyn`` 1.0, ``rep`` 0.1, ``max(free_nats, KL)`` averaged over the nodes),
  two-hot reward, Bernoulli continue and violation, and the multi-step overshooting term of
  the flat model (prior rollouts decoded against the data).

Permuting the services of a topology (and its edges alike) permutes every per-service output
the same way: every operation is per node or a mean/max over a node set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.world_model.config import ObsLayout, WorldModelConfig
from agents.world_model.math import (
    TwoHot,
    bernoulli_nll,
    gaussian_nll,
    kl_categorical,
    unimix_logits,
    unimix_probs,
)
from agents.world_model.model import Head, kl_terms, loss_scales, overshoot_starts, total_loss
from agents.world_model.nets import MLP, BlockGRU, Dense, Linear
from envs.gym.encoder import (
    ACTION_CLUSTER_FEATURES,
    ACTION_SERVICE_FEATURES,
    CLUSTER_FEATURES,
    SERVICE_FEATURES,
    TIME_FEATURES,
)

BATCH_KEYS: tuple[str, ...] = ("obs", "action", "reward", "cont", "is_first", "violation")


# ------------------------------------------------------------------------------ topology
@dataclass(frozen=True)
class TopologyGraph:
    """The services of a topology (observation order) and its calls.

    Args:
        services: Service names in topology order (the ObsEncoder's order).
        edges: ``(caller, callee)`` index pairs.
        name: The topology's name.
    """

    services: tuple[str, ...]
    edges: tuple[tuple[int, int], ...] = ()
    name: str = "custom"

    def __post_init__(self) -> None:
        n = len(self.services)
        if n < 1:
            raise ValueError("TopologyGraph: needs at least one service")
        bad = [e for e in self.edges if not (0 <= e[0] < n and 0 <= e[1] < n) or e[0] == e[1]]
        if bad:
            raise ValueError(f"TopologyGraph {self.name}: edges {bad} out of range or self-loops")

    @classmethod
    def from_topology(cls, topology: Any) -> TopologyGraph:
        """From an :class:`envs.scenarios.schema.Topology`."""
        names = tuple(s.name for s in topology.services)
        index = {n: i for i, n in enumerate(names)}
        edges = tuple((index[e.src], index[e.dst]) for e in topology.edges)
        return cls(names, edges, topology.name)

    @property
    def n_services(self) -> int:
        """S."""
        return len(self.services)

    def adjacency(self) -> Tensor:
        """``[S, S]`` with ``A[i, j] = 1`` when service ``i`` calls ``j``."""
        a = torch.zeros(self.n_services, self.n_services)
        for i, j in self.edges:
            a[i, j] = 1.0
        return a

    def permuted(self, order: list[int]) -> TopologyGraph:
        """The same graph with services reordered: new service ``k`` is old ``order[k]``."""
        new = {old: k for k, old in enumerate(order)}
        return TopologyGraph(
            tuple(self.services[i] for i in order),
            tuple((new[i], new[j]) for i, j in self.edges),
            self.name,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (:meth:`from_dict`)."""
        return {
            "name": self.name,
            "services": list(self.services),
            "edges": [list(e) for e in self.edges],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TopologyGraph:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(d["services"]), tuple((int(a), int(b)) for a, b in d["edges"]), d["name"])


@dataclass
class GraphOps:
    """Tensors of one topology the model needs: mean-aggregation matrices and degrees.

    Attributes:
        callers: ``[S, S]``, row ``i`` averages over the services that call ``i`` (zeros
            when none do).
        callees: ``[S, S]``, row ``i`` averages over the services ``i`` calls.
        degree: ``[S, 2]`` ``log(1 + #callers), log(1 + #callees)``.
    """

    callers: Tensor
    callees: Tensor
    degree: Tensor

    @classmethod
    def of(cls, graph: TopologyGraph) -> GraphOps:
        """The operators of ``graph``."""
        a = graph.adjacency()  # a[i, j]: i calls j
        n_in = a.sum(0)  # callers of j
        n_out = a.sum(1)
        callers = a.t() / n_in.clamp(min=1.0)[:, None]
        callees = a / n_out.clamp(min=1.0)[:, None]
        degree = torch.stack([torch.log1p(n_in), torch.log1p(n_out)], -1)
        return cls(callers, callees, degree)


# ------------------------------------------------------------------------------ states
@dataclass
class GraphCarry:
    """Recurrent state of B streams on one topology (N = S + 1 nodes, the global last).

    Attributes:
        deter: ``[B, N, D]``.
        stoch: ``[B, N, K, C]`` one-hot samples.
        base: ``[B, V]`` the value vector (symlog) this state's step starts from.
        last: ``[B, V]`` the value vector the next step starts from.
        scale: ``[B, V]`` each value's recent mean absolute one-step change (symlog) known
            before this step (``dec_scaled``; zeros otherwise).
        scale_last: ``[B, V]`` the same after this step (the next step's ``scale``).
    """

    deter: Tensor
    stoch: Tensor
    base: Tensor
    last: Tensor
    scale: Tensor
    scale_last: Tensor

    def detach(self) -> GraphCarry:
        """Without gradient history."""
        return GraphCarry(
            self.deter.detach(),
            self.stoch.detach(),
            self.base.detach(),
            self.last.detach(),
            self.scale.detach(),
            self.scale_last.detach(),
        )

    def __len__(self) -> int:
        return int(self.deter.shape[0])


@dataclass
class GraphStates:
    """States of B sequences of T steps (``[B, T, ...]`` versions of :class:`GraphCarry`).

    ``logits`` are those ``stoch`` was drawn from (posterior for ``observe``, prior for
    ``imagine``); ``prior_logits`` only from ``observe``.
    """

    deter: Tensor
    stoch: Tensor
    base: Tensor
    last: Tensor
    scale: Tensor
    scale_last: Tensor
    logits: Tensor
    prior_logits: Tensor | None = None

    def carry(self, t: int) -> GraphCarry:
        """The carry after step ``t``."""
        return GraphCarry(
            self.deter[:, t],
            self.stoch[:, t],
            self.base[:, t],
            self.last[:, t],
            self.scale[:, t],
            self.scale_last[:, t],
        )

    def flatten(self) -> GraphCarry:
        """All ``B * T`` states as one carry."""

        def f(x: Tensor) -> Tensor:
            return x.reshape(-1, *x.shape[2:])

        return GraphCarry(
            f(self.deter),
            f(self.stoch),
            f(self.base),
            f(self.last),
            f(self.scale),
            f(self.scale_last),
        )

    def detach(self) -> GraphStates:
        """Without gradient history."""
        p = self.prior_logits
        return GraphStates(
            self.deter.detach(),
            self.stoch.detach(),
            self.base.detach(),
            self.last.detach(),
            self.scale.detach(),
            self.scale_last.detach(),
            self.logits.detach(),
            None if p is None else p.detach(),
        )

    @property
    def shape(self) -> tuple[int, int]:
        """``(B, T)``."""
        return int(self.deter.shape[0]), int(self.deter.shape[1])


# ------------------------------------------------------------------------------ pieces
class NodeCell(nn.Module):
    """DreamerV3's RSSM step for one kind of node (weights shared by all nodes of the kind).

    Args:
        cfg: Sizes (``deter``, ``hidden``, ``stoch``, ``classes``, ``gru_blocks``,
            ``dyn_layers``, ``img_layers``).
        action_size: Action features per node.
        msg_size: Size of the message input.
        embed_size: Size of the node's observation embedding.
    """

    def __init__(
        self, cfg: WorldModelConfig, action_size: int, msg_size: int, embed_size: int
    ) -> None:
        super().__init__()
        h, d = cfg.hidden, cfg.deter
        self.stoch, self.classes = cfg.stoch, cfg.classes
        self.in_deter = Dense(d, h)
        self.in_stoch = Dense(cfg.stoch * cfg.classes, h)
        self.in_action = Dense(action_size, h)
        self.in_msg = Dense(msg_size, h)
        self.gru = BlockGRU(4 * h, d, cfg.gru_blocks, cfg.dyn_layers)
        self.prior_mlp = MLP(d, h, cfg.img_layers)
        self.prior_out = Linear(self.prior_mlp.out_size, cfg.stoch * cfg.classes)
        self.post_in = Dense(d + embed_size, h)
        self.post_out = Linear(h, cfg.stoch * cfg.classes)

    def core(self, deter: Tensor, stoch: Tensor, action: Tensor, msg: Tensor) -> Tensor:
        """``deter'`` ``[..., D]``."""
        act = action / torch.clamp(action.abs(), min=1.0).detach()
        x = torch.cat(
            [
                self.in_deter(deter),
                self.in_stoch(stoch.flatten(-2)),
                self.in_action(act),
                self.in_msg(msg),
            ],
            -1,
        )
        lead = x.shape[:-1]
        out = self.gru(x.reshape(-1, x.shape[-1]), deter.reshape(-1, deter.shape[-1]))
        return out.reshape(*lead, -1)

    def prior_logits(self, deter: Tensor) -> Tensor:
        """``[..., K, C]``."""
        return self.prior_out(self.prior_mlp(deter)).unflatten(-1, (self.stoch, self.classes))

    def post_logits(self, deter: Tensor, embed: Tensor) -> Tensor:
        """``[..., K, C]``."""
        out = self.post_out(self.post_in(torch.cat([deter, embed], -1)))
        return out.unflatten(-1, (self.stoch, self.classes))


class GraphEncoder(nn.Module):
    """The observation encoder: per-service MLP plus ``rounds`` message-passing rounds."""

    def __init__(self, n_feat: int, n_cluster: int, n_time: int, units: int, rounds: int) -> None:
        super().__init__()
        svc_in = 2 * n_feat + 2 * n_cluster + n_time + 2
        glob_in = 2 * n_cluster + n_time
        self.svc = MLP(svc_in, units, 2)
        self.glob = MLP(glob_in + units, units, 2)
        self.svc_rounds = nn.ModuleList(MLP(4 * units, units, 1) for _ in range(rounds))
        self.glob_rounds = nn.ModuleList(MLP(2 * units, units, 1) for _ in range(rounds))
        self.out_size = units

    def forward(
        self, values: Tensor, mask: Tensor, cluster: Tensor, time: Tensor, ops: GraphOps
    ) -> tuple[Tensor, Tensor]:
        """Service embeddings ``[..., S, E]`` and the global one ``[..., E]``.

        ``values``/``mask`` ``[..., S, F]``, ``cluster`` ``[..., 2 C]`` (values, mask),
        ``time`` ``[..., 4]``.
        """
        s = values.shape[-2]
        lead = values.shape[:-2]
        ctx = torch.cat([cluster, time], -1)
        u = torch.cat(
            [
                values,
                mask,
                ctx.unsqueeze(-2).expand(*lead, s, ctx.shape[-1]),
                ops.degree.expand(*lead, s, 2),
            ],
            -1,
        )
        h = self.svc(u)
        g = self.glob(torch.cat([ctx, h.mean(-2)], -1))
        for svc_mlp, glob_mlp in zip(self.svc_rounds, self.glob_rounds, strict=True):
            up = ops.callers @ h
            down = ops.callees @ h
            h = h + svc_mlp(torch.cat([h, up, down, g.unsqueeze(-2).expand_as(h)], -1))
            g = g + glob_mlp(torch.cat([g, h.mean(-2)], -1))
        return h, g


SCALE_RATE = 0.1
"""Rate of the exponential moving average of ``|one-step change|`` (``dec_scaled``): about
the last 10-20 steps, as LightGBM's recent scale (20 steps)."""

RESIDUAL_SCALE = 0.1
"""Multiplier of the residual head's output. One-step changes are small in symlog units
(persistence is off by ~0.035 on average), while Adam moves every output weight by about
``lr`` per update whatever the gradient's size; the factor makes the residual's early steps
10x smaller, so a young model's noise does not pile up over a 20-step rollout."""


class ResidualHead(nn.Module):
    """Mean residual and std of one node's values from ``[feat, base]``.

    The output layer starts at zero: the residual is 0 (persistence) before training.
    """

    def __init__(
        self, inp: int, out: int, units: int, layers: int, factor: float = RESIDUAL_SCALE
    ) -> None:
        super().__init__()
        self.mlp = MLP(inp, units, layers)
        self.out = Linear(self.mlp.out_size, 2 * out, scale=0.0)
        self.factor = factor

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(residual, raw std)``."""
        res, raw = self.out(self.mlp(x)).chunk(2, -1)
        return self.factor * res, raw


# ------------------------------------------------------------------------------ model
class GraphWorldModel(nn.Module):
    """The topology-free weights (see the module docstring); :meth:`bind` to use them.

    Args:
        cfg: Sizes (per node) and loss settings (``arch`` should be ``graph``).
        service_features: Names of the F per-service features (the ObsEncoder's).
        cluster_features: Names of the C cluster features.
    """

    def __init__(
        self,
        cfg: WorldModelConfig,
        service_features: tuple[str, ...] = SERVICE_FEATURES,
        cluster_features: tuple[str, ...] = CLUSTER_FEATURES,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.service_features = tuple(service_features)
        self.cluster_features = tuple(cluster_features)
        nf, nc, nt = len(service_features), len(cluster_features), len(TIME_FEATURES)
        self.n_feat, self.n_cluster = nf, nc
        self.encoder = GraphEncoder(nf, nc, nt, cfg.units, cfg.mp_rounds)
        e = self.encoder.out_size
        d = cfg.deter
        self.svc_cell = NodeCell(cfg, len(ACTION_SERVICE_FEATURES), 3 * d, e)
        self.glob_cell = NodeCell(cfg, len(ACTION_CLUSTER_FEATURES), 2 * d, e)
        self.node_feat = d + cfg.stoch * cfg.classes
        dec_in = self.node_feat if cfg.dec_stoch else d
        per_value = 2 if cfg.dec_scaled else 1  # base (and log scale) of every value
        factor = 1.0 if cfg.dec_scaled else RESIDUAL_SCALE
        self.svc_dec = ResidualHead(dec_in + per_value * nf, nf, cfg.units, cfg.dec_layers, factor)
        self.glob_dec = ResidualHead(dec_in + per_value * nc, nc, cfg.units, cfg.dec_layers, factor)
        pooled = 3 * (self.node_feat + per_value * max(nf, nc))
        self.reward_head = Head(pooled, cfg.bins, cfg.units, cfg.head_layers, out_scale=0.0)
        self.cont_head = Head(pooled, 1, cfg.units, cfg.head_layers)
        self.violation_head = Head(pooled, 1, cfg.units, cfg.head_layers)
        self.twohot = TwoHot(cfg.bins, cfg.bin_limit)

    def layout(self, n_services: int) -> ObsLayout:
        """The ObsLayout of a topology of ``n_services`` services."""
        return ObsLayout(
            n_services,
            self.n_feat,
            self.n_cluster,
            self.service_features,
            self.cluster_features,
        )

    def bind(self, graph: TopologyGraph) -> BoundGraphModel:
        """These weights on ``graph`` (no copy: training either trains both)."""
        return BoundGraphModel(self, graph)


class BoundGraphModel(nn.Module):
    """A :class:`GraphWorldModel` on one topology, with the flat WorldModel's interface.

    Its ``state_dict`` is the core's (keys ``core.*``), the same for every topology.
    ``feat`` is per node, ``[..., N, D + K C + max(F, C)]`` (``[deter, stoch, base]``; the
    global node's base padded with zeros).

    Args:
        core: The weights.
        graph: The topology.
    """

    def __init__(self, core: GraphWorldModel, graph: TopologyGraph) -> None:
        super().__init__()
        self.core = core
        self.graph = graph
        self.cfg = core.cfg
        self.ops = GraphOps.of(graph)
        self.layout = core.layout(graph.n_services)
        self.n_services = graph.n_services
        self.action_size = len(ACTION_SERVICE_FEATURES) * graph.n_services + len(
            ACTION_CLUSTER_FEATURES
        )
        self.twohot = core.twohot

    def bind(self, graph: TopologyGraph) -> BoundGraphModel:
        """The same weights on another topology."""
        return BoundGraphModel(self.core, graph)

    # ------------------------------------------------------------------ layout helpers
    def _split_values(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """Value vector ``[..., V]`` -> services ``[..., S, F]``, cluster ``[..., C]``."""
        s, f = self.n_services, self.core.n_feat
        return v[..., : s * f].unflatten(-1, (s, f)), v[..., s * f :]

    def _split_action(self, a: Tensor) -> tuple[Tensor, Tensor]:
        k = len(ACTION_SERVICE_FEATURES)
        s = self.n_services
        return a[..., : s * k].unflatten(-1, (s, k)), a[..., s * k :]

    def _embed(self, obs: Tensor) -> Tensor:
        """Node embeddings ``[..., N, E]`` of flat observations ``[..., O]``."""
        lay = self.layout
        assert obs.shape[-1] == lay.obs_size, (obs.shape, lay.obs_size)
        values, cvals = self._split_values(obs[..., lay.values])
        mask, cmask = self._split_values(obs[..., lay.mask])
        h, g = self.core.encoder(
            values, mask, torch.cat([cvals, cmask], -1), obs[..., lay.time], self.ops
        )
        return torch.cat([h, g.unsqueeze(-2)], -2)

    def _core(self, deter: Tensor, stoch: Tensor, action: Tensor) -> Tensor:
        """``deter'`` ``[B, N, D]``."""
        svc_a, glob_a = self._split_action(action)
        d_svc, d_glob = deter[:, :-1], deter[:, -1]
        msg_svc = torch.cat(
            [
                self.ops.callers @ d_svc,
                self.ops.callees @ d_svc,
                d_glob.unsqueeze(1).expand_as(d_svc),
            ],
            -1,
        )
        msg_glob = torch.cat([d_svc.mean(1), d_svc.amax(1)], -1)
        new_svc = self.core.svc_cell.core(d_svc, stoch[:, :-1], svc_a, msg_svc)
        new_glob = self.core.glob_cell.core(d_glob, stoch[:, -1], glob_a, msg_glob)
        return torch.cat([new_svc, new_glob.unsqueeze(1)], 1)

    def _prior_logits(self, deter: Tensor) -> Tensor:
        return torch.cat(
            [
                self.core.svc_cell.prior_logits(deter[..., :-1, :]),
                self.core.glob_cell.prior_logits(deter[..., -1:, :]),
            ],
            -3,
        )

    def _post_logits(self, deter: Tensor, embed: Tensor) -> Tensor:
        return torch.cat(
            [
                self.core.svc_cell.post_logits(deter[..., :-1, :], embed[..., :-1, :]),
                self.core.glob_cell.post_logits(deter[..., -1:, :], embed[..., -1:, :]),
            ],
            -3,
        )

    def _sample(self, logits: Tensor, sample: bool, generator: torch.Generator | None) -> Tensor:
        probs = unimix_probs(logits, self.cfg.unimix)
        with torch.no_grad():
            if sample:
                u = torch.rand(
                    (*probs.shape[:-1], 1),
                    generator=generator,
                    dtype=probs.dtype,
                    device=probs.device,
                )
                idx = (probs.cumsum(-1) < u).sum(-1, keepdim=True).clamp_(max=probs.shape[-1] - 1)
            else:
                idx = probs.argmax(-1, keepdim=True)
            onehot = torch.zeros_like(probs).scatter_(-1, idx, 1.0)
        return onehot + (probs - probs.detach())

    # ------------------------------------------------------------------ interface
    def initial(self, batch: int) -> GraphCarry:
        """Zeros: ``deter [B, N, D]``, ``stoch [B, N, K, C]``, ``base``/``last`` ``[B, V]``."""
        c = self.cfg
        n = self.n_services + 1
        p = self.core.svc_cell.prior_out.weight
        v = self.layout.value_size
        return GraphCarry(
            p.new_zeros(batch, n, c.deter),
            p.new_zeros(batch, n, c.stoch, c.classes),
            p.new_zeros(batch, v),
            p.new_zeros(batch, v),
            p.new_zeros(batch, v),
            p.new_zeros(batch, v),
        )

    def _obs_step(
        self,
        carry: GraphCarry,
        action: Tensor,
        embed: Tensor,
        values: Tensor,
        mask: Tensor,
        is_first: Tensor,
        sample: bool,
        generator: torch.Generator | None,
        prior: bool = True,
        new_base: Tensor | None = None,
    ) -> tuple[GraphCarry, Tensor, Tensor | None]:
        keep = 1.0 - is_first.to(carry.deter.dtype)
        deter = carry.deter * keep[:, None, None]
        stoch = carry.stoch * keep[:, None, None, None]
        action = action * keep[:, None]
        deter = self._core(deter, stoch, action)
        logits = self._post_logits(deter, embed)
        stoch = self._sample(logits, sample, generator)
        # the step starts from the last known values (the current ones on a first step)
        first = (is_first if new_base is None else new_base).to(values.dtype)[:, None]
        base = first * values + (1.0 - first) * carry.last
        last = mask * values + (1.0 - mask) * base
        # recent mean |one-step change|: an EMA over the observed steps, reset on a new base
        scale = (1.0 - first) * carry.scale_last
        rate = SCALE_RATE * mask * (1.0 - first)
        scale_last = scale + rate * ((values - base).abs() - scale)
        return (
            GraphCarry(deter, stoch, base, last, scale, scale_last),
            logits,
            (self._prior_logits(deter) if prior else None),
        )

    def observe(
        self,
        obs: Tensor,
        action: Tensor,
        is_first: Tensor,
        carry: GraphCarry | None = None,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[GraphCarry, GraphStates]:
        """Filter ``[B, T, O]`` observations; returns the last carry and the posterior.

        Without ``carry`` the sequence starts from :meth:`initial`, and its first step also
        starts from its own values (as on an episode's first step): a training sequence cut
        from the middle of an episode has no previous observation to start from.
        """
        b, t_len, _ = obs.shape
        assert action.shape == (b, t_len, self.action_size), (action.shape, self.action_size)
        new_base = is_first
        if carry is None:
            carry = self.initial(b)
            new_base = is_first.clone()
            new_base[:, 0] = 1.0
        embed = self._embed(obs)  # [B, T, N, E]
        lay = self.layout
        values, mask = obs[..., lay.values], obs[..., lay.mask]
        outs: list[tuple[GraphCarry, Tensor]] = []
        for t in range(t_len):
            step = self._obs_step(
                carry,
                action[:, t],
                embed[:, t],
                values[:, t],
                mask[:, t],
                is_first[:, t],
                sample,
                generator,
                prior=False,
                new_base=new_base[:, t],
            )
            carry = step[0]
            outs.append((step[0], step[1]))
        deter = torch.stack([o[0].deter for o in outs], 1)
        states = GraphStates(
            deter,
            torch.stack([o[0].stoch for o in outs], 1),
            torch.stack([o[0].base for o in outs], 1),
            torch.stack([o[0].last for o in outs], 1),
            torch.stack([o[0].scale for o in outs], 1),
            torch.stack([o[0].scale_last for o in outs], 1),
            torch.stack([o[1] for o in outs], 1),
            self._prior_logits(deter),  # all steps at once, after the recurrence
        )
        return carry, states

    def obs_step(
        self,
        carry: GraphCarry,
        obs: Tensor,
        action: Tensor,
        is_first: Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> GraphCarry:
        """One filtering step (``obs [B, O]``, ``action [B, A]``, ``is_first [B]``)."""
        lay = self.layout
        return self._obs_step(
            carry,
            action,
            self._embed(obs),
            obs[..., lay.values],
            obs[..., lay.mask],
            is_first,
            sample,
            generator,
        )[0]

    def _img_step(
        self, carry: GraphCarry, action: Tensor, sample: bool, generator: torch.Generator | None
    ) -> tuple[GraphCarry, Tensor]:
        deter = self._core(carry.deter, carry.stoch, action)
        logits = self._prior_logits(deter)
        stoch = self._sample(logits, sample, generator)
        base, scale = carry.last, carry.scale_last
        mean, _ = self._decode_parts(deter, stoch, base, scale)
        return GraphCarry(deter, stoch, base, mean, scale, scale), logits

    def img_step(
        self,
        carry: GraphCarry,
        action: Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> GraphCarry:
        """One prior step: the next state starts from the decoded mean of this one."""
        return self._img_step(carry, action, sample, generator)[0]

    def imagine(
        self,
        carry: GraphCarry,
        actions: Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> GraphStates:
        """Prior rollout under ``actions`` ``[B, H, A]`` (states ``[B, H, ...]``)."""
        steps = []
        for t in range(actions.shape[1]):
            carry, logits = self._img_step(carry, actions[:, t], sample, generator)
            steps.append((carry, logits))
        return GraphStates(
            torch.stack([c.deter for c, _ in steps], 1),
            torch.stack([c.stoch for c, _ in steps], 1),
            torch.stack([c.base for c, _ in steps], 1),
            torch.stack([c.last for c, _ in steps], 1),
            torch.stack([c.scale for c, _ in steps], 1),
            torch.stack([c.scale_last for c, _ in steps], 1),
            torch.stack([lg for _, lg in steps], 1),
        )

    # ------------------------------------------------------------------ heads
    def _per_node(self, v: Tensor) -> Tensor:
        """Value vector ``[..., V]`` -> ``[..., N, W]`` (``W = max(F, C)``, zero padded)."""
        svc_b, glob_b = self._split_values(v)
        nf, nc = self.core.n_feat, self.core.n_cluster
        width = max(nf, nc)
        glob_pad = F.pad(glob_b, (0, width - nc)).unsqueeze(-2)
        svc_pad = F.pad(svc_b, (0, width - nf))
        return torch.cat([svc_pad, glob_pad], -2)

    def log_scale(self, scale: Tensor) -> Tensor:
        """``log(max(scale, dec_scale_floor))``: the decoder's scale input."""
        return torch.log(scale.clamp(min=self.cfg.dec_scale_floor))

    def feat(self, states: GraphStates | GraphCarry) -> Tensor:
        """Per-node features ``[..., N, D + K C + W]``: the state and the node's base values.

        ``W = max(F, C)``; the global node's ``C`` values are padded with zeros. With
        ``dec_scaled`` the node's log scales (:meth:`log_scale`) follow (``+ W``).
        """
        parts = [states.deter, states.stoch.flatten(-2), self._per_node(states.base)]
        if self.cfg.dec_scaled:
            parts.append(self._per_node(self.log_scale(states.scale)))
        return torch.cat(parts, -1)

    def _decode_nodes(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and raw std of the value vector ``[..., V]`` from per-node features."""
        nf, nc = self.core.n_feat, self.core.n_cluster
        k, width = self.core.node_feat, max(nf, nc)
        state = feat[..., :k] if self.cfg.dec_stoch else feat[..., : self.cfg.deter]
        base = feat[..., k : k + width]
        log_s = feat[..., k + width : k + 2 * width] if self.cfg.dec_scaled else None

        def inputs(node: slice, n: int) -> Tensor:
            parts = [state[..., node, :], base[..., node, :n]]
            if log_s is not None:
                parts.append(log_s[..., node, :n])
            return torch.cat(parts, -1)

        svc, glob = slice(0, -1), slice(-1, None)
        res_s, raw_s = self.core.svc_dec(inputs(svc, nf))  # [..., S, F]
        res_g, raw_g = self.core.glob_dec(inputs(glob, nc))  # [..., 1, C]
        if log_s is not None:  # the residual in units of the value's recent change
            res_s = res_s * torch.exp(log_s[..., svc, :nf])
            res_g = res_g * torch.exp(log_s[..., glob, :nc])
        mean = torch.cat(
            [(base[..., svc, :nf] + res_s).flatten(-2), (base[..., glob, :nc] + res_g).flatten(-2)],
            -1,
        )
        raw = torch.cat([raw_s.flatten(-2), raw_g.flatten(-2)], -1)
        return mean, raw

    def _std(self, raw: Tensor) -> Tensor:
        lo, hi = self.cfg.min_std, self.cfg.max_std
        return lo + (hi - lo) * torch.sigmoid(raw - 2.0)

    def _decode_parts(
        self, deter: Tensor, stoch: Tensor, base: Tensor, scale: Tensor
    ) -> tuple[Tensor, Tensor]:
        carry = GraphCarry(deter, stoch, base, base, scale, scale)
        mean, raw = self._decode_nodes(self.feat(carry))
        return mean, self._std(raw)

    def decode(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        """Gaussian ``(mean, std)`` ``[..., V]`` of the value vector (symlog space)."""
        mean, raw = self._decode_nodes(feat)
        return mean, self._std(raw)

    def _pool(self, feat: Tensor) -> Tensor:
        svc = feat[..., :-1, :]
        return torch.cat([feat[..., -1, :], svc.mean(-2), svc.amax(-2)], -1)

    def reward_logits(self, feat: Tensor) -> Tensor:
        """Two-hot logits ``[..., bins]``."""
        return self.core.reward_head(self._pool(feat))

    def reward(self, feat: Tensor) -> Tensor:
        """Expected reward ``[...]``."""
        return self.twohot.mean(self.reward_logits(feat))

    def cont_prob(self, feat: Tensor) -> Tensor:
        """Continue probability ``[...]``."""
        return torch.sigmoid(self.core.cont_head(self._pool(feat))[..., 0])

    def violation_prob(self, feat: Tensor) -> Tensor:
        """Probability of an SLO violation in the step that led to this state ``[...]``."""
        return torch.sigmoid(self.core.violation_head(self._pool(feat))[..., 0])

    # ------------------------------------------------------------------ loss
    def error_weight(self, obs: Tensor) -> Tensor:
        """``[B, V]`` weight of each value's decoder error in sequences ``obs [B, T, O]``.

        ``1 / max(dec_mase_floor, mean |one-step change|)`` of the value over the sequence's
        observed consecutive pairs (the scale of MASE, so a series that barely moves
        weighs as much, relative to its own changes, as one that moves a lot), divided by
        its mean over the sequence's values so the loss keeps its size next to the other
        terms (ones with ``dec_mase_floor = 0``: unweighted).
        """
        lay = self.layout
        values, mask = obs[..., lay.values], obs[..., lay.mask]
        floor = self.cfg.dec_mase_floor
        if floor <= 0:
            return torch.ones_like(values[:, 0])
        pair = mask[:, 1:] * mask[:, :-1]
        step = ((values[:, 1:] - values[:, :-1]).abs() * pair).sum(1)
        scale = step / pair.sum(1).clamp(min=1.0)
        w = 1.0 / scale.clamp(min=floor)
        return w / w.mean(-1, keepdim=True)

    def _dec_loss(
        self, target: Tensor, feat: Tensor, mask: Tensor, weight: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-step decoder loss ``[...]`` (summed over observed values / N) and the mean.

        ``weight`` (broadcast to ``target``) scales the error of the mean, not the std's NLL.
        """
        mean, std = self.decode(feat)
        n = self.n_services + 1
        w = 1.0 if weight is None else weight
        if self.cfg.dec_loss == "mse":
            per = w * (mean - target) ** 2 + gaussian_nll(target, mean.detach(), std)
        elif self.cfg.dec_loss == "mae":
            per = w * (mean - target).abs() + gaussian_nll(target, mean.detach(), std)
        else:
            per = gaussian_nll(target, mean, std)
        return (per * mask).sum(-1) / n, mean

    def scales(self) -> dict[str, float]:
        """Loss scale of each term."""
        return loss_scales(self.cfg)

    def loss_terms(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> tuple[dict[str, Tensor], dict[str, float], GraphStates]:
        """Unscaled loss terms (means over ``B * T``), metrics and the posterior States."""
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {missing}; needs {list(BATCH_KEYS)}")
        obs = batch["obs"]
        _, states = self.observe(obs, batch["action"], batch["is_first"], generator=generator)
        assert states.prior_logits is not None
        feat = self.feat(states)
        lay = self.layout
        target, mask = obs[..., lay.values], obs[..., lay.mask]
        weight = self.error_weight(obs)  # [B, V]
        dec, mean = self._dec_loss(target, feat, mask, weight[:, None])
        terms = {
            "dec": dec.mean(),
            "rew": self.twohot.loss(self.reward_logits(feat), batch["reward"]).mean(),
            "cont": bernoulli_nll(
                self.core.cont_head(self._pool(feat))[..., 0], batch["cont"]
            ).mean(),
            "viol": bernoulli_nll(
                self.core.violation_head(self._pool(feat))[..., 0], batch["violation"]
            ).mean(),
        }
        terms["dyn"], terms["rep"], kl_dyn, _, _ = kl_terms(  # kl_dyn: [B, T, N]
            self.cfg, states.logits, states.prior_logits
        )
        with torch.no_grad():
            observed = mask.sum().clamp(min=1.0)
            base_err = ((target - states.base).abs() * mask).sum() / observed
            metrics = {
                "wm/kl": float(kl_dyn.mean()),
                "wm/dec_abs_err": float(((target - mean).abs() * mask).sum() / observed),
                "wm/persist_abs_err": float(base_err),
            }
        if self.cfg.overshoot > 0:
            terms["over"], over_metrics = self.overshoot_loss(batch, states, generator)
            metrics.update(over_metrics)
        return terms, metrics, states

    def overshoot_starts(self, t_len: int) -> Tensor:
        """Start steps of the overshooting rollouts (as the flat model)."""
        return overshoot_starts(self.cfg, t_len)

    def overshoot_loss(
        self,
        batch: dict[str, Tensor],
        states: GraphStates,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Multi-step term: prior rollouts from posterior states decoded against the data.

        Same rules as :meth:`agents.world_model.model.WorldModel.overshoot_loss`; the
        rollouts start from the observation at the start step (``last``) and each step from
        the previous step's decoded mean, so the term trains the change accumulated over
        ``k`` steps. Metrics: ``wm/over_abs_err``, ``wm/over_abs_err_last`` and the
        persistence errors of the same values ``wm/over_persist_abs_err(_last)``.
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
        pick = [
            states.deter[:, starts],
            states.stoch[:, starts],
            states.base[:, starts],
            states.last[:, starts],
            states.scale[:, starts],
            states.scale_last[:, starts],
        ]
        if cfg.overshoot_detach:
            pick = [x.detach() for x in pick]
        carry = GraphCarry(*[x.reshape(b * n, *x.shape[2:]) for x in pick])
        actions = batch["action"][:, idx].reshape(b * n, h, -1)
        rollout = self.imagine(carry, actions, generator=generator)
        feat = self.feat(rollout)
        feat = feat.reshape(b, n, h, *feat.shape[2:])
        valid = (batch["is_first"][:, idx].cumsum(-1) == 0).to(obs.dtype)  # [B, N, H]
        counted = valid.sum().clamp(min=1.0)
        lay = self.layout
        target = obs[:, idx][..., lay.values]
        mask = obs[:, idx][..., lay.mask] * valid[..., None]
        per_step, mean = self._dec_loss(target, feat, mask, self.error_weight(obs)[:, None, None])
        if cfg.overshoot_heads:
            rew = self.twohot.loss(self.reward_logits(feat), batch["reward"][:, idx])
            viol = bernoulli_nll(
                self.core.violation_head(self._pool(feat))[..., 0], batch["violation"][:, idx]
            )
            per_step = per_step + (rew + viol) * valid
        if cfg.overshoot_kl > 0:
            post = unimix_logits(states.logits[:, idx], cfg.unimix).detach()
            prior = unimix_logits(rollout.logits, cfg.unimix).reshape(post.shape)
            kl = torch.clamp(kl_categorical(post, prior), min=cfg.free_nats).mean(-1)
            per_step = per_step + cfg.overshoot_kl * kl * valid
        term = per_step.sum() / counted
        with torch.no_grad():
            start_vals = states.last[:, starts][:, :, None, :]  # persistence from the start
            err = (target - mean).abs() * mask
            perr = (target - start_vals).abs() * mask
            m_all = mask.sum().clamp(min=1.0)
            m_last = mask[:, :, -1].sum().clamp(min=1.0)
            metrics = {
                "wm/over_abs_err": float(err.sum() / m_all),
                "wm/over_abs_err_last": float(err[:, :, -1].sum() / m_last),
                "wm/over_persist_abs_err": float(perr.sum() / m_all),
                "wm/over_persist_abs_err_last": float(perr[:, :, -1].sum() / m_last),
            }
        return term, metrics

    def loss(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float], GraphStates]:
        """Total loss, metrics and the posterior States."""
        terms, metrics, states = self.loss_terms(batch, generator)
        total, metrics = total_loss(terms, metrics, self.scales())
        return total, metrics, states


def n_parameters(module: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "BoundGraphModel",
    "GraphCarry",
    "GraphOps",
    "GraphStates",
    "GraphWorldModel",
    "TopologyGraph",
    "n_parameters",
]
