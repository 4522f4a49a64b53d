"""Vanilla joint training: one loss on the fused prediction (the paper's "Concat"/"Multimodal
Baseline" rows, Eq. 1). The step is ``base.Joint``, which other methods' model copies share."""
from __future__ import annotations

from mmsent.strategies.base import Joint


class Vanilla(Joint):
    label = "Multimodal Baseline"  # its row in `cli.py table`
    dense_ok = True  # per-pixel losses only: defined for segmentation
    method = "joint training on the fused loss"
