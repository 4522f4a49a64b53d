"""Models: encoders, fusion heads and ``MultimodalModel``; ``build_model`` wires them from config."""
from __future__ import annotations

from mmsent.models.encoders import BertEncoder, LSTMEncoder, MLPEncoder, masked_pool
from mmsent.models.fusions import FUSIONS
from mmsent.models.model import MultimodalModel
from mmsent.models.pretrained import resolve_model_path

ENCODERS = {"mlp": MLPEncoder, "lstm": LSTMEncoder, "bert": BertEncoder}


def choose(registry: dict, kind: str, name: str):
    if name not in registry:
        from mmsent.config import ConfigError

        raise ConfigError(f"unknown {kind} {name!r}; choose from {', '.join(sorted(registry))}")
    return registry[name]


def build_model(cfg, dataset, out_dim: int) -> MultimodalModel:
    """``cfg`` is a ``ModelConfig``; ``dataset`` supplies modalities, feature sizes and lengths."""
    encoders = {}
    for m in dataset.modalities:
        name = cfg.encoders.get(m, cfg.encoder)
        if name == "auto":
            steps = dataset.train.x[m].shape[1]
            name = "bert" if m in dataset.token_modalities else ("lstm" if steps > 1 else "mlp")
        cls = choose(ENCODERS, "encoder", name)
        common = dict(seq_len=cfg.seq_len, dropout=cfg.dropout)
        if cls is BertEncoder:
            if not cfg.bert_path:
                from mmsent.config import ConfigError

                raise ConfigError(f"encoder 'bert' for {m!r} needs model.bert_path (a local transformers model directory)")
            encoders[m] = BertEncoder(cfg.dim, path=resolve_model_path(cfg.bert_path), pooling=cfg.bert_pooling,
                                      freeze_layers=cfg.bert_freeze_layers, **common)
        else:
            encoders[m] = cls(dataset.dims[m], cfg.dim, hidden=cfg.hidden, **common)
    head_cls = choose(FUSIONS, "fusion", cfg.fusion)
    extra = {"depth": cfg.depth} if cfg.fusion == "mlpmixer" else {}
    head = head_cls(dataset.modalities, cfg.dim, cfg.seq_len, out_dim, hidden=cfg.hidden, dropout=cfg.dropout, **extra)
    return MultimodalModel(encoders, head)


__all__ = ["ENCODERS", "FUSIONS", "BertEncoder", "LSTMEncoder", "MLPEncoder", "MultimodalModel", "build_model", "masked_pool"]
