"""Greedy: balanced multimodal learning against the greedy nature of multimodal DNNs (Wu,
Jastrzebski, Cho & Geras, "Characterizing and Overcoming the Greedy Nature of Learning in
Multi-modal Deep Neural Networks", ICML 2022), for N modalities.

Reference followed: nyukat/greedy_multimodal_learning@a190e03 ``src/balanced_mmtm.py``,
``src/callbacks.py`` (Bias_Mitigation_Strong) and ``configs/training_guided.gin`` (shared
``docs/research/balancemm-methods.md`` §3).

Model [source]: unimodal branches joined by MMTM blocks, ratio 4 (``model.fusion=mmtm_seq`` for
feature sequences: per-branch classifiers whose mean is the prediction, ratio 4 by default;
``model.fusion=mmtm`` for the audio-visual ResNets -- the DGL authors' MMTM network, ratio 2, shared
by every row of an MMTM table -- whose one linear classifier over the concatenation splits into
per-branch column blocks ``W_m f_m + b/N``). The loss is the SUM of the branches' cross-entropies, the
reference's ``train.py::blend_loss`` (the prediction, their mean, is only what is scored). Each
MMTM gate keeps a running mean that every training forward moves with the live gate, curation
steps included, before the gate is used (``MMTM_mitigate.forward``).

Conditional learning speed [source]: after every regular step's backward, per modality m,

    M_main_m   += ||grad main_m||^2 / ||main_m||^2       main_m: branch m outside MMTM (its
                                                         encoder, its layers, its classifier block)
    M_bypass_m += ||grad bypass_m||^2 / ||bypass_m||^2   bypass_m: m's gate layers in every MMTM
                                                         block and the shared squeeze layers
    BDR_m = log10(M_bypass_m / M_main_m)

(squared norms summed over the group's tensors; the sums start at step 0 and are never reset).

Balancing [source]: before epoch E_0 = 2 every step is regular. From then on, after a regular step
with ``|BDR_0 - BDR_1| > eps`` the next Q = 5 steps curate the caring modality c (0 if
BDR_0 > BDR_1, else 1): a curation step is a normal step on the same loss, all parameters
updated, except that every MMTM block applies c's running-mean gate instead of its live gate.
Speeds are not accumulated during curation. [extension] N > 2: curate when
``max_m BDR_m - min_m BDR_m > eps``, c = argmax_m BDR_m (at N = 2 the source's rule).

``tests/test_golden.py::test_greedy_equals_the_reference`` runs two epochs (three curations) against
numbers recorded from the reference's ``Model_.train_loop`` with its ``Bias_Mitigation_Strong`` and
``MMTM_mitigate``. Counted: ``curated_steps``.

Defaults [source, ModelNet40]: eps = 0.01, Q = 5, E_0 = 2, MMTM ratio 4. Departures, stated: the
running means move from the global batch's mean gate (exact under torchrun), each stream's from its
own gate (the reference moves the second stream's from the first's, a bug not reproduced); and
evaluation passes leave them alone (the reference's validation and test forwards move them too):
scoring a split never changes what training does next, and torchrun replicas stay identical.

Any other head is refused with one line: without cross-modal bypass parameters the method is
undefined (the spec rules out comparing raw encoder speeds across encoders of different size).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mmsent.checks import check, finite
from mmsent.strategies.base import Strategy


def relative_speed(groups: list[tuple[torch.nn.Parameter, tuple | None]]) -> float:
    """``||grad||^2 / ||theta||^2`` over a group's tensors (or their indexed blocks)."""
    g2 = w2 = 0.0
    for p, idx in groups:
        if p.grad is None:
            continue
        g, w = (p.grad, p.detach()) if idx is None else (p.grad[idx], p.detach()[idx])
        g2 += float(g.pow(2).sum())
        w2 += float(w.pow(2).sum())
    return g2 / w2 if w2 > 0 else 0.0


def caring(bdr: dict[str, float], eps: float) -> str | None:
    """The modality to curate (largest BDR) when the BDRs differ by more than eps, else None."""
    if max(bdr.values()) - min(bdr.values()) <= eps:
        return None
    return max(bdr, key=bdr.get)  # ties: the first in modality order (at N = 2: c = 0 iff d > 0)


@dataclass(frozen=True)
class GreedySettings:
    eps: float = 0.01  # BDR gap that triggers curation
    curation_steps: int = 5  # Q
    start_epoch: int = 2  # E_0: the first epoch that may curate

    def __post_init__(self):
        check("eps", finite(self.eps) and self.eps >= 0, self.eps, "a finite number >= 0")
        check("curation_steps", self.curation_steps >= 1, self.curation_steps, "an integer >= 1")
        check("start_epoch", self.start_epoch >= 0, self.start_epoch, "an integer >= 0")


class Greedy(Strategy):
    label = "Greedy"  # its row in `cli.py table`
    method = "Greedy (ICML 2022), official code; needs an MMTM head (`model.fusion=mmtm_seq`, or `mmtm` audio-visual)"
    summary = "Σ_m CE of the branches; conditional learning speeds of each branch's MMTM gates vs its main branch (BDR); from epoch 2, \\|ΔBDR\\| > 0.01 → 5 curation steps with the caring branch's gates at their running mean"
    checked = "`test_golden.py::test_greedy_equals_the_reference`, `test_greedy_relative_speed_and_bdr_switch_oracle`"
    short_run = {"eps": 0.0, "curation_steps": 1, "start_epoch": 0}  # its between-epoch work happens within two epochs
    Settings = GreedySettings
    state = ("speed_main", "speed_bypass", "care", "left")  # saved in last.pt, restored on --resume
    needs_model = {"fusion": "mmtm_seq"}  # ratio 4, the head's default (its model's)
    counts = ("curated_steps",)
    also_on = ("mmtm",)  # its model is MMTM itself: the image form of its MMTM blocks

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        head = model.head
        if not head.separate_branches:
            raise ValueError("greedy needs unimodal branches joined by MMTM blocks "
                             "(set model.fusion=mmtm_seq, or mmtm for audio-visual encoders)")
        mods = model.modalities
        shared = [(p, None) for block in head.mmtm for p in block.joint.parameters()]
        self.main = {m: [(p, None) for p in model.encoders[m].parameters()] + head.branch_parameters(m) for m in mods}
        self.bypass = {m: [(p, None) for block in head.mmtm for p in block.gates[m].parameters()] + shared
                       for m in mods}
        self.speed_main = dict.fromkeys(mods, 0.0)
        self.speed_bypass = dict.fromkeys(mods, 0.0)
        self.care: str | None = None  # the modality under curation
        self.left = 0  # curation steps still to run

    def bdr(self) -> dict[str, float]:
        return {m: math.log10(self.speed_bypass[m] / self.speed_main[m])
                if self.speed_bypass[m] > 0 and self.speed_main[m] > 0 else 0.0 for m in self.speed_main}

    def branch_logits(self, feats):
        return self.model.head.stream_logits(feats)

    def train_step(self, batch):
        s, blocks = self.settings, list(self.model.head.mmtm)
        curating = self.left > 0
        for block in blocks:
            block.frozen = frozenset([self.care]) if curating else frozenset()
            block.track = self.dist.mean  # every training forward moves the running means
        try:
            loss = sum(self.task.loss(z, batch.y) for z in self.branch_logits(self.model.encode(batch)).values())
        finally:
            for block in blocks:  # evaluation and masked passes: live gates, means left alone
                block.frozen, block.track = frozenset(), None
        self.backward(loss)  # speeds from the global batch's gradient
        logs = {"loss": loss.item(), "curation": float(curating)}
        if curating:
            self.left -= 1
            self.act("curated_steps")
        else:
            for m in self.speed_main:
                self.speed_main[m] += relative_speed(self.main[m])
                self.speed_bypass[m] += relative_speed(self.bypass[m])
            bdr = self.bdr()
            logs.update({f"bdr_{m}": v for m, v in bdr.items()})
            care = caring(bdr, s.eps) if self.epoch >= s.start_epoch else None
            if care is not None:
                self.care, self.left = care, s.curation_steps
        self.clip_and_step()
        return logs
