"""UMT: GeWu-Lab/BalanceBenchmark ``balancemm/trainer/UMT_trainer.py::UMTTrainer.train_loop`` and
``training_step`` (no official code: BalanceBenchmark's reading is the reference), stage 2 for one
epoch of two steps, on ``BaseClassifierModel`` with one unimodal ``BaseClassifierModel`` teacher per
modality. Its teachers are loaded from the newest checkpoints of separate unimodal runs: here they
are built with given weights (the stand-in encoders moved away from the student's), the loading
replaced, as is the module-level import of ``MultiModalParallel`` (a name only the loading uses)."""
import sys
import types

import torch

from common import Conv1x1, Quiet, bb_module, data, params, reference, seeded

REPO = "BalanceBenchmark"


def names(k: str) -> str | None:
    for ref, ours in (("modality_encoder.audio.", "encoders.audio."), ("modality_encoder.visual.", "encoders.visual."),
                      ("fusion_module.fc_out.", "head.net.")):
        if k.startswith(ref):
            return ours + k[len(ref):]
    return None


def record(refs):
    root, ref = reference(refs, REPO)
    sys.modules.setdefault("models", types.ModuleType("models"))
    sys.modules["models.avclassify_model"] = types.SimpleNamespace(MultiModalParallel=None)
    trainer_mod = bb_module(root, "balancemm.trainer.UMT_trainer")
    model_mod = bb_module(root, "balancemm.models.avclassify_model")
    dims = {"audio": 5, "visual": 4}

    def build(mods):
        model_mod.create_encoders = lambda enc: {m: Conv1x1(dims[m]) for m in mods}
        args = {"n_classes": 3, "fusion": "concat", "device": " ", "modality_size": {m: 6 for m in mods},
                "encoders": {m: {"name": "Transformer"} for m in mods}}
        return model_mod.BaseClassifierModel(args)

    model = seeded(1, lambda: build(("audio", "visual")))
    init = {names(k): v.detach().clone() for k, v in model.named_parameters()}
    teachers = {}
    for i, m in enumerate(("audio", "visual")):
        teachers[m] = seeded(2 + i, lambda m=m: build((m,)))
        teachers[m].eval()
    trainer = trainer_mod.UMTTrainer(Quiet(), {"scaling": 10, "modulation_starts": 0, "modulation_ends": 80},
                                     {}, types.SimpleNamespace(mode="train"))
    trainer.loaded_model = teachers
    trainer.progbar_wrapper = lambda iterable, **k: iterable
    trainer._format_iterable = lambda *a, **k: None
    x, y = data(seed=11)
    train = [{"audio": x["audio"][r], "visual": x["visual"][r], "label": y[r]} for r in (list(range(8)), list(range(8, 16)))]
    steps = []

    class SGD(torch.optim.SGD):
        def step(self, closure=None):
            loss = super().step(closure)
            steps.append({"loss": loss.detach().clone(), "params": params({names(k): v for k, v in model.named_parameters()})})
            return loss

    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
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
