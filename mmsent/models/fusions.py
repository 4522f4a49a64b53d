"""Fusion heads for N modalities: everything after the encoders (fusion + predictor).

A head takes ``{modality: (B, L, D)}`` and returns ``(B, out_dim)``. It is the ``h`` of the DGL
paper (Sec. 3.1): zero-masking a modality means passing ``zeros_like`` in its slot, and every head
here stays well defined (and informative) when all but one modality are zero.

``FUSIONS`` is the registry. A head class is built as ``cls(modalities, dim, seq_len, out_dim, *,
hidden, dropout, **settings)`` and declares ``Settings`` (its own keys, flat under ``model`` in a
config) and ``needs_maps`` (whether its encoders must stop at feature maps instead of pooling).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmsent.checks import check
from mmsent.models.dense import DenseHead, ESANetHead
from mmsent.models.head import Head
from mmsent.models.resnet import MMTM, MMTMHead, MMTMSettings


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Module:
    if hidden == 0:  # one linear layer: the authors' audio-visual classifier (concat -> fc)
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class ConcatHead(Head):
    """Late fusion by concatenation (the paper's "Concat" baseline): pool over L, concat, MLP."""

    def __init__(self, modalities, dim: int, seq_len: int, out_dim: int, *, hidden: int = 128, dropout: float = 0.0):
        super().__init__()
        self.modalities = list(modalities)
        self.net = _mlp(len(self.modalities) * dim, hidden, out_dim, dropout)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        return self.net(torch.cat([feats[m].mean(1) for m in self.modalities], dim=-1))

    def branch_logits(self, feats: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """Per-modality logits ``z_m = W_m f_m + b / N`` of the linear head (BalanceMM's and the
        GeWu-Lab references' convention; they sum to the fused logits); None with a hidden layer,
        where the modalities mix before the last layer and have no logits of their own."""
        if not isinstance(self.net, nn.Linear):
            return None
        blocks = self.net.weight.chunk(len(self.modalities), dim=1)
        bias = self.net.bias / len(self.modalities)
        return {m: feats[m].mean(1) @ w.T + bias for m, w in zip(self.modalities, blocks)}


class ConcatMixHead(ConcatHead):
    """AMCo's model (BalanceMM ``BaseClassifierAMCoModel``): the linear late-fusion head's
    per-modality logits ``z_m = W_m f_m + b/N`` (``branch_logits``), summed after an optional
    per-class mask, then one C x C layer: ``o = L*(sum_m mu_m * z_m)`` (``fuse``)."""

    fuses = True

    def __init__(self, modalities, dim: int, seq_len: int, out_dim: int, *, hidden: int = 0, dropout: float = 0.0):
        super().__init__(modalities, dim, seq_len, out_dim, hidden=0, dropout=dropout)
        self.mix = nn.Linear(out_dim, out_dim)

    def fuse(self, logits: dict[str, Tensor]) -> Tensor:
        return self.mix(sum(logits.values()))

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        return self.fuse(self.branch_logits(feats))


class LateMeanHead(Head):
    """One linear classifier per modality on its pooled feature, the prediction their mean: LFM's
    model (NeurIPS 2024 reference, ``AudioVideo``: ``(fc_a(f_a) + fc_v(f_v)) / 2``)."""

    def __init__(self, modalities, dim: int, seq_len: int, out_dim: int, *, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        self.modalities = list(modalities)
        self.fc = nn.ModuleDict({m: nn.Linear(dim, out_dim) for m in self.modalities})
        self.drop = nn.Dropout(dropout)

    def branch_logits(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.fc[m](self.drop(feats[m].mean(1))) for m in self.modalities}

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        return sum(self.branch_logits(feats).values()) / len(self.modalities)


def present(f: Tensor) -> Tensor:
    """(B, 1): 1 where a sample's feature is not all zeros (a zero-masked modality is absent)."""
    return (f.flatten(1).abs().sum(1, keepdim=True) > 0).to(f.dtype)


@dataclass(frozen=True)
class SharedSettings:
    ensemble_scale: bool = True  # a learnable scalar beta on the sum (ReconBoost's); off: beta fixed at 1


class SharedHead(Head):
    """One classifier ``H`` shared by every modality and applied to each modality's pooled feature
    separately; the prediction is ``beta * sum_m H(f_m)`` with a learnable scalar ``beta`` (init 1;
    ``ensemble_scale: false`` fixes it at 1): ReconBoost's model (ICML 2024 reference: a "common
    space" head and the ensemble scale) and MLA's (CVPR 2024 reference: one ``Linear(D, C)`` applied
    to every modality, ``hidden: 0``). A zero-masked modality is absent from the sum (its learner is
    left out of the ensemble), so modality m's branch is ``beta * H(f_m)``."""

    Settings = SharedSettings

    def __init__(self, modalities, dim: int, seq_len: int, out_dim: int, *, hidden: int = 0, dropout: float = 0.0,
                 ensemble_scale: bool = True):
        super().__init__()
        self.modalities = list(modalities)
        # ReconBoost's "common space" head: Linear -> ReLU -> Linear (models/dynamic_net.py::Head)
        self.shared = nn.Linear(dim, out_dim) if hidden == 0 else nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))
        self.beta = nn.Parameter(torch.ones(()), requires_grad=ensemble_scale)

    def branch_logits(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """``H(f_m)`` per present modality (ReconBoost's learners, without ``beta``)."""
        return {m: self.shared(feats[m].mean(1)) * present(feats[m]) for m in self.modalities}

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        return self.beta * sum(self.branch_logits(feats).values())


@dataclass(frozen=True)
class MMTMSeqSettings(MMTMSettings):
    ratio: int = 4  # MMTM squeeze ratio: Greedy's model (greedy_multimodal_learning src/model.py: MMTM(C, C, 4))


class MMTMSeqHead(Head):
    """The MMTM network's shape (Joze et al., CVPR 2020; Greedy's model, Wu et al., ICML 2022) for
    feature sequences: per modality two residual stages ``x + GELU(Linear(x))`` over its tokens,
    an MMTM block after each (channels = the feature width, squeezed over the sequence; ratio 4 as
    Greedy's), then each branch's own classifier on its pooled output; the prediction is the mean of
    the branch logits, as in the reference. Zero-masking enters at the first stage, as for ``mmtm``."""

    Settings = MMTMSeqSettings
    separate_branches = True

    def __init__(self, modalities, dim: int, seq_len: int, out_dim: int, *, hidden: int = 0, dropout: float = 0.0,
                 ratio: int = 4):
        super().__init__()
        self.modalities = list(modalities)
        self.stages = nn.ModuleList([nn.ModuleDict({m: nn.Linear(dim, dim) for m in self.modalities})
                                     for _ in range(2)])
        self.mmtm = nn.ModuleList([MMTM(dict.fromkeys(self.modalities, dim), ratio) for _ in range(2)])
        self.fc = nn.ModuleDict({m: nn.Linear(dim, out_dim) for m in self.modalities})
        self.drop = nn.Dropout(dropout)

    def branch_logits(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        x = {m: feats[m] for m in self.modalities}  # (B, L, D)
        for stage, block in zip(self.stages, self.mmtm):
            x = {m: x[m] + F.gelu(stage[m](x[m])) for m in self.modalities}
            gated = block({m: v.transpose(1, 2) for m, v in x.items()})  # channels first for MMTM
            x = {m: v.transpose(1, 2) for m, v in gated.items()}
        return {m: self.fc[m](self.drop(x[m].mean(1))) for m in self.modalities}

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        return sum(self.branch_logits(feats).values()) / len(self.modalities)

    def branch_parameters(self, m: str) -> list[tuple[nn.Parameter, tuple | None]]:
        """Branch m's parameters outside the MMTM blocks (Greedy's "main" group, with its encoder)."""
        return [(p, None) for p in [*(s[m].weight for s in self.stages), *(s[m].bias for s in self.stages),
                                    *self.fc[m].parameters()]]


class SumHead(Head):
    """Sum fusion: one projection per modality, summed, then a shared predictor."""

    def __init__(self, modalities, dim: int, seq_len: int, out_dim: int, *, hidden: int = 128, dropout: float = 0.0):
        super().__init__()
        self.modalities = list(modalities)
        self.proj = nn.ModuleDict({m: nn.Linear(dim, hidden) for m in self.modalities})
        self.out = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        return self.out(sum(self.proj[m](feats[m].mean(1)) for m in self.modalities))


class GatedHead(Head):
    """Gated fusion for N modalities: each projected modality is scaled by a sigmoid gate computed
    from all modalities together, then the gated parts are summed (the N-way form of the gated
    fusion in the DGL/OGM-GE code, without its frozen-projection bug)."""

    def __init__(self, modalities, dim: int, seq_len: int, out_dim: int, *, hidden: int = 128, dropout: float = 0.0):
        super().__init__()
        self.modalities = list(modalities)
        n = len(self.modalities)
        self.proj = nn.ModuleDict({m: nn.Linear(dim, hidden) for m in self.modalities})
        self.gate = nn.Linear(n * dim, n * hidden)
        self.out = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        pooled = [feats[m].mean(1) for m in self.modalities]
        gates = torch.sigmoid(self.gate(torch.cat(pooled, -1))).chunk(len(pooled), -1)
        return self.out(sum(g * self.proj[m](z) for g, m, z in zip(gates, self.modalities, pooled)))


class FiLMHead(Head):
    """FiLM (Perez et al., 2018) for N modalities: the first modality is the carrier and every other
    modality k modulates it in turn, ``x <- x * (1 + gamma_k(z_k)) + beta_k(z_k)``. With the carrier
    zeroed the betas still carry modality k, so every unimodal pass is informative."""

    def __init__(self, modalities, dim: int, seq_len: int, out_dim: int, *, hidden: int = 128, dropout: float = 0.0):
        super().__init__()
        self.modalities = list(modalities)
        self.carrier = nn.Linear(dim, hidden)
        self.film = nn.ModuleDict({m: nn.Linear(dim, 2 * hidden) for m in self.modalities[1:]})
        self.out = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        x = self.carrier(feats[self.modalities[0]].mean(1))
        for m in self.modalities[1:]:
            gamma, beta = self.film[m](feats[m].mean(1)).chunk(2, -1)
            x = x * (1 + gamma) + beta
        return self.out(x)


class AxisMLP(nn.Module):
    """Pre-norm residual MLP that mixes one axis of a (B, L, M, D) cube.

    LayerNorm is always over the channel axis D (MLP-Mixer convention) rather than over the mixed
    axis as in CubeMLP: MOSI utterance data has L = 1 and M = 2..3, where a norm over the mixed axis
    would erase the signal (a 1-entry LayerNorm outputs its bias).
    """

    def __init__(self, size: int, axis: int, dim: int, *, expansion: int = 2, dropout: float = 0.0):
        super().__init__()
        self.axis = axis
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _mlp(size, expansion * size, size, dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(x).movedim(self.axis, -1)  # mixed axis last
        return x + self.mlp(y).movedim(-1, self.axis)


@dataclass(frozen=True)
class MixerSettings:
    depth: int = 2  # mixer blocks, each mixing L, then M, then D
    expansion: int = 2  # hidden width of each axis MLP, as a multiple of the axis size

    def __post_init__(self):
        check("depth", self.depth >= 1, self.depth, ">= 1")
        check("expansion", self.expansion >= 1, self.expansion, ">= 1")


class MLPMixerHead(Head):
    """CubeMLP-style fusion (Sun et al., ACM MM 2022; DGL paper Table 2 right, "MLP-Fusion").

    Stack the modalities into a (B, L, M, D) cube and apply ``depth`` blocks, each mixing along the
    sequence (L), modality (M) and channel (D) axes in that order, as CubeMLP does. Then mean over L,
    flatten M x D and predict. Zero-masking a modality zeroes its slot of the cube (shared docs/method.md), after
    which the modality-mixing MLP lets the kept modality fill every slot.
    """

    Settings = MixerSettings

    def __init__(
        self, modalities, dim: int, seq_len: int, out_dim: int, *, hidden: int = 128, dropout: float = 0.0,
        depth: int = 2, expansion: int = 2,
    ):
        super().__init__()
        self.modalities = list(modalities)
        n = len(self.modalities)
        blocks = []
        for _ in range(depth):
            blocks += [
                AxisMLP(seq_len, 1, dim, expansion=expansion, dropout=dropout),
                AxisMLP(n, 2, dim, expansion=expansion, dropout=dropout),
                AxisMLP(dim, 3, dim, expansion=expansion, dropout=dropout),
            ]
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.out = _mlp(n * dim, hidden, out_dim, dropout)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        cube = torch.stack([feats[m] for m in self.modalities], dim=2)  # (B, L, M, D)
        cube = self.norm(self.blocks(cube)).mean(1)  # (B, M, D)
        return self.out(cube.flatten(1))


FUSIONS: dict[str, type[Head]] = {
    "concat": ConcatHead,
    "sum": SumHead,
    "gated": GatedHead,
    "film": FiLMHead,
    "mlpmixer": MLPMixerHead,
    "mmtm": MMTMHead,  # audio-visual only: fuses the encoders' layer2 maps
    "mmtm_seq": MMTMSeqHead,  # MMTM blocks over feature sequences, per-branch classifiers (Greedy)
    "concat_mix": ConcatMixHead,  # linear late fusion + a class-mixing layer (AMCo)
    "late_mean": LateMeanHead,  # per-modality classifiers, mean prediction (LFM)
    "shared": SharedHead,  # one classifier applied to every modality, scaled sum (ReconBoost)
    "dense": DenseHead,  # segmentation: feature maps added, decoded to per-pixel logits
    "esanet": ESANetHead,  # segmentation, ESANet's form: SE-add fusion at every stage, context, skip decoder
}
