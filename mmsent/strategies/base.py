"""The strategy interface: how a multimodal model learns from one batch.

Like a ``torch.optim.Optimizer``, a strategy is built on what it acts on (model, optimizer, task)
plus keyword-only settings, and owns the backward pass, any gradient edits and the optimizer step.
Each strategy declares its settings as a frozen dataclass ``Settings`` (types, defaults, range
checks); the config layer validates the flat ``strategy.*`` keys and ``strategy.presets`` against it when a
config loads, and the constructor builds it from the keyword arguments. ``train.fit`` calls::

    on_epoch_start(epoch, data)   # optional: prototypes, blending weights, re-initialisation
    train_step(batch) -> logs     # forward, backward, (edit gradients), step
    predict(batch)                # optional override: test-time fusion

Parameters per modality come from ``model.encoders[m]`` and the head from ``model.head``: modules,
never parameter-name matching. Zero-masking goes through ``model.mask_modalities`` only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmsent.checks import NoSettings
from mmsent.data.batch import Batch, Dataset
from mmsent.distributed import Dist
from mmsent.loop import train_epoch
from mmsent.models.fusions import ConcatHead
from mmsent.models.model import MultimodalModel


def feature_vectors(z: Tensor) -> Tensor:
    """One vector per sample of an encoder output: sequences (B, L, D) are flattened; CNN feature
    maps (B, C, H, W[, T]) are average-pooled to their channels, as the audio-visual baselines pool
    them (flattened, a layer2 map is ~10^5 values per sample)."""
    return z.flatten(1) if z.dim() <= 3 else z.flatten(2).mean(-1)


def linear_late_fusion(model: MultimodalModel, method: str) -> nn.Linear:
    """The head's one linear layer over the concatenated pooled features, whose column blocks are
    per-modality classifiers; methods defined on such blocks (MMCosine, ReconBoost) refuse any other
    head with one line."""
    head = model.head
    if not (isinstance(head, ConcatHead) and isinstance(head.net, nn.Linear)):
        raise ValueError(f"{method} needs a linear late-fusion head to split per modality: "
                         "set model.fusion=concat and model.hidden=0")
    return head.net


def weight_blocks(fc: nn.Linear, order: list[str]) -> dict[str, Tensor]:
    """Modality -> its column block of ``fc.weight`` (views), in the head's concatenation order."""
    return dict(zip(order, fc.weight.chunk(len(order), dim=1)))


def scale_samples(feats: dict[str, Tensor], factors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Modality m's features of sample i times ``factors[m][i]`` (0 drops it for that sample: the
    framework's zero-masking, per sample instead of per batch); modalities not named are kept."""
    out = dict(feats)
    for m, w in factors.items():
        out[m] = feats[m] * w.to(feats[m].dtype).view(-1, *([1] * (feats[m].dim() - 1)))
    return out


class Strategy:
    Settings: type = NoSettings
    # What the registry tells everything that lists strategies (the CLI help, `cli.py table`, the
    # README strategy table, the generic tests), so a new method is its file plus one registry line:
    label: str | None = None  # its row in `cli.py table` (None: not one of the table's rows)
    method = ""  # README: the method, its venue and which reference form it follows
    summary = "—"  # README: what it does for N modalities
    checked = "—"  # README: the test(s) checking it against its reference's semantics at N = 2
    # Settings under which its between-epoch work (schedules, re-initialisations, estimates, state
    # carried across epochs) happens within two epochs: what a smoke run trains it with (the
    # generic resume and two-rank suites, benchmarks/gpu_check.py) to exercise all of the method.
    short_run: dict = {}
    # Model settings (``model.KEY=value``) a method needs to be defined at all, e.g. MMCosine's
    # linear late-fusion head; tables, benchmarks and tests build its model with these.
    needs_model: dict = {}
    # Other heads (``model.fusion``) it is defined on, besides the one ``needs_model`` names; "*": any head.
    also_on: tuple = ()
    # Defined for dense prediction (segmentation): needs no per-sample logits, scores or prototypes.
    dense_ok: bool = False
    # Trains one modality alone (its ``modality`` setting): defined on one-modality data, and the
    # other encoders never learn (a plot leaves their branches out).
    one_modality: bool = False
    # What the method does that plain training does not, counted per run (``act``): re-
    # initialisations, modulated or curated steps, estimates. A method whose idle step is plain
    # training (``idle_is_vanilla``) with counts that stayed 0 up to the selected epoch never acted:
    # the run says so, and a table marks its row. Methods that change every step's loss (DGL, LFM,
    # CML...) have none.
    counts: tuple[str, ...] = ()
    # True when a step in which the method did none of its counted actions is a plain joint-training
    # step (OPM's warm-up, PMR and AGM unmodulated, valuation before it values, D&R before it
    # re-initialises): only then does "never acted" mean the selected model is vanilla. MMPareto
    # without a conflict still sums unimodal gradients, AMCo without a mask still adds its unimodal
    # terms, MLA, Greedy, G-Blending, ReconBoost and UMT always train differently: their counts
    # are reported, not read as idleness.
    idle_is_vanilla: bool = False
    # The run length (epochs) of the reference recipe its epoch-valued defaults belong to: a
    # schedule setting left at None is that default scaled to the run's budget (``scheduled``).
    reference_epochs: int | None = None

    @classmethod
    def defined_on(cls, fusion: str) -> bool:
        """Whether the method is defined on the head ``model.fusion=fusion`` (a table over one head
        leaves out the methods that would refuse it)."""
        need = cls.needs_model.get("fusion")
        return need is None or fusion == need or fusion in cls.also_on or "*" in cls.also_on

    def __init__(self, model: MultimodalModel, optimizer: torch.optim.Optimizer, task, *, grad_clip: float = 0.0,
                 dist: Dist | None = None, batch_size: int = 64, steps_per_epoch: int = 1, min_batch: int = 1,
                 epochs: int | None = None, amp: bool = False, **settings):
        self.settings = self.Settings(**settings)  # TypeError on an unknown setting, SettingError out of range
        self.model, self.optimizer, self.task, self.grad_clip = model, optimizer, task, grad_clip
        self.epoch = 0
        # The training loop's context, given at construction:
        self.steps_per_epoch = steps_per_epoch  # schedules inside an epoch use it
        self.batch_size = batch_size  # data.batch_size: stages of a method's own use it
        self.min_batch = min_batch  # 2 for a model with BatchNorm (a last batch of one merges)
        self.epochs = epochs  # the run's epoch budget (train.epochs); None outside the training loop
        self.amp = amp  # train.amp: bfloat16 autocast, in the run's steps and in a copy's (train_copy)
        self.actions = dict.fromkeys(self.counts, 0)
        self.schedule: dict[str, int] = {}  # the epochs its schedule settings resolved to (results.json)
        # The process group (torchrun). Every gradient a strategy consumes passes ``dist.grads`` /
        # ``sync_grads`` first, and every per-batch statistic ``dist.mean`` / ``dist.sum``, so K ranks
        # on shards compute what one process computes on the whole batch (identities for one process).
        self.dist = dist or Dist()

    def loop(self) -> dict:
        """This strategy's loop context, for a strategy it builds over a copy of the model."""
        return {"dist": self.dist, "batch_size": self.batch_size, "steps_per_epoch": self.steps_per_epoch,
                "min_batch": self.min_batch, "epochs": self.epochs, "amp": self.amp}

    def scheduled(self, key: str, default: int) -> int:
        """The epoch that schedule setting ``key`` means in this run: a number as set; None (its
        default) is the reference's ``default`` epoch of a ``reference_epochs``-epoch run, scaled to
        this run's budget, ``floor(default * epochs / reference_epochs + 1/2)`` (unscaled outside
        the training loop). Recorded in ``self.schedule`` (and kept by ``--resume``: the attribute
        named ``key`` holds it)."""
        value = getattr(self.settings, key)
        if value is None:
            value = default if not (self.epochs and self.reference_epochs) else \
                math.floor(default * self.epochs / self.reference_epochs + 0.5)
        self.schedule[key] = value
        return value

    def act(self, name: str, n: int = 1) -> None:
        """Count ``n`` of the method's actions ``name`` (one of ``counts``)."""
        self.actions[name] += n

    def on_epoch_start(self, epoch: int, data: Dataset) -> None:
        self.epoch = epoch

    def train_step(self, batch: Batch) -> dict[str, float]:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, batch: Batch, keep: list[str] | None = None) -> Tensor:
        """Prediction of the model, or of the branch that keeps only ``keep`` (others zeroed)."""
        feats = self.model.encode(batch, keep)
        return self.model.head(self.model.mask_modalities(feats, keep if keep is not None else feats))

    def branches(self, feats: dict[str, Tensor], names=None) -> dict[str, Tensor]:
        """Each modality's prediction through the shared head with the others zeroed (the DGL
        paper's protocol for the baselines' unimodal outputs, Sec. 4.3); BatchNorm statistics stay.
        ``names``: only these modalities' branches (default: every modality in ``feats``); a
        modality absent from ``feats`` counts as zeroed."""
        return {m: self.model.head_masked(self.model.mask_modalities(feats, [m])) for m in (names or feats)}

    def unimodal_logits(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each modality's own logits as the references define them where the head has them
        (``branch_logits``: ``W_m f_m + b/N`` of a linear concat head, a late-fusion head's
        classifiers, ReconBoost's shared classifier), else the zero-masked branch through the
        shared head (the balancing literature's extension to heads that mix modalities)."""
        out = self.model.head.branch_logits(self.model.mask_modalities(feats, feats))
        return out if out is not None else self.branches(feats)

    @torch.no_grad()
    def branch_scores(self, feats: dict[str, Tensor], y: Tensor,
                      branches: dict[str, Tensor] | None = None) -> dict[str, float]:
        """OGM-GE's score of every modality: the sum over the (global) batch of its branch's
        confidence in the truth (``task.score``). ``branches``: ``self.branches(feats)`` when the
        caller already has them (only their values are read), else computed from detached features."""
        if branches is None:
            branches = self.branches({m: f.detach() for m, f in feats.items()})
        return {m: self.dist.sum(float(self.task.score(p, y).sum())) for m, p in branches.items()}

    def copy_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """An optimizer for ``model``, a copy of this strategy's model, built from the run's
        parameter groups AS THEY STAND (each copied parameter in its original's group, with that
        group's current learning rate, weight decay and momentum): after a step schedule, or with
        BERT's own learning rate, a copy trains at the rate the model trains at now, not at the
        optimizer's construction defaults. Its state (momentum) starts empty."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        theirs = dict(model.named_parameters())
        groups = []
        for g in self.optimizer.param_groups:
            params = [theirs[names[id(p)]] for p in g["params"] if id(p) in names]
            if params:
                groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": params})
        return type(self.optimizer)(groups, **self.optimizer.defaults)

    def train_copy(self, trainer: "Strategy", data: Dataset, epochs: int, after_epoch=None) -> None:
        """Train ``trainer`` (a strategy over a COPY of the model, built with ``self.loop()``: UMT's
        teachers, G-Blending's estimates) for ``epochs`` epochs on the training split in the run's batch size. Its shuffling
        generator is seeded from the run's RNG, so the copy's training is reproducible and resumes
        exactly; under torchrun it trains on this rank's shards with the run's process group.
        ``after_epoch(i)`` runs after each epoch (e.g. a validation check). The epochs are the run's
        own (``loop.train_epoch``): the same autocast and the same non-finite-loss check."""
        gen = torch.Generator().manual_seed(int(torch.randint(2**31 - 1, ())))
        for i in range(epochs):
            trainer.model.train()
            trainer.on_epoch_start(i, data)
            train_epoch(trainer, data.train, gen, amp=self.amp, label=f"{type(self).__name__}'s copy, epoch {i}")
            if after_epoch is not None:
                after_epoch(i)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def backward(self, loss: Tensor, retain_graph: bool = False) -> None:
        """zero_grad -> backward -> all-reduce (torchrun): the gradients of the global batch are in
        ``.grad``, ready for a method to edit before ``clip_and_step``."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward(retain_graph=retain_graph)
        self.dist.sync_grads(self.model.parameters())

    def update(self, loss: Tensor) -> None:
        """``backward`` -> clip -> step, the common case."""
        self.backward(loss)
        self.clip_and_step()

    def clip_and_step(self) -> None:
        if self.grad_clip > 0:
            # Joint clipping over encoders and head, as the DGL authors' code does.
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()

    # The attributes that carry a method's state from one step to the next (G-Blending's weights,
    # PMR's prototypes...): saved in last.pt and restored on --resume, so a resumed run is the
    # uninterrupted one. Tensors are saved on the CPU and restored to the model's device; a module
    # is saved as its state_dict and loaded into the existing one; containers are copied.
    state: tuple[str, ...] = ()

    def state_dict(self) -> dict:
        """``{"epoch": ..., "actions": ..., name: value for name in state}``, tensors and plain
        containers only (checkpoints are read with ``torch.load(weights_only=True)``)."""
        return {"epoch": self.epoch, "actions": dict(self.actions), "schedule": dict(self.schedule),
                **{name: _save(getattr(self, name)) for name in self.state}}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.actions.update(state.get("actions", {}))
        # a resumed run keeps the schedule it started with, also when its epoch budget grows
        for key, value in state.get("schedule", {}).items():
            self.schedule[key] = value
            setattr(self, key, value)
        for name in self.state:
            if name in state:
                setattr(self, name, _load(getattr(self, name, None), state[name], self.device))


def _save(value):
    if isinstance(value, torch.nn.Module):
        return value.state_dict()
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _save(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_save(v) for v in value)
    return value


def _load(current, saved, device):
    if isinstance(current, torch.nn.Module):
        current.load_state_dict(saved)
        return current
    if isinstance(saved, Tensor):
        return saved.to(device)
    if isinstance(saved, dict):
        return {k: _load(current.get(k) if isinstance(current, dict) else None, v, device) for k, v in saved.items()}
    if isinstance(saved, (list, tuple)):
        return type(saved)(_load(None, v, device) for v in saved)
    return saved


def ogm_ratios(scores: dict[str, float]) -> dict[str, float]:
    """OGM-GE's discrepancy ratio of every modality (Eq. 9, for N modalities): rho_m = mean over
    j != m of s_m / s_j. OGM-GE and OPM both read it."""
    return {m: sum(s / scores[j] for j in scores if j != m) / (len(scores) - 1) for m, s in scores.items()}


class Joint(Strategy):
    """One loss on the fused prediction (Eq. 1): the vanilla step, also what G-Blending's copies
    of the multimodal model train with."""

    def train_step(self, batch):
        loss = self.task.loss(self.model(batch), batch.y)
        self.update(loss)
        return {"loss": loss.item()}


@dataclass(frozen=True)
class OneModalitySettings:
    modality: str = ""  # the modality key to train (required; checked against the model's)


class OneModality(Strategy):
    """One modality through the same head with the others zeroed; only its encoder runs. The
    model's own prediction ("multi", what validation selects the epoch on) is that same masked
    pass. The unimodal-only step, also what UMT's teachers and G-Blending's unimodal copies train with."""

    Settings = OneModalitySettings
    one_modality = True

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        self.modality = self.settings.modality
        if self.modality not in model.modalities:
            raise ValueError(f"unimodal strategy: unknown modality {self.modality!r} (strategy.modality); "
                             f"choose from {', '.join(model.modalities)}")

    def train_step(self, batch):
        feats = self.model.encode(batch, [self.modality])
        loss = self.task.loss(self.model.head(self.model.mask_modalities(feats, [self.modality])), batch.y)
        self.update(loss)
        return {"loss": loss.item()}

    @torch.no_grad()
    def predict(self, batch, keep=None):
        return super().predict(batch, [self.modality] if keep is None else keep)
