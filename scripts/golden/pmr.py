"""PMR: fanyunfeng-bit/Modal-Imbalance-PMR ``main_Prototype_grad.py``: ``calculate_prototype``
before training and after each epoch (as its ``main`` calls it), and ``train_epoch`` for two epochs
of two steps, the first inside the modulation window (``modulation_ends`` 0) and the second after it.
Batches of 12 hold every class twice: a class with one sample in the prototype batch would make
that sample's distance to its prototype 0, and the reference's ``EU_dist`` (sqrt of a dot product)
has no gradient there (NaN), a pitfall mmsent's ``cdist`` does not share."""
import argparse

import torch

from common import AVStandIn, Recorder, av_names, data, load, loader, recording, reference, seeded, stub_modules

REPO = "Modal-Imbalance-PMR"
CLASSES = 6  # the reference's CREMA-D class count (calculate_prototype fixes it per dataset name)


def record(refs):
    root, ref = reference(refs, REPO)
    stub_modules("librosa", "cv2", "torchvision", "tensorboard")
    main = load(root, "main_Prototype_grad.py", "pmr_main")
    fusion = load(root, "models/fusion_modules.py", "pmr_fusion")
    x, y = data(n=24, classes=CLASSES, batch=12)  # two of each class per batch: no sample is its own prototype
    model = seeded(1, lambda: AVStandIn(fusion.ConcatFusion(input_dim=12, output_dim=CLASSES)))
    init = {av_names(k): v.detach().clone() for k, v in model.named_parameters()}
    args = argparse.Namespace(dataset="CREMAD", fusion_method="concat", modulation="Proto", alpha=1.0,
                              modulation_starts=0, modulation_ends=0, embed_dim=6, momentum_coef=0.2, optimizer="SGD")
    opt = recording(torch.optim.SGD)(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    watch = ("loss", "beta", "lam", "ratio_a_p", "score_a_p", "score_v_p", "loss_proto_a", "loss_proto_v")
    opt.recorder = Recorder(model, watch, av_names)
    sched = torch.optim.lr_scheduler.StepLR(opt, 70)
    data_loader = loader(x, y, batch=12)
    protos = [main.calculate_prototype(args, model, data_loader, "cpu", 0)]
    epochs = []
    for epoch in range(2):
        opt.recorder.steps = []
        main.train_epoch(args, epoch, model, "cpu", data_loader, opt, sched, *protos[-1])
        epochs.append(opt.recorder.steps)
        protos.append(main.calculate_prototype(args, model, data_loader, "cpu", epoch, *protos[-1]))
    return {
        "method": "pmr", "reference": {**ref, "function": "main_Prototype_grad.py::train_epoch, calculate_prototype"},
        "settings": {"alpha": 1.0, "modulation_starts": 0, "modulation_ends": 0, "momentum_coef": 0.2,
                     "classes": CLASSES, "prototype_rows": [0, 12],  # len(loader) // 10 = 0 batches -> the first batch
                     "optimizer": {"name": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}},
        "inputs": {"x": x, "y": y, "seed": 0, "batches": [[0, 12], [12, 24]]},
        "init": init,
        "prototypes": [{"audio": a, "visual": v} for a, v in protos],  # before epoch 0, after epochs 0 and 1
        "epochs": epochs,
    }
