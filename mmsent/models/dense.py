"""Dense prediction (RGB-D segmentation, the DGL paper's Table 5): encoders that keep feature maps,
and fusion heads that decode the fused maps to per-pixel logits. Two forms:

* ``dense`` (``DenseEncoder`` + ``DenseHead``), small enough for 2 CPU cores: each encoder is a stem
  and two BasicBlock stages (stride 4, ``4 * model.width`` channels); the head projects every
  modality's map with a 1x1 conv and **adds** them (one fusion point, at the encoders' output), then
  a context block (3x3 conv), bilinear upsampling by 4 and a 3x3 classifier. No BatchNorm in the head.
* ``esanet`` (``StageEncoder`` + ``ESANetHead``), ESANet's form (Seichter et al., ICRA 2021): ResNet
  encoders whose every stage reaches the head, squeeze-excitation + add fusion at every stage, a
  pyramid context module and a decoder with skip connections; ImageNet weights from a local file.
  How it differs from ESANet (the fusion stays out of the encoders, so DGL's per-modality encoder
  gradients are defined) is said in ``ESANetHead``.

Zero-masking for DGL's unimodal passes happens at the fusion points: the maps of every other
modality are replaced by zeros, which add nothing there. Masked passes cannot move BatchNorm running
statistics: the encoders' BatchNorm runs once per batch, on real inputs, and a head's runs on cloned
buffers in the masked passes (``tests/test_dense.py::test_masked_passes_leave_batchnorm_statistics_alone``,
``tests/test_esanet.py::test_masked_passes_leave_batchnorm_statistics_to_the_real_pass``; DGL's
gradients through a dense head: ``tests/test_dgl.py::test_dense_prediction_one_backward_equals_algorithm_1``
and ``test_every_fusion_head_meets_the_contract``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmsent.checks import ConfigError, check, first_line
from mmsent.models.encoder import Encoder, EncoderSpec
from mmsent.models.head import Head
from mmsent.models.resnet import BasicBlock, _kaiming


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups: statistics per sample, so a data-parallel run computes exactly
    what one process does (BatchNorm's batch statistics are per shard under torchrun)."""
    return nn.GroupNorm(math.gcd(channels, 8), channels)


NORMS = {"batch": nn.BatchNorm2d, "group": group_norm}


@dataclass(frozen=True)
class DenseSettings:
    """The ``model.*`` key of the ``dense`` fusion (``esanet``'s settings extend it)."""

    norm: str = "batch"  # the encoders' (and ESANet's head's) normalisation: batch | group (per sample; exact under torchrun)

    def __post_init__(self):
        check("norm", self.norm in NORMS, self.norm, " or ".join(NORMS))


@dataclass(frozen=True)
class NormSettings:
    """The ``model.*`` key of the per-pixel encoders (the ``dense`` and ``esanet`` heads have one of
    the same name: the encoders read it here, never from the head's settings)."""

    norm: str = "batch"

    def __post_init__(self):
        check("norm", self.norm in NORMS, self.norm, " or ".join(NORMS))


class DenseEncoder(Encoder):
    """(B, C_in, H, W) -> (B, 4 * width, H / 4, W / 4). Built for a head that reads every stage
    (``esanet``), the ``dense`` encoder is a ``StageEncoder``."""

    Settings = NormSettings
    reads = "dense"

    @classmethod
    def build(cls, spec: EncoderSpec) -> "Encoder":
        if spec.stages:
            return StageEncoder.build(spec)
        return cls(spec.in_dim, width=spec.width, norm=cls.settings(spec).norm)

    def __init__(self, in_channels: int, width: int = 8, norm: str = "batch"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), NORMS[norm](width),
                                  nn.ReLU(inplace=True))
        self.layer1 = BasicBlock(width, 2 * width, stride=2, norm=NORMS[norm])
        self.layer2 = BasicBlock(2 * width, 4 * width, stride=2, norm=NORMS[norm])
        self.out_dim = 4 * width
        _kaiming(self)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.layer2(self.layer1(self.stem(x)))


class DenseHead(Head):
    """Per-modality 1x1 projections added (the fusion point), a 3x3 context block, x4 bilinear
    upsampling, a 3x3 classifier: (B, K, H, W) logits."""

    Settings = DenseSettings  # model.norm shapes the encoders; the head's width is model.hidden
    needs_maps = False
    dense = True  # reads feature maps and predicts per pixel (a dense dataset needs such a head)

    def __init__(self, modalities, dim, seq_len, out_dim, *, hidden: int = 32, dropout: float = 0.0,
                 norm: str = "batch"):
        super().__init__()
        self.modalities, channels = list(modalities), hidden or 32
        self.project = nn.ModuleDict({m: nn.Conv2d(dim, channels, 1) for m in self.modalities})
        self.context = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Dropout2d(dropout))
        self.classify = nn.Conv2d(channels, out_dim, 3, padding=1)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        fused = sum(self.project[m](feats[m]) for m in self.modalities)
        z = F.interpolate(self.context(fused), scale_factor=4, mode="bilinear", align_corners=False)
        return self.classify(z)


# --- ESANet's form: per-stage fusion, a context module and a decoder with skip connections -------------


def stage_layout(width: int, stages: int) -> list[tuple[int, int]]:
    """(channels, packing factor) of each stage of a ResNet of base ``width``: stage s has
    ``width * 2**s`` channels at stride ``4 * 2**s`` and is packed by ``2**(stages - 1 - s)`` to the
    last stage's resolution."""
    return [(width * 2**s, 2 ** (stages - 1 - s)) for s in range(stages)]


def packed_channels(width: int, stages: int) -> int:
    return sum(c * f * f for c, f in stage_layout(width, stages))


def pack(maps: list[Tensor], layout: list[tuple[int, int]]) -> Tensor:
    """Every stage's map moved losslessly to the last stage's resolution (``pixel_unshuffle``) and
    stacked on channels: one tensor per modality, so that DGL's detach, zero-masking and batching
    -- and every other strategy's -- treat a multi-scale feature as the one tensor they expect."""
    return torch.cat([F.pixel_unshuffle(x, f) if f > 1 else x for x, (_, f) in zip(maps, layout)], 1)


def unpack(x: Tensor, layout: list[tuple[int, int]]) -> list[Tensor]:
    """``pack``'s inverse: the stage maps at their own resolutions."""
    parts = x.split([c * f * f for c, f in layout], 1)
    return [F.pixel_shuffle(p, f) if f > 1 else p for p, (_, f) in zip(parts, layout)]


@dataclass(frozen=True)
class StageSettings(NormSettings):
    """The ``model.*`` keys a ``StageEncoder`` reads (``esanet``'s keys of the same names; their
    ranges are checked there, where the config loads)."""

    blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    pretrained: str = ""


class StageEncoder(Encoder):
    """ESANet's encoder of one modality: a ResNet of BasicBlocks (``blocks`` per stage: [2, 2, 2, 2]
    is ResNet18, [3, 4, 6, 3] ResNet34; ESANet's own R34 uses non-bottleneck-1D blocks, not built
    here) whose every stage output reaches the head, ``pack``-ed into one tensor of
    ``packed_channels`` channels at stride ``4 * 2**(stages - 1)``. Module names follow
    torchvision's ResNet, so ImageNet weights load from a local file (``load_resnet_weights``)."""

    Settings = StageSettings
    reads = "dense"

    @classmethod
    def build(cls, spec: EncoderSpec) -> "StageEncoder":
        s = cls.settings(spec)
        encoder = cls(spec.in_dim, width=spec.width, blocks=s.blocks, norm=s.norm)
        if s.pretrained:
            load_resnet_weights(encoder, s.pretrained)
        return encoder

    def __init__(self, in_channels: int, width: int = 64, blocks=(2, 2, 2, 2), norm: str = "batch"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = NORMS[norm](width)
        self.layout = stage_layout(width, len(blocks))
        c_in, norm = width, NORMS[norm]
        for s, (n, (c, _)) in enumerate(zip(blocks, self.layout)):
            layer = [BasicBlock(c_in, c, 1 if s == 0 else 2, norm)] + [BasicBlock(c, c, norm=norm) for _ in range(n - 1)]
            setattr(self, f"layer{s + 1}", nn.Sequential(*layer))
            c_in = c
        self.stages = len(blocks)
        self.stride = 4 * 2 ** (self.stages - 1)  # input height and width must be multiples of it
        self.out_dim = packed_channels(width, self.stages)
        _kaiming(self)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h = F.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        maps = []
        for s in range(self.stages):
            h = getattr(self, f"layer{s + 1}")(h)
            maps.append(h)
        return pack(maps, self.layout)


def load_resnet_weights(encoder: StageEncoder, path: str) -> None:
    """ImageNet weights from a local torchvision ResNet state dict (``torch.save(resnet18(weights=
    ...).state_dict(), path)``; a checkpoint holding it under ``state_dict`` also works), never
    downloaded and loaded with ``weights_only`` (a file cannot run code). A 1-channel encoder
    (depth) gets the first convolution summed over RGB, as ESANet does; the classifier is dropped."""
    if not Path(path).is_file():
        raise ConfigError(f"model.pretrained {path}: no such file (weights are never downloaded; save a torchvision "
                          "ResNet's state_dict there)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unreadable or unsafe file is the same one-line refusal)
        raise ConfigError(f"model.pretrained {path}: not a loadable weights file ({type(e).__name__}: {first_line(e)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"model.pretrained {path}: not a state dict of tensors")
    state = {k.replace(".downsample.", ".down."): v for k, v in state.items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    if "conv1.weight" in state and own["conv1.weight"].shape[1] != state["conv1.weight"].shape[1]:
        if own["conv1.weight"].shape[1] != 1:
            raise ConfigError(f"model.pretrained {path}: RGB weights fit 3- or 1-channel inputs, not "
                              f"{own['conv1.weight'].shape[1]}")
        state["conv1.weight"] = state["conv1.weight"].sum(1, keepdim=True)
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or extra or wrong:
        key = (missing or extra or wrong)[0]
        what = "lacks" if missing else ("has an unexpected" if extra else "has another shape for")
        raise ConfigError(f"model.pretrained {path}: {what} {key} (the file must be a torchvision ResNet of "
                          f"model.blocks={[len(getattr(encoder, f'layer{s + 1}')) for s in range(encoder.stages)]} "
                          f"and model.width={encoder.layout[0][0]})")
    encoder.load_state_dict(state)


def _conv_bn(c_in: int, c_out: int, k: int = 3, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), NORMS[norm](c_out), nn.ReLU(inplace=True))


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al., 2018) as ESANet weights each modality before adding them:
    ``x * sigmoid(W2 relu(W1 avgpool(x)))``. A zeroed map stays zero, so a masked modality adds
    nothing at any fusion point."""

    def __init__(self, channels: int, ratio: int = 16):
        super().__init__()
        hidden = max(1, channels // ratio)
        self.fc = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


class PyramidContext(nn.Module):
    """ESANet's context module (PSPNet's pyramid pooling, light): the deepest fused map average-
    pooled to each of ``bins`` grids, projected, upsampled back and concatenated with it."""

    def __init__(self, c_in: int, c_out: int, bins=(1, 2, 4), norm: str = "batch"):
        super().__init__()
        branch = max(1, c_in // len(bins))
        self.bins = tuple(bins)
        # a 1 x 1 pooled map has one value per channel: GroupNorm over it would zero it, so the
        # branches' projections are plain convolutions (ReLU kept)
        self.branches = nn.ModuleList([_conv_bn(c_in, branch, 1, norm) if norm == "batch" else
                                       nn.Sequential(nn.Conv2d(c_in, branch, 1), nn.ReLU(inplace=True))
                                       for _ in self.bins])
        self.out = _conv_bn(c_in + branch * len(self.bins), c_out, 1, norm)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(b(F.adaptive_avg_pool2d(x, n)), size=size, mode="bilinear", align_corners=False)
                  for n, b in zip(self.bins, self.branches)]
        return self.out(torch.cat([x, *pooled], 1))


@dataclass(frozen=True)
class ESANetSettings(DenseSettings):
    """The ``model.*`` keys of the ``esanet`` fusion (they shape its encoders too): ``norm`` (batch is
    ESANet's; group has no ImageNet weights) and these."""

    blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])  # BasicBlocks per stage: ResNet18
    pretrained: str = ""  # a local torchvision ResNet state dict loaded into every encoder ("" = from scratch)
    se_ratio: int = 16  # squeeze-excitation reduction at each fusion point (ESANet's)

    def __post_init__(self):
        super().__post_init__()
        check("pretrained", not (self.pretrained and self.norm != "batch"), self.pretrained,
              "empty with model.norm=group (ImageNet ResNets are BatchNorm networks)")
        check("blocks", 2 <= len(self.blocks) <= 5 and all(n >= 1 for n in self.blocks), self.blocks,
              "2 to 5 stages of at least one block each")
        check("se_ratio", self.se_ratio >= 1, self.se_ratio, ">= 1")


class ESANetHead(Head):
    """ESANet's fusion and decoder (Seichter et al., ICRA 2021) for any N modalities, over the
    ``StageEncoder``s' packed stage maps. At every stage s the modalities are fused by
    squeeze-excitation and addition, ``F_s = sum_m SE_{m,s}(f_{m,s})``; a pyramid context module
    reads ``F_{S-1}``; each decoder step (3x3 conv-BN-ReLU, x2 bilinear upsampling) adds the skip
    ``1x1(F_s)`` of the stage at its resolution, down to stride 4, where a 3x3 classifier and x4
    bilinear upsampling give (B, K, H, W) logits.

    Where it differs from ESANet, and why: ESANet adds the fused map back into the RGB encoder after
    every stage, so the RGB encoder reads depth features; DGL needs encoders that each see one
    modality (its encoder gradients are per-modality losses), so here the encoders stay separate
    and every stage's fusion happens in the head. Zero-masking (DGL's unimodal passes, branch
    evaluation) happens at those S fusion points: a masked modality's stage maps are zeros, which
    SE leaves zero, so it adds nothing anywhere. The head holds BatchNorm; masked passes run on
    cloned buffers and leave its running statistics alone (``dgl_loss``, ``head_masked``)."""

    Settings = ESANetSettings
    needs_maps = False
    dense = True
    reads_stages = True  # its encoders are StageEncoders (models/__init__.py builds them)

    def __init__(self, modalities, dim, seq_len, out_dim, *, hidden: int = 128, dropout: float = 0.0,
                 blocks=(2, 2, 2, 2), pretrained: str = "", se_ratio: int = 16, norm: str = "batch"):
        super().__init__()
        self.modalities, S = list(modalities), len(blocks)
        width = dim // packed_channels(1, S)
        if width < 1 or packed_channels(width, S) != dim:
            raise ValueError(f"{dim} channels are not {S} packed ResNet stages")
        self.layout = stage_layout(width, S)
        hidden = hidden or 128
        chans = [max(8, hidden // 2 ** (S - 1 - s)) for s in range(S)]  # decoder width per stage (ESANet halves it)
        self.se = nn.ModuleList([nn.ModuleDict({m: SqueezeExcite(c, se_ratio) for m in self.modalities})
                                 for c, _ in self.layout])
        self.context = PyramidContext(self.layout[-1][0], chans[-1], norm=norm)
        self.up = nn.ModuleList([_conv_bn(chans[s + 1], chans[s], 3, norm) for s in range(S - 1)])
        self.skip = nn.ModuleList([_conv_bn(self.layout[s][0], chans[s], 1, norm) for s in range(S - 1)])
        self.drop = nn.Dropout2d(dropout)
        self.classify = nn.Conv2d(chans[0], out_dim, 3, padding=1)
        _kaiming(self)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        stages = {m: unpack(feats[m], self.layout) for m in self.modalities}
        fused = [sum(self.se[s][m](stages[m][s]) for m in self.modalities) for s in range(len(self.layout))]
        x = self.context(fused[-1])
        for s in reversed(range(len(self.layout) - 1)):
            x = F.interpolate(self.up[s](x), scale_factor=2, mode="bilinear", align_corners=False) + self.skip[s](fused[s])
        return F.interpolate(self.classify(self.drop(x)), scale_factor=4, mode="bilinear", align_corners=False)
