"""Choose DGL-MH's setting from the mixing-heads study on VALIDATION numbers only (test is never
read here). Rule, fixed before the last settings finished:
  1. no collapse: on the real six-view set every modality branch of every seed must be above chance
     (1 / classes) on validation;
  2. among the variants left, the largest mean over settings of (validation Multi - vanilla's).
Prints a markdown table of the validation numbers and the choice.

    python scripts/select_mixing_head.py [runs/mh] >> results/dgl_mixing_heads.md
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

SETTINGS = ["mosi_mlpmixer", "mosi_concat", "mosi4_mlpmixer", "avdigits6_mlpmixer", "synthetic6_mlpmixer"]
COLLAPSE_CHECK = "avdigits6_mlpmixer"
VARIANTS = ["dgl", "dgl_+mt", "dgl_mh_b=0.1", "dgl_mh_mean", "dgl_mh_mean_b=0.1"]


def runs(root: Path, setting: str, name: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / setting).glob(f"{name}-s*/results.json"))]


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/mh")
    head = lambda r: "acc2_has0" if r["task"] == "regression" else "acc"  # noqa: E731
    val_multi = lambda rs: 100 * statistics.fmean(r["val"]["multi"][head(r)] for r in rs)  # noqa: E731
    base = {s: val_multi(runs(root, s, "multimodal_baseline")) for s in SETTINGS}
    lines = ["## Selection of DGL-MH's setting (validation only)", "",
             "Validation Multi (%, mean over 5 seeds) and its gain over vanilla; the variant must not collapse on "
             f"`{COLLAPSE_CHECK}` (every validation branch of every seed above chance).", "",
             "| variant | " + " | ".join(SETTINGS) + " | mean gain | lowest branch on the six-view set |",
             "|---|" + "---|" * (len(SETTINGS) + 2),
             "| vanilla | " + " | ".join(f"{base[s]:.2f}" for s in SETTINGS) + " | 0 | |"]
    scores = {}
    for v in VARIANTS:
        gains = {s: val_multi(runs(root, s, v)) - base[s] for s in SETTINGS}
        six = runs(root, COLLAPSE_CHECK, v)
        lowest = min(r["val"][b]["acc"] for r in six for b in r["val"] if b != "multi")
        chance = 1 / 10
        ok = lowest > chance
        mean_gain = statistics.fmean(gains.values())
        if ok:
            scores[v] = mean_gain
        lines.append(f"| {v} | " + " | ".join(f"{base[s] + gains[s]:.2f} ({gains[s]:+.2f})" for s in SETTINGS)
                     + f" | {mean_gain:+.2f} | {100 * lowest:.1f}{'' if ok else ' (collapsed)'} |")
    best = max(scores, key=scores.get)
    lines += ["", f"Chosen: **{best}** (mean validation gain {scores[best]:+.2f} points, no collapse)."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
