"""The base of every modality encoder (models/encoders.py, resnet.py, dense.py) and the one thing an
encoder is built from.

An encoder class is a registry line in ``models.ENCODERS`` and declares ``reads`` (the data kind of
the image modalities it reads, ``Dataset.kinds``; None: feature sequences or token ids) and
``Settings`` (its own ``model.*`` keys, flat beside the fusion's); ``build(spec)`` makes one for a
modality. Its settings are taken from the flat ``model.*`` keys by their names, so an encoder never
reads the fusion head's settings object, even where the two share a key (``model.norm``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from torch import nn

from mmsent.checks import NoSettings


@dataclass(frozen=True)
class EncoderSpec:
    """What every encoder is built from: its modality and input width, the model's sizes, what the
    fusion head needs of it, and the flat ``model.*`` keys its ``Settings`` are read from."""

    modality: str
    in_dim: int  # feature width, channel count or vocabulary size (Dataset.dims)
    dim: int  # model.dim: D of a sequence encoder's (B, L, D) output
    seq_len: int  # model.seq_len: L
    hidden: int  # the sequence encoders' hidden width (model.encoder_hidden, else model.hidden, else 128)
    dropout: float
    width: int  # model.width: base width of the ResNet-shaped encoders
    maps: bool  # the head continues the encoder's layers on feature maps (MMTM): stop at layer2
    stages: bool  # the head reads every stage of the encoder (ESANet)
    keys: dict  # every flat model.* key as configured (defaults filled by the encoder's Settings)


class Encoder(nn.Module):
    Settings: type = NoSettings
    reads: str | None = None  # the Dataset.kinds entry it reads; None: sequences / token ids

    @classmethod
    def settings(cls, spec: EncoderSpec):
        """This encoder's ``Settings`` from the flat model keys that name its fields."""
        own = {f.name for f in fields(cls.Settings)}
        return cls.Settings(**{k: v for k, v in spec.keys.items() if k in own})

    @classmethod
    def build(cls, spec: EncoderSpec) -> "Encoder":
        raise NotImplementedError(f"{cls.__name__} does not say how it is built (build(spec))")
