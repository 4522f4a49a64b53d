"""What the strategy tests share: small synthetic models (float32, or float64 for gradient
comparisons free of cancellation), their gradients, and a step checked against a reference loss."""
import torch

from mmsent.config import ModelConfig
from mmsent.data import make_synthetic
from mmsent.models import build_model


def model32(n=2, task_name="classification", classes=3, **model):
    ds = make_synthetic(n_modalities=n, n_train=24, n_val=8, n_test=8, task=task_name, num_classes=classes)
    out = classes if task_name == "classification" else 1
    cfg = {"dim": 4, "seq_len": 2, "hidden": 8, "dropout": 0.0, **model}
    return ds, build_model(ModelConfig(**cfg), ds, out)


def model64(n=2, task_name="classification", classes=3, **model):
    ds, built = model32(n, task_name, classes, **model)  # float32 shape-recording pass, then float64:
    for split in (ds.train, ds.val, ds.test):  # gradient comparisons free of float32 cancellation
        split.x = {m: v.double() for m, v in split.x.items()}
        split.y = split.y.double() if split.y.is_floating_point() else split.y
    return ds, built.double()


def grads(model):
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in model.named_parameters()}


def assert_grads(model, want):
    got = grads(model)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-9, atol=1e-12, msg=lambda m, k=k: f"{k}: {m}")


def step_matches(model, strategy, batch, ref):
    """The strategy's step leaves the gradients ``ref.backward()`` gives; returns its logs."""
    model.zero_grad()
    ref.backward()
    want = grads(model)
    logs = strategy.train_step(batch)
    assert_grads(model, want)
    return logs


def sgd(model, lr=0.0):
    return torch.optim.SGD(model.parameters(), lr=lr)
