"""MBSD: GeWu-Lab/BalanceBenchmark ``balancemm/trainer/MBSD_trainer.py::MBSDTrainer.train_loop``
and ``training_step`` (the paper is closed and has no official code: BalanceBenchmark's reading is
the reference) on ``models/avclassify_model.py::BaseClassifierModel`` (its concat head, unimodal
logits ``W_m f_m + b/2``), one epoch of two steps. The trainer calls ``model.Unimodality_Calculate()``,
a name the model class does not define at this commit (it defines ``unimodality_calculate``): the
stand-in model carries that name as an alias, the attribute the reference code reaches for."""
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
    trainer_mod = bb_module(root, "balancemm.trainer.MBSD_trainer")
    model_mod = bb_module(root, "balancemm.models.avclassify_model")
    model_mod.create_encoders = lambda enc: {"audio": Conv1x1(5), "visual": Conv1x1(4)}
    args = {"n_classes": 3, "fusion": "concat", "device": " ", "modality_size": {"audio": 6, "visual": 6},
            "encoders": {"audio": {"name": "Transformer"}, "visual": {"name": "Transformer"}}}
    model = seeded(1, lambda: model_mod.BaseClassifierModel(args))
    model.Unimodality_Calculate = model.unimodality_calculate
    init = {names(k): v.detach().clone() for k, v in model.named_parameters()}
    trainer = trainer_mod.MBSDTrainer(Quiet(), {"modulation_starts": 0, "modulation_ends": 80, "modality": 2}, {})
    trainer.progbar_wrapper = lambda iterable, **k: iterable
    trainer._format_iterable = lambda *a, **k: None
    x, y = data(seed=10)
    train = [{"audio": x["audio"][r], "visual": x["visual"][r], "label": y[r]} for r in (list(range(8)), list(range(8, 16)))]
    steps = []

    class SGD(torch.optim.SGD):
        def step(self, closure=None):
            loss = super().step(closure)
            steps.append({"loss": loss.detach().clone(), "params": params({names(k): v for k, v in model.named_parameters()})})
            return loss

    opt = SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4)
    trainer.current_epoch = 0
    trainer.train_loop(model, opt, train)
    return {
        "method": "mbsd", "reference": {**ref, "function": "balancemm/trainer/MBSD_trainer.py::MBSDTrainer.train_loop, training_step"},
        "settings": {"optimizer": {"name": "SGD", "lr": 0.5, "momentum": 0.9, "weight_decay": 1e-4}},
        "inputs": {"x": x, "y": y, "seed": 10, "batches": [[0, 8], [8, 16]]},
        "init": init,
        "steps": steps,
    }
