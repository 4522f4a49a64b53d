"""Audio-visual building blocks (DGL paper Sec. 4.2, the OGM-GE protocol): log-magnitude STFT
spectrograms, ResNet18 encoders for a 1-channel spectrogram and for T video frames, and the MMTM
fusion block for N streams. Written here because torchvision does not install beside the CPU
torch wheel this project pins.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def log_spectrogram(wave: Tensor, *, n_fft: int = 512, hop: int = 353, eps: float = 1e-7) -> Tensor:
    """``log(|STFT| + eps)`` with a periodic Hann window of ``n_fft`` and reflect padding (librosa's
    defaults): (..., samples) -> (..., n_fft // 2 + 1, frames). The paper's CREMA-D input is 257 x 299."""
    window = torch.hann_window(n_fft, dtype=wave.dtype, device=wave.device)
    spec = torch.stft(wave, n_fft=n_fft, hop_length=hop, win_length=n_fft, window=window, center=True,
                      pad_mode="reflect", return_complex=True)
    return torch.log(spec.abs() + eps)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.down(x))


class ResNet18(nn.Module):
    """ResNet18 trunk (He et al., 2016) up to layer4, no classifier: (N, C, H, W) -> (N, 512, h, w).
    ``stages()`` exposes the stem and the four layers so MMTM can sit between them."""

    def __init__(self, in_channels: int = 3, width: int = 64):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.layer1 = nn.Sequential(BasicBlock(w, w), BasicBlock(w, w))
        self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w))
        self.layer3 = nn.Sequential(BasicBlock(2 * w, 4 * w, 2), BasicBlock(4 * w, 4 * w))
        self.layer4 = nn.Sequential(BasicBlock(4 * w, 8 * w, 2), BasicBlock(8 * w, 8 * w))
        self.out_dim = 8 * w
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def stages(self) -> list[nn.Module]:
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages():
            x = stage(x)
        return x


class SpectrogramEncoder(nn.Module):
    """Audio: ResNet18 on a 1-channel spectrogram (B, F, T) -> pooled (B, 1, 512)."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.net = ResNet18(1, width)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.net(x.unsqueeze(1)).mean((2, 3))[:, None]


class FramesEncoder(nn.Module):
    """Visual: ResNet18 on each of T frames (B, T, 3, H, W), pooled over time and space -> (B, 1, 512)
    (the authors' 3-D adaptive average pool)."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.net = ResNet18(3, width)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        B, T = x.shape[:2]
        f = self.net(x.flatten(0, 1))  # (B*T, 512, h, w)
        return f.view(B, T, *f.shape[1:]).mean((1, 3, 4))[:, None]


class MMTM(nn.Module):
    """Multimodal transfer module (Joze et al., CVPR 2020) for N streams: squeeze each stream's map
    by global average pooling, a joint layer over the concatenated squeezes (``ratio`` shrinks it),
    and a sigmoid gate per stream that rescales its channels; shapes are kept. A zeroed stream
    squeezes to zeros, so a masked pass is defined (method.md: zero at the MMTM input)."""

    def __init__(self, channels: dict[str, int], ratio: int = 4):
        super().__init__()
        total = sum(channels.values())
        hidden = max(1, 2 * total // ratio)  # the reference code's int(2 * (C_A + C_B) / ratio)
        self.joint = nn.Sequential(nn.Linear(total, hidden), nn.ReLU())
        self.gates = nn.ModuleDict({m: nn.Linear(hidden, c) for m, c in channels.items()})

    def forward(self, maps: dict[str, Tensor]) -> dict[str, Tensor]:
        squeeze = torch.cat([maps[m].flatten(2).mean(-1) for m in self.gates], -1)  # (B, sum C)
        z = self.joint(squeeze)
        out = {}
        for m, gate in self.gates.items():
            g = torch.sigmoid(gate(z))
            out[m] = maps[m] * g.view(*g.shape, *([1] * (maps[m].dim() - 2)))
        return out
