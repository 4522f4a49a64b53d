"""mmsent/models/fusions.py and head.py: every fusion head for N modalities (shapes, informative
zero-masked passes), the one Head base, and a head registered in a test."""
import pytest
import torch

from mmsent.models import FUSIONS


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
@pytest.mark.parametrize("n", [2, 3, 6])
def test_fusion_shapes_and_informative_unimodal_passes(fusion, n):
    names = [f"m{i}" for i in range(n)]
    # MMTM fuses (B, C, H, W) maps; the dense head decodes them per pixel; ESANet's reads 3 ResNet
    # stages of width 1 packed into 1*16 + 2*4 + 4 channels at stride 16
    esanet = {"blocks": [1, 1, 1]} if fusion == "esanet" else {}
    head = FUSIONS[fusion](names, 28 if esanet else 8, 3, 2, hidden=16, **esanet).eval()
    maps = fusion in ("mmtm", "dense")
    feats = {m: torch.randn(5, *((8, 6, 6) if maps else ((28, 2, 3) if esanet else (3, 8)))) for m in names}
    out = head(feats)
    want = {"dense": (5, 2, 24, 24), "esanet": (5, 2, 32, 48)}.get(fusion, (5, 2))
    assert out.shape == want and torch.isfinite(out).all()
    zeros = {m: torch.zeros_like(f) for m, f in feats.items()}
    for m in names:  # each single-modality pass depends on that modality's input
        only = dict(zeros, **{m: feats[m]})
        assert not torch.allclose(head(only), head(zeros)), m


def test_every_head_subclasses_the_one_head_base():
    """Strategies read a head's abilities from its class (branch_logits, fuses, separate_branches),
    so every registered head, MMTM's and the per-pixel ones included, is a Head."""
    from mmsent.models.fusions import FUSIONS
    from mmsent.models.head import Head

    assert all(issubclass(cls, Head) for cls in FUSIONS.values()), [n for n, c in FUSIONS.items() if not issubclass(c, Head)]
    assert [n for n, c in FUSIONS.items() if c.separate_branches] == ["mmtm", "mmtm_seq"]
    assert [n for n, c in FUSIONS.items() if c.fuses] == ["concat_mix"]


def test_a_head_registered_in_a_test_trains_through_the_cli(tmp_path, monkeypatch, capsys):
    """A fusion head of a test's own (the element-wise maximum of the modalities' pooled features,
    one linear layer) with a setting of its own, registered with one line, trains from the CLI with
    vanilla fusion and with DGL (whose unimodal passes zero the other modalities' slots); its
    setting reaches its constructor and an out-of-range value is one line."""
    import json
    from dataclasses import dataclass

    from torch import nn

    from mmsent import cli
    from mmsent.checks import check
    from mmsent.models.fusions import FUSIONS
    from mmsent.models.head import Head

    @dataclass(frozen=True)
    class MaxSettings:
        scale: float = 1.0

        def __post_init__(self):
            check("scale", self.scale > 0, self.scale, "> 0")

    built = []

    class MaxHead(Head):
        Settings = MaxSettings

        def __init__(self, modalities, dim, seq_len, out_dim, *, hidden=0, dropout=0.0, scale=1.0):
            super().__init__()
            self.modalities, self.scale = list(modalities), scale
            self.fc = nn.Linear(dim, out_dim)
            built.append(scale)

        def forward(self, feats):
            pooled = torch.stack([feats[m].mean(1) for m in self.modalities])
            return self.fc(self.scale * pooled.max(0).values)

    monkeypatch.setitem(FUSIONS, "toy_max", MaxHead)
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "toy_max" in capsys.readouterr().out  # the help is read from the registry
    for strategy in ("vanilla", "dgl"):
        out = tmp_path / strategy
        assert cli.main(["train", "--quiet", "--fusion", "toy_max", "--strategy", strategy, "--epochs", "2",
                         "--out", str(out), "model.scale=0.5", "data.n_train=64", "data.n_val=32",
                         "data.n_test=32"]) == 0
        res = json.loads((out / "results.json").read_text())
        assert res["config"]["model"]["fusion"] == "toy_max" and set(res["test"]) == {"multi", "text", "audio", "vision"}
    assert built and set(built) == {0.5}
    assert cli.main(["train", "--quiet", "--fusion", "toy_max", "--out", str(tmp_path / "bad"), "model.scale=-1"]) == 2
    assert not (tmp_path / "bad").exists()
