"""Modality encoders. Each maps ``(x, mask)`` to a ``(B, L, D)`` representation.

Every encoder ends in :func:`masked_pool`, so all modalities share one output shape whatever their
input length. That makes zero-masking a modality (DGL Eq. 12/14) one ``zeros_like`` and lets the
CubeMLP-style mixer stack them into a ``(B, L, M, D)`` cube without per-modality padding rules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mmsent.models.encoder import Encoder, EncoderSpec


def masked_pool(h: Tensor, mask: Tensor, out_len: int) -> Tensor:
    """Adaptive average pooling of the valid steps of ``h`` (B, T, D) into ``out_len`` bins.

    Bin i of a sample with n valid steps averages steps [floor(i n / L), ceil((i+1) n / L)), as
    ``adaptive_avg_pool1d`` does, but per sample so padding never leaks in. A sample with no valid
    step (a missing modality) pools to zeros.
    """
    B, T, _ = h.shape
    n = mask.sum(1, keepdim=True).to(h.dtype)  # (B, 1)
    i = torch.arange(out_len, device=h.device, dtype=h.dtype)
    start = torch.floor(i * n / out_len)  # (B, L)
    end = torch.ceil((i + 1) * n / out_len)
    t = torch.arange(T, device=h.device, dtype=h.dtype)
    w = ((t >= start[..., None]) & (t < end[..., None]) & mask[:, None, :]).to(h.dtype)  # (B, L, T)
    w = w / w.sum(-1, keepdim=True).clamp(min=1)
    return w @ h  # (B, L, D)


class MLPEncoder(Encoder):
    """Step-wise MLP for vector features (MOSI utterance vectors, pooled descriptors)."""

    @classmethod
    def build(cls, spec: EncoderSpec) -> "MLPEncoder":
        return cls(spec.in_dim, spec.dim, seq_len=spec.seq_len, hidden=spec.hidden, dropout=spec.dropout)

    def __init__(self, in_dim: int, dim: int, *, seq_len: int = 1, hidden: int = 128, dropout: float = 0.0):
        super().__init__()
        self.seq_len = seq_len
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, seq_len * dim)
        )
        self.dim = dim

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        # Pool first: a vector modality has one meaningful step; the last layer then spreads it over
        # the L slots of the mixer's sequence axis so that axis carries learned structure, not copies.
        v = masked_pool(x, mask, 1)[:, 0]  # (B, F)
        return self.net(v).view(x.shape[0], self.seq_len, self.dim)


class LSTMEncoder(Encoder):
    """LSTM over padded sequences; packing keeps padded steps out of the recurrence."""

    build = classmethod(MLPEncoder.build.__func__)  # the same sizes: input width, D, L, hidden width, dropout

    def __init__(
        self, in_dim: int, dim: int, *, seq_len: int = 1, hidden: int = 128, layers: int = 1,
        dropout: float = 0.0, bidirectional: bool = True,
    ):
        super().__init__()
        self.seq_len = seq_len
        self.lstm = nn.LSTM(
            in_dim, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden * (2 if bidirectional else 1), dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        lengths = mask.sum(1)
        # pack_padded_sequence rejects zero lengths: a missing modality runs one (zero) step and is
        # masked out again by masked_pool below.
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # (B, T, H)
        return self.proj(masked_pool(out, mask, self.seq_len))


@dataclass(frozen=True)
class BertSettings:
    """The ``model.*`` keys of the ``bert`` encoder (checked where the model config loads)."""

    bert_path: Optional[str] = None  # a local transformers model directory, or "minilm"
    bert_pooling: str = "mean"
    bert_freeze_layers: int = 0


class BertEncoder(Encoder):
    """A ``transformers`` encoder on token ids, loaded from a local path (nothing is downloaded).

    ``x`` holds token ids (B, T) and ``mask`` the attention mask. ``pooling`` is ``"mean"`` (masked
    mean over tokens, then ``seq_len`` bins) or ``"cls"`` (the first token).
    """

    Settings = BertSettings

    @classmethod
    def build(cls, spec: EncoderSpec) -> "BertEncoder":
        import pickle
        import warnings

        from mmsent.checks import ConfigError, first_line, is_out_of_memory
        from mmsent.pretrained import resolve_model_path

        s = cls.settings(spec)
        if not s.bert_path:
            raise ConfigError(f"encoder 'bert' for {spec.modality!r} needs model.bert_path (a local transformers "
                              "model directory)")
        path = resolve_model_path(s.bert_path)
        try:
            with warnings.catch_warnings():  # torch's note on a refused pickle's protocol: the error says it all
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                return cls(spec.dim, path=path, pooling=s.bert_pooling, freeze_layers=s.bert_freeze_layers,
                           seq_len=spec.seq_len, dropout=spec.dropout)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, pickle.UnpicklingError) as e:
            if is_out_of_memory(e):
                raise
            # transformers' own errors run to ~30 lines (a hostile pytorch_model.bin is refused by
            # weights_only loading, a config.json without model_type, no weights file at all)
            raise ConfigError(f"model.bert_path {path}: not a loadable local transformers model "
                              f"({type(e).__name__}: {first_line(e)})") from None

    def __init__(
        self, dim: int, *, seq_len: int = 1, path: str | None = None, config=None, pooling: str = "mean",
        dropout: float = 0.0, freeze_layers: int = 0,
    ):
        super().__init__()
        from transformers import AutoModel  # imported here: only BERT runs pay its import time

        if (path is None) == (config is None):
            raise ValueError("BertEncoder needs exactly one of `path` (local model dir) or `config`")
        if pooling not in ("mean", "cls"):
            raise ValueError(f"BertEncoder pooling must be 'mean' or 'cls', got {pooling!r}")
        self.bert = AutoModel.from_pretrained(path, local_files_only=True) if path else AutoModel.from_config(config)
        self.seq_len, self.pooling = seq_len, pooling
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.bert.config.hidden_size, dim))
        if freeze_layers:
            self.freeze(freeze_layers)

    def freeze(self, n: int) -> None:
        """Freeze the embeddings and the ``n`` lower layers (``-1``: the whole transformer), the
        usual way to fine-tune BERT on a 1.4k-utterance corpus without wrecking it."""
        layers = list(self.bert.encoder.layer) if hasattr(self.bert, "encoder") else []
        frozen = [self.bert] if n < 0 else [self.bert.embeddings] + layers[:n]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.bert(input_ids=x.long(), attention_mask=mask.long()).last_hidden_state  # (B, T, H)
        if self.pooling == "cls":
            return self.proj(h[:, :1]).expand(-1, self.seq_len, -1)
        return self.proj(masked_pool(h, mask, self.seq_len))
