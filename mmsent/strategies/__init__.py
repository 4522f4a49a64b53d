"""Strategy registry: name -> class. Every class takes (model, optimizer, task, **hparams) and owns
its backward pass and optimizer step (see ``base.Strategy``)."""
from mmsent.strategies.agm import AGM
from mmsent.strategies.amco import AMCo
from mmsent.strategies.base import Strategy
from mmsent.strategies.cml import CML
from mmsent.strategies.dgl import DGL
from mmsent.strategies.dgl_mh import DGLMH
from mmsent.strategies.dnr import DnR
from mmsent.strategies.gblending import GBlending
from mmsent.strategies.greedy import Greedy
from mmsent.strategies.lfm import LFM
from mmsent.strategies.mbsd import MBSD
from mmsent.strategies.mla import MLA
from mmsent.strategies.mmcosine import MMCosine
from mmsent.strategies.mmpareto import MMPareto
from mmsent.strategies.ogm_ge import OGMGE
from mmsent.strategies.opm import OPM
from mmsent.strategies.pmr import PMR
from mmsent.strategies.reconboost import ReconBoost
from mmsent.strategies.umt import UMT
from mmsent.strategies.unimodal import Unimodal
from mmsent.strategies.valuation import Valuation
from mmsent.strategies.vanilla import Vanilla

STRATEGIES: dict[str, type[Strategy]] = {
    "vanilla": Vanilla,
    "unimodal": Unimodal,
    "dgl": DGL,
    "dgl_mh": DGLMH,
    "gblending": GBlending,
    "ogm_ge": OGMGE,
    "pmr": PMR,
    "agm": AGM,
    "mla": MLA,
    "mmpareto": MMPareto,
    "dnr": DnR,
    # BalanceMM's further methods
    "mmcosine": MMCosine,
    "cml": CML,
    "umt": UMT,
    "valuation": Valuation,
    "opm": OPM,
    "greedy": Greedy,
    "amco": AMCo,
    "lfm": LFM,
    "reconboost": ReconBoost,
    "mbsd": MBSD,
}

__all__ = ["STRATEGIES", "Strategy"]
