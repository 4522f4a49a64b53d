#!/usr/bin/env bash
# The mixing-heads study (README "DGL through mixing heads"): 5 seeds of the unimodal-only models,
# vanilla fusion, DGL, the paper's "+MT" ablation and the candidate fixes, on five settings. Each
# setting is one `cli.py table` (resumable: finished runs are kept under runs/mh/); the tables are
# then joined into results/dgl_mixing_heads.{md,csv}. About 2 hours on 2 CPU cores.
#   python scripts/avdigits_views.py && python scripts/mosi_views.py    # the two view files, once
#   bash scripts/dgl_mixing_heads.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MOSI=${MOSI:-../shared/data/mosi/mosi_utterance.pkl}
ROWS=(
  "Multimodal Baseline"
  "DGL"
  "DGL +MT:strategy=dgl,strategy.args.truncate_unimodal=false"
  "DGL-MH b=0.1:strategy=dgl_mh,strategy.args.head_weight=0.1,strategy.args.fill=zero"
  "DGL-MH mean:strategy=dgl_mh,strategy.args.head_weight=0,strategy.args.fill=mean"
  "DGL-MH mean b=0.1:strategy=dgl_mh,strategy.args.head_weight=0.1,strategy.args.fill=mean"
)
table() {
  local name=$1; shift
  $PY cli.py table --seeds 0 1 2 3 4 --jobs 2 --runs-dir "runs/mh/$name" --out results/mh --name "$name" "$@"
}
table mosi_mlpmixer --dataset mosi --data "$MOSI" --methods Audio-only Visual-only Text-only "${ROWS[@]}" model.fusion=mlpmixer
table mosi_concat --dataset mosi --data "$MOSI" --methods Audio-only Visual-only Text-only "${ROWS[@]}" model.fusion=concat
table synthetic6_mlpmixer --dataset synthetic --methods M0-only M1-only M2-only M3-only M4-only M5-only "${ROWS[@]}" \
  data.n_modalities=6
table mosi4_mlpmixer --dataset features --config configs/mosi_views.yaml \
  --methods Text-only Minilm-only Audio-only Vision-only "${ROWS[@]}"
table avdigits6_mlpmixer --dataset features --config configs/avdigits_views.yaml \
  --methods Pixels-only Profiles-only Fourier-only Spectrum-only Mfcc-only Envelope-only "${ROWS[@]}"
$PY - <<'PY'
import csv
from pathlib import Path
names = ["mosi_mlpmixer", "mosi_concat", "mosi4_mlpmixer", "avdigits6_mlpmixer", "synthetic6_mlpmixer"]
parts = ["# DGL through mixing heads: every setting, 5 seeds", "",
         "Made by `bash scripts/dgl_mixing_heads.sh`; each section is one `cli.py table` (its command inside).", ""]
rows = []
for n in names:
    parts += [f"## {n}", "", Path(f"results/mh/{n}.md").read_text()]
    rows += [{"setting": n, **r} for r in csv.DictReader(open(f"results/mh/{n}.csv"))]
Path("results/dgl_mixing_heads.md").write_text("\n".join(parts))
with open("results/dgl_mixing_heads.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}, key=lambda k: (k != "setting", k != "method", k != "branch", k)))
    w.writeheader()
    w.writerows(rows)
print("wrote results/dgl_mixing_heads.md and .csv")
PY
$PY scripts/select_mixing_head.py runs/mh >> results/dgl_mixing_heads.md
# the mechanism on the six-view set, seed 0: feature norms and masked-pass losses over epochs
$PY cli.py plot runs/mh/avdigits6_mlpmixer/{multimodal_baseline,dgl,dgl_mh_b=0.1}-s0 --out results/figures/avdigits6
