"""Disentangled Gradient Learning (Wei, Luo & Luo, ICCV 2025) as a loss for any N >= 2 modalities.

The paper trains the fusion head and the modality encoders on different losses:

* ``L_d = l(h({m: stopgrad(z_m)}), y)`` (Eq. 9-10): the multimodal loss on detached features, so it
  reaches only the head ("multimodal truncation", MT);
* ``L_m = l(h({m: z_m, k != m: 0}), y)`` (Eq. 11-14): the unimodal loss of modality m through the SAME
  head with every other modality zeroed; its gradient reaches the encoder of m through the head's
  Jacobian but is discarded on the head's own parameters ("unimodal truncation", UT);
* Eq. 15 concatenates ``[L_d, alpha * sum_m L_m]``: encoders get ``alpha * grad sum_m L_m``, the head
  gets ``grad L_d``.

Algorithm 1 realises Eq. 15 with two backward calls and the head's gradients zeroed in between. Here
the unimodal passes call the head with *detached parameters* (``torch.func.functional_call``), so one
``backward()`` of ``L_d + alpha * sum_m L_m`` yields exactly the same gradients, works with any
optimizer, AMP or DDP, never matches parameter names, and the encoders run once per step.

This module depends on torch only, so it can be dropped into any training loop::

    feats = {m: encoders[m](x[m]) for m in x}
    out = dgl_loss(feats, head, criterion, y, alpha=4.0)
    out.total.backward(); optimizer.step()
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["DGLOutput", "DGLLoss", "call_keeping_buffers", "dgl_loss", "keep_only", "zero_others"]


@dataclass
class DGLOutput:
    """``total`` is what to call ``backward()`` on; the parts are for logging."""

    total: Tensor
    multimodal: Tensor  # L_d, Eq. 10
    unimodal: dict[str, Tensor]  # L_m per modality, Eq. 11/13


def keep_only(features: Mapping[str, Tensor], keep: Iterable[str]) -> dict[str, Tensor]:
    """The paper's parameter-free modality dropout: every modality outside ``keep`` becomes zeros
    of its own shape. The one zero-masking rule of mmsent (``MultimodalModel.mask_modalities``
    calls it for every strategy and every evaluation)."""
    keep = set(keep)
    return {m: z if m in keep else torch.zeros_like(z) for m, z in features.items()}


def zero_others(features: Mapping[str, Tensor], keep: str) -> dict[str, Tensor]:
    """Modality ``keep`` alone, the others zeroed (Eq. 12 / 14)."""
    return keep_only(features, [keep])


def _has_batch_coupling(module: nn.Module) -> bool:
    # BatchNorm in train mode mixes samples, so stacking the N masked passes as rows of one call
    # would pool their normalisation statistics; such heads map the passes with vmap instead.
    return any(isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.training for mod in module.modules())


class _ScaleGrad(torch.autograd.Function):
    """Identity forward (bit-exact), gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


def _params(module: nn.Module, param_grad: float) -> dict[str, Tensor]:
    """The parameters, receiving ``param_grad`` times their gradient (0: detached)."""
    if param_grad == 0:
        return {n: p.detach() for n, p in module.named_parameters()}
    if param_grad == 1:
        return dict(module.named_parameters())
    return {n: _ScaleGrad.apply(p, param_grad) for n, p in module.named_parameters()}


def call_keeping_buffers(module: nn.Module, *args, param_grad: float = 1.0):
    """``module(*args)`` on cloned buffers, so BatchNorm running statistics stay as they were. The
    parameters receive ``param_grad`` times their gradient: 0 detaches them (DGL's unimodal
    truncation), 1 is a plain call."""
    buffers = {n: b.clone() for n, b in module.named_buffers()}
    return functional_call(module, {**_params(module, param_grad), **buffers}, args)


FILLS = ("zero", "mean")


def _absent(z: Tensor, fill: str) -> Tensor:
    """What a masked modality becomes: zeros (the paper), or its batch-mean feature, detached (the
    centre of what the head is fitted on, so a masked input stays inside its training range)."""
    return torch.zeros_like(z) if fill == "zero" else z.detach().mean(0, keepdim=True).expand_as(z)


def _vmapped_passes(head: nn.Module, stacked: dict[str, Tensor], param_grad: float) -> Tensor:
    """The N masked passes of a head with train-mode BatchNorm in one call: ``vmap`` over the pass
    axis gives every pass its own batch statistics (as N separate calls would), and each pass
    updates its own copy of the buffers, so the module's running statistics stay untouched."""
    n = len(next(iter(stacked.values())))
    params = _params(head, param_grad)
    buffers = {k: b.unsqueeze(0).repeat(n, *[1] * b.dim()) for k, b in head.named_buffers()}
    # randomness="different": each pass draws its own dropout masks, as N separate calls would
    return torch.func.vmap(lambda x, b: functional_call(head, {**params, **b}, (x,)), randomness="different")(stacked, buffers)


def _unimodal_predictions(
    features: Mapping[str, Tensor], head: nn.Module, param_grad: float, batched: bool, fill: str
) -> dict[str, object]:
    # Buffers are cloned so that masked passes never update running statistics (shared docs/method.md: BN
    # layers seen by masked passes must not take statistics from them).
    def call(feats: dict[str, Tensor]):
        return call_keeping_buffers(head, feats, param_grad=param_grad)

    names = list(features)
    absent = {k: _absent(z, fill) for k, z in features.items()}
    if not batched:
        return {m: call({k: z if k == m else absent[k] for k, z in features.items()}) for m in names}
    if _has_batch_coupling(head):  # (N, B, ...) inputs, one pass per leading index
        stacked = {k: torch.stack([z if k == m else absent[k] for m in names]) for k, z in features.items()}
        return dict(zip(names, _vmapped_passes(head, stacked, param_grad).unbind(0)))
    # One head call on N*B rows: row block i holds modality names[i] alone.
    stacked = {k: torch.cat([z if k == m else absent[k] for m in names], dim=0) for k, z in features.items()}
    pred = call(stacked)
    if not isinstance(pred, Tensor):
        raise TypeError("dgl_loss with batched unimodal passes needs a head that returns one tensor")
    return dict(zip(names, pred.chunk(len(names), dim=0)))


def dgl_loss(
    features: Mapping[str, Tensor],
    head: nn.Module,
    criterion: Callable[[object, Tensor], Tensor],
    target: Tensor,
    alpha: float = 1.0,
    truncate_multimodal: bool = True,
    truncate_unimodal: bool = True,
    batch_unimodal: bool = True,
    head_weight: float = 0.0,
    fill: str = "zero",
) -> DGLOutput:
    """DGL's losses (Eq. 15) arranged so that one ``backward()`` gives Algorithm 1's gradients.

    Args:
        features: modality -> encoder output, batch first. At least two modalities.
        head: fusion + predictor, called as ``head(features)``.
        criterion: ``criterion(prediction, target) -> scalar``.
        alpha: weight on the sum of unimodal losses (paper Table 4; 4 is best on CREMA-D).
        truncate_multimodal: MT; ``False`` lets L_d reach the encoders too (Table 3 "+UT" row).
        truncate_unimodal: UT; ``False`` lets each L_m reach the head too (Table 3 "+MT" row).
        batch_unimodal: run the N masked passes in one head call (default): as N*B rows, or, for a
            head with train-mode BatchNorm (which couples samples), vmapped over the passes so each
            keeps its own batch statistics. ``False`` runs them one by one.
        head_weight: beta >= 0, with UT: the head also learns ``beta * sum_m L_m`` (the masked
            passes, the encoders' share untouched). 0 is the paper's DGL; beta = alpha equals "+MT".
        fill: what a masked modality becomes: ``"zero"`` (the paper) or ``"mean"`` (its detached
            batch mean).

    After ``out.total.backward()`` an encoder parameter holds ``alpha * grad(sum_m L_m)`` (plus
    ``grad L_d`` without MT) and a head parameter holds ``grad L_d + beta * grad(sum_m L_m)`` (with
    ``beta = alpha`` without UT).
    """
    if len(features) < 2:
        raise ValueError(f"dgl_loss needs at least two modalities, got {sorted(features)}")
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")
    if head_weight and not truncate_unimodal:
        raise ValueError("head_weight sets the head's share of the unimodal losses under UT; without UT it is alpha")
    if head_weight and alpha <= 0:
        raise ValueError("head_weight needs alpha > 0 (the masked passes are shared with the encoders' loss)")
    fused_in = {m: z.detach() for m, z in features.items()} if truncate_multimodal else dict(features)
    multimodal = criterion(head(fused_in), target)
    # The head's share of alpha * L_m is beta: its parameters' gradient is scaled by beta / alpha
    # inside the one masked pass, which the encoders see unscaled.
    param_grad = 1.0 if not truncate_unimodal else (head_weight / alpha if head_weight else 0.0)
    preds = _unimodal_predictions(features, head, param_grad, batch_unimodal, fill)
    unimodal = {m: criterion(p, target) for m, p in preds.items()}
    total = multimodal + alpha * torch.stack(list(unimodal.values())).sum()
    return DGLOutput(total=total, multimodal=multimodal, unimodal=unimodal)


class DGLLoss(nn.Module):
    """``dgl_loss`` with its settings bound, for loops that like a loss module."""

    def __init__(
        self,
        head: nn.Module,
        criterion: Callable[[object, Tensor], Tensor],
        *,
        alpha: float = 1.0,
        truncate_multimodal: bool = True,
        truncate_unimodal: bool = True,
        head_weight: float = 0.0,
        fill: str = "zero",
    ):
        super().__init__()
        self.head, self.criterion = head, criterion
        self.options = dict(alpha=alpha, truncate_multimodal=truncate_multimodal, truncate_unimodal=truncate_unimodal,
                            head_weight=head_weight, fill=fill)

    def forward(self, features: Mapping[str, Tensor], target: Tensor) -> DGLOutput:
        return dgl_loss(features, self.head, self.criterion, target, **self.options)
