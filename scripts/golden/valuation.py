"""Sample-level valuation: GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation
``code/sample_level.py::execute_modulation`` (each training sample's Shapley contributions from the
full model and its zero-dropped branches, ``models/models.py::exec_drop``) and
``code/datasets/dataloader.py::AV_KS_Dataset_sample_level`` (its copy table: which copies of which
modality the next epoch trains on), on a stand-in of its ``AVClassifier`` with 3 classes.
The dataset class reads a list file and checks that each sample's file exists: the recording writes
those (empty) files in a temporary folder. At this commit ``execute_modulation`` passes a ``loader``
keyword the dataset class does not take (a TypeError once the warm-up is over), so it is called
with a warm-up that keeps it from building the dataset, and the class is built here from the
contributions it saved (``np.save``). The training on the enlarged epoch is not recorded: mmsent
weights each sample's copies into its batch loss (the spec's approximation), not step for step."""
import argparse
import os
import tempfile

import numpy as np
import torch
from torch import nn

from common import AVStandIn, data, load, reference, seeded, stub_modules

REPO = "Valuate-and-Enhance-Multimodal-Cooperation"


class Fusion(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc_out = nn.Linear(12, 3)

    def forward(self, out):
        return self.fc_out(out)


def record(refs):
    root, ref = reference(refs, REPO)
    code = root / "code"
    stub_modules("torchvision", "tensorboard", "PIL", "cv2", "librosa", "models", "h5py", "pandas")
    dl = load(code, "datasets/dataloader.py", "datasets.dataloader")
    main = load(code, "sample_level.py", "valuation_main")

    class StandIn(AVStandIn):
        def forward(self, audio, visual, drop=None, drop_arg=None):
            a, v = self.audio_net(audio), self.visual_net(visual)
            return a, v, self.fusion_module(torch.cat((a, v), 1))

        def exec_drop(self, a, v, drop):  # the reference's own method, bound to the stand-in
            return main_exec_drop(self, a, v, drop)

    models_src = (code / "models" / "models.py").read_text()
    namespace = {}
    exec(compile("import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"
                 + models_src[models_src.index("class AVClassifier"):], str(code / "models/models.py"), "exec"), namespace)
    main_exec_drop = namespace["AVClassifier"].exec_drop

    net = seeded(1, lambda: StandIn(Fusion()))
    model = nn.Module()
    model.module = net
    model.forward = net.forward
    x, y = data(seed=8, n=24, batch=12)
    with tempfile.TemporaryDirectory() as tmp:
        args = argparse.Namespace(n_classes=3, warmup=10**9, log_path=tmp, loader=None)
        loader = [(x["visual"][r], x["audio"][r], y[r], torch.tensor(r)) for r in (list(range(12)), list(range(12, 24)))]
        main.execute_modulation(args, model, "cpu", loader_with_dataset(loader, len(y)), "golden", 0)
        contribution = np.load(os.path.join(tmp, "golden", "contribution", "0.npy"), allow_pickle=True).item()
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            os.makedirs("ks_audio/train", exist_ok=True)
            with open("ks_audio/train_1fps_path.txt", "w") as f:
                for i in range(len(y)):
                    f.write(f"x/{i} {int(y[i])}\n")
                    open(f"ks_audio/train/{i}.npy", "w").close()
            enlarged = dl.AV_KS_Dataset_sample_level.__new__(dl.AV_KS_Dataset_sample_level)
            try:
                dl.AV_KS_Dataset_sample_level.__init__(enlarged, "train", contribution)
            except AttributeError:  # its audio transform needs torchvision (stubbed): the copies are made by then
                pass
        finally:
            os.chdir(cwd)
    copies = np.zeros((len(y), 2), dtype=int)  # per sample: copies keeping audio (drop 2), keeping visual (drop 1)
    for name, drop in zip(enlarged.data[len(y):], enlarged.drop[len(y):]):
        copies[int(name), 0 if drop == 2 else 1] += 1
    return {
        "method": "valuation",
        "reference": {**ref, "function": "code/sample_level.py::execute_modulation, code/datasets/dataloader.py::AV_KS_Dataset_sample_level"},
        "settings": {},
        "inputs": {"x": x, "y": y, "seed": 8, "batch": 12},
        "init": {k.replace("audio_net.", "encoders.audio.").replace("visual_net.", "encoders.visual.")
                 .replace("fusion_module.fc_out.", "head.net."): v.detach().clone() for k, v in net.named_parameters()},
        "contribution": [list(contribution[i]) for i in range(len(y))],  # (audio, visual) per sample
        "copies": copies.tolist(),
    }


class loader_with_dataset(list):
    """A list of batches with the ``dataset`` length ``execute_modulation`` divides by."""

    def __init__(self, batches, n):
        super().__init__(batches)
        self.dataset = range(n)
