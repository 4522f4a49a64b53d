"""The collapse of DGL through a mixing head, in numbers: per epoch, from the logged diagnostics of the
study's runs (``metrics.jsonl``: a fixed training batch passed through the model after each epoch).

For each method (mean over seeds and over the N modalities): the encoders' feature norm, the loss and
the top class probability of the masked passes (one modality kept, the others zeroed: what the
unimodal losses and the branch metrics are computed through), and the validation accuracy of the
branches. Prints a markdown table.

    python studies/mixing_head_mechanism.py runs/mixing_heads/avdigits6_mlpmixer >> results/dgl_mixing_heads.md
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmsent.files import read_epochs  # noqa: E402

METHODS = {"vanilla": "multimodal_baseline", "DGL": "dgl", "DGL +MT": "dgl_+mt", "DGL-MH (β = 0.1)": "dgl_mh_b=0.1"}
EPOCHS = (0, 1, 2, 5, 11)


def logs(root: Path, name: str) -> list[list[dict]]:
    return [read_epochs(p) for p in sorted(root.glob(f"{name}-s*/metrics.jsonl"))]


def at(runs: list[list[dict]], epoch: int, value) -> float | None:
    """Mean over seeds (those that ran this epoch) and modalities of ``value(record, modality)``."""
    vals = [statistics.fmean(value(r[epoch], m) for m in r[epoch]["diag"] if m != "multi")
            for r in runs if len(r) > epoch]
    return statistics.fmean(vals) if vals else None


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/mixing_heads/avdigits6_mlpmixer")
    quantities = {
        "encoder feature norm": lambda r, m: r["diag"][m]["feat_norm"],
        "masked-pass loss": lambda r, m: r["diag"][m]["loss"],
        "masked-pass top probability": lambda r, m: r["diag"][m]["top_prob"],
        "validation branch accuracy (%)": lambda r, m: 100 * r["val"][m]["acc"],
    }
    lines = ["", f"## The mechanism, per epoch (`{root.name}`, mean over seeds and modalities)", "",
             "From each run's `metrics.jsonl` (diagnostics on a fixed training batch after each epoch); "
             "`python studies/mixing_head_mechanism.py " + str(root) + "`. A blank cell: every seed had "
             "stopped early before that epoch.", "",
             "| quantity | method | " + " | ".join(f"epoch {e + 1}" for e in EPOCHS) + " |",
             "|---|---|" + "---|" * len(EPOCHS)]
    runs = {label: logs(root, name) for label, name in METHODS.items()}
    for q, value in quantities.items():
        for label, rs in runs.items():
            cells = [at(rs, e, value) for e in EPOCHS]
            lines.append(f"| {q} | {label} | " + " | ".join("" if c is None else f"{c:.2f}" for c in cells) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
