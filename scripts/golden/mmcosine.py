"""MMCosine: GeWu-Lab/MMCosine_ICASSP23 ``main_CD.py::train_epoch`` with ``--mmcosine`` (its
``--lam`` 0: the supervised InfoNCE term is computed but weighted 0), two steps, scaling 10. Its
unimodal logits split the fusion weight at column 512, so the stand-in features are 512 wide; the
model is the ``AVClassifier`` shape (``module.fusion_module.fc_out`` over the concatenation)."""
import argparse

import torch
from torch import nn

from common import AVStandIn, Conv1x1, Recorder, av_names, data, load, loader, recording, reference, seeded, stub_modules

REPO = "MMCosine_ICASSP23"


class Fusion(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc_out = nn.Linear(1024, 3)

    def forward(self, a, v):
        return a, v, self.fc_out(torch.cat((a, v), 1))


def record(refs):
    root, ref = reference(refs, REPO)
    stub_modules("librosa", "cv2", "torchvision", "tensorboard", "PIL", "dataset", "models", "utils")
    main = load(root, "main_CD.py", "mmcosine_main")

    def build():
        net = AVStandIn(Fusion())
        net.audio_net, net.visual_net = Conv1x1(5, 512), Conv1x1(4, 512)
        return net

    net = seeded(1, build)
    model = nn.Module()
    model.module = net
    model.forward = lambda audio, visual, args=None: net(audio, visual)
    init = {av_names(k): v.detach().clone() for k, v in model.named_parameters()}
    opt = recording(torch.optim.SGD)(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt.recorder = Recorder(model, ("loss", "loss_a", "loss_v"), av_names)
    args = argparse.Namespace(mmcosine=True, scaling=10.0, lam=0.0, use_tensorboard=False)
    x, y = data(seed=6)
    main.train_epoch(args, 0, model, "cpu", [b + ("name",) for b in loader(x, y)], opt)
    return {
        "method": "mmcosine", "reference": {**ref, "function": "main_CD.py::train_epoch (--mmcosine)"},
        "settings": {"scaling": 10.0, "width": 512, "optimizer": {"name": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}},
        "inputs": {"x": x, "y": y, "seed": 6, "batches": [[0, 8], [8, 16]]},
        "init": init,
        "steps": opt.recorder.steps,
    }
