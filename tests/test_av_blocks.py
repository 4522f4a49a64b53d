"""Audio-visual blocks: the spectrogram against a direct numpy STFT, ResNet18 encoder shapes,
MMTM for N streams, and DGL through an MMTM head leaving BatchNorm statistics untouched."""
import numpy as np
import torch
from torch import nn

from mmsent import dgl_loss
from mmsent.data.av_decode import log_spectrogram
from mmsent.models.resnet import MMTM, BasicBlock, FramesEncoder, SpectrogramEncoder


def numpy_log_stft(x, n_fft=512, hop=353):
    pad = np.pad(x, n_fft // 2, mode="reflect")
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann
    frames = [pad[i:i + n_fft] * window for i in range(0, len(pad) - n_fft + 1, hop)]
    return np.log(np.abs(np.fft.rfft(np.stack(frames), axis=1)).T + 1e-7)


def test_spectrogram_equals_numpy_stft_and_paper_shape():
    rng = np.random.default_rng(0)
    wave = rng.normal(size=22050 * 2).astype(np.float64)
    got = log_spectrogram(torch.from_numpy(wave)).numpy()
    want = numpy_log_stft(wave)
    assert got.shape == want.shape == (257, 125)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert log_spectrogram(torch.zeros(353 * 298)).shape == (257, 299)  # the paper's CREMA-D 257 x 299


def test_resnet_encoders_shapes():
    audio = SpectrogramEncoder(width=8).eval()
    frames = FramesEncoder(width=8).eval()
    assert audio(torch.randn(2, 257, 60)).shape == (2, 1, 64)
    assert frames(torch.randn(2, 3, 3, 64, 64)).shape == (2, 1, 64)


def test_mmtm_n_streams_keeps_shapes_and_couples_streams():
    mmtm = MMTM({"a": 4, "v": 6, "t": 2})
    maps = {"a": torch.randn(2, 4, 5, 5), "v": torch.randn(2, 6, 3, 3, 3), "t": torch.randn(2, 2, 7)}
    out = mmtm(maps)
    assert {m: o.shape for m, o in out.items()} == {m: x.shape for m, x in maps.items()}
    changed = dict(maps, v=torch.randn(2, 6, 3, 3, 3))
    assert not torch.allclose(mmtm(changed)["a"], out["a"])  # the audio gate depends on vision
    zeroed = mmtm(dict(maps, v=torch.zeros(2, 6, 3, 3, 3)))
    assert (zeroed["v"] == 0).all() and torch.isfinite(zeroed["a"]).all()


class MMTMHead(nn.Module):
    """Two streams after their stems: one BasicBlock each, an MMTM between, pooled, concatenated."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleDict({"a": BasicBlock(4, 4), "v": BasicBlock(4, 4)})
        self.mmtm = MMTM({"a": 4, "v": 4})
        self.fc = nn.Linear(8, 3)

    def forward(self, feats):
        maps = self.mmtm({m: self.blocks[m](f) for m, f in feats.items()})
        return self.fc(torch.cat([maps[m].mean((2, 3)) for m in ("a", "v")], -1))


def test_dgl_through_mmtm_masked_passes_leave_bn_statistics():
    torch.manual_seed(0)
    head = MMTMHead()
    twin = MMTMHead()
    twin.load_state_dict(head.state_dict())
    feats = {"a": torch.randn(4, 4, 6, 6), "v": torch.randn(4, 4, 6, 6)}
    y = torch.tensor([0, 1, 2, 1])
    twin(feats)  # the multimodal pass is the only one allowed to move running statistics
    out = dgl_loss(feats, head, nn.functional.cross_entropy, y, alpha=4.0)
    for (k, a), b in zip(head.state_dict().items(), twin.state_dict().values()):
        if "running" in k:
            torch.testing.assert_close(a, b)
    assert torch.isfinite(out.total)
    assert out.unimodal.keys() == {"a", "v"}


def test_real_mmtm_head_dgl_and_baseline_branches_keep_bn_statistics():
    """The MMTM network's head (layers 3-4 per stream, three MMTMs) for three streams of different
    map shapes: DGL's masked passes and a strategy's branch predictions leave running stats alone."""
    from mmsent.models import MultimodalModel
    from mmsent.models.resnet import MMTMHead
    from mmsent.strategies.base import Strategy

    torch.manual_seed(0)
    names = ["audio", "visual", "depth"]
    head, twin = MMTMHead(names, 4, 1, 3), MMTMHead(names, 4, 1, 3)
    twin.load_state_dict(head.state_dict())
    feats = {"audio": torch.randn(4, 4, 8, 6), "visual": torch.randn(4, 4, 2, 6, 6), "depth": torch.randn(4, 4, 5, 5)}
    y = torch.tensor([0, 1, 2, 1])
    twin(feats)
    out = dgl_loss(feats, head, nn.functional.cross_entropy, y, alpha=4.0)
    out.total.backward()
    running = lambda m: {k: v for k, v in m.state_dict().items() if "running" in k}  # noqa: E731
    for k, v in running(head).items():
        torch.testing.assert_close(v, running(twin)[k])
    before = {k: v.clone() for k, v in running(head).items()}
    model = MultimodalModel({m: nn.Identity() for m in names}, head)
    branches = Strategy(model, None, None).branches(feats)
    assert set(branches) == set(names) and all(b.shape == (4, 3) for b in branches.values())
    for k, v in running(head).items():
        torch.testing.assert_close(v, before[k])
