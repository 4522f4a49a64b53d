"""Choose DGL-MH's setting from the mixing-heads study on VALIDATION numbers only (test is never
read here). Rule, fixed before the last settings finished:
  1. no collapse: on the real six-view set every modality branch of every seed must be above chance
     (1 / classes) on validation;
  2. among the variants left, the largest mean over settings of (validation Multi - vanilla's).
Prints a markdown table of the validation numbers and the choice. The validation Multi of each
setting is the "Val Multi" column of its table (``results/mixing_heads/<setting>.md``: mean over seeds of the
selected epochs' validation score, what model selection saw); the collapse check reads the six-view
runs' ``results.json``.

    python studies/select_mixing_head.py [runs/mixing_heads] [results/mixing_heads] >> results/dgl_mixing_heads.md
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

SETTINGS = ["mosi_mlpmixer", "mosi_concat", "mosi4_mlpmixer", "avdigits6_mlpmixer", "synthetic6_mlpmixer"]
COLLAPSE_CHECK = "avdigits6_mlpmixer"
VARIANTS = {"DGL": "dgl", "DGL +MT": "dgl_+mt", "DGL-MH b=0.1": "dgl_mh_b=0.1", "DGL-MH mean": "dgl_mh_mean",
            "DGL-MH mean b=0.1": "dgl_mh_mean_b=0.1"}  # table row -> run folder stem


def runs(root: Path, setting: str, name: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / setting).glob(f"{name}-s*/results.json"))]


def val_multi(tables: Path, setting: str) -> dict[str, float]:
    """Row label -> the mean in its table's "Val Multi" column."""
    lines = [line for line in (tables / f"{setting}.md").read_text().splitlines() if line.startswith("| ")]
    header = next(i for i, line in enumerate(lines) if "Val Multi" in line)
    out = {}
    for line in lines[header + 1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "Method":  # the probe table that follows
            break
        out[cells[0]] = float(cells[-1].split("±")[0])
    return out


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/mixing_heads")
    tables = Path(sys.argv[2] if len(sys.argv) > 2 else "results/mixing_heads")
    val = {s: val_multi(tables, s) for s in SETTINGS}
    base = {s: val[s]["Multimodal Baseline"] for s in SETTINGS}
    lines = ["## Selection of DGL-MH's setting (validation only)", "",
             "Validation Multi (%, mean over 5 seeds) and its gain over vanilla; the variant must not collapse on "
             f"`{COLLAPSE_CHECK}` (every validation branch of every seed above chance). "
             "`python studies/select_mixing_head.py runs/mixing_heads results/mixing_heads`.", "",
             "| variant | " + " | ".join(SETTINGS) + " | mean gain | lowest branch on the six-view set |",
             "|---|" + "---|" * (len(SETTINGS) + 2),
             "| vanilla | " + " | ".join(f"{base[s]:.2f}" for s in SETTINGS) + " | 0 | |"]
    scores = {}
    for label, stem in VARIANTS.items():
        gains = {s: val[s][label] - base[s] for s in SETTINGS}
        six = runs(root, COLLAPSE_CHECK, stem)
        assert len(six) == 5, f"{COLLAPSE_CHECK}/{stem}: {len(six)} finished runs, expected 5"
        lowest = min(r["val"][b]["acc"] for r in six for b in r["val"] if b != "multi")
        chance = 1 / 10
        ok = lowest > chance
        mean_gain = statistics.fmean(gains.values())
        if ok:
            scores[label] = mean_gain
        lines.append(f"| {label} | " + " | ".join(f"{base[s] + gains[s]:.2f} ({gains[s]:+.2f})" for s in SETTINGS)
                     + f" | {mean_gain:+.2f} | {100 * lowest:.1f}{'' if ok else ' (collapsed)'} |")
    best = max(scores, key=scores.get)
    lines += ["", f"Chosen: **{best}** (mean validation gain {scores[best]:+.2f} points, no collapse)."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
