"""mmsent/models (encoders, build_model, the model and its masking, masked pooling; the fusion heads
are tests/test_fusions.py's): shapes, padding, masking, local-only BERT and an encoder registered in a test."""
import pytest
import torch
from transformers import BertConfig

from mmsent.config import ModelConfig
from mmsent.data import make_synthetic
from mmsent.models import BertEncoder, LSTMEncoder, MLPEncoder, MultimodalModel, build_model, masked_pool


def test_lstm_ignores_padding_and_handles_missing_rows():
    enc = LSTMEncoder(3, 8, seq_len=2, hidden=6).eval()
    x = torch.randn(3, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    noisy = x.clone()
    noisy[0, 3:] = 100.0
    a, b = enc(x, mask), enc(noisy, mask)
    assert a.shape == (3, 2, 8)
    torch.testing.assert_close(a, b)
    # sample 0 alone, unpadded, gives the same encoding
    torch.testing.assert_close(enc(x[:1, :3], mask[:1, :3]), a[:1])
    torch.testing.assert_close(a[2], enc.proj(torch.zeros(2, 12)))  # missing -> pooled zeros


def test_mlp_encoder_spreads_a_vector_over_seq_len():
    enc = MLPEncoder(4, 6, seq_len=3, hidden=8)
    z = enc(torch.randn(2, 1, 4), torch.ones(2, 1, dtype=torch.bool))
    assert z.shape == (2, 3, 6) and not torch.allclose(z[:, 0], z[:, 1])


def test_bert_encoder_from_tiny_config_respects_attention_mask():
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    enc = BertEncoder(8, seq_len=2, config=cfg).eval()
    ids = torch.randint(1, 50, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6], dtype=torch.bool)
    other = ids.clone()
    other[0, 4:] = 7
    torch.testing.assert_close(enc(ids, mask), enc(other, mask))
    assert enc(ids, mask).shape == (2, 2, 8)
    cls = BertEncoder(8, seq_len=2, config=cfg, pooling="cls").eval()
    assert cls(ids, mask).shape == (2, 2, 8)


def test_bert_loads_from_a_local_path_only(tmp_path):
    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    BertEncoder(4, config=cfg).bert.save_pretrained(tmp_path)
    enc = BertEncoder(4, path=str(tmp_path))
    assert enc.bert.config.hidden_size == 8
    with pytest.raises(OSError):
        BertEncoder(4, path=str(tmp_path / "missing"))


def test_build_model_auto_encoders_and_mask_modalities():
    ds = make_synthetic(n_modalities=3, n_train=8, n_val=4, n_test=4)
    ds.train.x["audio"] = ds.train.x["audio"].repeat(1, 5, 1)  # a sequence modality
    ds.train.mask["audio"] = torch.ones(8, 5, dtype=torch.bool)
    model = build_model(ModelConfig(dim=8, seq_len=2, hidden=16), ds, 1)
    assert isinstance(model, MultimodalModel)
    assert isinstance(model.encoders["audio"], LSTMEncoder) and isinstance(model.encoders["text"], MLPEncoder)
    batch = ds.train.batch(torch.arange(8))
    feats = model.encode(batch)
    masked = model.mask_modalities(feats, ["audio"])
    assert masked["audio"] is feats["audio"] and (masked["text"] == 0).all() and (masked["vision"] == 0).all()
    only = model.mask_modalities(model.encode(batch, ["text"]), ["text"])  # unencoded -> zeros
    assert set(only) == {"text", "audio", "vision"} and (only["audio"] == 0).all()


def test_a_linear_head_keeps_mlp_encoders_that_see_their_input():
    """model.hidden=0 asks for a linear head (concat -> fc); the MLP encoders used to take the same
    width and, zero wide, output their bias whatever the input (every prediction the same)."""
    ds = make_synthetic(n_modalities=2, n_train=8, n_val=4, n_test=4)
    model = build_model(ModelConfig(dim=4, seq_len=1, hidden=0, fusion="concat"), ds, 1)
    assert isinstance(model.head.net, torch.nn.Linear)
    with torch.no_grad():
        out = model(ds.train.batch(torch.arange(8)))
    assert out.std() > 0
    wide = build_model(ModelConfig(dim=4, seq_len=1, hidden=0, encoder_hidden=32, fusion="concat"), ds, 1)
    assert wide.encoders[ds.modalities[0]].net[0].out_features == 32


def test_an_encoder_registered_in_a_test_trains_through_the_cli(tmp_path, monkeypatch):
    """An encoder of a test's own (a linear map of a sequence's last valid steps), with a setting of
    its own flat under model.*, registered with one line, trains every modality from the CLI with
    vanilla fusion and with DGL; its setting reaches it through build(spec) and an out-of-range value
    is one line at config load, before anything is written."""
    import json
    from dataclasses import dataclass

    from torch import nn

    from mmsent import cli
    from mmsent.checks import check
    from mmsent.models import ENCODERS, Encoder

    @dataclass(frozen=True)
    class LastSettings:
        last_steps: int = 1

        def __post_init__(self):
            check("last_steps", self.last_steps >= 1, self.last_steps, ">= 1")

    built = []

    class LastSteps(Encoder):
        Settings = LastSettings

        def __init__(self, in_dim, dim, seq_len, last):
            super().__init__()
            self.proj, self.seq_len, self.last = nn.Linear(in_dim, dim), seq_len, last

        @classmethod
        def build(cls, spec):
            built.append((spec.modality, cls.settings(spec).last_steps))
            return cls(spec.in_dim, spec.dim, spec.seq_len, cls.settings(spec).last_steps)

        def forward(self, x, mask):
            x = x if x.dim() == 3 else x[:, None]
            z = self.proj(x[:, -self.last:]).mean(1, keepdim=True)  # (B, 1, D)
            return z.expand(-1, self.seq_len, -1)

    monkeypatch.setitem(ENCODERS, "toy_last", LastSteps)
    for strategy in ("vanilla", "dgl"):
        out = tmp_path / strategy
        assert cli.main(["train", "--quiet", "--strategy", strategy, "--epochs", "2", "--out", str(out),
                         "model.encoder=toy_last", "model.last_steps=2", "data.n_train=64", "data.n_val=32",
                         "data.n_test=32"]) == 0
        res = json.loads((out / "results.json").read_text())
        assert res["config"]["model"]["encoder"] == "toy_last" and res["config"]["model"]["last_steps"] == 2
    assert {m for m, _ in built} == {"text", "audio", "vision"} and {k for _, k in built} == {2}
    assert cli.main(["train", "--quiet", "--out", str(tmp_path / "bad"), "model.encoder=toy_last",
                     "model.last_steps=0"]) == 2
    assert not (tmp_path / "bad").exists()


def test_masked_pool_matches_manual_bins_and_ignores_padding():
    h = torch.arange(12.0).view(1, 6, 2).repeat(2, 1, 1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    h_noisy = h.clone()
    h_noisy[0, 4:] = 1e6  # padding must not matter
    out = masked_pool(h_noisy, mask, 2)
    torch.testing.assert_close(out[0], torch.stack([h[0, :2].mean(0), h[0, 2:4].mean(0)]))
    torch.testing.assert_close(out[1], torch.stack([h[1, :3].mean(0), h[1, 3:].mean(0)]))
    # 3 bins over 4 steps overlap like adaptive_avg_pool1d
    ref = torch.nn.functional.adaptive_avg_pool1d(h[1:, :4].transpose(1, 2), 3).transpose(1, 2)
    torch.testing.assert_close(masked_pool(h[1:, :4], mask[1:, :4], 3), ref)
    assert (masked_pool(h, torch.zeros_like(mask), 3) == 0).all()  # missing modality -> zeros
