"""Greedy (`mmsent/strategies/greedy.py`) against oracles worked by hand from its reference's semantics (shared
docs/research/balancemm-methods.md, which reads the official code or BalanceBenchmark's), at N = 2 first, then
the N > 2 extension reducing to it, and its step on a real model against a loss written here independently of
mmsent's code. Reference read: greedy_multimodal_learning balanced_mmtm.py / callbacks.py."""
import math

import pytest
import torch

from mmsent.strategies import STRATEGIES
from mmsent.strategies.greedy import caring, relative_speed
from mmsent.tasks import Classification

from helpers import model64 as _model, sgd as _opt


def test_greedy_relative_speed_and_bdr_switch_oracle():
    """||g||^2 / ||theta||^2 over a group: theta = (3, 4), g = (0.3, 0.4) -> 0.25 / 25 = 0.01; a
    column block counts only its own entries. The curation switch: d = BDR_a - BDR_v = 0.5 > eps
    -> care for a (c = 0); d = -0.5 -> v; |d| <= eps -> regular steps."""
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    p.grad = torch.tensor([0.3, 0.4])
    assert relative_speed([(p, None)]) == pytest.approx(0.01)
    w = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [2.0, 4.0]]))
    w.grad = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert relative_speed([(w, (slice(None), slice(0, 1)))]) == pytest.approx(2 / 5)
    assert caring({"a": -1.0, "v": -1.5}, 0.01) == "a"
    assert caring({"a": -1.5, "v": -1.0}, 0.01) == "v"
    assert caring({"a": -1.0, "v": -1.005}, 0.01) is None
    # N = 3 (extension): the largest BDR when max - min > eps; reduces to the sign rule at N = 2
    assert caring({"t": 0.2, "a": -1.0, "v": 0.5}, 0.01) == "v"


def test_mmtm_frozen_gate_is_its_running_mean():
    """gate_mean <- (g + k mean) / (k + 1); a frozen stream is scaled by that mean for every sample,
    the other stream by its live gate."""
    from mmsent.models.resnet import MMTM

    torch.manual_seed(0)
    block = MMTM({"a": 3, "v": 2}, ratio=2)
    x1 = {"a": torch.randn(4, 3, 5), "v": torch.randn(4, 2, 5)}
    block(x1)
    g1 = {m: g.clone() for m, g in block.last_gates.items()}
    block.update_gate_means(g1)
    block(x1 | {"a": 2 * x1["a"]})
    g2 = {m: g.clone() for m, g in block.last_gates.items()}
    block.update_gate_means(g2)
    torch.testing.assert_close(block.gate_mean_a, (g1["a"] + g2["a"]) / 2)
    block.frozen = frozenset(["a"])
    out = block(x1)
    torch.testing.assert_close(out["a"], x1["a"] * block.gate_mean_a.view(1, 3, 1))
    live = torch.sigmoid(block.gates["v"](block.joint(torch.cat([x1["a"].mean(-1), x1["v"].mean(-1)], -1))))
    torch.testing.assert_close(out["v"], x1["v"] * live[:, :, None])


def test_greedy_curates_the_caring_modality_with_its_running_mean_gate():
    """On an MMTM model: epoch < E_0 never curates; a regular step accumulates both speeds and
    updates the running gates; with eps = 0 the next Q steps curate the larger-BDR modality: its
    gates' parameters get no gradient (the running mean replaced them) while every main group
    still learns, and speeds are not accumulated during curation. Every training forward moves the
    running means (curation steps too, as the reference's MMTM_mitigate); evaluation passes do not."""
    ds, model = _model(n=2, fusion="mmtm_seq")
    s = STRATEGIES["greedy"](model, _opt(model, 0.05), Classification(3), eps=0.0, curation_steps=2, start_epoch=1)
    batch = ds.train.batch(torch.arange(12))
    s.on_epoch_start(0, ds)
    assert s.train_step(batch)["curation"] == 0.0 and s.left == 0  # before E_0
    assert all(v > 0 for v in s.speed_main.values()) and all(v > 0 for v in s.speed_bypass.values())
    assert int(getattr(model.head.mmtm[0], f"gate_count_{model.modalities[0]}")) == 1
    s.on_epoch_start(1, ds)
    logs = s.train_step(batch)
    bdr = {m: math.log10(s.speed_bypass[m] / s.speed_main[m]) for m in s.speed_main}
    assert s.care == max(bdr, key=bdr.get) and s.left == 2 and logs["curation"] == 0.0
    speeds = dict(s.speed_main)
    count = int(getattr(model.head.mmtm[0], f"gate_count_{model.modalities[0]}"))
    logs = s.train_step(batch)
    assert logs["curation"] == 1.0 and s.speed_main == speeds and int(getattr(model.head.mmtm[0], f"gate_count_{model.modalities[0]}")) == count + 1
    with torch.no_grad():
        s.predict(batch)
        s.predict(batch, [model.modalities[0]])
    assert int(getattr(model.head.mmtm[0], f"gate_count_{model.modalities[0]}")) == count + 1
    for block in model.head.mmtm:
        assert all(p.grad is None or p.grad.abs().max() == 0 for p in block.gates[s.care].parameters())
        other = next(m for m in model.modalities if m != s.care)
        assert any(p.grad.abs().max() > 0 for p in block.gates[other].parameters())
        assert block.frozen == frozenset()  # evaluation sees live gates
    for m in model.modalities:
        assert any(p.grad is not None and p.grad.abs().max() > 0 for p in model.encoders[m].parameters())
    s.train_step(batch)
    assert s.left == 0


def test_greedy_refuses_heads_without_mmtm_gates():
    ds, model = _model(n=2, fusion="concat")
    with pytest.raises(ValueError, match="greedy needs unimodal branches joined by MMTM blocks"):
        STRATEGIES["greedy"](model, _opt(model), Classification(3))
