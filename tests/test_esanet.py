"""ESANet's form for dense prediction: stage maps packed losslessly, fusion at every stage with a
masked modality adding nothing, skips reaching every stage, BatchNorm statistics left to the one
real pass, ImageNet weights from a local torchvision file, and the CLI end to end."""
import copy
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
from mmsent.config import load_config  # noqa: E402
from mmsent.data import build_dataset  # noqa: E402
from mmsent.models import build_model  # noqa: E402
from mmsent.models.dense import ESANetHead, StageEncoder, pack, stage_layout, unpack  # noqa: E402
from mmsent.tasks import Segmentation  # noqa: E402
from mmsent.train import build_optimizer, build_strategy  # noqa: E402

# 3 stages of one block: stride 16, so 16 x 32 images
SMALL = ["data.n_train=24", "data.n_val=8", "data.n_test=8", "data.height=16", "data.width=32", "data.batch_size=8",
         "model.width=4", "model.hidden=16", "model.blocks=[1,1,1]"]


def test_packing_stage_maps_is_lossless():
    layout = stage_layout(3, 4)
    maps = [torch.randn(2, c, 4 * f, 6 * f) for c, f in layout]
    packed = pack(maps, layout)
    assert packed.shape == (2, sum(c * f * f for c, f in layout), 4, 6)
    for a, b in zip(unpack(packed, layout), maps):
        assert torch.equal(a, b)


def test_the_encoder_keeps_every_stage_at_its_stride():
    enc = StageEncoder(3, width=4, blocks=[1, 2, 1]).eval()
    x = torch.randn(2, 3, 32, 48)
    maps = unpack(enc(x), enc.layout)
    assert [tuple(m.shape[1:]) for m in maps] == [(4, 8, 12), (8, 4, 6), (16, 2, 3)]
    assert enc.stride == 16 and len(enc.layer2) == 2


def _head_and_feats(n=2):
    names = [f"m{i}" for i in range(n)]
    layout = stage_layout(4, 3)
    head = ESANetHead(names, sum(c * f * f for c, f in layout), 1, 5, hidden=16, blocks=[1, 1, 1]).eval()
    feats = {m: pack([torch.randn(2, c, 2 * f, 3 * f) for c, f in layout], layout) for m in names}
    return head, feats, layout


def test_a_masked_modality_adds_nothing_at_any_fusion_point():
    """With m1 zeroed, the output does not depend on anything of m1's: its SE weights can change."""
    head, feats, _ = _head_and_feats(3)
    masked = dict(feats, m1=torch.zeros_like(feats["m1"]))
    before = head(masked)
    assert before.shape == (2, 5, 32, 48)
    with torch.no_grad():
        for se in head.se:
            for p in se["m1"].parameters():
                p.add_(torch.randn_like(p))
    torch.testing.assert_close(head(masked), before, rtol=0, atol=0)
    assert not torch.allclose(head(feats), head(masked))


def test_every_stage_of_every_modality_reaches_the_logits():
    """Per-stage fusion and skip connections: the loss has a gradient on each stage map of each modality."""
    head, feats, layout = _head_and_feats(2)
    stages = {m: [s.clone().requires_grad_() for s in unpack(f, layout)] for m, f in feats.items()}
    out = head({m: pack(s, layout) for m, s in stages.items()})
    out.square().mean().backward()
    for m, maps in stages.items():
        assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in maps), m


def _strategy(name, *extra):
    cfg = load_config(ROOT / "configs/rgbd_scenes.yaml", [f"strategy={name}", "model.fusion=esanet", *SMALL, *extra])
    ds = build_dataset(cfg.data)
    task = Segmentation(ds.num_classes)
    model = build_model(cfg.model, ds, task.out_dim)
    return cfg, ds, model, build_strategy(cfg, model, build_optimizer(model, cfg.train), task)


@pytest.mark.parametrize("name", ["dgl", "dgl_mh"])
def test_masked_passes_leave_batchnorm_statistics_to_the_real_pass(name):
    """A DGL step moves every running statistic (encoders' and the head's) exactly as one
    train-mode pass of the whole model on the batch does: the masked passes move none."""
    cfg, ds, model, strategy = _strategy(name)
    batch = ds.train.batch(torch.arange(8))
    ref = copy.deepcopy(model).train()
    with torch.no_grad():
        ref(batch)
    strategy.train_step(batch)
    want = {k: v for k, v in ref.state_dict().items() if "running" in k}
    assert any(k.startswith("head.") for k in want)  # the head has BatchNorm here
    for k, v in want.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-6, msg=k)


def _torchvision_names(enc: StageEncoder) -> dict:
    """The state dict torchvision's ResNet would save for these weights (its names, plus a classifier)."""
    state = {k.replace(".down.", ".downsample."): v.clone() for k, v in enc.state_dict().items()}
    return {**state, "fc.weight": torch.randn(10, 16), "fc.bias": torch.zeros(10)}


def test_imagenet_weights_load_from_a_local_torchvision_file(tmp_path):
    src = StageEncoder(3, width=4, blocks=[1, 1, 1])
    for p in src.parameters():
        torch.nn.init.normal_(p)
    torch.save(_torchvision_names(src), tmp_path / "r.pt")
    _, _, model, _ = _strategy("vanilla", f"model.pretrained={tmp_path / 'r.pt'}")
    rgb, depth = model.encoders["rgb"].state_dict(), model.encoders["depth"].state_dict()
    for k, v in src.state_dict().items():
        torch.testing.assert_close(rgb[k], v, rtol=0, atol=0, msg=k)
        if k != "conv1.weight":
            torch.testing.assert_close(depth[k], v, rtol=0, atol=0, msg=k)
    # depth has one channel: ESANet sums the RGB filters
    torch.testing.assert_close(depth["conv1.weight"], src.conv1.weight.sum(1, keepdim=True))


def test_bad_weights_files_are_one_line(tmp_path, capsys):
    wrong = StageEncoder(3, width=8, blocks=[1, 1, 1])
    torch.save(_torchvision_names(wrong), tmp_path / "wide.pt")
    torch.save({"state_dict": [1, 2]}, tmp_path / "list.pt")

    class Hostile:
        def __reduce__(self):
            return (Path("/tmp/pwned-by-mmsent-test").touch, ())

    torch.save(Hostile(), tmp_path / "hostile.pt", _use_new_zipfile_serialization=True)
    (tmp_path / "junk.pt").write_bytes(b"not a file torch wrote")
    cases = {"missing.pt": "no such file (weights are never downloaded",
             "wide.pt": "has another shape for conv1.weight (the file must be a torchvision ResNet of model.blocks=[1, 1, 1] and model.width=4)",
             "list.pt": "not a state dict of tensors", "hostile.pt": "not a loadable weights file",
             "junk.pt": "not a loadable weights file"}
    for name, said in cases.items():
        out = tmp_path / "run"
        assert cli.main(["train", "--dataset", "rgbd_scenes", "--fusion", "esanet", "--out", str(out), *SMALL,
                         f"model.pretrained={tmp_path / name}"]) == 2, name
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, (name, err)
        assert not out.exists()
    assert not Path("/tmp/pwned-by-mmsent-test").exists()


def test_images_that_do_not_divide_by_the_stride_are_one_line(tmp_path, capsys):
    assert cli.main(["train", "--dataset", "rgbd_scenes", "--fusion", "esanet", "--out", str(tmp_path / "x"), *SMALL,
                     "data.width=40"]) == 2
    err = capsys.readouterr().err
    assert "needs images whose height and width are multiples of 16; 'rgb' is 16 x 40" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_dgl_trains_esanet_from_the_cli_and_resumes_exactly(tmp_path):
    args = ["train", "--quiet", "--dataset", "rgbd_scenes", "--fusion", "esanet", "--strategy", "dgl", *SMALL]
    assert cli.main([*args, "--epochs", "2", "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*args, "--epochs", "3", "--out", str(tmp_path / "b")]) == 0
    assert cli.main(["train", "--quiet", "--out", str(tmp_path / "a"), "--resume", "--epochs", "3"]) == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in "ab")
    assert set(a["test"]) == {"multi", "rgb", "depth"} and a["config"]["model"]["fusion"] == "esanet"
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]
