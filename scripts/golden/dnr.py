"""D&R: GeWu-Lab/Diagnosing_Relearning_ECCV2024 ``code/ours.py``: the diagnosis and soft
re-initialisation its ``main`` runs after a re-init epoch -- ``get_feature`` on the training and
validation loaders, ``reinit_score`` (MinMax scaling, ``KMeans(n_clusters, random_state=0)`` with
scikit-learn's default ``n_init``, ``purity_score``, tanh of lambda times the gap) and ``reinit``
(every encoder parameter moved towards its initial value) -- on a stand-in whose weights were first
moved away from their initial values (one SGD step on every sample), so the re-initialisation has
somewhere to go. ``.cuda()`` is the identity here (``cpu_only``)."""
import argparse

import sklearn
import torch
from torch import nn

from common import AVStandIn, cpu_only, data, load, loader, params, reference, seeded, stub_modules

REPO = "Diagnosing_Relearning_ECCV2024"


class Fusion(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc_out = nn.Linear(12, 3)

    def forward(self, a, v):
        return self.fc_out(torch.cat((a, v), 1))


def record(refs):
    root, ref = reference(refs, REPO)
    code = root / "code"
    stub_modules("torchvision", "tensorboard", "PIL", "cv2", "librosa", "dataset", "models", "utils", "tqdm")
    import sys
    sys.modules["tqdm"].tqdm = lambda it, *a, **k: it
    cpu_only()
    ours = load(code, "ours.py", "dnr_ours")
    purities = []
    real = ours.purity_score
    ours.purity_score = lambda t, p: purities.append(float(real(t, p))) or purities[-1]

    class StandIn(AVStandIn):
        def forward(self, audio, visual):
            a, v = self.audio_net(audio), self.visual_net(visual)
            return self.fusion_module(a, v), None, None, a, v

    model = seeded(1, lambda: StandIn(Fusion()))
    checkpoint = {k: v.detach().clone() for k, v in model.state_dict().items()}  # 'init_para.pkl'
    x, y = data(seed=9, n=24, batch=12)
    with torch.no_grad():  # weights away from their initial values
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    moved = params({k: v for k, v in model.named_parameters()})
    train_rows, val_rows = list(range(16)), list(range(16, 24))
    tr = [(x["audio"][r], x["visual"][r], y[r]) for r in (train_rows[:8], train_rows[8:])]
    va = [(x["audio"][val_rows], x["visual"][val_rows], y[val_rows])]
    args = argparse.Namespace(n_classes=3, move_lambda=3)
    train_a, train_v, train_l = ours.get_feature(args, 0, model, "cpu", tr)
    val_a, val_v, val_l = ours.get_feature(args, 0, model, "cpu", va)
    w_a, w_v = ours.reinit_score(args, train_a, train_v, train_l, val_a, val_v, val_l)
    model = ours.reinit(args, model, checkpoint, w_a, w_v)

    def ours_names(d):
        return {k.replace("audio_net.", "encoders.audio.").replace("visual_net.", "encoders.visual.")
                .replace("fusion_module.fc_out.", "head.net."): v for k, v in d.items()}

    return {
        "method": "dnr", "reference": {**ref, "function": "code/ours.py::get_feature, reinit_score, purity_score, reinit",
                                       "scikit-learn": sklearn.__version__},
        "settings": {"move_lambda": 3, "n_init": "scikit-learn's default ('auto': 1 run for k-means++)"},
        "inputs": {"x": x, "y": y, "seed": 9, "train": [0, 16], "val": [16, 24]},
        "init": ours_names(checkpoint),
        "moved": ours_names(moved),
        "purity": dict(zip(("train_audio", "val_audio", "train_visual", "val_visual"), purities)),
        "strength": {"audio": w_a, "visual": w_v},
        "after": ours_names(params(dict(model.named_parameters()))),
    }
