"""MMPareto: GeWu-Lab/MMPareto_ICML2024 ``code/MMPareto.py::train_epoch`` (its ``MinNormSolver``
included), two steps, on a stand-in of its ``models.AVClassifier``: encoders ``audio_net`` /
``visual_net``, ``head`` over the concatenation and the separate ``head_audio`` / ``head_video``.
The inputs are chosen so that one step has a conflict (a negative cosine) for one modality."""
import torch
from torch import nn

from common import Conv1x1, Recorder, data, load, loader, recording, reference, renamer, seeded, stub_modules

REPO = "MMPareto_ICML2024"


class StandIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.audio_net = Conv1x1(5)
        self.visual_net = Conv1x1(4)
        self.head = nn.Linear(12, 3)
        self.head_audio = nn.Linear(6, 3)
        self.head_video = nn.Linear(6, 3)

    def forward(self, audio, visual):
        a, v = self.audio_net(audio), self.visual_net(visual)
        return self.head(torch.cat((a, v), 1)), self.head_audio(a), self.head_video(v)


names = renamer(("audio_net.", "encoders.audio."), ("visual_net.", "encoders.visual."), ("head_audio.", "heads.audio."),
                ("head_video.", "heads.visual."), ("head.", "head.net."))


def record(refs):
    root, ref = reference(refs, REPO)
    stub_modules("librosa", "cv2", "torchvision", "tensorboard", "PIL", "dataset", "models", "utils")
    main = load(root / "code", "MMPareto.py", "mmpareto_main")
    x, y = data(seed=3)
    runs = {}
    for seed in (1, 2):
        model = seeded(seed, StandIn)
        init = {names(k): v.detach().clone() for k, v in model.named_parameters()}
        opt = recording(torch.optim.SGD)(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        opt.recorder = Recorder(model, ("loss_mm", "loss_a", "loss_v", "this_cos_audio", "this_cos_visual",
                                        "audio_k", "visual_k"), names)
        main.train_epoch(None, 0, model, "cpu", loader(x, y), opt, None)
        runs[f"init{seed}"] = {"init": init, "steps": opt.recorder.steps}
    return {
        "method": "mmpareto", "reference": {**ref, "function": "code/MMPareto.py::train_epoch"},
        "settings": {"gamma": 1.5, "optimizer": {"name": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}},
        "inputs": {"x": x, "y": y, "seed": 3, "batches": [[0, 8], [8, 16]]},
        "runs": runs,
    }
