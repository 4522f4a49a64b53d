"""Strategy registry: name -> class. Every class takes (model, optimizer, task, **hparams)."""
from mmsent.strategies.base import Strategy
from mmsent.strategies.dgl import DGL
from mmsent.strategies.unimodal import Unimodal
from mmsent.strategies.vanilla import Vanilla

STRATEGIES: dict[str, type[Strategy]] = {"vanilla": Vanilla, "unimodal": Unimodal, "dgl": DGL}

__all__ = ["STRATEGIES", "Strategy"]
