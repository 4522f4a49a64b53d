"""ReconBoost: huacong/ReconBoost ``train.py::main`` on CREMA-D's path, two stages (audio, then
visual), one learner epoch and one rectification epoch each, with its ``models/dynamic_net.py``
(``DynamicNet``, the common-space ``Head``: Linear -> ReLU -> Linear(256) -> C) and
``schedule.py``. Replaced, and nothing else: the data (``CramedDataset`` gives the stand-in
samples; its shuffled loader's order is recorded), the encoders (``AudioNet`` / ``VisualNet``: a
1x1 convolution of width 6 and the ``fc`` the reference swaps for the shared head), the head's input
width (its default 512 set to 6), the number of stages (``check_status``: 2), ``test`` (evaluation
only; at this commit it reads an undefined ``device``), and the CUDA placement (``cpu_only``; the
boost rate's ``device="cuda"`` is made on the CPU). The reference casts the ensemble's output to
float32 (``torch.as_tensor(out_join, dtype=torch.float32)``): the learner losses carry float32
rounding, so the test compares at 1e-6."""
import sys
import tempfile
import types

import torch
from torch import nn

from common import Conv1x1, cpu_only, data, load, params, reference, stub_modules

REPO = "ReconBoost"
ORDER = []  # the sample indices the reference's shuffled loader read, in order


def record(refs):
    root, ref = reference(refs, REPO)
    stub_modules("torchvision", "librosa", "cv2", "PIL", "tensorboard", "models.CREMA", "models.MView40",
                 "loaders", "loaders.CramedDataset", "loaders.AVEDataset", "loaders.MView40",
                 "loaders.MView40.train_dataset", "loaders.MView40.test_dataset", "h5py")
    cpu_only()
    sys.path.insert(0, str(root))
    dyn = load(root, "models/dynamic_net.py", "models.dynamic_net")
    dyn.Head.__init__.__defaults__ = (6, 40)  # the common-space head's input width: the stand-ins' 6

    class Torch(types.ModuleType):  # DynamicNet makes its boost rate on "cuda": here on the CPU
        def __getattr__(self, k):
            return getattr(torch, k)

        @staticmethod
        def tensor(*a, device=None, **k):
            return torch.tensor(*a, **k)

    dyn.torch = Torch("torch")
    x, y = data(n=8, batch=4)
    made = {}

    class Net(nn.Module):
        def __init__(self, name, d_in):
            super().__init__()
            self.enc = Conv1x1(d_in)
            self.fc = nn.Identity()
            made[name] = self

        def forward(self, inp):
            return self.fc(self.enc(inp))

    sys.modules["models.CREMA.basic_model"] = types.SimpleNamespace(AudioNet=lambda dataset: Net("audio", 5),
                                                                     VisualNet=lambda dataset: Net("visual", 4))

    class Samples(torch.utils.data.Dataset):
        def __init__(self, dataset_dir=None, mode="train"):
            pass

        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            ORDER.append(i)
            return x["audio"][i], x["visual"][i], y[i]

    sys.modules["loaders.CramedDataset"] = types.SimpleNamespace(CramedDataset=Samples)
    train = load(root, "train.py", "reconboost_train")
    train.check_status = lambda stage: stage < 2
    train.test = lambda *a, **k: 0.0
    steps = []

    class SGD(torch.optim.SGD):
        """The reference's optimizers (a new one per phase), recording each step."""

        def step(self, closure=None):
            out = super().step(closure)
            frame = sys._getframe(1)
            while frame.f_code.co_name != "main":
                frame = frame.f_back
            local = frame.f_locals
            learner = local.get("optimizer_correct") is not self
            steps.append({"stage": local["stage"], "phase": "learner" if learner else "rectify",
                          "learner": local["model_name"],
                          "loss": (local["boosting_loss"].mean() if learner else local["loss"]).detach().clone(),
                          "weights": (local["target"] * local["out_join"].softmax(1)).sum(1) if learner else None,
                          "beta": local["net_ensemble"].boost_rate.detach().clone(),
                          "params": params(named(local["net_ensemble"]))})
            return out

    def named(ens):
        out = {f"encoders.{m}.{k}": v for m, net in made.items() for k, v in net.enc.named_parameters()}
        out.update({f"head.shared.{k.replace('fc1', '0').replace('fc2', '3')}": v for k, v in ens.head.named_parameters()})
        return out

    train.optim = types.SimpleNamespace(SGD=SGD)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        args = types.SimpleNamespace(dataset="CREMAD", dataset_path=tmp, n_class=3, batch_size=4, boost_rate=1.0,
                                     n_worker=0, epochs_per_stage=1, correct_epoch=1, common_space=True, use_lr=True,
                                     m_lr=0.1, e_lr=0.1, use_br=True, use_pretrain=False, use_ga=True, weight1=5.0,
                                     weight2=1.0, alpha=0.5, ckpt_dir=tmp, use_tensorboard=False, tensorboard_dir=tmp,
                                     m1ckpt=None, m2ckpt=None)
        init = {}

        real_dynamic = train.DynamicNet

        def dynamic(**k):  # the moment the ensemble exists, every initial weight does
            ens = real_dynamic(**k)
            init.update(params(named(ens)))
            return ens

        train.DynamicNet = dynamic
        train.main(args, "golden")
    order = [ORDER[i:i + 8] for i in range(0, len(ORDER), 8)]  # one shuffled pass per epoch
    return {
        "method": "reconboost", "reference": {**ref, "function": "train.py::main (CREMAD), models/dynamic_net.py, schedule.py"},
        "settings": {"w1": 5.0, "w2": 1.0, "learner_epochs": 1, "rectify_epochs": 1, "hidden": 256, "rtol": 1e-6,
                     "optimizer": {"name": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}},
        "inputs": {"x": x, "y": y, "seed": 0, "epoch_orders": order},
        "init": init,
        "steps": steps,
    }
