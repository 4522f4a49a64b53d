#!/usr/bin/env bash
# The audio-visual tables on real media (README "Audio-visual results on avdigits"): every method with
# concat + linear (the paper's Table 1 protocol) and with the MMTM head (Table 2 left), 3 seeds each,
# the recipe of configs/avdigits.yaml (ResNet18 at width 8, 10 epochs, SGD; validation-only selection).
# Each table is one resumable `cli.py table` (finished runs are kept under runs/avdigits*/).
# About two hours on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
AV=${AV:-../shared/data/avdigits}
ROWS=(Audio-only Visual-only "Multimodal Baseline" G-Blending OGM_GE PMR AGM MLA MMPareto "D&R" DGL "DGL-MH:strategy=dgl_mh")
# MLA protects a classifier shared by the modalities; MMTM's classifier has a block per stream, so
# MLA refuses it and the MMTM table leaves it out
ROWS_MMTM=(Audio-only Visual-only "Multimodal Baseline" G-Blending OGM_GE PMR AGM MMPareto "D&R" DGL "DGL-MH:strategy=dgl_mh")
# BalanceMM's methods; MMCosine, AMCo and ReconBoost are defined on their own heads only (linear
# concat, concat + class mixing, one shared classifier), so the MMTM table has the others (Greedy's
# model is MMTM itself, LFM takes the zero-masked branches of any head)
BALANCEMM_ANY_HEAD=(CML UMT Sample-level OPM Greedy LFM MBSD)
BALANCEMM=(MMCosine CML UMT Sample-level OPM Greedy AMCo LFM ReconBoost MBSD)
$PY cli.py table --dataset avdigits --data "$AV" --seeds 0 1 2 --jobs 2 --runs-dir runs/avdigits --name avdigits_table \
  --methods "${ROWS[@]}" "${BALANCEMM[@]}"
$PY cli.py table --dataset avdigits --data "$AV" --seeds 0 1 2 --jobs 2 --runs-dir runs/avdigits_mmtm \
  --name avdigits_mmtm_table --methods "${ROWS_MMTM[@]}" "${BALANCEMM_ANY_HEAD[@]}" model.fusion=mmtm
