"""The base of every fusion head (models/fusions.py, resnet.py's MMTM, dense.py's per-pixel heads).

A head is built as ``cls(modalities, dim, seq_len, out_dim, *, hidden, dropout, **settings)``, takes
``{modality: features}`` and returns the prediction. What it is to the model builder and what it can
do for a strategy are declared here, with defaults, so that nothing probes a head with ``getattr``:

* ``Settings`` (its ``model.*`` keys), ``needs_maps`` (its encoders stop at feature maps), ``dense``
  (predicts per pixel), ``reads_stages`` (reads every stage of its encoders: ESANet);
* ``branch_logits(feats)``: each modality's own logits where the head has them (a linear concat
  head's column blocks, late fusion's classifiers), else None -- the modalities mix before the
  output and a strategy falls back to zero-masked branches;
* ``stream_logits(feats)``: each stream's own logits for methods defined on separate streams
  (Greedy); by default ``branch_logits``;
* ``fuses`` / ``fuse(logits)``: the output is a fusion of per-modality logits (AMCo's masking);
* ``separate_branches`` / ``branch_parameters(m)`` and ``mmtm``: per-stream parameters outside
  shared MMTM blocks (Greedy's groups).
"""
from __future__ import annotations

from torch import Tensor, nn

from mmsent.checks import NoSettings


class Head(nn.Module):
    Settings: type = NoSettings
    needs_maps: bool = False
    dense: bool = False  # predicts per pixel from feature maps (segmentation); see models/dense.py
    reads_stages: bool = False  # its encoders are StageEncoders whose every stage it reads
    fuses: bool = False  # forward(feats) == fuse(branch_logits(feats))
    separate_branches: bool = False  # branch_parameters(m) and ``mmtm`` blocks are defined
    modalities: list[str]  # the order of its inputs (set by every head's constructor)

    def branch_logits(self, feats: dict[str, Tensor]) -> dict[str, Tensor] | None:
        return None

    def stream_logits(self, feats: dict[str, Tensor]) -> dict[str, Tensor] | None:
        return self.branch_logits(feats)

    def fuse(self, logits: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not fuse per-modality logits (fuses=False)")

    def branch_parameters(self, m: str) -> list:
        raise NotImplementedError(f"{type(self).__name__} has no separate branches (separate_branches=False)")
