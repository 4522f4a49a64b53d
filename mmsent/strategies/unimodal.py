"""Unimodal-only training: one modality through the same head with the others zeroed (the
paper's "Audio-only" / "Visual-only" / "Text-only" rows). Only that modality's encoder runs.

The model's own prediction ("multi", what validation selects the epoch on) is that same masked
pass: the other encoders are never trained, and letting their outputs into the head (an MMTM head
gates the trained stream with them) scored a random model and chose the epoch at random. The step
is ``base.OneModality``, which UMT's teachers and G-Blending's unimodal copies share."""
from __future__ import annotations

from mmsent.strategies.base import OneModality


class Unimodal(OneModality):
    method = "one modality alone (`strategy.modality`)"
    short_run = {"modality": "audio"}  # its between-epoch work happens within two epochs
    dense_ok = True  # per-pixel losses only: defined for segmentation
