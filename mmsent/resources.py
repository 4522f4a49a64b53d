"""Bounds before work: the model's training state and one step's activations against the memory
of the device they will live on, checked before anything is allocated or written, and the data's
share of an out-of-memory error named when one happens anyway."""
from __future__ import annotations

import sys
from contextlib import contextmanager

import torch

from mmsent.checks import ConfigError, first_line, host_memory, is_out_of_memory
from mmsent.config import Config
from mmsent.data import Dataset, DataError
from mmsent.models import build_model


def memory_bytes(device: torch.device) -> int | None:
    """Total memory of the device a model trains on (None: unknown)."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[1])
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None
    return host_memory()


def check_model_fits(cfg: Config, dataset: Dataset, out_dim: int, device: torch.device) -> None:
    """Model sizes come from flags and files (``model.dim=10**6``): count the parameters on the meta
    device, which allocates nothing, and refuse a model whose training state -- weights, gradients
    and two Adam moments, 16 bytes a parameter -- exceeds the device's whole memory. A model the
    meta device cannot build (pretrained weights read from disk) is not pre-checked."""
    total = memory_bytes(device)
    if total is None or cfg.model.bert_path:
        return
    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in build_model(cfg.model, dataset, out_dim, record_shapes=False).parameters())
    except (ConfigError, DataError):
        raise
    except Exception:
        return
    need = 16 * n
    if need > total:
        raise ConfigError(f"the model has {n / 1e9:.2f} G parameters and needs about {need / 2**30:.0f} GiB to train, "
                          f"more than the {total / 2**30:.0f} GiB of this {device.type} device; choose smaller model "
                          "sizes (model.dim, model.hidden, model.width) or fewer classes")
    check_inputs_fit(cfg, dataset, total - need, device)


# Past this many steps one LSTM call -- a single native call that no signal interrupts -- runs for
# minutes on a CPU (a 200,000-step file held 11 GB and ignored three SIGTERMs for 12 minutes).
LONG_SEQUENCE = 10_000


def sequence_inputs(cfg: Config, dataset: Dataset) -> dict[str, tuple[str, int, int]]:
    """Feature-sequence modalities and what reads them: ``{m: (encoder, steps, features)}`` (media
    and token modalities, whose sizes the corpus fixes, are left out)."""
    out = {}
    for m in dataset.modalities:
        x = getattr(dataset.train, "x", None)  # decoded corpora (FrameSet) hold no feature arrays
        x = x.get(m) if isinstance(x, dict) else None
        if m in dataset.kinds or m in dataset.token_modalities or x is None or getattr(x, "ndim", 0) != 3:
            continue
        name = cfg.model.encoders.get(m, cfg.model.encoder)
        if name == "auto":
            name = "lstm" if x.shape[1] > 1 else "mlp"
        out[m] = (name, int(x.shape[1]), int(x.shape[2]))
    return out


def activation_bytes(cfg: Config, dataset: Dataset) -> dict[str, int]:
    """A lower bound on what one training step keeps for the backward pass, per modality: the
    padded batch itself (B x L x F, float32), and for an LSTM the per-step state autograd saves,
    about 6 hidden-wide tensors (4 gates, cell, output) a direction a step. Order of magnitude, not
    an allocator's count -- enough to refuse a step that cannot fit before anything is allocated."""
    batch = min(cfg.data.batch_size, len(dataset.train))
    hidden = cfg.model.encoder_hidden or cfg.model.hidden or 128
    out = {}
    for m, (name, steps, features) in sequence_inputs(cfg, dataset).items():
        per_step = features + (2 * 6 * hidden if name == "lstm" else 0)  # bidirectional, one layer
        out[m] = 4 * batch * steps * per_step
    return out


def largest_input(cfg: Config, dataset: Dataset) -> str:
    """The data's share of an out-of-memory error: the sequence modality that takes the most, with
    its size and file (sizes that come from a file are not fixed by a smaller model)."""
    sizes = activation_bytes(cfg, dataset)
    if not sizes or not cfg.data.path:  # generated data's sizes are settings, named by the advice below
        return ""
    m = max(sizes, key=sizes.get)
    _, steps, features = sequence_inputs(cfg, dataset)[m]
    return f"; the largest input is modality {m!r} of {cfg.data.path}, {steps} steps x {features} features a sample"


def check_inputs_fit(cfg: Config, dataset: Dataset, free: int, device: torch.device) -> None:
    """Bounds before work: refuse a step whose activations cannot fit the device (naming the
    modality and its size, which come from the data file), and say so before starting an LSTM over
    a sequence so long that a single uninterruptible call runs for minutes."""
    sizes = activation_bytes(cfg, dataset)
    where = f" of {cfg.data.path}" if cfg.data.path else ""
    if sizes and sum(sizes.values()) > free:
        m = max(sizes, key=sizes.get)
        name, steps, features = sequence_inputs(cfg, dataset)[m]
        raise ConfigError(f"modality {m!r}{where} has {steps} steps x {features} features: one training step "
                          f"(data.batch_size={cfg.data.batch_size}, encoder {name!r}) needs about "
                          f"{sum(sizes.values()) / 2**30:.1f} GiB, more than the {max(free, 0) / 2**30:.1f} GiB "
                          f"this {device.type} device has; shorten or pool the sequences, or lower data.batch_size")
    for m, (name, steps, _) in sequence_inputs(cfg, dataset).items():
        if name == "lstm" and steps > LONG_SEQUENCE:
            print(f"warning: modality {m!r}{where} has {steps} steps; each LSTM pass over them is one native call "
                  "that Ctrl-C and SIGTERM wait for (minutes on a CPU); pool or cut the sequences, or use "
                  f"model.encoders.{m}=mlp", file=sys.stderr)


@contextmanager
def model_memory(device: torch.device):
    """Building the model on ``device``: an allocation failure is one line naming the sizes to lower."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        raise ConfigError(f"the model does not fit in {device.type} memory ({first_line(e)}); choose smaller "
                          "model sizes (model.dim, model.hidden, model.width)") from None
