"""OGM-GE: GeWu-Lab/OGM-GE_CVPR2022 ``main.py::train_epoch``, two steps of one epoch, with the
modulation on (OGM-GE, its noise included) and, for the deterministic part alone, plain OGM."""
import argparse

import torch

from common import AVStandIn, Recorder, av_names, data, load, loader, recording, reference, seeded, stub_modules

REPO = "OGM-GE_CVPR2022"


def record(refs):
    root, ref = reference(refs, REPO)
    stub_modules("librosa", "cv2", "torchvision", "tensorboard")
    main = load(root, "main.py", "ogm_main")
    fusion = load(root, "models/fusion_modules.py", "ogm_fusion")
    x, y = data()
    runs = {}
    for mode in ("OGM_GE", "OGM"):
        net = seeded(1, lambda: AVStandIn(fusion.ConcatFusion(input_dim=12, output_dim=3)))
        model = torch.nn.Module()
        model.module = net  # the reference reads model.module (DataParallel) and names 'module.<net>.<...>'
        model.forward = net.forward
        init = {av_names(k): v.detach().clone() for k, v in model.named_parameters()}
        opt = recording(torch.optim.SGD)(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        opt.recorder = Recorder(model, ("loss", "coeff_a", "coeff_v", "ratio_v"), av_names)
        args = argparse.Namespace(fusion_method="concat", modulation=mode, alpha=0.8, modulation_starts=0,
                                  modulation_ends=50, use_tensorboard=False)
        torch.manual_seed(7)  # the GE noise draws
        main.train_epoch(args, 0, model, "cpu", loader(x, y), opt, torch.optim.lr_scheduler.StepLR(opt, 70))
        runs[mode] = {"init": init, "steps": opt.recorder.steps}
    return {
        "method": "ogm_ge", "reference": {**ref, "function": "main.py::train_epoch"},
        "settings": {"alpha": 0.8, "modulation_starts": 0, "modulation_ends": 50, "fusion": "concat",
                     "optimizer": {"name": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
                     "noise_seed": 7},
        "inputs": {"x": x, "y": y, "seed": 0, "batches": [[0, 8], [8, 16]]},
        "runs": runs,
    }
