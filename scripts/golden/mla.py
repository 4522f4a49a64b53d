"""MLA: Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation ``main.py::train_epoch``
with ``gs_flag`` (one shared ``fusion_module.fc_out`` applied to each modality in turn, one
optimizer step per modality) and ``utils/utils.py::GSPlugin.before_update`` (the gradient
projector), two epochs of two batches, N = 2 and N = 3 (its ``--modal3`` path).

Two runs per N:
* ``released``: the model as the reference builds it. Its ``before_update`` only projects a
  parameter named ``module.weight`` and ``fc_out``'s is ``weight``, so it never projects.
* ``projecting``: ``fc_out`` wrapped in a module whose parameter is named ``module.weight``, so the
  reference's projector runs (its element-wise division included).
``GSPlugin()`` allocates ``torch.eye(512)`` as a CUDA tensor; here its state is that of its
constructor on the CPU, at the stand-in's width: ``Pl = I_6``, ``exp_count = 0``.
"""
import argparse

import torch
from torch import nn

from common import Conv1x1, Recorder, data, load, recording, reference, seeded, stub_modules

REPO = "Multimodal-Learning-with-Alternating-Unimodal-Adaptation"
ORDER = {2: ("audio", "visual"), 3: ("audio", "visual", "text")}
DIMS = {"audio": 5, "visual": 4, "text": 3}


class Named(nn.Module):
    """``fc_out`` under a ``module`` attribute: its weight is ``module.weight``."""

    def __init__(self, fc):
        super().__init__()
        self.module = fc

    def forward(self, x):
        return self.module(x)


class Fusion(nn.Module):
    def __init__(self, fc):
        super().__init__()
        self.fc_out = fc


class StandIn(nn.Module):
    """The reference's gs model: the encoders' features; ``module.fusion_module.fc_out`` the shared head."""

    def __init__(self, mods, wrap: bool):
        super().__init__()
        self.enc = nn.ModuleDict({m: Conv1x1(DIMS[m]) for m in mods})
        fc = nn.Linear(6, 3)
        self.fusion_module = Fusion(Named(fc) if wrap else fc)
        self.mods = mods

    def forward(self, *inputs):
        if len(self.mods) == 3:  # (token, padding_mask, image, spec): the m3ae --modal3 order
            token, _, image, spec = inputs
            x = {"text": token, "visual": image, "audio": spec}
            return tuple(self.enc[m](x[m]) for m in ("audio", "visual", "text"))
        spec, image = inputs
        return self.enc["audio"](spec), self.enc["visual"](image)


def names(k: str) -> str | None:
    k = k.removeprefix("module.")
    if k.startswith("enc."):
        return "encoders." + k[len("enc."):]
    if k.startswith("fusion_module.fc_out."):
        return "head.shared." + k.split(".")[-1]
    return None


def record(refs):
    root, ref = reference(refs, REPO)
    stub_modules("librosa", "cv2", "torchvision", "tensorboard", "torch.utils.tensorboard", "PIL", "transformers",
                 "timm", "einops", "sklearn", "pandas", "matplotlib", "seaborn", "torchaudio", "models", "dataset")
    main = load(root, "main.py", "mla_main")
    utils = load(root, "utils/utils.py", "mla_utils")
    runs = {}
    for n, mods in ORDER.items():
        x, y = data(dims={m: DIMS[m] for m in mods})
        for kind in ("released", "projecting"):
            net = seeded(1, lambda: StandIn(mods, wrap=kind == "projecting"))
            model = nn.Module()
            model.module = net
            model.forward = net.forward
            init = {names(k): v.detach().clone() for k, v in model.named_parameters()}
            opt = recording(torch.optim.SGD)(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
            opt.recorder = Recorder(model, ("loss_a", "loss_v", "loss_t"), names)
            plugin = utils.GSPlugin.__new__(utils.GSPlugin)
            plugin.Pl, plugin.exp_count = torch.eye(6), 0
            args = argparse.Namespace(lorb="m3ae" if n == 3 else "resnet", modal3=n == 3, clip=False, use_tensorboard=False)
            rows = [list(range(0, 8)), list(range(8, 16))]
            if n == 3:
                loader = [(x["text"][r], torch.zeros(len(r)), x["visual"][r], x["audio"][r], y[r], torch.tensor(r)) for r in rows]
            else:
                loader = [(x["audio"][r], x["visual"][r], y[r], torch.tensor(r)) for r in rows]
            sched = torch.optim.lr_scheduler.StepLR(opt, 70)
            epochs = []
            for epoch in range(2):
                opt.recorder.steps = []
                main.train_epoch(args, epoch, model, "cpu", loader, opt, sched, gs_plugin=plugin, gs_flag=True)
                epochs.append({"steps": opt.recorder.steps, "P": plugin.Pl.detach().clone()})
            runs[f"{kind}_n{n}"] = {"order": list(mods), "inputs": {"x": x, "y": y, "batches": [[0, 8], [8, 16]]},
                                    "init": init, "epochs": epochs}
    return {
        "method": "mla", "reference": {**ref, "function": "main.py::train_epoch (gs_flag), utils/utils.py::GSPlugin"},
        "settings": {"optimizer": {"name": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}},
        "runs": runs,
    }
