"""OPM: GeWu-Lab/BML_TPAMI2024 ``code/main.py::train`` with ``code/models/Classifier.py``
(``Classifier.forward``: scores from ``W_m f_m + b/2`` on detached weights, ``calcu_q``,
``Modality_drop.execute_drop`` with its straight-through 1/(1 - theta) scaling), the script's
``--use_adam_drop --q_base 0.5 --lam 0.5 --p_exe 0.7``, one warm-up epoch (5) and one modulated
epoch (6) of two steps. The reference's model class runs with its ResNets and fusion swapped for
the stand-ins (its unimodal logits split the fusion weight at column 512, so the stand-in features
are 512 wide). Its draws -- the numpy gate and the torch Bernoulli masks -- are recorded as they
are made (the module's ``np`` and ``torch`` seen through a proxy that passes every call on). Every
parameter is recorded after each epoch's last step (the 512-wide stand-ins make per-step copies
large); the losses, scores, drop probabilities and draws after every step.
At this commit ``code/models/Classifier.py`` is a syntax error (a stray ']' ends line 53); the
recording compiles it with that character removed and nothing else (``load_fixed``)."""
import argparse
import sys
import types

import numpy as np
import torch
from torch import nn

from common import Conv1x1, Quiet, data, load, load_fixed, params, reference, seeded, stub_modules

REPO = "BML_TPAMI2024"
# code/models/Classifier.py does not compile at this commit: a stray ']' ends line 53
FIX = ("        cleaned_fea=torch.chunk(cleaned_fea,num_mod,dim=0) ]", "        cleaned_fea=torch.chunk(cleaned_fea,num_mod,dim=0)")


class Through(types.ModuleType):
    """A module seen through: every attribute is the real module's, but for ``overrides``."""

    def __init__(self, real, **overrides):
        super().__init__(real.__name__)
        self._real, self._over = real, overrides

    def __getattr__(self, k):
        return self._over[k] if k in self._over else getattr(self._real, k)


def record(refs):
    root, ref = reference(refs, REPO)
    code = root / "code"
    stub_modules("config", "dataset", "utils", "h5py", "cv2", "PIL", "torchvision", "tensorboard", "sklearn",
                 "models.Resnet_18", "tqdm")
    sys.modules["tqdm"].tqdm = lambda *a, **k: Quiet()
    sys.path.insert(0, str(code))
    clf = load_fixed(code, "models/Classifier.py", "models.Classifier", 53, FIX[0], FIX[1])
    fusion = load(code, "models/fusion_model.py", "models.fusion_model")
    main = load(code, "main.py", "bml_main")
    draws = {"gate": [], "mask": []}

    def rand(*a):
        v = np.random.rand(*a)
        draws["gate"].append(v.tolist())
        return v

    class Bernoulli(torch.distributions.Bernoulli):
        def sample(self, shape=torch.Size()):
            m = super().sample(shape)
            draws["mask"].append(m.permute(2, 1, 0).reshape(2, -1).clone())  # (modality, sample) as the reference reshapes it
            return m

    clf.np = Through(np, random=Through(np.random, rand=rand))
    clf.torch = Through(torch, distributions=Through(torch.distributions, Bernoulli=Bernoulli))
    cfg = argparse.Namespace(use_adam_drop=True, use_modulation=False, d=[512, 512], q_base=0.5, lam=0.5, p_exe=0.7)

    def build():
        model = clf.Classifier.__new__(clf.Classifier)
        nn.Module.__init__(model)  # its __init__ builds two ResNet18s; the same attributes, stand-ins inside
        model.encoder_1 = Conv1x1(5, 512)
        model.encoder_2 = Conv1x1(4, 512)
        model.cfg, model.device, model.softmax = cfg, "cpu", nn.Softmax(dim=1)
        model.fusion_model = fusion.ConcatFusion(in_c_x=512, in_c_y=512, out_c=3)
        model.modality_drop = clf.Modality_drop(dim_list=torch.tensor(cfg.d), p_exe=cfg.p_exe, device="cpu")
        return model

    class Maps(nn.Module):  # the reference pools the encoders' maps itself
        pass

    model = seeded(1, build)
    for enc in (model.encoder_1, model.encoder_2):
        enc.forward = (lambda e: lambda x: torch.relu(e.conv(x.to(torch.float64).reshape(len(x), -1, 1, 1))))(enc)

    def names(k):
        for r, o in (("encoder_1.", "encoders.audio."), ("encoder_2.", "encoders.visual."), ("fusion_model.fxy.", "head.net.")):
            if k.startswith(r):
                return o + k[len(r):]
        return None

    init = {names(k): v.detach().clone() for k, v in model.named_parameters()}
    steps = []

    class SGD(torch.optim.SGD):
        def step(self, closure=None):
            out = super().step(closure)
            local = sys._getframe(1)
            while local.f_code.co_name != "train":
                local = local.f_back
            v = local.f_locals
            steps.append({"epoch": v["epoch"], "loss": v["loss"].detach().clone(), "kept": v["label"].numel(),
                          "scores": [v["performance_1"], v["performance_2"]],
                          "q": model.q.clone() if v["epoch"] > 5 else None})
            return out

    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = data(n=16, batch=8, seed=2)
    loader = [(x["audio"][r], x["visual"][r], y[r]) for r in (list(range(8)), list(range(8, 16)))]
    np.random.seed(3)
    torch.manual_seed(3)
    epochs = []
    for epoch in (5, 6):  # the last warm-up epoch, then the first modulated one
        main.train(cfg, epoch, model, "cpu", loader, opt, torch.optim.lr_scheduler.StepLR(opt, 40))
        epochs.append({"epoch": epoch, "params": params({names(k): p for k, p in model.named_parameters()})})
    return {
        "method": "opm", "reference": {**ref, "function": "code/main.py::train, code/models/Classifier.py",
                                       "patch": "code/models/Classifier.py:53: a stray ']' removed (a syntax error at this commit)"},
        "settings": {"q_base": 0.5, "lam": 0.5, "p_exe": 0.7, "warmup": 5, "width": 512,
                     "optimizer": {"name": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}},
        "inputs": {"x": x, "y": y, "seed": 2, "batches": [[0, 8], [8, 16]]},
        "init": init,
        "steps": steps,
        "draws": draws,  # per modulated step: the gate's uniform draw, and the keep masks it drew
        "epochs": epochs,
    }
