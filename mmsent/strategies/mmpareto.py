"""MMPareto (Wei & Hu, ICML 2024): Pareto integration of the multimodal and unimodal gradients.

Encoder m faces two objectives, L_mm and L_m (its branch through the shared head, others zeroed),
for any N. Per encoder, with whole-encoder gradient vectors from ``torch.autograd.grad`` (never
accumulated ``.grad``, the BalanceBenchmark bug): if ``cos(g_mm, g_m) > 0`` the weights are
(1/2, 1/2), else the 2-vector min-norm solution ``c = (|g_m|^2 - <g_mm, g_m>) / |g_mm - g_m|^2``
clipped to [0.001, 0.999]. Per tensor, ``d = 2 (c g_mm + (1 - c) g_m)`` is rescaled to
``max(|g_mm + g_m| / |d|, 1) * gamma * d`` (gamma = 1.5, the official constant). The head keeps the
plain gradient of ``L_mm + sum_m L_m``.

Reference followed: GeWu-Lab/MMPareto_ICML2024@a339db3 ``code/MMPareto.py::train_epoch`` and its
``MinNormSolver`` (shared docs/research/baselines.md §8); ``tests/test_golden.py::test_mmpareto_equals_the_reference``
runs the official form against numbers recorded from that code. The official form is the default
(``unimodal_heads: true``): L_m comes from a separate ``Linear(d_m, C)`` per modality on its pooled
feature, owned by the strategy (an extra optimizer group, saved with the strategy's state) and
trained by L_m alone; the fusion head gets L_mm only. ``unimodal_heads: false`` is mmsent's variant
"MMPareto-SH" (its own row in tables): L_m is modality m's branch through the SHARED head with the
others zeroed (the DGL paper's protocol for the baselines' unimodal outputs), so the unimodal losses
also train the fusion head. Counted: ``conflicts``, the encoder-steps whose two gradients conflict
(cos <= 0: the min-norm weights instead of 1/2, 1/2).

What comes from where: [source] (MMPareto_ICML2024 ``MMPareto.py``) the separate unimodal classifiers,
the per-encoder cosine test, the 2-vector min-norm weights clipped to [0.001, 0.999], the per-tensor
rescaling by gamma = 1.5, the head's plain summed gradient. [extension] N > 2 (each encoder still
faces its two objectives), MMPareto-SH (the shared head's zero-masked branch), regression.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmsent.checks import check, finite
from mmsent.strategies.base import Strategy, feature_vectors


def conflict(g_mm: list[torch.Tensor], g_m: list[torch.Tensor]) -> bool:
    a = torch.cat([g.flatten() for g in g_mm])
    b = torch.cat([g.flatten() for g in g_m])
    return bool(torch.nn.functional.cosine_similarity(a, b, dim=0) <= 0)


def pareto_weights(g_mm: list[torch.Tensor], g_m: list[torch.Tensor]) -> float:
    """Weight c on g_mm (1 - c on g_m)."""
    a = torch.cat([g.flatten() for g in g_mm])
    b = torch.cat([g.flatten() for g in g_m])
    if torch.nn.functional.cosine_similarity(a, b, dim=0) > 0:
        return 0.5
    c = (b.dot(b) - a.dot(b)) / (a - b).dot(a - b).clamp(min=1e-20)
    return float(c.clamp(0.001, 0.999))


def pareto_combine(g_mm: list[torch.Tensor], g_m: list[torch.Tensor], gamma: float = 1.5) -> list[torch.Tensor]:
    c = pareto_weights(g_mm, g_m)
    out = []
    for x, y in zip(g_mm, g_m):
        d = 2 * (c * x + (1 - c) * y)
        scale = ((x + y).norm() / d.norm().clamp(min=1e-20)).clamp(min=1.0)
        out.append(scale * d * gamma)
    return out


@dataclass(frozen=True)
class MMParetoSettings:
    gamma: float = 1.5  # the official rescaling constant
    unimodal_heads: bool = True  # the official separate per-modality classifiers for L_m (false: MMPareto-SH)

    def __post_init__(self):
        check("gamma", finite(self.gamma) and self.gamma > 0, self.gamma, "a finite number > 0")


class MMPareto(Strategy):
    label = "MMPareto"  # its row in `cli.py table`
    method = "MMPareto (ICML 2024), official separate unimodal classifiers (`unimodal_heads: false`: MMPareto-SH, L_m through the shared head)"
    summary = "per encoder, 2 objectives (L_mm, L_m) from `torch.autograd.grad`"
    checked = "`test_golden.py::test_mmpareto_equals_the_reference`, `test_mmpareto_conflict_oracle`"
    short_run = {"unimodal_heads": True}  # its between-epoch work happens within two epochs
    Settings = MMParetoSettings
    state = ("heads",)  # saved in last.pt, restored on --resume
    counts = ("conflicts",)

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        self.heads: nn.ModuleDict | None = None
        if self.settings.unimodal_heads:
            sizes = {m: feature_vectors(torch.zeros(1, *s)).shape[1] for m, s in model.feature_shapes.items()}
            ref = next(model.parameters())
            self.heads = nn.ModuleDict({m: nn.Linear(sizes[m], task.out_dim) for m in model.modalities}).to(
                device=ref.device, dtype=ref.dtype)
            optimizer.add_param_group({"params": list(self.heads.parameters())})

    def unimodal_predictions(self, feats):
        if self.heads is None:
            return self.branches(feats)
        return {m: self.heads[m](feature_vectors(f)) for m, f in feats.items()}

    def train_step(self, batch):
        feats = self.model.encode(batch)
        loss_mm = self.task.loss(self.model.head(feats), batch.y)
        loss_uni = {m: self.task.loss(p, batch.y) for m, p in self.unimodal_predictions(feats).items()}
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        if self.heads is not None:
            head += list(self.heads.parameters())
        grads = {}
        for m in feats:
            params = [p for p in self.model.encoders[m].parameters() if p.requires_grad]
            g_mm = torch.autograd.grad(loss_mm, params, retain_graph=True, allow_unused=True)
            g_m = torch.autograd.grad(loss_uni[m], params, retain_graph=True, allow_unused=True)
            self.dist.grads(g_mm)  # the Pareto combination needs the global gradients (torchrun)
            self.dist.grads(g_m)
            pairs = [(p, a, b) for p, a, b in zip(params, g_mm, g_m) if a is not None and b is not None]
            if pairs and conflict([a for _, a, _ in pairs], [b for _, _, b in pairs]):
                self.act("conflicts")
            combined = pareto_combine([a for _, a, _ in pairs], [b for _, _, b in pairs], self.settings.gamma)
            grads.update({p: g for (p, _, _), g in zip(pairs, combined)})
        head_grads = torch.autograd.grad(loss_mm + sum(loss_uni.values()), head, allow_unused=True)
        self.dist.grads(head_grads)
        grads.update({p: g for p, g in zip(head, head_grads) if g is not None})
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in grads.items():
            p.grad = g
        self.clip_and_step()
        return {"loss": loss_mm.item(), **{f"loss_{m}": v.item() for m, v in loss_uni.items()}}
