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

# In the paper's order (Table 2): the order of `cli.py table`'s rows and README's strategy table.
STRATEGIES: dict[str, type[Strategy]] = {
    "vanilla": Vanilla,
    "unimodal": Unimodal,
    "gblending": GBlending,
    "ogm_ge": OGMGE,
    "pmr": PMR,
    "agm": AGM,
    "mla": MLA,
    "mmpareto": MMPareto,
    "dnr": DnR,
    "dgl": DGL,
    "dgl_mh": DGLMH,
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



def strategy_table() -> str:
    """README's strategy table, made from the registry (a test keeps README equal to it)."""
    lines = ["| name | method | what it does, N modalities | checked against the reference at N = 2 |", "|---|---|---|---|"]
    lines += [f"| `{name}` | {cls.method} | {cls.summary} | {cls.checked} |" for name, cls in STRATEGIES.items()]
    return "\n".join(lines) + "\n"


__all__ = ["STRATEGIES", "Strategy", "strategy_table"]
