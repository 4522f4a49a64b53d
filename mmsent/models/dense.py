"""Dense prediction (RGB-D segmentation, the DGL paper's Table 5): a small ResNet-style encoder per
modality that keeps a feature map, and a fusion head that decodes the fused maps to per-pixel logits.

A light form of ESANet (Seichter et al., ICRA 2021) for any N modalities and a CPU: each encoder is a
stem and two BasicBlock stages (stride 4, ``4 * model.width`` channels); the head projects every
modality's map with a 1x1 conv and **adds** them (ESANet's element-wise fusion, here once, at the
encoders' output), then a context block (3x3 conv), bilinear upsampling by 4 and a 3x3 classifier.
ESANet's per-stage fusion and skip connections are not built here.

Zero-masking for DGL's unimodal passes happens at that fusion point: the map of every other modality
is replaced by zeros before the head, which adds nothing for it. The head has no BatchNorm, so the
masked passes cannot move running statistics; the encoders' BatchNorm runs once per batch, on real
inputs only (``tests/test_dense.py::test_masked_passes_leave_batchnorm_statistics_alone``; DGL's
gradients through a dense head: ``tests/test_dgl.py::test_dense_prediction_one_backward_equals_algorithm_1``).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mmsent.checks import NoSettings
from mmsent.models.resnet import BasicBlock, _kaiming


class DenseEncoder(nn.Module):
    """(B, C_in, H, W) -> (B, 4 * width, H / 4, W / 4)."""

    def __init__(self, in_channels: int, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        self.layer1 = BasicBlock(width, 2 * width, stride=2)
        self.layer2 = BasicBlock(2 * width, 4 * width, stride=2)
        self.out_dim = 4 * width
        _kaiming(self)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.layer2(self.layer1(self.stem(x)))


class DenseHead(nn.Module):
    """Per-modality 1x1 projections added (the fusion point), a 3x3 context block, x4 bilinear
    upsampling, a 3x3 classifier: (B, K, H, W) logits."""

    Settings = NoSettings  # no model.* keys beyond model.hidden (its channel count) and model.dropout
    needs_maps = False
    dense = True  # reads feature maps and predicts per pixel (a dense dataset needs such a head)

    def __init__(self, modalities, dim, seq_len, out_dim, *, hidden: int = 32, dropout: float = 0.0):
        super().__init__()
        self.modalities, channels = list(modalities), hidden or 32
        self.project = nn.ModuleDict({m: nn.Conv2d(dim, channels, 1) for m in self.modalities})
        self.context = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Dropout2d(dropout))
        self.classify = nn.Conv2d(channels, out_dim, 3, padding=1)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        fused = sum(self.project[m](feats[m]) for m in self.modalities)
        z = F.interpolate(self.context(fused), scale_factor=4, mode="bilinear", align_corners=False)
        return self.classify(z)
