"""AMCo: GeWu-Lab/BalanceBenchmark ``balancemm/trainer/AMCo_trainer.py::AMCoTrainer.train_loop``
(and its ``training_step``) on ``models/avclassify_model.py::BaseClassifierAMCoModel`` (the
reference's own model class; its encoders built by ``create_encoders`` are the stand-ins), epochs
0 and 1 of four steps. Batches hold 2 samples: the trainer expands its class mask to shape (2, C)
and multiplies it into the (B, C) logits, which only broadcasts when B = 2 (a bug of the reference:
with any other batch size it fails at the first step where a modality is dependent). The class
masks are drawn with numpy's RNG, seeded here; they are recorded with the numbers."""
import numpy as np
import torch

from common import BB_NAMES, Quiet, Recorder, bb_batches, bb_model, bb_module, bb_trainer, data, recording, reference, renamer, seeded

REPO = "BalanceBenchmark"


names = renamer(*BB_NAMES, ("linear_star.", "head.mix."))


def record(refs):
    root, ref = reference(refs, REPO)
    trainer_mod = bb_module(root, "balancemm.trainer.AMCo_trainer")
    model_mod = bb_module(root, "balancemm.models.avclassify_model")
    model = seeded(1, lambda: bb_model(model_mod, "BaseClassifierAMCoModel"))
    init = {names(k): v.detach().clone() for k, v in model.named_parameters()}
    method = {"alpha": 0.1, "method": "AMCo", "modulation_starts": 0, "modulation_ends": 80, "sigma": 0.5, "U": 512,
              "eps": 0.3, "modality": "audio"}
    trainer = bb_trainer(trainer_mod.AMCoTrainer(Quiet(), method, {}))
    x, y = data(n=8, batch=2)
    train = bb_batches(x, y, ([0, 1], [2, 3], [4, 5], [6, 7]))
    opt = recording(torch.optim.SGD)(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4)
    opt.recorder = Recorder(model, ("loss", "pt", "N", "mask_t", "dependent_modality"), names)
    epochs = []
    for epoch in range(2):
        trainer.current_epoch = epoch
        np.random.seed(7 + epoch)
        opt.recorder.steps = []
        trainer.train_loop(model, opt, train)
        epochs.append(opt.recorder.steps)
    return {
        "method": "amco", "reference": {**ref, "function": "balancemm/trainer/AMCo_trainer.py::AMCoTrainer.train_loop"},
        "settings": {**method, "optimizer": {"name": "SGD", "lr": 0.5, "momentum": 0.9, "weight_decay": 1e-4}},
        "inputs": {"x": x, "y": y, "seed": 0, "batches": [[0, 2], [2, 4], [4, 6], [6, 8]]},
        "init": init,
        "epochs": epochs,
    }
