"""dgl_loss against an independent reference: the paper's Algorithm 1 with two backward calls and
the head's unimodal gradients zeroed in between (selected by module, not by name); the DGL
strategy's step (alpha on the encoders' unimodal losses, the head's multimodal loss, one encoder
pass)."""
import itertools

import pytest
import torch
from torch import nn

from mmsent import dgl_loss, zero_others
from mmsent.models.fusions import FUSIONS
from mmsent.strategies import STRATEGIES
from mmsent.tasks import Regression
from test_strategies import setup


@pytest.fixture(autouse=True)
def _float64():
    # exact comparisons: the contract is stated to 1e-6 in float64, we check far tighter
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class LinearHead(nn.Module):
    def __init__(self, names, d, out):
        super().__init__()
        self.names = names
        self.fc = nn.Linear(len(names) * d, out)

    def forward(self, feats):
        return self.fc(torch.cat([feats[m] for m in self.names], -1))


class MixingHead(nn.Module):
    """Nonlinear, with multiplicative cross-modal terms, so the Jacobian seen by L_m depends on the
    head's weights and on which modalities are zero."""

    def __init__(self, names, d, out):
        super().__init__()
        self.names = names
        self.a = nn.Linear(len(names) * d, 16)
        self.b = nn.Linear(len(names) * d, 16)
        self.out = nn.Linear(16, out)

    def forward(self, feats):
        z = torch.cat([feats[m] for m in self.names], -1)
        return self.out(torch.tanh(self.a(z)) * torch.sigmoid(self.b(z)) + self.a(z) ** 2 / 10)


def make(n, head_kind, d=5, out=3, B=7):
    names = [f"m{i}" for i in range(n)]
    encoders = nn.ModuleDict({m: nn.Sequential(nn.Linear(4 + i, d), nn.Tanh()) for i, m in enumerate(names)})
    head = (LinearHead if head_kind == "linear" else MixingHead)(names, d, out)
    x = {m: torch.randn(B, 4 + i) for i, m in enumerate(names)}
    y = torch.randint(0, out, (B,))
    return encoders, head, x, y


def reference_grads(encoders, head, x, y, alpha, mt, ut):
    """Algorithm 1: backward alpha * sum L_m, zero the head's gradients (UT), then backward L_d."""
    crit = nn.functional.cross_entropy
    encoders.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    feats = {m: encoders[m](x[m]) for m in x}
    uni = sum(crit(head(zero_others(feats, m)), y) for m in feats)
    (alpha * uni).backward(retain_graph=True)
    if ut:
        for p in head.parameters():
            p.grad = None
    fused_in = {m: f.detach() for m, f in feats.items()} if mt else feats
    crit(head(fused_in), y).backward()
    return grads(encoders, head)


def grads(encoders, head):
    out = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in encoders.parameters()]
    return out + [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in head.parameters()]


def ours(encoders, head, x, y, alpha, mt, ut, batch_unimodal=True):
    encoders.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    feats = {m: encoders[m](x[m]) for m in x}
    out = dgl_loss(feats, head, nn.functional.cross_entropy, y, alpha=alpha, truncate_multimodal=mt,
                   truncate_unimodal=ut, batch_unimodal=batch_unimodal)
    out.total.backward()
    return grads(encoders, head), out


@pytest.mark.parametrize("n", [2, 3, 6])
@pytest.mark.parametrize("head_kind", ["linear", "mixing"])
@pytest.mark.parametrize("mt,ut", list(itertools.product([True, False], repeat=2)))
def test_one_backward_equals_algorithm_1(n, head_kind, mt, ut):
    encoders, head, x, y = make(n, head_kind)
    ref = reference_grads(encoders, head, x, y, 2.5, mt, ut)
    for batched in (False, True):
        got, _ = ours(encoders, head, x, y, 2.5, mt, ut, batch_unimodal=batched)
        for a, b in zip(ref, got):
            torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-10)


def test_encoders_get_alpha_times_unimodal_and_head_gets_multimodal():
    """The contract stated directly with torch.autograd.grad on separate losses."""
    encoders, head, x, y = make(3, "mixing")
    crit = nn.functional.cross_entropy
    feats = {m: encoders[m](x[m]) for m in x}
    enc_p, head_p = list(encoders.parameters()), list(head.parameters())
    l_m = sum(crit(head(zero_others(feats, m)), y) for m in feats)
    l_d = crit(head({m: f.detach() for m, f in feats.items()}), y)
    want_enc = torch.autograd.grad(4.0 * l_m, enc_p, retain_graph=True)
    want_head = torch.autograd.grad(l_d, head_p, retain_graph=True)
    got, out = ours(encoders, head, x, y, 4.0, True, True)
    for a, b in zip(list(want_enc) + list(want_head), got):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out.multimodal, l_d)
    torch.testing.assert_close(sum(out.unimodal.values()), l_m)
    torch.testing.assert_close(out.total, l_d + 4.0 * l_m)


def test_unimodal_gradient_of_modality_reaches_only_its_encoder():
    encoders, head, x, y = make(3, "mixing")
    feats = {m: encoders[m](x[m]) for m in x}
    out = dgl_loss(feats, head, nn.functional.cross_entropy, y)
    g = torch.autograd.grad(out.unimodal["m1"], [p for e in encoders.values() for p in e.parameters()],
                            allow_unused=True, retain_graph=True)
    per_enc = [g[i:i + 2] for i in range(0, 6, 2)]  # Linear weight + bias per encoder
    assert all(t is None or not t.abs().sum() for t in per_enc[0] + per_enc[2])
    assert all(t is not None and t.abs().sum() > 0 for t in per_enc[1])


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_every_fusion_head_meets_the_contract(fusion):
    names = ["text", "audio", "vision"]
    # Sequence heads read (B, L=3, D=6); the MMTM head reads (B, C=4, 4, 4) maps and holds
    # train-mode BatchNorm, so dgl_loss maps its masked passes with vmap there.
    # The dense head reads (B, C=4, 4, 4) maps too and predicts 3 classes per pixel of a 16 x 16 map.
    # The ESANet head reads 3 ResNet stages of width 1 packed into (B, 1*16 + 2*4 + 4, 2, 2) and holds
    # BatchNorm; it predicts at 4 x 16 = 32 x 32.
    maps = fusion in ("mmtm", "dense")
    shape = (4, 4, 4) if maps else ((28, 2, 2) if fusion == "esanet" else (3, 6))
    dense = fusion in ("dense", "esanet")
    head = FUSIONS[fusion](names, shape[0] if maps or fusion == "esanet" else shape[-1], 3, 3 if dense else 1, hidden=8,
                           **({"blocks": [1, 1, 1]} if fusion == "esanet" else {}))
    encoders = nn.ModuleDict({m: nn.Linear(4, int(torch.tensor(shape).prod())) for m in names})
    x = {m: torch.randn(5, 4) for m in names}
    if dense:
        y = torch.randint(-1, 3, (5, 16, 16) if fusion == "dense" else (5, 32, 32))
        crit = lambda p, t: nn.functional.cross_entropy(p, t, ignore_index=-1)  # noqa: E731
    else:
        y = torch.randn(5)
        crit = lambda p, t: nn.functional.l1_loss(p.reshape(-1), t)  # noqa: E731
    feats = {m: encoders[m](x[m]).view(5, *shape) for m in names}
    want_enc = torch.autograd.grad(
        3.0 * sum(crit(head(zero_others(feats, m)), y) for m in names), list(encoders.parameters()), retain_graph=True)
    want_head = torch.autograd.grad(crit(head({m: f.detach() for m, f in feats.items()}), y), list(head.parameters()))
    out = dgl_loss(feats, head, crit, y, alpha=3.0)
    got = torch.autograd.grad(out.total, list(encoders.parameters()) + list(head.parameters()))
    for a, b in zip(list(want_enc) + list(want_head), got):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-8)


def test_masked_passes_leave_batchnorm_statistics_alone():
    names = ["a", "b"]
    head = BNHead(names)
    feats = {m: torch.randn(8, 4) + 3 for m in names}
    twin = BNHead(names)
    twin.load_state_dict(head.state_dict())
    twin(feats)  # only the multimodal pass may move running stats
    out = dgl_loss(feats, head, lambda p, t: p.pow(2).mean() + 0 * t.sum(), torch.zeros(8))
    torch.testing.assert_close(head.bn.running_mean, twin.bn.running_mean)
    torch.testing.assert_close(head.bn.running_var, twin.bn.running_var)
    assert torch.isfinite(out.total)


class BNHead(nn.Module):
    def __init__(self, names):
        super().__init__()
        self.names = names
        self.bn = nn.BatchNorm1d(4 * len(names))
        self.fc = nn.Linear(4 * len(names), 1)

    def forward(self, feats):
        return self.fc(self.bn(torch.cat([feats[m] for m in self.names], -1)))


def test_a_batchnorm_head_with_dropout_runs_its_masked_passes():
    """Dropout inside the vmapped passes of a BatchNorm head (the ESANet head has both): each pass
    draws its own masks, as separate calls would, instead of vmap refusing the random op."""
    names = ["a", "b"]
    head = BNHead(names)
    head.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(4 * len(names), 1))
    feats = {m: torch.randn(8, 4, requires_grad=True) for m in names}
    out = dgl_loss(feats, head, lambda p, t: (p.squeeze(1) - t).pow(2).mean(), torch.zeros(8))
    out.total.backward()
    assert torch.isfinite(out.total) and all(feats[m].grad.abs().sum() > 0 for m in names)


def test_batchnorm_head_gradients_match_separate_passes():
    """With a train-mode BatchNorm head the passes must not be stacked as rows (their statistics would
    pool); the one vmapped call equals N separate passes: losses, every gradient, running statistics."""
    names = ["a", "b", "c"]
    head = BNHead(names)
    enc = nn.ModuleDict({m: nn.Linear(3, 4) for m in names})
    x = {m: torch.randn(6, 3) for m in names}
    crit = lambda p, t: (p.reshape(-1) - t).pow(2).mean()  # noqa: E731
    y = torch.randn(6)
    params = list(enc.parameters()) + list(head.parameters())
    feats = {m: enc[m](x[m]) for m in names}
    want = torch.autograd.grad(sum(crit(head(zero_others(feats, m)), y) for m in names), list(enc.parameters()),
                               retain_graph=True)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    for beta, fill in ((0.0, "zero"), (0.4, "zero"), (0.4, "mean")):
        outs = {}
        for batched in (True, False):
            out = dgl_loss(feats, head, crit, y, alpha=2.0, head_weight=beta, fill=fill, batch_unimodal=batched)
            outs[batched] = (out, torch.autograd.grad(out.total, params, retain_graph=True))
        (a, ga), (b, gb) = outs[True], outs[False]
        for m in names:
            torch.testing.assert_close(a.unimodal[m], b.unimodal[m], atol=1e-12, rtol=0)
        for u, v in zip(ga, gb):
            torch.testing.assert_close(u, v, atol=1e-12, rtol=0)
        if beta == 0 and fill == "zero":
            for u, v in zip(want, ga):
                torch.testing.assert_close(u * 2.0, v, atol=1e-12, rtol=0)
    running = {k: v for k, v in head.state_dict().items() if "running" in k or "num_batches" in k}
    for k, v in running.items():  # each masked pass updated only its own copy
        if k.endswith("num_batches_tracked"):
            assert v == before[k] + 3 * 2  # the three fused passes above, nothing else
        else:
            assert not torch.equal(v, before[k])


def test_module_form_matches_the_function():
    from mmsent import DGLLoss

    encoders, head, x, y = make(3, "mixing")
    feats = {m: encoders[m](x[m]) for m in x}
    a = dgl_loss(feats, head, nn.functional.cross_entropy, y, alpha=3.0, truncate_unimodal=False)
    b = DGLLoss(head, nn.functional.cross_entropy, alpha=3.0, truncate_unimodal=False)(feats, y)
    torch.testing.assert_close(a.total, b.total)
    torch.testing.assert_close(a.unimodal["m2"], b.unimodal["m2"])


def test_needs_two_modalities():
    with pytest.raises(ValueError, match="at least two modalities"):
        dgl_loss({"a": torch.randn(2, 3)}, nn.Identity(), lambda p, t: p.sum(), torch.zeros(2))


def reference_mixing_head_grads(encoders, head, x, y, alpha, beta, fill):
    """The mixing-head form, two passes written out: encoders get alpha * grad sum_m L_m, the head
    gets grad L_d + beta * grad sum_m L_m on detached features. A masked modality is zeros or its
    detached batch mean."""
    crit = nn.functional.cross_entropy
    encoders.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    feats = {m: encoders[m](x[m]) for m in x}

    def masked(f, m):
        return {k: v if k == m else (torch.zeros_like(v) if fill == "zero" else v.detach().mean(0, keepdim=True).expand_as(v))
                for k, v in f.items()}

    enc = [p for e in encoders.values() for p in e.parameters()]
    g_enc = torch.autograd.grad(alpha * sum(crit(head(masked(feats, m)), y) for m in feats), enc)
    detached = {m: f.detach() for m, f in feats.items()}
    head_loss = crit(head(detached), y) + beta * sum(crit(head(masked(detached, m)), y) for m in feats)
    g_head = torch.autograd.grad(head_loss, list(head.parameters()))
    return list(g_enc) + list(g_head)


@pytest.mark.parametrize("n", [2, 3, 6])
@pytest.mark.parametrize("head_kind", ["linear", "mixing", "mlpmixer"])
@pytest.mark.parametrize("beta,fill", [(0.0, "mean"), (0.3, "zero"), (0.3, "mean"), (2.5, "zero")])
def test_mixing_head_form_matches_its_two_pass_reference(n, head_kind, beta, fill):
    if head_kind == "mlpmixer":
        names = [f"m{i}" for i in range(n)]
        encoders = nn.ModuleDict({m: nn.Sequential(nn.Linear(4 + i, 2 * 5), nn.Tanh(), nn.Unflatten(1, (2, 5)))
                                  for i, m in enumerate(names)})
        head = FUSIONS["mlpmixer"](names, 5, 2, 3, hidden=8, dropout=0.0)
        x = {m: torch.randn(7, 4 + i) for i, m in enumerate(names)}
        y = torch.randint(0, 3, (7,))
    else:
        encoders, head, x, y = make(n, head_kind)
    ref = reference_mixing_head_grads(encoders, head, x, y, 2.5, beta, fill)
    for batched in (False, True):
        encoders.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        feats = {m: encoders[m](x[m]) for m in x}
        dgl_loss(feats, head, nn.functional.cross_entropy, y, alpha=2.5, head_weight=beta, fill=fill,
                 batch_unimodal=batched).total.backward()
        for a, b in zip(ref, grads(encoders, head)):
            torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-10)


def test_head_weight_equal_to_alpha_is_the_papers_mt_ablation():
    encoders, head, x, y = make(3, "mixing")
    ref = reference_grads(encoders, head, x, y, 2.5, True, False)  # "+MT": UT off
    encoders.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    feats = {m: encoders[m](x[m]) for m in x}
    dgl_loss(feats, head, nn.functional.cross_entropy, y, alpha=2.5, head_weight=2.5).total.backward()
    for a, b in zip(ref, grads(encoders, head)):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="head_weight"):
        dgl_loss(feats, head, nn.functional.cross_entropy, y, head_weight=1.0, truncate_unimodal=False)


class DenseHead(nn.Module):
    """A fusion head for dense prediction: per-pixel features of every modality, a 3x3 conv across
    their concatenation, a multiplicative cross-modal term, per-pixel class logits (B, K, H, W)."""

    def __init__(self, names, c, classes):
        super().__init__()
        self.names = names
        self.mix = nn.Conv2d(len(names) * c, 8, 3, padding=1)
        self.gate = nn.Conv2d(len(names) * c, 8, 1)
        self.out = nn.Conv2d(8, classes, 1)

    def forward(self, feats):
        z = torch.cat([feats[m] for m in self.names], 1)
        return self.out(torch.tanh(self.mix(z)) * torch.sigmoid(self.gate(z)))


@pytest.mark.parametrize("n", [2, 3])
def test_dense_prediction_one_backward_equals_algorithm_1(n):
    """DGL for segmentation: convolutional encoders, a dense head and per-pixel cross-entropy with
    void pixels ignored; one backward gives Algorithm 1's two-backward gradients."""
    names = [f"m{i}" for i in range(n)]
    encoders = nn.ModuleDict({m: nn.Sequential(nn.Conv2d(1 + i, 4, 3, padding=1), nn.Tanh()) for i, m in enumerate(names)})
    head = DenseHead(names, 4, 5)
    x = {m: torch.randn(3, 1 + i, 6, 7) for i, m in enumerate(names)}
    y = torch.randint(-1, 5, (3, 6, 7))  # -1: void
    crit = lambda p, t: nn.functional.cross_entropy(p, t, ignore_index=-1)  # noqa: E731
    feats = {m: encoders[m](x[m]) for m in x}
    uni = sum(crit(head(zero_others(feats, m)), y) for m in feats)
    (1.5 * uni).backward(retain_graph=True)
    for p in head.parameters():
        p.grad = None
    crit(head({m: f.detach() for m, f in feats.items()}), y).backward()
    ref = grads(encoders, head)
    for batched in (False, True):
        encoders.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        feats = {m: encoders[m](x[m]) for m in x}
        dgl_loss(feats, head, crit, y, alpha=1.5, batch_unimodal=batched).total.backward()
        for a, b in zip(ref, grads(encoders, head)):
            torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-10)


def test_dgl_step_applies_alpha_unimodal_to_encoders_and_multimodal_to_head():
    ds, model, batch = setup()
    task = Regression()
    feats = model.encode(batch)
    enc_p = [p for e in model.encoders.values() for p in e.parameters()]
    head_p = list(model.head.parameters())
    want_enc = torch.autograd.grad(2.0 * sum(task.loss(model.head(zero_others(feats, m)), batch.y) for m in feats),
                                   enc_p, retain_graph=True)
    want_head = torch.autograd.grad(task.loss(model.head({m: f.detach() for m, f in feats.items()}), batch.y), head_p)
    lr = 0.5
    before = [p.detach().clone() for p in enc_p + head_p]
    strategy = STRATEGIES["dgl"](model, torch.optim.SGD(model.parameters(), lr=lr), task, alpha=2.0)
    strategy.train_step(batch)
    for p0, g, p in zip(before, list(want_enc) + list(want_head), enc_p + head_p):
        torch.testing.assert_close(p.detach(), p0 - lr * g, atol=1e-6, rtol=1e-5)


def test_dgl_runs_encoders_once_per_step():
    ds, model, batch = setup()
    calls = {m: 0 for m in model.encoders}
    for m, e in model.encoders.items():
        e.register_forward_hook(lambda *_, m=m: calls.__setitem__(m, calls[m] + 1))
    STRATEGIES["dgl"](model, torch.optim.SGD(model.parameters(), lr=0.1), Regression()).train_step(batch)
    assert calls == {m: 1 for m in model.encoders}
