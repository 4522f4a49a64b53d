"""G-Blending: pliang279/MultiBench ``training_structures/gradient_blend.py::gb_estimate`` (there is
no official PyTorch code; MultiBench is the reference the research notes read), with its
``delta = True`` (the paper's Delta-form, w = |dG / dO^2|), on a late-fusion stand-in: per modality
an encoder and a unimodal classifier, the multimodal classifier over the concatenation. The
unimodal classifiers start as the multimodal one's column block with its full bias, which is what
mmsent's zero-masked branch through a linear concat head is (``W_m f_m + b``). One batch holds the
whole training split, so the order a loader gives does not matter. The before/after losses of
every branch are recorded by wrapping its ``getloss`` / ``getmloss`` (they are only observed)."""
import torch
from torch import nn

from common import Conv1x1, data, load, reference, stub_modules

REPO = "MultiBench"


class Cat(nn.Module):
    def forward(self, outs):
        return torch.cat(outs, 1)


def record(refs):
    root, ref = reference(refs, REPO)
    stub_modules("eval_scripts", "sklearn", "tqdm")
    gb = load(root, "training_structures/gradient_blend.py", "multibench_gb")
    gb.delta = True
    seen = []

    def observed(real):
        def call(*a, **k):
            value = real(*a, **k)
            seen.append(float(value))
            return value
        return call

    for name in ("getloss", "getmloss"):
        setattr(gb, name, observed(getattr(gb, name)))
    x, y = data(n=24, batch=12, seed=4)
    # validation: half of train and the 8 held-out rows, so every branch's validation loss falls
    # (the Delta-form's abs() and mmsent's max(dG, 0) agree only where the branch generalises)
    train_rows, val_rows = list(range(16)), list(range(8, 24))

    torch.manual_seed(1)
    enc = [Conv1x1(5).double(), Conv1x1(4).double()]
    head = nn.Linear(12, 3).double()
    uni = []
    with torch.no_grad():
        for k in range(2):
            h = nn.Linear(6, 3).double()
            h.weight.copy_(head.weight[:, 6 * k:6 * k + 6])
            h.bias.copy_(head.bias)
            uni.append(h)
    init = {"encoders.audio.conv.weight": enc[0].conv.weight, "encoders.audio.conv.bias": enc[0].conv.bias,
            "encoders.visual.conv.weight": enc[1].conv.weight, "encoders.visual.conv.bias": enc[1].conv.bias,
            "head.net.weight": head.weight, "head.net.bias": head.bias}
    init = {k: v.detach().clone() for k, v in init.items()}
    trains = [(x["audio"][train_rows], x["visual"][train_rows], y[train_rows])]
    valids = [(x["audio"][val_rows], x["visual"][val_rows], y[val_rows])]
    weights = gb.gb_estimate(enc, head, Cat(), uni, trains, 2, 16, valids, lr=0.2, weight_decay=0.0)
    # seen: per branch (audio, visual, multi) the train and valid losses before, then after
    losses = {k: {"before": seen[4 * i:4 * i + 2], "after": seen[4 * i + 2:4 * i + 4]}
              for i, k in enumerate(("audio", "visual", "multi"))}
    return {
        "method": "gblending", "reference": {**ref, "function": "training_structures/gradient_blend.py::gb_estimate (delta=True)"},
        "settings": {"gb_epoch": 2, "optimizer": {"name": "SGD", "lr": 0.2, "momentum": 0.0, "weight_decay": 0.0}},
        "inputs": {"x": x, "y": y, "seed": 4, "train": [0, 16], "val": [8, 24]},
        "init": init,
        "losses": losses,  # [train, valid] per-sample mean losses of each branch, before and after its copy trained
        "weights": dict(zip(("audio", "visual", "multi"), weights)),
    }
