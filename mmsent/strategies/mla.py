"""MLA: Multimodal Learning with Alternating unimodal adaptation (Zhang et al., CVPR 2024).

Reference followed: the official ``main.py`` with ``--gs_flag`` and ``utils/utils.py::GSPlugin``
(shared docs/research/baselines.md §7). Its model applies ONE classifier ``Linear(D, C)`` to each
modality's pooled feature: ``needs_model`` gives that head (``model.fusion=shared model.hidden=0``;
MLA keeps its ensemble scale fixed at 1). The projection protects what earlier modalities taught a shared classifier, so
a head whose last layer has a separate weight block per modality (linear concat, per-modality
classifiers, MMTM's classifier) is refused with one line: there the projection protects nothing
(the DGL paper, Sec. 4.3, excludes MLA from such heads). Heads that mix the modalities before their
last layer (the mixer, sum, gated, FiLM, concat with a hidden layer) share it and are accepted.

Per batch the modalities take turns, in a fixed order: modality m's branch (the shared head with
the others zeroed) is trained on its own loss and the optimizer steps, so each encoder only ever
sees its own unimodal gradient and the shared head is updated N times per batch. Before each step
the gradient of the head's final linear layer is projected to protect what earlier modalities
taught it (gradient modification, "HGM", an OWM/RLS projector): with ``r`` the mean input of that
layer in this pass and ``a = 0.1 ** (batch / batches_per_epoch + 1)``,
``k = P r;  P <- (P - k k^T / (a + r^T k)) / ||.||_F;  W.grad <- W.grad P^T`` (P starts at the
identity and is never reset; no projection on the very first step). ``r`` is modality m's own
input to that layer, averaged over the batch, as the official ``GSPlugin.before_update`` is called
with modality m's features (a head that applies its classifier once per modality, ``SharedHead``,
calls it N times per pass: modality m's call is the one read). Departures from the released code,
stated: (1) its parameter-name check (``module.weight``) makes the projection never fire on its own
model -- here it is applied (``projection: false`` is the released behaviour); (2) it divides
element-wise by the d x d matrix ``a + k r^T``, which is not a projector (with P = I,
r = (1, 2, 0, 0), a = 0.1 it maps r to about (-1.81, -0.90, 0, 0)); the textbook OWM/RLS form above,
with the scalar ``a + r^T k``, is used (``projector: code`` gives the released element-wise form).
``tests/test_golden.py::test_mla_equals_the_reference`` runs both released behaviours (no
projection, and its projector made to fire) against numbers recorded from its ``train_epoch`` at
N = 2 and 3. Counted: ``projected_steps``.

Test-time fusion (``predict``) weights the branches per sample by ``softmax_m(-H_m)`` with H the
prediction entropy, over probabilities (the paper's dynamic fusion); the released code's entropy
takes a softmax over the batch axis and gives one batch-level weight per modality over logits (a
bug, not reproduced). Regression, where no entropy exists, averages the branches.

What comes from where: [source] (the official repository's ``main.py`` with ``--gs_flag``,
``GSPlugin``) the shared classifier, one optimizer step per modality in a fixed order, each encoder
trained by its own loss, the projector's recursion and its alpha schedule, no projection on the very
first step, the 3-modality form; [source, paper] the per-sample entropy fusion at test time.
[extension] the textbook projector (the released one divides element-wise; ``projector: code``),
the projection applied (the released code's name check never applies it; ``projection: false``),
heads that mix modalities before a shared last layer, N > 3, regression (mean of the branches).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmsent.models.fusions import ConcatHead, ConcatMixHead, LateMeanHead, MMTMSeqHead, SharedHead
from mmsent.models.resnet import MMTMHead
from mmsent.checks import check
from mmsent.strategies.base import Strategy


def shares_its_classifier(head: nn.Module) -> bool:
    """Whether the head's last linear layer sees every modality through the same weights."""
    if isinstance(head, (LateMeanHead, MMTMSeqHead, MMTMHead)):
        return False
    return not (isinstance(head, ConcatHead) and not isinstance(head, ConcatMixHead) and isinstance(head.net, nn.Linear))


def entropy_weights(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-sample ``softmax_m(-H_m)`` over modalities."""
    names = list(logits)
    h = torch.stack([-(l.softmax(-1) * l.log_softmax(-1)).sum(-1) for l in logits.values()], -1)  # (B, N)
    w = (-h).softmax(-1)
    return {m: w[:, i] for i, m in enumerate(names)}


def project(P: torch.Tensor, r: torch.Tensor, a: float, form: str = "textbook") -> torch.Tensor:
    """One RLS update of the projector with input ``r`` (d,): the textbook form divides by the
    scalar ``a + r^T P r``; ``form="code"`` by the matrix ``a + (P r) r^T`` element-wise, as the
    released ``GSPlugin`` does."""
    k = P @ r
    P = P - torch.outer(k, k) / (a + (r @ k if form == "textbook" else torch.outer(k, r)))
    return P / P.norm()


@dataclass(frozen=True)
class MLASettings:
    projection: bool = True  # HGM: project the shared classifier's gradient (false: the released code's behaviour)
    projector: str = "textbook"  # textbook (the OWM/RLS projector) | code (the released element-wise division)

    def __post_init__(self):
        check("projector", self.projector in ("textbook", "code"), self.projector, "'textbook' or 'code'")


class MLA(Strategy):
    label = "MLA"  # its row in `cli.py table`
    method = "MLA (CVPR 2024); needs `model.fusion=shared model.hidden=0` (one classifier applied to every modality); heads with a weight block per modality are refused"
    summary = "N alternating steps per batch, OWM projector on the shared classifier (textbook form; the released code's is not a projector), per-sample entropy fusion"
    checked = "`test_golden.py::test_mla_equals_the_reference`, `test_mla_each_modality_projects_with_its_own_features`, `test_mla_projector_identity`"
    Settings = MLASettings
    state = ("P", "steps")  # saved in last.pt, restored on --resume
    counts = ("projected_steps",)
    needs_model = {"fusion": "shared", "hidden": 0}

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        if not shares_its_classifier(model.head):
            raise ValueError("mla protects a classifier shared by the modalities, and this head has a separate "
                             "weight block per modality (set model.fusion=shared model.hidden=0)")
        if isinstance(model.head, SharedHead):  # the reference's model has no ensemble scale: beta stays 1
            model.head.beta.requires_grad_(False)
        linears = [mod for mod in model.head.modules() if isinstance(mod, nn.Linear)]
        self.last = linears[-1]  # the shared classifier the projector protects
        self.P = torch.eye(self.last.in_features, device=self.last.weight.device, dtype=self.last.weight.dtype)
        self.steps = 0
        self.batch_index = 0

    def on_epoch_start(self, epoch, data):
        super().on_epoch_start(epoch, data)
        self.batch_index = 0

    def classifier_input(self, calls: list[torch.Tensor], m: str) -> torch.Tensor:
        """Modality m's input to the shared classifier in its own pass: the one call of a head that
        mixes the modalities first, or m's call of a head that applies it once per modality."""
        if len(calls) == 1:
            return calls[0]
        order = self.model.head.modalities
        if len(calls) != len(order):
            raise RuntimeError(f"mla: the head called its classifier {len(calls)} times in one pass; "
                               f"cannot tell which call is modality {m!r}'s")
        return calls[order.index(m)]

    def train_step(self, batch):
        feats = self.model.encode(batch)
        calls: list[torch.Tensor] = []
        hook = self.last.register_forward_hook(lambda mod, inp, out: calls.append(inp[0]))
        logs = {}
        try:
            for m in feats:
                calls.clear()
                loss = self.task.loss(self.model.head(self.model.mask_modalities(feats, [m])), batch.y)
                self.backward(loss, retain_graph=True)
                if self.settings.projection and self.steps > 0 and self.last.weight.grad is not None:
                    # the projector lives in float32 with the gradients, also under bfloat16 autocast
                    with torch.autocast(self.last.weight.device.type, enabled=False):
                        x = self.classifier_input(calls, m).detach().to(self.P.dtype)
                        r = self.dist.mean(x.reshape(-1, self.last.in_features).mean(0))
                        a = 0.1 ** (self.batch_index / self.steps_per_epoch + 1)
                        self.P = project(self.P, r, a, self.settings.projector)
                        self.last.weight.grad = self.last.weight.grad @ self.P.T
                    self.act("projected_steps")
                self.clip_and_step()
                self.steps += 1
                logs[f"loss_{m}"] = loss.item()
        finally:
            hook.remove()
        self.batch_index += 1
        logs["loss"] = sum(logs.values()) / len(feats)
        return logs

    @torch.no_grad()
    def predict(self, batch, keep=None):
        if keep is not None:
            return super().predict(batch, keep)
        feats = self.model.encode(batch)
        preds = {m: self.model.head(self.model.mask_modalities(feats, [m])) for m in feats}
        if self.task.name == "classification":
            w = entropy_weights(preds)
            return sum(w[m][:, None] * preds[m].softmax(-1) for m in preds).clamp(min=1e-12).log()
        return sum(preds.values()) / len(preds)
