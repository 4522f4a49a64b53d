"""UMT: GeWu-Lab/BalanceBenchmark ``balancemm/trainer/UMT_trainer.py::UMTTrainer.train_loop`` and
``training_step`` (no official code: BalanceBenchmark's reading is the reference), stage 2 for one
epoch of two steps, on ``BaseClassifierModel`` with one unimodal ``BaseClassifierModel`` teacher per
modality. Its teachers are loaded from the newest checkpoints of separate unimodal runs: here they
are built with given weights (the stand-in encoders moved away from the student's), the loading
replaced, as is the module-level import of ``MultiModalParallel`` (a name only the loading uses)."""
import sys
import types

import torch

from common import BB_NAMES, Quiet, bb_batches, bb_model, bb_module, bb_trainer, data, reference, renamer, seeded, stepping

REPO = "BalanceBenchmark"


names = renamer(*BB_NAMES)


def record(refs):
    root, ref = reference(refs, REPO)
    sys.modules.setdefault("models", types.ModuleType("models"))
    sys.modules["models.avclassify_model"] = types.SimpleNamespace(MultiModalParallel=None)
    trainer_mod = bb_module(root, "balancemm.trainer.UMT_trainer")
    model_mod = bb_module(root, "balancemm.models.avclassify_model")
    model = seeded(1, lambda: bb_model(model_mod, "BaseClassifierModel"))
    init = {names(k): v.detach().clone() for k, v in model.named_parameters()}
    teachers = {}
    for i, m in enumerate(("audio", "visual")):
        teachers[m] = seeded(2 + i, lambda m=m: bb_model(model_mod, "BaseClassifierModel", (m,)))
        teachers[m].eval()
    trainer = trainer_mod.UMTTrainer(Quiet(), {"scaling": 10, "modulation_starts": 0, "modulation_ends": 80},
                                     {}, types.SimpleNamespace(mode="train"))
    trainer.loaded_model = teachers
    bb_trainer(trainer)
    x, y = data(seed=11)
    train = bb_batches(x, y, (list(range(8)), list(range(8, 16))))
    steps = []
    opt = stepping(torch.optim.SGD, steps, model, names)(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    trainer.current_epoch = 0
    trainer.train_loop(model, opt, train)
    return {
        "method": "umt", "reference": {**ref, "function": "balancemm/trainer/UMT_trainer.py::UMTTrainer.train_loop, training_step"},
        "settings": {"scaling": 10, "optimizer": {"name": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}},
        "inputs": {"x": x, "y": y, "seed": 11, "batches": [[0, 8], [8, 16]]},
        "init": init,
        "teachers": {m: {k.replace(f"modality_encoder.{m}.", ""): v.detach().clone()
                         for k, v in t.named_parameters() if k.startswith("modality_encoder.")} for m, t in teachers.items()},
        "steps": steps,
    }
