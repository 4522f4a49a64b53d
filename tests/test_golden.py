"""Every method against what its reference's own code computed when it ran.

``tests/golden/<method>.json`` holds the numbers that ``scripts/golden/record.py`` recorded by
running the reference's function (its loss, training step or training epoch, named in the file with
the repository and commit) on a stand-in model, a two-batch loader and N = 2: losses,
coefficients, and every parameter after each optimizer step. Here the same model is built from
mmsent's parts with the same weights, the mmsent strategy runs the same steps, and every recorded
number is compared in float64 (the recordings run in float64 too: tolerance 1e-9 relative unless a
test says otherwise). Where mmsent departs from a reference on purpose, the test either switches
that part to the reference's behaviour or leaves it out by name, with the reason.
"""
from __future__ import annotations

import pytest
import torch

from golden.harness import Conv1x1, assert_params, batches, close, dataset, golden, model
from mmsent.models.fusions import ConcatHead, SharedHead
from mmsent.strategies import STRATEGIES
from mmsent.tasks import Classification


def sgd(model, opt: dict):
    assert opt["name"] == "SGD"
    return torch.optim.SGD(model.parameters(), lr=opt["lr"], momentum=opt["momentum"], weight_decay=opt["weight_decay"])


@pytest.mark.parametrize("mode", ["OGM_GE", "OGM"])
def test_ogm_ge_equals_the_reference_train_epoch(mode):
    """OGM-GE_CVPR2022 ``main.py::train_epoch`` (concat head, unimodal logits W_m f_m + b/2): the
    coefficients of both steps and every parameter after each, with the GE noise drawn from the
    same seed (mmsent draws it in the reference's order: each modulated tensor in turn)."""
    rec = golden("ogm_ge")
    run, s = rec["runs"][mode], rec["settings"]
    data = dataset(rec["inputs"])
    net = model(rec["inputs"], ConcatHead(["audio", "visual"], 6, 1, 3, hidden=0), run["init"])
    strategy = STRATEGIES["ogm_ge"](net, sgd(net, s["optimizer"]), Classification(3), alpha=s["alpha"],
                                    modulation_start=s["modulation_starts"], modulation_end=s["modulation_ends"],
                                    noise=mode == "OGM_GE")
    strategy.on_epoch_start(0, data)
    torch.manual_seed(s["noise_seed"])
    for i, (batch, want) in enumerate(zip(batches(data, rec["inputs"]["batches"]), run["steps"])):
        logs = strategy.train_step(batch)
        close(logs["loss"], want["values"]["loss"], what=f"step {i} loss")
        close(logs["coeff_audio"], want["values"]["coeff_a"], what=f"step {i} coeff_a")
        close(logs["coeff_visual"], want["values"]["coeff_v"], what=f"step {i} coeff_v")
        assert_params(net, want["params"], what=f"step {i}: ")


def test_pmr_code_form_equals_the_reference():
    """Modal-Imbalance-PMR ``main_Prototype_grad.py`` (``form: code``): the prototypes before epoch 0
    and after epochs 0 and 1 (no EMA until the ones after epoch 1), the prototype scores, the binary
    coefficients inside the window (epoch 0) and none after it (epoch 1), and every parameter after
    each of the four steps. Switched to the reference's behaviour: its prototypes read the first
    batch of its loader; here the prototype split is that batch (mmsent draws the rows at random)."""
    rec = golden("pmr")
    s, inputs = rec["settings"], rec["inputs"]
    classes = s["classes"]
    data = dataset(inputs, classes)
    first = dataset(inputs, classes, train=torch.arange(*s["prototype_rows"]))
    net = model(inputs, ConcatHead(["audio", "visual"], 6, 1, classes, hidden=0), rec["init"])
    pmr = STRATEGIES["pmr"](net, sgd(net, s["optimizer"]), Classification(classes), form="code", alpha=s["alpha"],
                            momentum=s["momentum_coef"], modulation_end=s["modulation_ends"],
                            batch_size=12, steps_per_epoch=2)
    steps = batches(data, inputs["batches"])
    for epoch, want_steps in enumerate(rec["epochs"]):
        pmr.on_epoch_start(epoch, first)
        for m in ("audio", "visual"):
            close(pmr.protos[m], rec["prototypes"][epoch][m], what=f"epoch {epoch} {m} prototypes")
        for i, (batch, want) in enumerate(zip(steps, want_steps)):
            logs = pmr.train_step(batch)
            v = want["values"]
            close(logs["loss"], float(v["loss"]) - v.get("beta", 0) * v["loss_proto_a"] - v.get("lam", 0) * v["loss_proto_v"],
                  what=f"epoch {epoch} step {i} task loss")
            close(logs["beta_audio"], v.get("beta", 0) / s["alpha"], what=f"epoch {epoch} step {i} beta (audio)")
            close(logs["beta_visual"], v.get("lam", 0) / s["alpha"], what=f"epoch {epoch} step {i} lam (visual)")
            assert_params(net, want["params"], what=f"epoch {epoch} step {i}: ")
    pmr.on_epoch_start(2, first)  # the prototypes made after epoch 1: the first ones smoothed
    for m in ("audio", "visual"):
        close(pmr.protos[m], rec["prototypes"][2][m], what=f"after epoch 1: {m} prototypes")
    assert pmr.actions == {"modulated_steps": 2}


def test_agm_equals_the_reference():
    """AGM_ICCV2023 ``run/CREMAD_main.py::train`` with ``GradMod`` (Shapley contributions of the
    padded passes, backward hooks scaling each contribution's gradient, the conditional clip to norm
    1): over two epochs of two steps, the scores, ratios, running-mean ratios, coefficients and every
    parameter, the running scores carried across the epoch boundary. The stand-in encoders have no
    bias, so the reference's zeroed inputs and mmsent's zeroed features are the same coalitions; the
    clip fires in three of the four steps (a head-weight gradient entry beyond 1) and not in the last."""
    rec = golden("agm")
    s, inputs = rec["settings"], rec["inputs"]
    data = dataset(inputs)
    net = model(inputs, ConcatHead(["audio", "visual"], 6, 1, 3, hidden=0), rec["init"],
                encoder=lambda d: Conv1x1(d, bias=False))
    agm = STRATEGIES["agm"](net, sgd(net, s["optimizer"]), Classification(3), alpha=s["alpha"], cap=s["cap"],
                            modulation_start=0, modulation_end=s["modulation_ends"])
    steps = batches(data, inputs["batches"])
    clipped = []
    for epoch, want_epoch in enumerate(rec["epochs"]):
        agm.on_epoch_start(epoch, data)
        for i, (batch, want) in enumerate(zip(steps, want_epoch["steps"])):
            v = want["values"]
            logs = agm.train_step(batch)
            close(logs["loss"], v["loss"], what=f"epoch {epoch} step {i} loss")
            close(logs["coeff_audio"], v["coeff_a"], what=f"epoch {epoch} step {i} coeff_a")
            close(logs["coeff_visual"], v["coeff_v"], what=f"epoch {epoch} step {i} coeff_v")
            clipped.append(max(v["grad_max"], -v["grad_min"]) > 1)
            assert_params(net, want["params"], what=f"epoch {epoch} step {i}: ")
        close([agm.running["audio"], agm.running["visual"]], want_epoch["train_scores"], what=f"epoch {epoch} running scores")
    assert clipped == [True, True, True, False]
    assert agm.actions["clipped_steps"] == 3


@pytest.mark.parametrize("run", ["released_n2", "projecting_n2", "released_n3", "projecting_n3"])
def test_mla_equals_the_reference(run):
    """Multimodal-Learning-with-Alternating-Unimodal-Adaptation ``main.py::train_epoch`` with its
    ``GSPlugin``, N = 2 and 3, two epochs of two batches (N optimizer steps per batch, a shared
    classifier applied to each modality): every modality's loss, every parameter after each of its
    steps and the projector after each epoch. ``released``: its own model, whose parameter names
    keep the projection from ever firing (mmsent ``projection: false``); ``projecting``: the
    projector made to fire, with its element-wise division (mmsent ``projector: code``), so ``r``
    must be each modality's own features. The scale ``beta`` of mmsent's shared head is fixed at 1
    by MLA and has no counterpart in the reference."""
    rec = golden("mla")
    r = rec["runs"][run]
    inputs = r["inputs"]
    data = dataset(inputs)
    mods = r["order"]
    net = model(inputs, SharedHead(mods, 6, 1, 3, hidden=0), r["init"], skip=("head.beta",))
    settings = {"projection": False} if run.startswith("released") else {"projector": "code"}
    mla = STRATEGIES["mla"](net, sgd(net, rec["settings"]["optimizer"]), Classification(3), steps_per_epoch=2, **settings)
    snapshots = []  # every parameter after each optimizer step (N per batch)
    step = mla.optimizer.step
    mla.optimizer.step = lambda: (step(), snapshots.append({k: p.detach().clone() for k, p in net.named_parameters()}))
    steps = batches(data, inputs["batches"])
    for epoch, want_epoch in enumerate(r["epochs"]):
        mla.on_epoch_start(epoch, data)
        want = iter(want_epoch["steps"])
        for b, batch in enumerate(steps):
            snapshots.clear()
            logs = mla.train_step(batch)
            for m, got in zip(mods, snapshots):
                w = next(want)
                key = {"audio": "loss_a", "visual": "loss_v", "text": "loss_t"}[m]
                close(logs[f"loss_{m}"], w["values"][key], what=f"{run} epoch {epoch} batch {b} loss_{m}")
                for k, v in w["params"].items():
                    close(got[k], v, what=f"{run} epoch {epoch} batch {b} after {m}'s step: {k}")
        close(mla.P, want_epoch["P"], what=f"{run} epoch {epoch} projector")
    assert mla.actions["projected_steps"] == (0 if run.startswith("released") else 4 * len(mods) - 1)


@pytest.mark.parametrize("run", ["init1", "init2"])
def test_mmpareto_equals_the_reference(run):
    """MMPareto_ICML2024 ``code/MMPareto.py::train_epoch`` on its model (a head over the
    concatenation, separate ``head_audio`` / ``head_video``: mmsent ``unimodal_heads: true``, the
    default): the three losses and every parameter after each of two steps; each run has one step
    where a modality's multimodal and unimodal gradients conflict (the min-norm weights) and one
    without (1/2, 1/2), the per-tensor rescaling by gamma = 1.5 in both."""
    rec = golden("mmpareto")
    r, inputs = rec["runs"][run], rec["inputs"]
    data = dataset(inputs)
    init = {k: v for k, v in r["init"].items() if not k.startswith("heads.")}
    net = model(inputs, ConcatHead(["audio", "visual"], 6, 1, 3, hidden=0), init)
    pareto = STRATEGIES["mmpareto"](net, sgd(net, rec["settings"]["optimizer"]), Classification(3))
    assert pareto.settings.unimodal_heads
    with torch.no_grad():
        for k, p in pareto.heads.named_parameters():
            p.copy_(torch.tensor(r["init"][f"heads.{k}"], dtype=torch.float64))
    conflicts = []
    for i, (batch, want) in enumerate(zip(batches(data, inputs["batches"]), r["steps"])):
        v = want["values"]
        logs = pareto.train_step(batch)
        close([logs["loss"], logs["loss_audio"], logs["loss_visual"]], [v["loss_mm"], v["loss_a"], v["loss_v"]],
              what=f"step {i} losses")
        conflicts.append(min(v["this_cos_audio"], v["this_cos_visual"]) <= 0)
        got = {**dict(net.named_parameters()), **{f"heads.{k}": p for k, p in pareto.heads.named_parameters()}}
        for k, w in want["params"].items():
            close(got[k], w, what=f"step {i}: {k}")
    assert sum(conflicts) == 1 and pareto.actions["conflicts"] == 1


def test_lfm_equals_the_reference():
    """NeurIPS24-LFM ``Crema_epoch.py``: ``getAlpha_Learnable_Fitted`` at six epochs, and
    ``train_audio_video`` for epochs 0 and 1 of two steps on its model (per-modality classifiers,
    mmsent's ``late_mean`` head): its classification and alignment losses, the total, and every
    parameter after each step. The alignment is the reference's ½[KL(r‖p_a) + KL(r‖p_v)]; the
    textbook JS (``alignment: js``) would differ. The run's clock is the reference's (``span: 200``)."""
    from mmsent.models.fusions import LateMeanHead
    from mmsent.strategies.lfm import alpha_cls

    rec = golden("lfm")
    for t, (a1, a2) in rec["alpha_at"].items():
        close(alpha_cls(int(t)), a1, what=f"alpha_1({t})")
        close(1 - alpha_cls(int(t)), a2, rtol=1e-12, atol=1e-15, what=f"alpha_2({t})")
    inputs = rec["inputs"]
    data = dataset(inputs)
    net = model(inputs, LateMeanHead(["audio", "visual"], 6, 1, 3), rec["init"])
    lfm = STRATEGIES["lfm"](net, sgd(net, rec["settings"]["optimizer"]), Classification(3), span=200)
    steps = batches(data, inputs["batches"])
    for epoch, want_epoch in enumerate(rec["epochs"]):
        lfm.on_epoch_start(epoch, data)
        for i, (batch, want) in enumerate(zip(steps, want_epoch["steps"])):
            v = want["values"]
            logs = lfm.train_step(batch)
            close(logs["loss"], v["loss_cls"], what=f"epoch {epoch} step {i} L_cls")
            close(logs["align"], v["loss_alignment"], what=f"epoch {epoch} step {i} L_align")
            close(logs["alpha_cls"], want_epoch["cls_k"][0], what=f"epoch {epoch} alpha_1")
            assert_params(net, want["params"], what=f"epoch {epoch} step {i}: ")


def test_amco_equals_the_reference(monkeypatch):
    """BalanceBenchmark ``AMCoTrainer.train_loop`` on ``BaseClassifierAMCoModel`` (mmsent's
    ``concat_mix`` head), epochs 0 and 1 of four 2-sample steps: the loss (fused + the masked
    unimodal terms), the dependence flags after every step and every parameter. Epoch 0 never masks
    (its progress does not grow); in epoch 1 the mask takes 0, 1, 2 and 3 of the 3 classes.
    Switched to the reference's behaviour: its class masks come from numpy's RNG; here mmsent's draw
    (``torch.randperm``) returns the recorded positions first."""
    from mmsent.models.fusions import ConcatMixHead

    rec = golden("amco")
    s, inputs = rec["settings"], rec["inputs"]
    data = dataset(inputs)
    net = model(inputs, ConcatMixHead(["audio", "visual"], 6, 1, 3), rec["init"])
    amco = STRATEGIES["amco"](net, sgd(net, s["optimizer"]), Classification(3), sigma=s["sigma"], eps=s["eps"],
                              modulation_end=s["modulation_ends"])
    zeros = []
    real = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda n, *a, **k: torch.tensor(zeros + [i for i in range(n) if i not in zeros])
                        if n == 3 else real(n, *a, **k))
    steps = batches(data, inputs["batches"])
    for epoch, want_steps in enumerate(rec["epochs"]):
        amco.on_epoch_start(epoch, data)
        for i, (batch, want) in enumerate(zip(steps, want_steps)):
            v = want["values"]
            zeros[:] = [c for c, keep in enumerate(v["mask_t"][0]) if keep == 0]
            logs = amco.train_step(batch)
            assert logs["mask_k"] == v["N"]
            assert set(amco.dependent) == {m for m, d in v["dependent_modality"].items() if d}, (epoch, i)
            assert_params(net, want["params"], what=f"epoch {epoch} step {i}: ")
    assert amco.actions["masked_steps"] == 3


def test_greedy_equals_the_reference():
    """greedy_multimodal_learning ``Model_.train_loop`` with ``Bias_Mitigation_Strong`` and its
    ``MMTM_mitigate`` blocks (ratio 4), on mmsent's ``mmtm_seq`` head, two epochs of four steps,
    curation from the first epoch, windows of 2: after every step the summed branch loss, the
    learning speeds, the curation state, the running-mean gates (moved by every training forward,
    curation steps included) and every parameter. The caring modality is the first in all three
    curations, so the reference's second-stream running-mean bug (it is moved by the first
    stream's gate) never enters; that stream's running mean is left out of the comparison."""
    from mmsent.models.fusions import MMTMSeqHead

    rec = golden("greedy")
    s, inputs = rec["settings"], rec["inputs"]
    data = dataset(inputs)
    net = model(inputs, MMTMSeqHead(["audio", "visual"], 6, 1, 3, ratio=s["ratio"]), rec["init"])
    greedy = STRATEGIES["greedy"](net, sgd(net, s["optimizer"]), Classification(3), eps=s["epsilon"],
                                  curation_steps=s["curation_windowsize"], start_epoch=s["starting_epoch"] - 1)
    steps = batches(data, inputs["batches"])
    want = iter(rec["steps"])
    for epoch in range(2):
        greedy.on_epoch_start(epoch, data)
        for i, batch in enumerate(steps):
            v = next(want)
            logs = greedy.train_step(batch)
            what = f"epoch {epoch} step {i}"
            close(logs["loss"], v["values"]["loss"], what=f"{what} loss")
            main0, bypass0, main1, bypass1 = v["values"]["speeds"]
            close([greedy.speed_main["audio"], greedy.speed_bypass["audio"], greedy.speed_main["visual"],
                   greedy.speed_bypass["visual"]], [main0, bypass0, main1, bypass1], what=f"{what} speeds")
            curating = greedy.left > 0
            assert curating == v["values"]["curation_mode"], what
            if curating:
                assert greedy.care == ["audio", "visual"][v["values"]["caring_modality"]], what
            for j, block in enumerate(net.head.mmtm):
                close(block.gate_mean_audio, v["values"]["running"][f"mmtm{j + 1}"][0], what=f"{what} mmtm{j + 1} running mean")
            assert_params(net, v["params"], what=f"{what}: ")
    assert greedy.actions["curated_steps"] == 5


def test_reconboost_equals_the_reference():
    """ReconBoost ``train.py::main`` (CREMA-D's path) for two stages of one learner epoch and one
    rectification epoch, on its common-space head (Linear -> ReLU -> Linear(256) -> C) and
    ensemble scale: after every step the phase's loss, the learner's per-sample weights
    w1 - w2 q[y] (all w1 - w2 at stage 0, whose ensemble is empty), beta and every parameter. The
    batches follow the reference's shuffled loader (its order recorded). The reference casts the
    ensemble output to float32, so its weights carry float32 rounding: tolerance 1e-6."""
    rec = golden("reconboost")
    s, inputs = rec["settings"], rec["inputs"]
    tol = {"rtol": s["rtol"], "atol": 1e-9}
    data = dataset(inputs)
    net = model(inputs, SharedHead(["audio", "visual"], 6, 1, 3, hidden=s["hidden"]), rec["init"], skip=("head.beta",))
    boost = STRATEGIES["reconboost"](net, sgd(net, s["optimizer"]), Classification(3), w1=s["w1"], w2=s["w2"],
                                     learner_epochs=s["learner_epochs"], rectify_epochs=s["rectify_epochs"])
    want = iter(rec["steps"])
    for epoch, order in enumerate(inputs["epoch_orders"]):
        boost.on_epoch_start(epoch, data)
        for b in range(2):
            w = next(want)
            batch = data.train.batch(torch.tensor(order[4 * b:4 * b + 4]))
            assert w["phase"] == ("rectify" if boost.rectifying else "learner") and (boost.rectifying or w["learner"] == boost.learner)
            if w["weights"] is not None:  # the learner's per-sample weights, from mmsent's own rule
                others = [k for k in boost.added if k != boost.learner]
                if others:
                    with torch.no_grad():
                        ens = net.head.beta * sum(net.head.branch_logits(net.mask_modalities(net.encode(batch), others))[k]
                                                  for k in others)
                    got = s["w1"] - s["w2"] * ens.softmax(-1).gather(1, batch.y[:, None]).squeeze(1)
                    close(got, [s["w1"] - s["w2"] * q for q in w["weights"]], **tol, what=f"epoch {epoch} weights")
                else:
                    assert w["weights"] == [1.0] * 4
            logs = boost.train_step(batch)
            close(logs["loss"], w["loss"], **tol, what=f"epoch {epoch} batch {b} loss")
            close(net.head.beta, w["beta"], **tol, what=f"epoch {epoch} batch {b} beta")
            assert_params(net, w["params"], **tol, what=f"epoch {epoch} batch {b}: ")
    assert boost.actions["stages"] == 2


def test_gblending_estimate_equals_the_reference():
    """MultiBench ``gb_estimate`` (``delta = True``: w = |dG / dO^2|) from one checkpoint: every
    branch's per-sample mean train and validation losses before and after its temporary copy
    trained two epochs, and the normalised weights. MultiBench's unimodal copies are an encoder and
    its own classifier started at the concat head's block and full bias, which is mmsent's
    zero-masked branch; every branch generalises here, where MultiBench's abs() and mmsent's
    max(dG, 0) agree. mmsent holds a split's predictions in float32 (``branch_predictions``), so
    the losses agree to float32 precision: tolerance 1e-6."""
    from mmsent.strategies.gblending import MULTI

    rec = golden("gblending")
    s, inputs = rec["settings"], rec["inputs"]
    data = dataset(inputs, train=torch.arange(*inputs["train"]), val=torch.arange(*inputs["val"]))
    net = model(inputs, ConcatHead(["audio", "visual"], 6, 1, 3, hidden=0), rec["init"])
    gb = STRATEGIES["gblending"](net, sgd(net, s["optimizer"]), Classification(3), super_epoch=s["gb_epoch"],
                                 batch_size=len(data.train))
    measured = []
    real = gb.branch_losses
    gb.branch_losses = lambda split, strategy=None: measured.append(real(split, strategy)) or measured[-1]
    gb.on_epoch_start(0, data)
    before_train, before_val, *after = measured  # then each branch's copy, in mmsent's order
    for i, key in enumerate(gb.weights):
        k = "multi" if key == MULTI else key
        want = rec["losses"][k]
        close([before_train[key], before_val[key]], want["before"], rtol=1e-6, what=f"{k} losses before")
        close([after[2 * i][key], after[2 * i + 1][key]], want["after"], rtol=1e-6, what=f"{k} losses after its copy trained")
        close(gb.weights[key], rec["weights"][k], rtol=1e-4, what=f"{k} weight")
    assert gb.actions["estimates"] == 1


def _opm_reference_bug(net, batch, q_base, lam):
    """The gradient the reference's ``custom_autograd`` leaks: its backward returns ``theta`` itself
    as theta's gradient, and theta = sum_m d_m q_m / sum_m d_m is built from scores whose features
    are not detached, so every encoder also receives theta * d theta / d params (a bug: the scaling
    should carry no gradient to theta). mmsent does not reproduce it; the test adds it to compare
    everything else."""
    f = net.encode(batch)
    W, b = net.head.net.weight.detach(), net.head.net.bias.detach()
    t = {m: f[m].mean(1) @ w.T + b / 2 for m, w in zip(("audio", "visual"), W.chunk(2, 1))}
    perf = {m: v.softmax(-1).gather(1, batch.y[:, None]).sum() for m, v in t.items()}
    ratio = [torch.tanh(torch.relu(perf["audio"] / perf["visual"] - 1)), torch.tanh(torch.relu(perf["visual"] / perf["audio"] - 1))]
    q = torch.stack([q_base * (1 + lam * r) if r > 0 else r.new_zeros(()) for r in ratio]).clamp(0, 1)
    theta = q.mean()  # equal widths: sum d_m q_m / sum d_m
    params = [p for e in net.encoders.values() for p in e.parameters()]
    grads = torch.autograd.grad(theta, params, allow_unused=True)
    return {p: theta.detach() * g for p, g in zip(params, grads) if g is not None}


def test_opm_equals_the_reference():
    """BML_TPAMI2024 ``code/main.py::train`` with ``Classifier`` (``--use_adam_drop --q_base 0.5
    --lam 0.5 --p_exe 0.7``): epoch 5 is plain (the warm-up, epochs 0-5), epoch 6 modulates. Every
    step's loss, scores (from ``W_m f_m + b/2``), drop probabilities, and every parameter after
    each epoch. Switched to the reference's behaviour: its draws (numpy's gate, torch's Bernoulli
    keep masks) are replayed through mmsent's (``torch.rand`` for the gate, ``dist.rand`` per
    modality), and the gradient its ``custom_autograd`` leaks into the encoders (a bug mmsent does
    not reproduce, ``_opm_reference_bug``) is added before each modulated step; without it the
    encoders differ after the first modulated step, with it every parameter agrees."""
    rec = golden("opm")
    s, inputs = rec["settings"], rec["inputs"]
    data = dataset(inputs)
    for add_bug in (True, False):
        net = model(inputs, ConcatHead(["audio", "visual"], 512, 1, 3, hidden=0), rec["init"],
                    encoder=lambda d: Conv1x1(d, 512))
        opm = STRATEGIES["opm"](net, sgd(net, s["optimizer"]), Classification(3), q_base=s["q_base"], lam=s["lam"],
                                p_exe=s["p_exe"])
        assert opm.warmup == s["warmup"]  # outside a run's loop the reference's 5, unscaled
        gates = iter(g[0] for g in rec["draws"]["gate"])
        masks = iter(rec["draws"]["mask"])
        replay, leak = {}, {}
        opm.dist.rand = lambda n, *shape: torch.tensor(replay["mask"].pop(0), dtype=torch.float64)
        step = opm.optimizer.step

        def stepped(step=step, leak=leak):
            for p, g in leak.items():
                p.grad = p.grad + g
            step()

        opm.optimizer.step = stepped
        steps = batches(data, inputs["batches"])
        want = iter(rec["steps"])
        real_rand = torch.rand
        try:
            for epoch_rec in rec["epochs"]:
                epoch = epoch_rec["epoch"]
                opm.on_epoch_start(epoch, data)
                for i, batch in enumerate(steps):
                    w = next(want)
                    leak.clear()
                    if epoch > s["warmup"]:  # the reference executes when its draw >= 1 - p_exe; mmsent when rand < p_exe
                        execute = next(gates) >= 1 - s["p_exe"]
                        torch.rand = lambda *a, execute=execute, **k: torch.tensor(0.0 if execute else 1.0)
                        replay["mask"] = list(next(masks)) if execute else [[1.0] * len(batch)] * 2
                        if add_bug:
                            leak.update(_opm_reference_bug(net, batch, s["q_base"], s["lam"]))
                    logs = opm.train_step(batch)
                    torch.rand = real_rand
                    if not add_bug and epoch > s["warmup"]:
                        continue
                    close(logs["loss"], w["loss"], what=f"epoch {epoch} step {i} loss")
                    if w["q"] is not None:
                        close([logs["drop_p_audio"], logs["drop_p_visual"]], w["q"], what=f"epoch {epoch} step {i} q")
                if add_bug or epoch <= s["warmup"]:
                    assert_params(net, epoch_rec["params"], what=f"after epoch {epoch}: ")
                else:
                    named = dict(net.named_parameters())
                    assert not torch.allclose(named["encoders.audio.conv.weight"].detach(),
                                              torch.tensor(epoch_rec["params"]["encoders.audio.conv.weight"], dtype=torch.float64),
                                              rtol=1e-9, atol=1e-12)
        finally:
            torch.rand = real_rand
        assert opm.actions["modulated_steps"] == 2 and opm.actions["dropped"] == 8


def test_mmcosine_equals_the_reference():
    """MMCosine_ICASSP23 ``main_CD.py::train_epoch`` (``--mmcosine``, scaling 10, the InfoNCE term
    at weight 0): the loss, the unimodal cosine losses, and every parameter after each of two
    steps (the unused bias of the fusion layer stays put in both)."""
    rec = golden("mmcosine")
    s, inputs = rec["settings"], rec["inputs"]
    data = dataset(inputs)
    net = model(inputs, ConcatHead(["audio", "visual"], 512, 1, 3, hidden=0), rec["init"], encoder=lambda d: Conv1x1(d, 512))
    cos = STRATEGIES["mmcosine"](net, sgd(net, s["optimizer"]), Classification(3), scaling=s["scaling"])
    for i, (batch, want) in enumerate(zip(batches(data, inputs["batches"]), rec["steps"])):
        with torch.no_grad():  # the branches' losses before the step, as the reference logs them
            branch = {m: torch.nn.functional.cross_entropy(cos.predict(batch, [m]), batch.y) for m in ("audio", "visual")}
        logs = cos.train_step(batch)
        close(logs["loss"], want["values"]["loss"], what=f"step {i} loss")
        close([branch["audio"], branch["visual"]], [want["values"]["loss_a"], want["values"]["loss_v"]], what=f"step {i} branch losses")
        assert_params(net, want["params"], what=f"step {i}: ")


def test_cml_equals_the_reference():
    """CML ``miwae/train.py``'s stage-2 batch loop (run from the file as written): per sample a
    random chain (full, then one modality removed), the chain's mean CE, the two hinge terms summed
    over samples at beta / 100, and every parameter after each of two steps. Switched to the
    reference's behaviour: its chains (Python's ``random.shuffle`` per sample) are replayed through
    mmsent's draws (``dist.rand``: the modality removed first gets the smaller draw); its mean
    imputation is at a zero mean with bias-free encoders, i.e. mmsent's zeroed features."""
    rec = golden("cml")
    s, inputs = rec["settings"], rec["inputs"]
    data = dataset(inputs)
    net = model(inputs, ConcatHead(["audio", "visual"], 6, 1, 3, hidden=0), rec["init"],
                encoder=lambda d: Conv1x1(d, bias=False))
    cml = STRATEGIES["cml"](net, sgd(net, s["optimizer"]), Classification(3), beta=float(s["beta"]), eps=s["epsilon"])
    for i, (batch, chain, want) in enumerate(zip(batches(data, inputs["batches"]), rec["audio_removed_first"], rec["steps"])):
        first = torch.tensor(chain[0], dtype=torch.float64)
        cml.dist.rand = lambda n, k, first=first: torch.stack([1 - first, first], 1)
        logs = cml.train_step(batch)
        close(logs["loss"], want["values"]["cls_loss"], what=f"step {i} chain CE")
        close(logs["cml"], want["values"]["rank_loss"], what=f"step {i} ranking term")
        assert_params(net, want["params"], what=f"step {i}: ")


def test_valuation_equals_the_reference():
    """Valuate-and-Enhance ``execute_modulation`` and ``AV_KS_Dataset_sample_level``: every training
    sample's Shapley contributions (full model scored 2, each zero-dropped branch 1) and the number
    of copies of each of its modalities the enlarged epoch holds (the reference's copy table),
    against mmsent's valuation of the same model. Left out by name: the training on the enlarged
    epoch (mmsent weights each sample's copies into its batch loss instead: the spec's
    approximation, documented in the strategy)."""
    from mmsent.strategies.shapley import coalitions
    from mmsent.strategies.valuation import sample_shapley

    rec = golden("valuation")
    inputs = rec["inputs"]
    data = dataset(inputs)
    net = model(inputs, ConcatHead(["audio", "visual"], 6, 1, 3, hidden=0), rec["init"])
    val = STRATEGIES["valuation"](net, torch.optim.SGD(net.parameters(), lr=0.0), Classification(3))
    assert val.value(data.train, batch_size=inputs["batch"]).tolist() == rec["copies"]
    with torch.no_grad():
        feats = net.encode(data.train.batch(torch.arange(len(data.train))))
        correct = {S: val.task.correct(net.head(net.mask_modalities(feats, S)), data.train.y) for S in coalitions(net.modalities) if S}
        phi = sample_shapley(correct, net.modalities)
    close(torch.stack([phi["audio"], phi["visual"]], 1), rec["contribution"], what="per-sample contributions")


def test_dnr_equals_the_reference():
    """Diagnosing_Relearning ``code/ours.py``: each encoder's KMeans purity on the training and
    validation features (MinMax-scaled per split), the strengths tanh(3 |gap|), and every parameter
    after the soft re-initialisation towards the initial weights (the head untouched). Switched to
    the reference's behaviour: its KMeans runs scikit-learn's default number of initialisations,
    one at the recorded version ("auto"); mmsent's default is a fixed 10 (``n_init``)."""
    rec = golden("dnr")
    inputs = rec["inputs"]
    data = dataset(inputs, train=torch.arange(*inputs["train"]), val=torch.arange(*inputs["val"]))
    net = model(inputs, ConcatHead(["audio", "visual"], 6, 1, 3, hidden=0), rec["init"])
    dnr = STRATEGIES["dnr"](net, torch.optim.SGD(net.parameters(), lr=0.0), Classification(3), reinit_epoch=1, n_init=1)
    with torch.no_grad():
        for k, p in net.named_parameters():
            p.copy_(torch.tensor(rec["moved"][k], dtype=torch.float64))
    got = {f"{split}_{m}": v for split, part in (("train", data.train), ("val", data.val))
           for m, v in dnr.purities(part).items()}
    assert got == pytest.approx(rec["purity"])
    dnr.on_epoch_start(2, data)  # a diagnosis follows epoch 1
    close([dnr.last_strength["audio"], dnr.last_strength["visual"]], [rec["strength"]["audio"], rec["strength"]["visual"]],
          what="strengths")
    assert_params(net, rec["after"], what="after the re-initialisation: ")
    assert dnr.actions["reinits"] == 1


def test_mbsd_equals_the_reference():
    """BalanceBenchmark ``MBSDTrainer.train_loop`` on its ``BaseClassifierModel`` (concat head,
    unimodal logits ``W_m f_m + b/2``), two steps: the total loss (fused CE + both unimodal CEs +
    the confidence-gap-weighted RS and KL terms, gradients through the weights) and every parameter
    after each step, with mmsent's ``kl: code`` (BalanceBenchmark's ``F.kl_div`` on probabilities)."""
    rec = golden("mbsd")
    s, inputs = rec["settings"], rec["inputs"]
    data = dataset(inputs)
    net = model(inputs, ConcatHead(["audio", "visual"], 6, 1, 3, hidden=0), rec["init"])
    mbsd = STRATEGIES["mbsd"](net, sgd(net, s["optimizer"]), Classification(3), kl="code")
    for i, (batch, want) in enumerate(zip(batches(data, inputs["batches"]), rec["steps"])):
        logs = mbsd.train_step(batch)
        close(logs["loss"] + logs["unimodal"] + logs["rs"] + logs["kl"], want["loss"], what=f"step {i} total loss")
        assert_params(net, want["params"], what=f"step {i}: ")


def test_umt_equals_the_reference():
    """BalanceBenchmark ``UMTTrainer.train_loop``, stage 2: CE + 10 sum_m MSE(teacher_m's features,
    the student's) over two steps, every parameter after each. Left out by name: stage 1, the
    teachers' training (BalanceBenchmark loads them from separate unimodal runs; here both sides
    get the same teacher weights, and mmsent's own stage 1 is tested in tests/strategies/test_umt.py)."""
    from golden.harness import Conv1x1 as Teacher

    rec = golden("umt")
    s, inputs = rec["settings"], rec["inputs"]
    data = dataset(inputs)
    net = model(inputs, ConcatHead(["audio", "visual"], 6, 1, 3, hidden=0), rec["init"])
    umt = STRATEGIES["umt"](net, sgd(net, s["optimizer"]), Classification(3), lam=float(s["scaling"]))
    for m, d in (("audio", 5), ("visual", 4)):
        teacher = Teacher(d).double()
        with torch.no_grad():
            for k, p in teacher.named_parameters():
                p.copy_(torch.tensor(rec["teachers"][m][k], dtype=torch.float64))
        umt.teachers[m] = teacher.eval().requires_grad_(False)
    for i, (batch, want) in enumerate(zip(batches(data, inputs["batches"]), rec["steps"])):
        logs = umt.train_step(batch)
        close(logs["loss"] + umt.lam * logs["distill"], want["loss"], what=f"step {i} loss")
        assert_params(net, want["params"], what=f"step {i}: ")


def test_dgl_equals_the_authors_code():
    """ICCV2025-GDL ``main_dgl.py::train_epoch`` with ``ConcatFusion_DGL`` (alpha 4, clipping at 40):
    the fused and unimodal losses and every parameter after each of two steps: the encoders learn
    only from alpha (L_a + L_v), the head only from L_f on detached features -- mmsent's ``dgl_loss``
    in one backward against the authors' two backwards. Their unused ``fc_auxi`` layer has no
    counterpart."""
    rec = golden("dgl")
    s, inputs = rec["settings"], rec["inputs"]
    data = dataset(inputs)
    net = model(inputs, ConcatHead(["audio", "visual"], 6, 1, 3, hidden=0), rec["init"])
    dgl = STRATEGIES["dgl"](net, sgd(net, s["optimizer"]), Classification(3), alpha=s["alpha"], grad_clip=s["grad_clip"])
    for i, (batch, want) in enumerate(zip(batches(data, inputs["batches"]), rec["steps"])):
        v = want["values"]
        logs = dgl.train_step(batch)
        close([logs["loss"], logs["loss_audio"], logs["loss_visual"]], [v["loss_f"], v["loss_a"], v["loss_v"]],
              what=f"step {i} losses")
        assert_params(net, want["params"], what=f"step {i}: ")
