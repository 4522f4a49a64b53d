"""MBSD: GeWu-Lab/BalanceBenchmark ``balancemm/trainer/MBSD_trainer.py::MBSDTrainer.train_loop``
and ``training_step`` (the paper is closed and has no official code: BalanceBenchmark's reading is
the reference) on ``models/avclassify_model.py::BaseClassifierModel`` (its concat head, unimodal
logits ``W_m f_m + b/2``), one epoch of two steps. The trainer calls ``model.Unimodality_Calculate()``,
a name the model class does not define at this commit (it defines ``unimodality_calculate``): the
stand-in model carries that name as an alias, the attribute the reference code reaches for."""
import torch

from common import BB_NAMES, Quiet, bb_batches, bb_model, bb_module, bb_trainer, data, reference, renamer, seeded, stepping

REPO = "BalanceBenchmark"


names = renamer(*BB_NAMES)


def record(refs):
    root, ref = reference(refs, REPO)
    trainer_mod = bb_module(root, "balancemm.trainer.MBSD_trainer")
    model_mod = bb_module(root, "balancemm.models.avclassify_model")
    model = seeded(1, lambda: bb_model(model_mod, "BaseClassifierModel"))
    model.Unimodality_Calculate = model.unimodality_calculate
    init = {names(k): v.detach().clone() for k, v in model.named_parameters()}
    trainer = bb_trainer(trainer_mod.MBSDTrainer(Quiet(), {"modulation_starts": 0, "modulation_ends": 80, "modality": 2}, {}))
    x, y = data(seed=10)
    train = bb_batches(x, y, (list(range(8)), list(range(8, 16))))
    steps = []
    opt = stepping(torch.optim.SGD, steps, model, names)(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4)
    trainer.current_epoch = 0
    trainer.train_loop(model, opt, train)
    return {
        "method": "mbsd", "reference": {**ref, "function": "balancemm/trainer/MBSD_trainer.py::MBSDTrainer.train_loop, training_step"},
        "settings": {"optimizer": {"name": "SGD", "lr": 0.5, "momentum": 0.9, "weight_decay": 1e-4}},
        "inputs": {"x": x, "y": y, "seed": 10, "batches": [[0, 8], [8, 16]]},
        "init": init,
        "steps": steps,
    }
