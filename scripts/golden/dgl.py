"""DGL: shicaiwei123/ICCV2025-GDL (the authors' code) ``main_dgl.py::train_epoch`` with
``models/fusion_modules.py::ConcatFusion_DGL`` (the fusion input detached, each modality's logits
the head on the concatenation with the other zeroed), alpha 4, its joint gradient clipping at 40,
two steps. ``train_epoch`` appends the encoders' gradient sizes to a CSV file in the working
directory every step: the recording runs in a temporary folder."""
import argparse
import os
import tempfile

import torch
from torch import nn

from common import AVStandIn, Recorder, av_names, data, load, loader, recording, reference, seeded, stub_modules

REPO = "ICCV2025-GDL"


def record(refs):
    root, ref = reference(refs, REPO)
    stub_modules("librosa", "cv2", "torchvision", "tensorboard", "PIL", "dataset", "models.basic_model", "utils", "tqdm")
    import sys
    sys.modules["tqdm"].tqdm = lambda it, *a, **k: it
    fusion = load(root, "models/fusion_modules.py", "models.fusion_modules")
    main = load(root, "main_dgl.py", "dgl_main")

    class StandIn(AVStandIn):
        def forward(self, audio, visual):
            a_out, v_out, out = self.fusion_module(self.audio_net(audio), self.visual_net(visual))
            return out, a_out, v_out

    net = seeded(1, lambda: StandIn(fusion.ConcatFusion_DGL(input_dim=12, output_dim=3)))
    model = nn.Module()
    model.module = net  # its DataParallel: 'module.<name>' parameter names, model.module.audio_net
    model.forward = net.forward
    init = {av_names(k): v.detach().clone() for k, v in model.named_parameters() if av_names(k)}
    opt = recording(torch.optim.SGD)(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4)
    opt.recorder = Recorder(model, ("loss_f", "loss_a", "loss_v"), av_names)
    args = argparse.Namespace(alpha=4.0, epochs=1)
    x, y = data(seed=12)
    x = {m: 4 * v for m, v in x.items()}  # a power of 2: still float32 numbers
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            main.train_epoch(args, 0, model, "cpu", loader(x, y), opt, None)
        finally:
            os.chdir(cwd)
    return {
        "method": "dgl", "reference": {**ref, "function": "main_dgl.py::train_epoch, models/fusion_modules.py::ConcatFusion_DGL"},
        "settings": {"alpha": 4.0, "grad_clip": 40.0, "optimizer": {"name": "SGD", "lr": 0.5, "momentum": 0.9, "weight_decay": 1e-4}},
        "inputs": {"x": x, "y": y, "seed": 12, "batches": [[0, 8], [8, 16]]},
        "init": init,
        "steps": opt.recorder.steps,
    }
