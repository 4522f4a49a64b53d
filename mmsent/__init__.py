"""mmsent: multimodal learning with Disentangled Gradient Learning (Wei, Luo & Luo, ICCV 2025).

``from mmsent import dgl_loss`` is the whole library a custom training loop needs.
"""
from mmsent.dgl import DGLLoss, DGLOutput, dgl_loss, zero_others

__all__ = ["DGLLoss", "DGLOutput", "dgl_loss", "zero_others"]
__version__ = "0.1.0"
