"""Greedy: nyukat/greedy_multimodal_learning ``src/framework.py::Model_.train_loop`` (its step:
forward with the curation state, ``blend_loss`` from ``train.py`` -- the SUM of the branches' cross-
entropies --, backward, the callbacks' ``on_backward_end``, the optimizer step), with
``src/callbacks.py::Bias_Mitigation_Strong`` (conditional learning speeds, BDR, curation) and
``src/balanced_mmtm.py::MMTM_mitigate`` (its MMTM blocks, ratio 4, with the running-mean gates),
two epochs of four steps, no validation. The stand-in is ``MMTM_MVCNN``'s shape at mmsent's
``mmtm_seq`` size: per branch ``net_view_i`` an encoder, two residual stages each followed by an
MMTM block over the two branches, and its own classifier. ``MMTM_mitigate`` keeps its running means
as CUDA tensors; here they are made on the CPU (``torch.Tensor.to`` maps "cuda:N" to the CPU while
the blocks are built)."""
import torch
import torch.nn.functional as F
from torch import nn

from common import Conv1x1, data, load, reference, seeded, stub_modules

REPO = "greedy_multimodal_learning"


class Branch(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.enc = Conv1x1(d_in)
        self.stage = nn.ModuleList([nn.Linear(6, 6), nn.Linear(6, 6)])
        self.fc = nn.Linear(6, 3)


def record(refs):
    root, ref = reference(refs, REPO)
    stub_modules("torchvision", "argh", "pandas", "PIL", "cv2", "h5py", "matplotlib", "seaborn", "src.dataset")
    sys_path = str(root)
    import sys
    sys.path.insert(0, sys_path)
    mmtm_mod = load(root, "src/balanced_mmtm.py", "src.balanced_mmtm")
    callbacks = load(root, "src/callbacks.py", "src.callbacks")
    framework = load(root, "src/framework.py", "src.framework")
    train_mod = load(root, "train.py", "greedy_train")

    to = torch.Tensor.to

    def cpu_to(self, *a, **k):
        a = tuple("cpu" if isinstance(x, str) and x.startswith("cuda") else x for x in a)
        return to(self, *a, **k)

    class StandIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.net_view_0 = Branch(5)
            self.net_view_1 = Branch(4)
            torch.Tensor.to = cpu_to
            try:
                self.mmtm1 = mmtm_mod.MMTM_mitigate(6, 6, 4)
                self.mmtm2 = mmtm_mod.MMTM_mitigate(6, 6, 4)
            finally:
                torch.Tensor.to = to
            self.saving_mmtm_scales = self.saving_mmtm_squeeze_array = False

        def forward(self, audio, visual, curation_mode=False, caring_modality=None):
            x0 = self.net_view_0.enc(audio)[:, None]  # (B, 1, 6): one step, as mmsent's encoders give
            x1 = self.net_view_1.enc(visual)[:, None]
            for i in (0, 1):
                x0 = x0 + F.gelu(self.net_view_0.stage[i](x0))
                x1 = x1 + F.gelu(self.net_view_1.stage[i](x1))
                g0, g1, _, _ = getattr(self, f"mmtm{i + 1}")(x0.transpose(1, 2), x1.transpose(1, 2),
                                                             curation_mode=curation_mode, caring_modality=caring_modality)
                x0, x1 = g0.transpose(1, 2), g1.transpose(1, 2)
            o0, o1 = self.net_view_0.fc(x0.mean(1)), self.net_view_1.fc(x1.mean(1))
            return (o0 + o1) / 2, [o0, o1], None, None

    def names(k: str) -> str | None:
        for i, m in ((0, "audio"), (1, "visual")):
            p = f"net_view_{i}."
            if k.startswith(p + "enc."):
                return f"encoders.{m}." + k[len(p + "enc."):]
            if k.startswith(p + "stage."):
                j, rest = k[len(p + "stage."):].split(".", 1)
                return f"head.stages.{j}.{m}.{rest}"
            if k.startswith(p + "fc."):
                return f"head.fc.{m}." + k[len(p + "fc."):]
        for j in (1, 2):
            p = f"mmtm{j}."
            if k.startswith(p):
                rest = k[len(p):]
                rest = (rest.replace("fc_squeeze.", "joint.0.").replace("fc_visual.", "gates.audio.")
                        .replace("fc_skeleton.", "gates.visual."))
                return f"head.mmtm.{j - 1}.{rest}"
        return None

    model = seeded(1, StandIn)
    init = {names(k): v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.0, weight_decay=0.0)  # training_guided.gin
    trainer = framework.Model_(model, opt, train_mod.blend_loss, 2, metrics=[train_mod.acc])
    greedy = callbacks.Bias_Mitigation_Strong(epsilon=0.01, curation_windowsize=2, branchnames=["net_view_0", "net_view_1"],
                                              starting_epoch=1, MMTMnames=["visual", "skeleton"])
    steps = []

    class Snap(callbacks.Callback):
        """After every step: the curation state the callback left for the next step, the BDR gap,
        the running-mean gates and every parameter."""

        def on_batch_end(self, batch, logs):
            steps.append({"values": {"loss": logs["loss"], "curation_mode": bool(trainer.curation_mode),
                                     "caring_modality": trainer.caring_modality, "d_BDR": float(greedy.d_BDR),
                                     "speeds": [greedy.M_main_modal_0, greedy.M_bypass_modal_0,
                                                greedy.M_main_modal_1, greedy.M_bypass_modal_1],
                                     "running": {f"mmtm{j}": [getattr(model, f"mmtm{j}").running_avg_weight_visual.clone(),
                                                               getattr(model, f"mmtm{j}").running_avg_weight_skeleton.clone()]
                                                 for j in (1, 2)}},
                          "params": {names(k): v.detach().clone() for k, v in model.named_parameters()}})

    x, y = data(seed=5, batch=4)
    train = [(torch.tensor(r), (x["audio"][r], x["visual"][r]), y[r]) for r in ([0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15])]
    for clbk in (greedy, snap := Snap()):  # as the reference's training_loop configures its callbacks
        clbk.set_model(model, ignore=False)
        clbk.set_optimizer(opt)
    trainer._eval_generator = lambda *a, **k: {}  # no validation split: the two epochs train only
    trainer.train_loop(train, None, None, epochs=2, steps_per_epoch=4, callbacks=[greedy, snap])
    return {
        "method": "greedy",
        "reference": {**ref, "function": "src/framework.py::Model_.train_loop, src/callbacks.py::Bias_Mitigation_Strong, "
                                         "src/balanced_mmtm.py::MMTM_mitigate, train.py::blend_loss"},
        "settings": {"epsilon": 0.01, "curation_windowsize": 2, "starting_epoch": 1, "ratio": 4,
                     "optimizer": {"name": "SGD", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}},
        "inputs": {"x": x, "y": y, "seed": 5, "batches": [[0, 4], [4, 8], [8, 12], [12, 16]]},
        "init": init,
        "steps": steps,
    }
