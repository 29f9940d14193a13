"""World-model settings (:class:`WorldModelConfig`) and the observation layout (:class:`ObsLayout`).

The defaults follow DreamerV3 (Hafner et al. 2023, arXiv:2301.04104; danijar/dreamerv3
``configs.yaml`` and ``rssm.py``): discrete latents with 1% unimix, a block-diagonal GRU,
RMSNorm + SiLU MLPs, KL balancing with free bits (dyn 1.0, rep 0.1, 1 nat), two-hot reward
over 255 bins, Adam with gradient clipping, batches of 16 sequences of 64 steps. The two
sizes are much smaller than the paper's (``size12m`` has deter 2048): the observation is a
322-vector, not an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from envs.gym.encoder import CLUSTER_FEATURES, SERVICE_FEATURES, TIME_FEATURES, ObsEncoder

Size = Literal["tiny", "small"]
Arch = Literal["flat", "graph"]
DecLoss = Literal["nll", "mse", "mae"]

SIZES: dict[str, dict[str, int]] = {
    "tiny": {
        "deter": 256,
        "hidden": 128,
        "stoch": 16,
        "classes": 16,
        "gru_blocks": 4,
        "units": 128,
    },
    "small": {
        "deter": 512,
        "hidden": 256,
        "stoch": 32,
        "classes": 16,
        "gru_blocks": 8,
        "units": 256,
    },
}
"""Size presets: the fields a ``size`` fills unless they are given explicitly."""

GRAPH_SIZES: dict[str, dict[str, int]] = {
    "tiny": {
        "deter": 64,
        "hidden": 64,
        "stoch": 8,
        "classes": 8,
        "gru_blocks": 1,
        "units": 64,
    },
    "small": {
        "deter": 128,
        "hidden": 128,
        "stoch": 16,
        "classes": 8,
        "gru_blocks": 2,
        "units": 128,
    },
}
"""Size presets of ``arch="graph"``: the sizes are per node (every service and the global
node have a state of this size), so they are much smaller than the flat model's."""


class WorldModelConfig(BaseModel):
    """Settings of the world model and its trainer (a typo fails at construction).

    Attributes:
        arch: ``flat`` (one MLP over the whole observation: a model fits one topology) or
            ``graph`` (:mod:`agents.world_model.graph`: per-service weights shared across
            services, messages along the call graph, a latent per service plus a global
            one; one model runs on any topology).
        size: Preset that fills ``deter``, ``hidden``, ``stoch``, ``classes``,
            ``gru_blocks`` and ``units`` (explicit values win).
        deter: GRU state size D.
        hidden: Width of the RSSM's input, prior and posterior layers.
        stoch: Number of categorical latents K.
        classes: Classes per latent C.
        gru_blocks: Blocks of the block-diagonal GRU (1 = a dense GRU); divides ``deter``.
        dyn_layers: Block-linear hidden layers before the GRU gates (DreamerV3: 1).
        img_layers: Hidden layers of the prior (DreamerV3: 2).
        units: Width of the encoder, decoder and head MLPs.
        enc_layers: Hidden layers of the encoder MLP.
        dec_layers: Hidden layers of the decoder MLP.
        head_layers: Hidden layers of the reward, continue and violation heads.
        unimix: Share of the uniform distribution mixed into every categorical (1%).
        free_nats: KL free bits: each KL term is ``max(free_nats, KL)`` per step.
        kl_dyn: Scale of the dynamics loss ``KL(sg(post) || prior)``.
        kl_rep: Scale of the representation loss ``KL(post || sg(prior))``.
        dec_scale: Scale of the decoder's masked Gaussian NLL.
        dec_beta: beta of the beta-NLL (Seitzer et al. 2022, arXiv:2203.09168): each value's
            Gaussian NLL in the loss is weighted by ``sg(std) ** (2 * beta)``. 0: the plain
            NLL, whose mean gradient ``(x - mean) / std**2`` lets the values the model can
            already predict (std near ``min_std``) outweigh the others by up to
            ``(max_std / min_std)**2``; 1: each mean learns as under a squared error
            (DreamerV3's symlog MSE) while the std still learns. Only the ``dec`` term is
            weighted; the metric ``wm/dec_nll_per_value`` and the
            overshooting term ``over`` stay the plain NLL, as do forecast scores.
        rew_scale: Scale of the two-hot reward loss.
        cont_scale: Scale of the continue loss.
        viol_scale: Scale of the SLO-violation loss.
        bins: Two-hot bins (evenly spaced in symlog space over ``[-bin_limit, bin_limit]``).
        bin_limit: Largest bin in symlog space (``symexp(20)`` ~ 4.9e8).
        min_std: Smallest decoder standard deviation (symlog units).
        max_std: Largest decoder standard deviation (symlog units).
        lr: Adam learning rate.
        eps: Adam epsilon.
        grad_clip: Gradient-norm clipping threshold.
        batch: Sequences per training batch.
        seq_len: Steps per sequence.
        threads: ``torch.set_num_threads`` for training (the trainer sets it).
        overshoot: Steps of the multi-step ("overshooting") loss: from the posterior state
            at every ``overshoot_stride``-th step of a sequence the prior is rolled forward
            this many steps under the sequence's actions and decoded against the observed
            values (0: off, the DreamerV3 loss unchanged).
        overshoot_stride: Steps between the start states of the overshooting rollouts
            (counted back from the last start ``seq_len - 1 - overshoot``).
        overshoot_scale: Scale of the overshooting loss term ``over``.
        overshoot_detach: Stop gradients into the start states (the rollouts then train the
            prior dynamics and heads but not the filtering that led to the start).
        overshoot_heads: Also train the reward and violation heads on the rollouts.
        overshoot_kl: Scale, inside ``over``, of PlaNet's latent overshooting
            ``max(free_nats, KL(sg(post) || rollout prior))`` at the rollout's steps (0: off).
        mp_rounds: ``arch="graph"``: message-passing rounds of the observation encoder.
        dec_loss: ``arch="graph"``: ``mse`` (DreamerV3's symlog squared error for the mean,
            plus a Gaussian NLL that trains only the std, on the detached mean), ``mae``
            (the absolute error instead: the mean becomes the conditional median, the point
            forecast MASE scores; on step-like series whose jumps cannot be foreseen the
            squared error's mean is worse than persistence in absolute error, issue 17) or
            ``nll`` (the Gaussian NLL for both).
        dec_stoch: ``arch="graph"``: the decoder's residual reads the step's stochastic
            latent (``True``, DreamerV3) or only ``[deter, base]`` (``False``): the latent of
            the posterior has seen the value being decoded, the prior's has not, so with
            ``False`` the first imagined step decodes exactly what the decoder loss trained.
        dec_mase_floor: ``arch="graph"``: 0 (off) or the floor (symlog units) of the scale
            that divides each value's decoder error: its mean absolute one-step change over
            the training sequence, as MASE scales the forecast errors it scores (LightGBM's
            targets are scaled alike).
        dec_scaled: ``arch="graph"``: the residual is in units of each value's recent scale
            (an EMA of its absolute one-step changes, floored at ``dec_scale_floor``), which
            the decoder also reads as ``log(scale)``, as LightGBM predicts scaled changes
            from its recent scale: a series that barely moves gets a residual that barely
            moves.
        dec_scale_floor: Floor of that scale (symlog units).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Arch = "flat"
    size: Size = "tiny"
    deter: int = 256
    hidden: int = 128
    stoch: int = 16
    classes: int = 16
    gru_blocks: int = 4
    dyn_layers: int = 1
    img_layers: int = 2
    units: int = 128
    enc_layers: int = 2
    dec_layers: int = 2
    head_layers: int = 1
    unimix: float = 0.01
    free_nats: float = 1.0
    kl_dyn: float = 1.0
    kl_rep: float = 0.1
    dec_scale: float = 1.0
    dec_beta: float = 0.0
    rew_scale: float = 1.0
    cont_scale: float = 1.0
    viol_scale: float = 1.0
    bins: int = 255
    bin_limit: float = 20.0
    min_std: float = 0.01
    max_std: float = 1.0
    lr: float = 1e-4
    eps: float = 1e-8
    grad_clip: float = 100.0
    batch: int = 16
    seq_len: int = 64
    threads: int = 1
    overshoot: int = 0
    overshoot_stride: int = 8
    overshoot_scale: float = 1.0
    overshoot_detach: bool = False
    overshoot_heads: bool = False
    overshoot_kl: float = 0.0
    mp_rounds: int = 2
    dec_loss: DecLoss = "nll"
    dec_stoch: bool = True
    dec_mase_floor: float = 0.0
    dec_scaled: bool = False
    dec_scale_floor: float = 0.003

    @model_validator(mode="before")
    @classmethod
    def _fill_size(cls, data: Any) -> Any:
        if isinstance(data, dict):
            size = data.get("size", "tiny")
            if size not in SIZES:
                raise ValueError(f"size={size!r}: one of {sorted(SIZES)}")
            presets = GRAPH_SIZES if data.get("arch") == "graph" else SIZES
            data = {**presets[size], **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> WorldModelConfig:
        if self.deter % self.gru_blocks:
            raise ValueError(
                f"deter={self.deter} is not a multiple of gru_blocks={self.gru_blocks}"
            )
        if self.bins < 2 or self.bins % 2 == 0:
            raise ValueError(f"bins={self.bins}: use an odd number >= 3 (a bin at zero)")
        if not 0.0 <= self.unimix < 1.0:
            raise ValueError(f"unimix={self.unimix}: must be in [0, 1)")
        if not 0.0 <= self.dec_beta <= 1.0:
            raise ValueError(f"dec_beta={self.dec_beta}: must be in [0, 1]")
        if not 0.0 < self.min_std < self.max_std:
            raise ValueError(f"need 0 < min_std < max_std, got {self.min_std}, {self.max_std}")
        for name in ("deter", "hidden", "stoch", "classes", "units", "batch", "seq_len", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.overshoot < 0 or self.overshoot_stride < 1:
            raise ValueError(
                f"overshoot={self.overshoot}, overshoot_stride={self.overshoot_stride}: "
                "need overshoot >= 0 and overshoot_stride >= 1"
            )
        if self.overshoot >= self.seq_len:
            raise ValueError(
                f"overshoot={self.overshoot}: must be < seq_len={self.seq_len} "
                "(a rollout starts at a step of the sequence and ends inside it)"
            )
        if self.mp_rounds < 0:
            raise ValueError(f"mp_rounds={self.mp_rounds}: must be >= 0")
        if self.dec_scale_floor <= 0:
            raise ValueError(f"dec_scale_floor={self.dec_scale_floor}: must be > 0")
        if self.dec_mase_floor < 0:
            raise ValueError(f"dec_mase_floor={self.dec_mase_floor}: must be >= 0 (0: off)")
        if self.overshoot_scale < 0 or self.overshoot_kl < 0:
            raise ValueError("overshoot_scale and overshoot_kl must be >= 0")
        return self

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> WorldModelConfig:
        """The ``name`` preset (``tiny`` or ``small``) with ``overrides`` applied."""
        return cls.model_validate({"size": name, **overrides})

    @property
    def stoch_size(self) -> int:
        """Flattened latent size ``K * C``."""
        return self.stoch * self.classes

    @property
    def feat_size(self) -> int:
        """Size of a model feature ``[deter, flat stoch]``: ``D + K * C``."""
        return self.deter + self.stoch * self.classes


@dataclass(frozen=True)
class ObsLayout:
    """Where things are in the flat observation of :class:`envs.gym.encoder.ObsEncoder`.

    The layout is ``[values (S*F), cluster (C), time (4), mask (S*F + C)]``; the world
    model predicts the ``S*F + C`` values (the "value vector": service values then cluster
    values) and uses the mask to ignore missing ones.

    Args:
        n_services: S.
        n_service_features: F.
        n_cluster_features: C.
        service_features: Names of the F per-service features, in order.
        cluster_features: Names of the C cluster features, in order.
    """

    n_services: int
    n_service_features: int = len(SERVICE_FEATURES)
    n_cluster_features: int = len(CLUSTER_FEATURES)
    service_features: tuple[str, ...] = SERVICE_FEATURES
    cluster_features: tuple[str, ...] = CLUSTER_FEATURES

    def __post_init__(self) -> None:
        if len(self.service_features) != self.n_service_features:
            raise ValueError(
                f"n_service_features={self.n_service_features} but "
                f"{len(self.service_features)} names given"
            )
        if len(self.cluster_features) != self.n_cluster_features:
            raise ValueError(
                f"n_cluster_features={self.n_cluster_features} but "
                f"{len(self.cluster_features)} names given"
            )

    @classmethod
    def from_encoder(cls, encoder: ObsEncoder) -> ObsLayout:
        """The layout of ``encoder``'s flat observations."""
        layout = cls(
            encoder.n_services,
            len(encoder.service_features),
            len(encoder.cluster_features),
            tuple(encoder.service_features),
            tuple(encoder.cluster_features),
        )
        assert layout.obs_size == encoder.size, (layout.obs_size, encoder.size)
        return layout

    @property
    def value_size(self) -> int:
        """Number of predicted values ``S*F + C``."""
        return self.n_services * self.n_service_features + self.n_cluster_features

    @property
    def time_size(self) -> int:
        """Number of time features (4)."""
        return len(TIME_FEATURES)

    @property
    def obs_size(self) -> int:
        """Length of the flat observation ``2 (S*F + C) + 4``."""
        return 2 * self.value_size + self.time_size

    @property
    def values(self) -> slice:
        """Slice of the value vector (symlog'd, 0 where missing) in the observation."""
        return slice(0, self.value_size)

    @property
    def time(self) -> slice:
        """Slice of the time features in the observation."""
        return slice(self.value_size, self.value_size + self.time_size)

    @property
    def mask(self) -> slice:
        """Slice of the values' mask (1 observed, 0 missing) in the observation."""
        return slice(self.value_size + self.time_size, self.obs_size)

    def service_index(self, service_i: int, feature_name: str) -> int:
        """Index into the value vector of feature ``feature_name`` of service ``service_i``."""
        if not 0 <= service_i < self.n_services:
            raise IndexError(f"service {service_i} out of range (S={self.n_services})")
        if feature_name not in self.service_features:
            raise KeyError(
                f"unknown service feature {feature_name!r}; one of {self.service_features}"
            )
        return service_i * self.n_service_features + self.service_features.index(feature_name)

    def cluster_index(self, feature_name: str) -> int:
        """Index into the value vector of cluster feature ``feature_name``."""
        if feature_name not in self.cluster_features:
            raise KeyError(
                f"unknown cluster feature {feature_name!r}; one of {self.cluster_features}"
            )
        return self.n_services * self.n_service_features + self.cluster_features.index(feature_name)
