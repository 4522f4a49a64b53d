"""Models: encoders, fusion heads and ``MultimodalModel``; ``build_model`` wires them from config."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict

import torch

from mmsent.checks import ConfigError, choose
from mmsent.models.dense import DenseEncoder, StageEncoder
from mmsent.models.encoder import Encoder, EncoderSpec
from mmsent.models.encoders import BertEncoder, LSTMEncoder, MLPEncoder, masked_pool
from mmsent.models.fusions import FUSIONS
from mmsent.models.model import MultimodalModel, evaluating
from mmsent.models.resnet import FramesEncoder, SpectrogramEncoder

# One line per encoder (an Encoder subclass: ``reads``, ``Settings``, ``build(spec)``).
ENCODERS = {"mlp": MLPEncoder, "lstm": LSTMEncoder, "bert": BertEncoder, "spectrogram": SpectrogramEncoder,
            "frames": FramesEncoder, "dense": DenseEncoder}


def model_keys(cfg) -> dict:
    """Every flat ``model.*`` key as configured: the model config's own fields and the component
    options (what an encoder's ``Settings`` are read from)."""
    own = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ("options", "encoders")}
    return {**own, **cfg.options}


def _encoder(cfg, dataset, m: str, head_cls):
    name = cfg.encoders.get(m, cfg.encoder)
    if name == "auto":
        if m in dataset.kinds:
            name = dataset.kinds[m]
        else:
            steps = dataset.train.x[m].shape[1]
            name = "bert" if m in dataset.token_modalities else ("lstm" if steps > 1 else "mlp")
    cls = choose(ENCODERS, "encoder", name)
    if dataset.kinds.get(m) != cls.reads:
        raise ConfigError(f"encoder {name!r} cannot read modality {m!r} "
                          f"({'a ' + dataset.kinds[m] if m in dataset.kinds else 'feature sequences'})")
    spec = EncoderSpec(m, dataset.dims[m], dim=cfg.dim, seq_len=cfg.seq_len,
                       hidden=cfg.encoder_hidden or cfg.hidden or 128,  # model.hidden=0 means a linear *head* only
                       dropout=cfg.dropout, width=cfg.width, maps=head_cls.needs_maps, stages=head_cls.reads_stages,
                       keys=model_keys(cfg))
    return cls.build(spec)


def build_model(cfg, dataset, out_dim: int, record_shapes: bool = True) -> MultimodalModel:
    """``cfg`` is a ``ModelConfig``; ``dataset`` supplies modalities, feature sizes and lengths.
    ``record_shapes=False`` skips the shape-recording forward (a model built on the meta device only
    to count its parameters)."""
    head_cls = choose(FUSIONS, "fusion", cfg.fusion)
    encoders = {m: _encoder(cfg, dataset, m, head_cls) for m in dataset.modalities}
    image = [e.reads is not None for e in encoders.values()]
    if head_cls.needs_maps and not all(image):
        raise ConfigError(f"fusion {cfg.fusion!r} needs spectrogram/frames encoders (an audio-visual dataset)")
    dense = [e.reads == "dense" for e in encoders.values()]
    if any(dense) != head_cls.dense:
        raise ConfigError(f"fusion {cfg.fusion!r} " + ("does not predict per pixel; a dense (segmentation) dataset needs "
                          "model.fusion=dense or esanet" if any(dense) else "predicts per pixel and needs a dense (segmentation) dataset"))
    dim, seq_len = cfg.dim, cfg.seq_len
    if any(image):  # ResNet outputs: 512 pooled features (or 128-channel layer2 maps), one step
        dims = {e.out_dim for e in encoders.values() if e.reads is not None}
        if len(dims) > 1 or not all(image):
            raise ConfigError("audio-visual encoders must all be ResNets of one model.width")
        dim, seq_len = dims.pop(), 1
    head = head_cls(dataset.modalities, dim, seq_len, out_dim, hidden=cfg.hidden, dropout=cfg.dropout,
                    **asdict(cfg.settings))
    model = MultimodalModel(encoders, head)
    for m, e in encoders.items():  # ESANet's stages halve the map S + 1 times: the image must divide evenly
        size = tuple(dataset.train.batch(torch.arange(1)).x[m].shape[-2:]) if isinstance(e, StageEncoder) else ()
        if size and any(n % e.stride for n in size):
            raise ConfigError(f"fusion 'esanet' with {e.stages} stages needs images whose height and width are "
                              f"multiples of {e.stride}; {m!r} is {size[0]} x {size[1]} (set model.blocks or the data size)")
    # One tiny forward records every encoder's output shape (for zero-masking never-encoded
    # modalities); eval mode and no_grad leave weights, BN statistics and the RNG untouched.
    if record_shapes:
        with evaluating(model), torch.no_grad():
            model.encode(dataset.train.batch(torch.arange(min(2, len(dataset.train)))))
    return model


def min_batch(model: torch.nn.Module, batch_size: int, n_train: int) -> tuple[int, str | None]:
    """The smallest training batch ``model`` trains on, and a note to say once (or None). Training
    BatchNorm cannot normalise one sample: with BatchNorm layers a batch of one is refused, and a
    last batch of one joins the batch before it (``Split.batches(min_size=2)``)."""
    norm = next((n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)), None)
    if norm is None:
        return 1, None
    if batch_size < 2 or n_train < 2:
        what = f"data.batch_size={batch_size}" if batch_size < 2 else f"the train split holds {n_train} sample"
        raise ConfigError(f"{what}: the model has BatchNorm layers ({norm}), which need at least 2 samples per "
                          "training batch; use data.batch_size >= 2 and a train split of 2 or more")
    note = (f"note: the last training batch would hold 1 sample, which BatchNorm cannot train on; it joins the "
            f"batch before it ({batch_size + 1} samples)") if n_train % batch_size == 1 else None
    return 2, note


__all__ = ["ENCODERS", "Encoder", "EncoderSpec", "FUSIONS", "choose", "evaluating", "BertEncoder", "FramesEncoder", "LSTMEncoder", "MLPEncoder", "MultimodalModel",
           "SpectrogramEncoder", "build_model", "masked_pool", "min_batch"]
