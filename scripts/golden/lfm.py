"""LFM: njustkmg/NeurIPS24-LFM ``Crema_epoch.py`` (the heuristic integration): ``train_audio_video``
with ``cls_k = getAlpha_Learnable_Fitted(epoch)``, as its ``__main__`` calls them, for epochs 0 and
1 of two steps, on a stand-in of ``model/AudioVideo.py::AVClassifier`` (per-modality ``cls_a`` /
``cls_v``, prediction ``o_a + o_v``). Its ``.cuda()`` calls are the identity here (``cpu_only``)."""
import torch
from torch import nn

from common import Conv1x1, Quiet, Recorder, cpu_only, data, load, loader, recording, reference, renamer, seeded, stub_modules

REPO = "NeurIPS24-LFM"


class StandIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.audio_encoder = Conv1x1(5)
        self.video_encoder = Conv1x1(4)
        self.cls_a = nn.Linear(6, 3)
        self.cls_v = nn.Linear(6, 3)

    def forward(self, audio, video):
        a, v = self.audio_encoder(audio), self.video_encoder(video)
        o_a, o_v = self.cls_a(a), self.cls_v(v)
        return o_a + o_v, o_a, o_v, a, v


names = renamer(("audio_encoder.", "encoders.audio."), ("video_encoder.", "encoders.visual."),
                ("cls_a.", "head.fc.audio."), ("cls_v.", "head.fc.visual."))


def record(refs):
    root, ref = reference(refs, REPO)
    stub_modules("geomloss", "torchvision", "transformers", "dataset", "model", "cv2", "librosa", "PIL")
    cpu_only()
    main = load(root, "Crema_epoch.py", "lfm_main")
    torch.autograd.set_detect_anomaly(False)  # its import turns anomaly detection on: slow, changes nothing
    x, y = data()
    model = seeded(1, StandIn)
    init = {names(k): v.detach().clone() for k, v in model.named_parameters()}
    opt = recording(torch.optim.SGD)(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt.recorder = Recorder(model, ("loss", "loss_cls", "loss_alignment"), names)
    epochs = []
    for epoch in range(2):
        opt.recorder.steps = []
        cls_k = main.getAlpha_Learnable_Fitted(epoch)
        main.train_audio_video(epoch, loader(x, y), model, opt, Quiet(), cls_k)
        epochs.append({"cls_k": cls_k, "steps": opt.recorder.steps})
    return {
        "method": "lfm", "reference": {**ref, "function": "Crema_epoch.py::train_audio_video, getAlpha_Learnable_Fitted"},
        "settings": {"optimizer": {"name": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}},
        "alpha_at": {str(t): main.getAlpha_Learnable_Fitted(t) for t in (0, 10, 50, 100, 150, 199)},
        "inputs": {"x": x, "y": y, "seed": 0, "batches": [[0, 8], [8, 16]]},
        "init": init,
        "epochs": epochs,
    }
