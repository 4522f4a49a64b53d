"""``rgbd_scenes``: an embedded RGB-D segmentation set that trains on 2 CPU cores, the default for
the dense-prediction path (the DGL paper's NYUv2 experiment, Table 5, needs a GPU and data that is
not shipped).

Each scene is a room seen from the front: a wall above a random horizon, a floor below it, and
objects. Six classes, chosen so that neither modality alone can label every pixel:

| class | rgb | depth |
|---|---|---|
| 0 wall | the scene's wall colour | a plane at the wall's distance |
| 1 floor | the scene's floor colour | rising from 1 m at the bottom to the wall's distance |
| 2 box | **the wall's colour** (camouflaged) | 0.8-1.8 m in front of the wall |
| 3 poster | a colour of its own | **on the wall** (the wall's depth) |
| 4 rug | a colour of its own | **on the floor** (the floor's depth) |
| 5 table | a colour of its own | in front of the floor behind it |

So boxes are told from the wall by depth only, posters and rugs from their surface by colour only,
and the wall / floor / table by either (checked on rendered scenes by
``tests/test_dense.py::test_scenes_hide_boxes_from_rgb_and_posters_and_rugs_from_depth``). Which
modality dominates is measured, not designed: depth-only models beat RGB-only ones here
(docs/results/rgbd-scenes.md). Noise: RGB N(0, 0.05) per pixel, depth N(0, 3 cm),
and 5 % of depth readings missing (0, as a Kinect's holes), kept at 0 after normalisation. 2 % of
pixels are unlabelled (``VOID``). The scenes depend on ``data.scene_seed`` only, never on the
training seed, so runs of one table are paired on the same images.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mmsent.checks import check
from mmsent.data.batch import Dataset, Split
from mmsent.tasks import VOID

CLASSES = ("wall", "floor", "box", "poster", "rug", "table")


@dataclass(frozen=True)
class RGBDScenesSettings:
    """The ``data.*`` keys of ``rgbd_scenes``."""

    n_train: int = 240
    n_val: int = 60
    n_test: int = 120
    height: int = 32  # multiples of 4 (the dense head upsamples the encoders' stride-4 maps)
    width: int = 40
    scene_seed: int = 0

    def __post_init__(self):
        for key in ("n_train", "n_val", "n_test"):
            check(key, getattr(self, key) >= 1, getattr(self, key), ">= 1")
        for key in ("height", "width"):
            check(key, getattr(self, key) >= 8 and getattr(self, key) % 4 == 0, getattr(self, key),
                  "a multiple of 4, at least 8")


def _rect(g: torch.Generator, rows: range, h: int, w: int, frac=(0.15, 0.35)) -> tuple[slice, slice]:
    """A random rectangle inside the rows ``rows``."""
    span = len(rows)
    rh = max(2, int(span * (frac[0] + (frac[1] - frac[0]) * float(torch.rand(1, generator=g)))))
    rw = max(2, int(w * (frac[0] + (frac[1] - frac[0]) * float(torch.rand(1, generator=g)))))
    top = rows.start + int(torch.randint(0, max(1, span - rh + 1), (1,), generator=g))
    left = int(torch.randint(0, max(1, w - rw + 1), (1,), generator=g))
    return slice(top, min(top + rh, rows.stop)), slice(left, left + rw)


def render(n: int, h: int, w: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` scenes: rgb (n, 3, h, w) in [0, 1], depth (n, 1, h, w) in metres (0 = missing), labels (n, h, w)."""
    rgb, depth, labels = torch.zeros(n, 3, h, w), torch.zeros(n, 1, h, w), torch.zeros(n, h, w, dtype=torch.long)
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    for i in range(n):
        horizon = int(h * (0.35 + 0.3 * float(torch.rand(1, generator=g))))
        wall_d = 3.0 + 2.0 * float(torch.rand(1, generator=g))
        wall_c, floor_c = torch.rand(3, generator=g), torch.rand(3, generator=g)
        below = rows >= horizon
        d = torch.where(below, wall_d - (wall_d - 1.0) * (rows - horizon) / max(1, h - 1 - horizon), torch.full_like(rows, wall_d))
        lab = torch.where(below, 1, 0).long()
        col = torch.where(below[None], floor_c[:, None, None], wall_c[:, None, None]).clone()
        if torch.rand(1, generator=g) < 0.7:  # a box: the wall's colour, in front of it
            r, c = _rect(g, range(0, horizon), h, w)
            d[r, c] = wall_d - 0.8 - float(torch.rand(1, generator=g))
            lab[r, c] = 2
        if torch.rand(1, generator=g) < 0.7:  # a poster: its own colour, on the wall
            r, c = _rect(g, range(0, horizon), h, w, (0.1, 0.25))
            keep = lab[r, c] == 0
            col[:, r, c] = torch.where(keep, torch.rand(3, 1, 1, generator=g), col[:, r, c])
            lab[r, c] = torch.where(keep, 3, lab[r, c])
        if torch.rand(1, generator=g) < 0.7:  # a rug: its own colour, flat on the floor
            r, c = _rect(g, range(horizon, h), h, w, (0.2, 0.4))
            col[:, r, c] = torch.rand(3, 1, 1, generator=g)
            lab[r, c] = 4
        if torch.rand(1, generator=g) < 0.6:  # a table: its own colour, standing in front of the floor
            r, c = _rect(g, range(max(0, horizon - h // 6), h), h, w, (0.15, 0.3))
            col[:, r, c] = torch.rand(3, 1, 1, generator=g)
            d[r, c] = d[r.stop - 1, c].min() if r.stop > r.start else d[r, c]
            lab[r, c] = 5
        rgb[i] = col + 0.05 * torch.randn(3, h, w, generator=g)
        depth[i, 0] = d + 0.03 * torch.randn(h, w, generator=g)
        depth[i, 0][torch.rand(h, w, generator=g) < 0.05] = 0.0  # missing readings
        lab[torch.rand(h, w, generator=g) < 0.02] = VOID
        labels[i] = lab
    return rgb, depth, labels


def load_rgbd_scenes(cfg, seed: int = 0) -> Dataset:
    """``cfg`` is a ``DataConfig``; RGB standardised per channel and depth by its valid readings,
    both with train statistics (missing depth stays 0)."""
    s = cfg.settings
    g = torch.Generator().manual_seed(s.scene_seed)
    parts = {name: render(n, s.height, s.width, g) for name, n in (("train", s.n_train), ("val", s.n_val),
                                                                  ("test", s.n_test))}
    rgb_mean = parts["train"][0].mean((0, 2, 3), keepdim=True)
    rgb_std = parts["train"][0].std((0, 2, 3), keepdim=True)
    valid = parts["train"][1][parts["train"][1] > 0]
    d_mean, d_std = valid.mean(), valid.std()
    splits = {}
    for name, (rgb, depth, labels) in parts.items():
        d = torch.where(depth > 0, (depth - d_mean) / d_std, torch.zeros_like(depth))
        x = {"rgb": (rgb - rgb_mean) / rgb_std, "depth": d}
        n = len(labels)
        splits[name] = Split(x, {m: torch.ones(n, 1, dtype=torch.bool) for m in x}, labels,
                             [f"{name}_{i}" for i in range(n)])
    return Dataset(train=splits["train"], val=splits["val"], test=splits["test"], task="segmentation",
                   num_classes=len(CLASSES), dims={"rgb": 3, "depth": 1}, kinds={"rgb": "dense", "depth": "dense"})
