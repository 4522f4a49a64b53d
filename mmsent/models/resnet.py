"""Audio-visual building blocks (DGL paper Sec. 4.2, the OGM-GE protocol): ResNet18 encoders for a
1-channel spectrogram (made by ``mmsent.data.av.log_spectrogram``) and for T video frames, and the
MMTM fusion block for N streams. Written here because torchvision does not install beside the CPU
torch wheel this project pins.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmsent.checks import check
from mmsent.models.encoder import Encoder, EncoderSpec
from mmsent.models.head import Head


class BasicBlock(nn.Module):
    """He et al.'s basic residual block; ``norm(channels)`` makes its normalisation layers
    (BatchNorm by default; the dense models can take GroupNorm, see models/dense.py)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = norm(c_out)
        self.down = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), norm(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.down(x))


def make_layer(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """One ResNet18 stage: two BasicBlocks, the first changing width/stride."""
    return nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out))


def _kaiming(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class ResNet18(nn.Module):
    """ResNet18 trunk (He et al., 2016) up to layer4, no classifier: (N, C, H, W) -> (N, 512, h, w).
    ``upto=2`` stops after layer2 (the encoder part of the MMTM network: layers 3-4 belong to the
    fusion head there)."""

    def __init__(self, in_channels: int = 3, width: int = 64, upto: int = 4):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        widths = [w, w, 2 * w, 4 * w, 8 * w]
        self.layers = nn.Sequential(*[make_layer(widths[i], widths[i + 1], 1 if i == 0 else 2) for i in range(upto)])
        self.out_dim = widths[upto]
        _kaiming(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(self.stem(x))


def per_frame(layer: nn.Module, x: Tensor) -> Tensor:
    """Apply a 2-D ``layer`` to (B, C, H, W) maps or to every frame of (B, C, T, H, W) maps."""
    if x.dim() == 4:
        return layer(x)
    B, C, T = x.shape[:3]
    # contiguous: a flattened transpose can come out channels-last, a layout on which torch 2.13's
    # CPU convolution backward corrupted memory (see data/av.py)
    y = layer(x.transpose(1, 2).flatten(0, 1).contiguous())  # (B*T, C', H', W')
    return y.view(B, T, *y.shape[1:]).transpose(1, 2)


class SpectrogramEncoder(Encoder):
    """Audio: ResNet18 on a 1-channel log spectrogram (B, F, T). Pooled: (B, 1, 512); with
    ``maps=True`` the layer2 map (B, 128, h, w) for an MMTM head."""

    reads = "spectrogram"

    @classmethod
    def build(cls, spec: EncoderSpec) -> "Encoder":
        # With MMTM, layers 3-4 belong to the fusion head: the encoder stops at layer2 (maps).
        return cls(width=spec.width, maps=spec.maps)

    def __init__(self, width: int = 64, maps: bool = False):
        super().__init__()
        self.maps = maps
        self.net = ResNet18(1, width, upto=2 if maps else 4)
        self.out_dim = self.net.out_dim

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        f = self.net(x.unsqueeze(1))
        return f if self.maps else f.mean((2, 3))[:, None]


class FramesEncoder(Encoder):
    """Visual: ResNet18 on each of T frames (B, T, 3, H, W). Pooled over time and space (the
    authors' 3-D adaptive average pool): (B, 1, 512); with ``maps=True`` (B, 128, T, h, w)."""

    reads = "frames"
    build = classmethod(SpectrogramEncoder.build.__func__)  # the same ResNet sizes

    def __init__(self, width: int = 64, maps: bool = False):
        super().__init__()
        self.maps = maps
        self.net = ResNet18(3, width, upto=2 if maps else 4)
        self.out_dim = self.net.out_dim

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        f = per_frame(self.net, x.transpose(1, 2))  # (B, C, T, h, w)
        return f if self.maps else f.mean((2, 3, 4))[:, None]


class MMTM(nn.Module):
    """Multimodal transfer module (Joze et al., CVPR 2020) for N streams: squeeze each stream's map
    by global average pooling, a joint layer over the concatenated squeezes (``ratio`` shrinks it),
    and a sigmoid gate per stream that rescales its channels; shapes are kept. A zeroed stream
    squeezes to zeros, so a masked pass is defined (shared docs/method.md: zero at the MMTM input).

    For Greedy (Wu et al., ICML 2022) each gate also has a running mean (buffers ``gate_mean_<m>``
    and ``gate_count_<m>``): while ``track`` is set (a function giving the global batch mean of a
    gate, Greedy sets it for its training forwards), every forward moves each mean with its live
    batch-mean gate, BEFORE a gate named in ``frozen`` is replaced by its running mean, broadcast
    over the batch (the reference's "curation": its ``MMTM_mitigate.forward`` updates the mean on
    every forward, then uses it). ``last_gates`` holds the live batch-mean gates of the latest forward."""

    def __init__(self, channels: dict[str, int], ratio: int = 4):
        super().__init__()
        total = sum(channels.values())
        hidden = max(1, 2 * total // ratio)  # the reference code's int(2 * (C_A + C_B) / ratio)
        self.joint = nn.Sequential(nn.Linear(total, hidden), nn.ReLU())
        self.gates = nn.ModuleDict({m: nn.Linear(hidden, c) for m, c in channels.items()})
        for m, c in channels.items():
            self.register_buffer(f"gate_mean_{m}", torch.zeros(c))
            self.register_buffer(f"gate_count_{m}", torch.zeros((), dtype=torch.long))
        self.frozen: frozenset[str] = frozenset()
        self.track = None  # None, or gate batch mean -> the mean to move the running mean with
        self.last_gates: dict[str, Tensor] = {}

    def forward(self, maps: dict[str, Tensor]) -> dict[str, Tensor]:
        squeeze = torch.cat([maps[m].flatten(2).mean(-1) for m in self.gates], -1)  # (B, sum C)
        z = self.joint(squeeze)
        out, self.last_gates = {}, {}
        for m, gate in self.gates.items():
            g = torch.sigmoid(gate(z))
            self.last_gates[m] = g.detach().mean(0)
            if self.track is not None:
                self.update_gate_means({m: self.track(self.last_gates[m])})
            if m in self.frozen:  # a copy: the next forward moves the buffer in place
                g = getattr(self, f"gate_mean_{m}").clone().expand_as(g)
            out[m] = maps[m] * g.view(*g.shape, *([1] * (maps[m].dim() - 2)))
        return out

    @torch.no_grad()
    def update_gate_means(self, batch_means: dict[str, Tensor]) -> None:
        """``mean <- (g + k mean) / (k + 1)``, k the steps counted so far (Greedy's running average;
        each stream its own -- the reference updates the second stream's mean from the first's gate,
        a bug not reproduced)."""
        for m, g in batch_means.items():
            mean, k = getattr(self, f"gate_mean_{m}"), getattr(self, f"gate_count_{m}")
            mean.copy_((g + k * mean) / (k + 1))
            k.add_(1)


@dataclass(frozen=True)
class MMTMSettings:
    ratio: int = 2  # MMTM squeeze ratio (the DGL authors' MMTM_Net uses 2)

    def __post_init__(self):
        check("ratio", self.ratio >= 1, self.ratio, ">= 1")


class MMTMHead(Head):
    """The MMTM network's fusion part for N streams (Joze et al., CVPR 2020; the DGL paper's Table 2
    left): MMTM on the encoders' layer2 maps, then per stream layer3 -> MMTM -> layer4 -> MMTM,
    global average pooling, concatenation and one linear classifier. Each stream owns its layers 3-4
    (the authors' MMTM_Net shares the rgb stream's by mistake). A masked stream enters as zeros at
    the first MMTM (shared docs/method.md), so DGL's branches are defined; the head holds train-mode BatchNorm,
    so ``dgl_loss`` runs the masked passes one at a time and leaves running statistics alone.
    ``dim`` is the channel count of the layer2 maps (2 x ResNet width)."""

    Settings = MMTMSettings
    needs_maps = True  # the encoders stop after layer2: layers 3-4 live here
    separate_branches = True

    def __init__(self, modalities, dim: int, seq_len: int, out_dim: int, *, hidden: int = 0, dropout: float = 0.0,
                 ratio: int = 2):
        super().__init__()
        self.modalities = list(modalities)
        c2, c3, c4 = dim, 2 * dim, 4 * dim
        self.mmtm = nn.ModuleList([MMTM(dict.fromkeys(self.modalities, c), ratio) for c in (c2, c3, c4)])
        self.layer3 = nn.ModuleDict({m: make_layer(c2, c3, 2) for m in self.modalities})
        self.layer4 = nn.ModuleDict({m: make_layer(c3, c4, 2) for m in self.modalities})
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(len(self.modalities) * c4, out_dim)
        _kaiming(self)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        x = self.mmtm[0]({m: feats[m] for m in self.modalities})
        x = self.mmtm[1]({m: per_frame(self.layer3[m], x[m]) for m in self.modalities})
        x = self.mmtm[2]({m: per_frame(self.layer4[m], x[m]) for m in self.modalities})
        pooled = [x[m].flatten(2).mean(-1) for m in self.modalities]
        return self.fc(self.drop(torch.cat(pooled, -1)))

    def stream_logits(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each stream's own logits, ``W_m f_m + b/N`` of the classifier's column blocks (they sum
        to the prediction): Greedy's per-branch outputs on this head (not ``branch_logits``, so the
        other methods keep the zero-masked branches on it)."""
        x = self.mmtm[0]({m: feats[m] for m in self.modalities})
        x = self.mmtm[1]({m: per_frame(self.layer3[m], x[m]) for m in self.modalities})
        x = self.mmtm[2]({m: per_frame(self.layer4[m], x[m]) for m in self.modalities})
        blocks = self.fc.weight.chunk(len(self.modalities), dim=1)
        bias = self.fc.bias / len(self.modalities)
        return {m: self.drop(x[m].flatten(2).mean(-1)) @ w.T + bias for m, w in zip(self.modalities, blocks)}

    def branch_parameters(self, m: str) -> list[tuple[nn.Parameter, tuple | None]]:
        """Stream m's parameters outside the MMTM blocks (Greedy's "main" group; the encoder's are
        added by the caller): its layers 3-4 and its column block of the classifier (index)."""
        k, width = self.modalities.index(m), self.fc.in_features // len(self.modalities)
        own = [(p, None) for p in [*self.layer3[m].parameters(), *self.layer4[m].parameters()]]
        return own + [(self.fc.weight, (slice(None), slice(k * width, (k + 1) * width)))]
