"""mmsent: multimodal learning with Disentangled Gradient Learning (Wei, Luo & Luo, ICCV 2025).

``from mmsent import dgl_loss`` is the whole library a custom training loop needs.
"""
from mmsent.dgl import DGLLoss, DGLOutput, dgl_loss, zero_others

__all__ = ["DGLLoss", "DGLOutput", "dgl_loss", "load_run", "zero_others"]


def __getattr__(name):
    # `mmsent.load_run` is imported on first use: `from mmsent import dgl_loss` stays light (no data,
    # model or strategy modules).
    if name == "load_run":
        from mmsent.predict import load_run

        return load_run
    raise AttributeError(f"module 'mmsent' has no attribute {name!r}")
from mmsent._version import __version__  # noqa: E402, F401  (mmsent.__version__)
