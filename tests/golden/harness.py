"""The mmsent side of the golden tests: the recorder's stand-in model rebuilt from mmsent's own
parts (its heads, ``MultimodalModel``, a strategy), with the recorded initial weights, fed the
recorded inputs in the recorded batches.

The recordings (``tests/golden/<method>.json``) come from the references' own code
(``scripts/golden/record.py``); each holds the reference's repository, commit and function.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mmsent.data.batch import Batch, Dataset, Split
from mmsent.models.model import MultimodalModel

HERE = Path(__file__).parent
WIDTH = 6


def golden(method: str) -> dict:
    return json.loads((HERE / f"{method}.json").read_text())


def tensor(v, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(v, dtype=dtype)


class Conv1x1(nn.Module):
    """The recorder's stand-in encoder (``scripts/golden/common.py``) with mmsent's encoder
    signature: ``relu(conv1x1(x))`` as one step of width ``WIDTH``."""

    def __init__(self, d_in: int, d_out: int = WIDTH, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(d_in, d_out, 1, bias=bias)

    def forward(self, x, mask=None):
        return torch.relu(self.conv(x.reshape(len(x), -1, 1, 1))).flatten(1)[:, None]


def model(rec_inputs: dict, head: nn.Module, init: dict, encoder=Conv1x1, skip=()) -> MultimodalModel:
    """mmsent's model on the stand-in encoders with the recorded weights. Every parameter must be
    recorded (except those named in ``skip``) and every recorded one must exist."""
    dims = {m: len(rows[0]) for m, rows in rec_inputs["x"].items()}
    built = MultimodalModel({m: encoder(d) for m, d in dims.items()}, head).double()
    named = dict(built.named_parameters())
    missing = set(named) - set(init) - set(skip)
    extra = set(init) - set(named)
    assert not missing and not extra, f"parameters not recorded: {sorted(missing)}; recorded but absent: {sorted(extra)}"
    with torch.no_grad():
        for k, v in init.items():
            named[k].copy_(tensor(v))
    with torch.no_grad():  # each encoder's output shape (zero-filling a modality a pass leaves out)
        built.feature_shapes = {m: tuple(e(torch.zeros(1, dims[m], dtype=torch.float64)).shape[1:])
                                for m, e in built.encoders.items()}
    return built


def split(rec_inputs: dict, rows=None) -> Split:
    x = {m: tensor(v)[:, None] for m, v in rec_inputs["x"].items()}
    y = torch.tensor(rec_inputs["y"])
    if rows is not None:
        x, y = {m: v[rows] for m, v in x.items()}, y[rows]
    return Split(x, {m: torch.ones(len(y), 1, dtype=torch.bool) for m in x}, y, [str(i) for i in range(len(y))])


def dataset(rec_inputs: dict, classes: int = 3, train=None, val=None) -> Dataset:
    tr = split(rec_inputs, train)
    va = split(rec_inputs, val) if val is not None else tr
    dims = {m: len(v[0]) for m, v in rec_inputs["x"].items()}
    return Dataset(tr, va, va, "classification", classes, dims)


def batches(data: Dataset, bounds) -> list[Batch]:
    return [data.train.batch(torch.arange(a, b)) for a, b in bounds]


def assert_params(model: nn.Module, want: dict, rtol=1e-9, atol=1e-12, skip=(), what="") -> None:
    named = dict(model.named_parameters())
    for k, v in want.items():
        if k in skip:
            continue
        torch.testing.assert_close(named[k].detach(), tensor(v), rtol=rtol, atol=atol,
                                   msg=lambda m, k=k: f"{what}{k}: {m}")


def close(got, want, rtol=1e-9, atol=1e-12, what="") -> None:
    torch.testing.assert_close(torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64),
                               rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")
