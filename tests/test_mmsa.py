"""mmsent/data/mmsa.py: MMSA pickle loading (restricted unpickling, cleaning, standardisation,
labels, every pickle protocol, truncated files) and the real MOSI file."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mmsent.data import DataError, load_mmsa

SHARED_MOSI = Path(__file__).resolve().parents[2] / "shared/data/mosi/mosi_utterance.pkl"


def tiny_mmsa(n=(6, 4, 5), T=3, unaligned=False, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for split, k in zip(("train", "valid", "test"), n):
        part = {
            "id": [f"{split}_{i}" for i in range(k)],
            "raw_text": ["a b c"] * k,
            "text": rng.normal(size=(k, T, 4)).astype(np.float32),
            "audio": rng.normal(2.0, 3.0, size=(k, T, 2)).astype(np.float32),
            "vision": rng.normal(size=(k, T, 3)).astype(np.float32),
            "regression_labels": rng.uniform(-3, 3, size=k).astype(np.float32),
            "text_bert": np.stack([rng.integers(1, 100, (k, T)), np.ones((k, T)), np.zeros((k, T))], 1).astype(np.float32),
        }
        if unaligned:
            part["audio_lengths"] = np.array([T - (i % T) for i in range(k)])
            part["vision_lengths"] = np.full(k, T)
        out[split] = part
    return out


def write(tmp_path, obj, name="d.pkl"):
    p = tmp_path / name
    p.write_bytes(pickle.dumps(obj))
    return p


def test_loads_splits_shapes_and_standardizes_with_train_stats(tmp_path):
    raw = tiny_mmsa()
    ds = load_mmsa(write(tmp_path, raw))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 4, 5)
    assert ds.dims == {"text": 4, "audio": 2, "vision": 3}
    a = torch.from_numpy(raw["train"]["audio"]).reshape(-1, 2)
    mean, std = a.mean(0), a.std(0)
    torch.testing.assert_close(ds.train.x["audio"].reshape(-1, 2).mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    want = (torch.from_numpy(raw["valid"]["audio"]) - mean) / std  # val uses TRAIN statistics
    torch.testing.assert_close(ds.val.x["audio"], want)
    assert ds.train.ids[0] == "train_0"
    torch.testing.assert_close(ds.test.y, torch.from_numpy(raw["test"]["regression_labels"]))


def test_non_finite_values_are_zeroed_with_a_counting_warning(tmp_path):
    raw = tiny_mmsa()
    raw["train"]["audio"][0, 0, 0] = -np.inf
    raw["train"]["audio"][1, 2, 1] = np.nan
    raw["train"]["audio"][2, 1, 0] = np.inf
    with pytest.warns(UserWarning, match=r"train\['audio'\] has 3 non-finite"):
        ds = load_mmsa(write(tmp_path, raw), standardize=False)
    assert torch.isfinite(ds.train.x["audio"]).all()
    assert ds.train.x["audio"][0, 0, 0] == 0


def test_unaligned_lengths_give_masks_and_padding_stays_zero(tmp_path):
    ds = load_mmsa(write(tmp_path, tiny_mmsa(unaligned=True)))
    assert ds.train.mask["audio"].sum(1).tolist() == [3, 2, 1, 3, 2, 1]
    assert (ds.train.x["audio"][2, 1:] == 0).all()  # padded steps are not standardized


def test_text_bert_ids(tmp_path):
    raw = tiny_mmsa()
    ds = load_mmsa(write(tmp_path, raw), text_tokens=True)
    assert ds.train.x["text"].dtype == torch.int64
    assert ds.token_modalities == ("text",)
    assert ds.train.x["text"][0].tolist() == raw["train"]["text_bert"][0, 0].astype(int).tolist()


def test_label_outside_range_names_split_and_index(tmp_path):
    raw = tiny_mmsa()
    raw["valid"]["regression_labels"][2] = 3.5
    with pytest.raises(DataError, match=r"valid\['regression_labels'\]\[2\] = 3.5"):
        load_mmsa(write(tmp_path, raw))


def test_missing_split_and_key(tmp_path):
    raw = tiny_mmsa()
    del raw["valid"]
    with pytest.raises(DataError, match="missing split 'valid'"):
        load_mmsa(write(tmp_path, raw))
    raw = tiny_mmsa()
    del raw["test"]["vision"]
    with pytest.raises(DataError, match="split 'test' has no key 'vision'"):
        load_mmsa(write(tmp_path, raw))


def test_row_count_mismatch(tmp_path):
    raw = tiny_mmsa()
    raw["train"]["text"] = raw["train"]["text"][:-1]
    with pytest.raises(DataError, match=r"train\['text'\] has 5 rows"):
        load_mmsa(write(tmp_path, raw))


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_pickle",))


def test_unpickling_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = write(tmp_path, {"train": Evil()})
    with pytest.raises(DataError, match="refusing to load global"):
        load_mmsa(p)
    assert not (tmp_path / "pwned_by_pickle").exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_pickle_protocol_loads(tmp_path, protocol):
    p = tmp_path / "d.pkl"
    p.write_bytes(pickle.dumps(tiny_mmsa(), protocol=protocol))
    assert len(load_mmsa(p).train) == 6


def test_truncated_and_missing_files(tmp_path):
    p = write(tmp_path, tiny_mmsa())
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(DataError, match="malformed pickle|not a loadable"):
        load_mmsa(p)
    with pytest.raises(DataError, match="file not found"):
        load_mmsa(tmp_path / "nope.pkl")


@pytest.mark.skipif(not SHARED_MOSI.is_file(), reason="../shared MOSI data not present")
def test_real_mosi_loads():
    ds = load_mmsa(SHARED_MOSI)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1447, 265, 487)
    assert ds.dims == {"text": 100, "audio": 73, "vision": 100}
    assert ds.test.y.min() >= -3 and ds.test.y.max() <= 3
