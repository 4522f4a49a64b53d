"""CML: QingyangZhang/CML ``miwae/train.py`` (the official MIWAE form). Its training step is not a
function: it is the batch loop inside the script's ``__main__`` block. The recording takes that loop
from the file (``ast``: the first ``for ... in enumerate(train_loader)`` under ``__main__``) and runs
it as it is written -- ``get_multi_mask``'s per-sample random chains, the mean imputation, the
stage-2 losses (chain CE, the two hinge terms summed over samples), the optimizer step -- with these
names bound: the stand-in model (its ``miwae_loss``, the MIWAE reconstruction, is 0: CML's part is
the classification and ranking terms), ``data_mean`` = 0 (imputing zeros; the stand-in encoders
have no bias, so a zeroed input is a zeroed feature, mmsent's masking), ``step = [0, 0, 1]`` (one
stage-2 update per batch; the script's stage 2 repeats each batch 5 times), beta 10, epsilon 0."""
import argparse
import ast
import random
import sys

import torch
from torch import nn

from common import data, params, reference, stub_modules

REPO = "CML"


class StandIn(nn.Module):
    """MIWAE's interface: ``model(data, mask) -> (imputed, logits)`` on the views laid side by side."""

    def __init__(self):
        super().__init__()
        self.enc = nn.ModuleDict({"audio": nn.Conv2d(5, 6, 1, bias=False), "visual": nn.Conv2d(4, 6, 1, bias=False)})
        self.fc = nn.Linear(12, 3)

    def forward(self, x, mask):
        x = x.to(torch.float64)
        a = torch.relu(self.enc["audio"](x[:, :5, None, None])).flatten(1)
        v = torch.relu(self.enc["visual"](x[:, 5:, None, None])).flatten(1)
        return x, self.fc(torch.cat((a, v), 1))

    def miwae_loss(self, x, mask):
        return 0.0


def names(k):
    return {"enc.audio.weight": "encoders.audio.conv.weight", "enc.visual.weight": "encoders.visual.conv.weight",
            "fc.weight": "head.net.weight", "fc.bias": "head.net.bias"}.get(k)


def record(refs):
    root, ref = reference(refs, REPO)
    stub_modules("torchvision", "matplotlib", "dataset", "pictures", "model")
    source = (root / "miwae" / "train.py").read_text()
    tree = ast.parse(source)
    main = next(n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test))
    loop = next(n for n in ast.walk(main) if isinstance(n, ast.For) and "train_loader" in ast.unparse(n.iter))
    defs = ast.Module(body=[n for n in tree.body if not isinstance(n, ast.If)], type_ignores=[])
    space = {"__name__": "cml_train"}
    exec(compile(defs, str(root / "miwae" / "train.py"), "exec"), space)  # its imports and functions
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.manual_seed(1)
    model = StandIn().to(torch.float64)
    init = {names(k): v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = data(seed=7)
    joined = torch.cat((x["audio"], x["visual"]), 1)
    chains, steps = [], []
    get_mask = space["get_multi_mask"]

    def observed(*a):
        masks = get_mask(*a)
        chains.append([[int(not bool(m[i, 0])) for i in range(len(m))] for m in masks[1:]])  # 1: audio removed first
        return masks

    step = opt.step

    def snap():
        step()
        steps.append({"values": {k: space[k] for k in ("cls_loss", "rank_loss")}, "params": params(
            {names(k): v for k, v in model.named_parameters()})})

    opt.step = snap
    random.seed(2)
    space.update(train_total_cls_loss=0, train_total_rec_loss=0, train_total_rank_loss=0,  # its epoch sums
                 get_multi_mask=observed, model=model, optimizer=opt, train_input_num=2, feature_per_view=[5, 4],
                 data_mean=torch.zeros(1, 9, dtype=torch.float64), step=[0, 0, 1],
                 args=argparse.Namespace(p=9, beta=10, epsilon=0.0, alpha=1),
                 train_loader=[(joined[r], y[r]) for r in (list(range(8)), list(range(8, 16)))])
    exec(compile(ast.Module(body=[loop], type_ignores=[]), str(root / "miwae" / "train.py"), "exec"), space)
    return {
        "method": "cml", "reference": {**ref, "function": "miwae/train.py: the __main__ block's training loop (stage 2)"},
        "settings": {"beta": 10, "epsilon": 0.0, "optimizer": {"name": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}},
        "inputs": {"x": x, "y": y, "seed": 7, "batches": [[0, 8], [8, 16]]},
        "init": init,
        "audio_removed_first": chains,  # per batch, per sample: 1 when the chain's first removal is audio
        "steps": steps,
    }
