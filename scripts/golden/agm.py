"""AGM: lihong2303/AGM_ICCV2023 ``run/CREMAD_main.py::train`` on ``model/CREMAD_net.py::GradMod``
(its Shapley passes, backward hooks and conditional clip), two epochs of two steps, the running
scores carried between epochs as its ``main`` carries them. The reference's own ``AVClassifier``
and ``ConcatFusion`` run; only the ResNets are swapped for bias-free 1x1 convolutions, so that its
zeroed inputs give zero features (mmsent zeroes the features)."""
import argparse

import torch

from common import Conv1x1Maps, Quiet, Recorder, data, load, loader, recording, reference, renamer, seeded, stub_modules

REPO = "AGM_ICCV2023"


names = renamer(("net.audio_net.", "encoders.audio."), ("net.visual_net.", "encoders.visual."),
                ("net.fusion_module.fc_out.", "head.net."))


def record(refs):
    root, ref = reference(refs, REPO)
    stub_modules("librosa", "cv2", "torchvision", "tensorboard", "torch.utils.tensorboard", "PIL")
    run = load(root, "run/CREMAD_main.py", "agm_main")
    net_mod = load(root, "model/CREMAD_net.py", "agm_net")
    cfgs = argparse.Namespace(mode="train", fusion_type="late_fusion", dataset="CREMAD", fusion="concat",
                              modality="Multimodal", methods="AGM", alpha=2.0, modulation_starts=0,
                              modulation_ends=20, use_mgpu=False, EPOCHS=2)
    x, y = data()
    x = {m: 4 * v for m, v in x.items()}  # large enough inputs that the conditional clip fires

    def build():
        torch.manual_seed(1)
        model = net_mod.GradMod(cfgs)  # the reference's module, its ResNets swapped for the stand-ins
        model.net.audio_net = Conv1x1Maps(5, bias=False)
        model.net.visual_net = Conv1x1Maps(4, bias=False)
        model.net.fusion_module = net_mod.ConcatFusion(input_dim=12, output_dim=3)
        return model

    model = seeded(1, build)
    init = {names(k): v.detach().clone() for k, v in model.named_parameters() if names(k)}
    opt = recording(torch.optim.SGD)(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4)
    watch = ("loss", "score_audio", "score_visual", "ratio_a", "ratio_v", "optimal_ratio_a", "optimal_ratio_v",
             "coeff_a", "coeff_v", "grad_max", "grad_min")
    opt.recorder = Recorder(model, watch, names)
    sched = torch.optim.lr_scheduler.StepLR(opt, 70)
    items = [(torch.arange(len(b[2])),) + b for b in loader(x, y)]  # (item, spec, image, label)
    scores = (0.0, 0.0)
    epochs = []
    for epoch in (1, 2):  # the reference counts epochs from 1
        opt.recorder.steps = []
        scores = run.train(model, items, opt, sched, Quiet(), cfgs, epoch, "cpu", Quiet(), *scores, 1.0, 1.0)
        epochs.append({"steps": opt.recorder.steps, "train_scores": list(scores)})
    return {
        "method": "agm", "reference": {**ref, "function": "run/CREMAD_main.py::train, model/CREMAD_net.py::GradMod"},
        "settings": {"alpha": 2.0, "cap": 10, "modulation_starts": 0, "modulation_ends": 20, "input_scale": 4,
                     "optimizer": {"name": "SGD", "lr": 0.5, "momentum": 0.9, "weight_decay": 1e-4}},
        "inputs": {"x": x, "y": y, "seed": 0, "batches": [[0, 8], [8, 16]]},
        "init": init,
        "epochs": epochs,
    }
