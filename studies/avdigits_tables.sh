#!/usr/bin/env bash
# The audio-visual tables on real media (README "Audio-visual results on avdigits"): every method with
# concat + linear (the paper's Table 1 protocol) and with the MMTM head (Table 2 left), 3 seeds each,
# the recipe of configs/avdigits.yaml (ResNet18 at width 8, 10 epochs, SGD; validation-only selection).
# Each table is one resumable `cli.py table` (finished runs are kept under runs/avdigits*/).
# The rows come from the strategy registry: `all` is every method, each on the head it needs; with
# model.fusion=mmtm, every method defined on MMTM (MMCosine, MLA, AMCo and ReconBoost need heads of
# their own and are left out). DGL-MH, DGL for mixing heads, is added as a row of its own.
# About two hours on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
AV=${AV:-../shared/data/avdigits}
# MMPareto-SH: MMPareto through one shared head (not the official form, a row of its own). ReconBoost
# on its reference's head for 64-wide features (64 -> 32 ReLU -> C, as its CREMA-D 512 -> 256) and
# its weight decay 5e-4.
SH="MMPareto-SH:strategy=mmpareto,strategy.unimodal_heads=false"
RB="ReconBoost:strategy=reconboost,model.fusion=shared,model.hidden=32,train.weight_decay=5e-4"
$PY cli.py table --dataset avdigits --data "$AV" --seeds 0 1 2 --jobs 2 --runs-dir runs/avdigits --name avdigits_table \
  --methods all "DGL-MH:strategy=dgl_mh" "$SH" "$RB"
$PY cli.py table --dataset avdigits --data "$AV" --seeds 0 1 2 --jobs 2 --runs-dir runs/avdigits_mmtm \
  --name avdigits_mmtm_table --methods all "DGL-MH:strategy=dgl_mh" "$SH" model.fusion=mmtm
