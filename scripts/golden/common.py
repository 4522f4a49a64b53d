"""What every golden recording shares: the references' pinned commits, a way to import a
reference's own module from a local checkout, the stand-in data and encoders, and the JSON the
tests read.

The recorder runs in its own virtual environment (never the project's; see README.md beside this
file). Nothing here re-types a method: a recording imports the reference's function (its loss,
training step or training epoch) and calls it on the stand-in model and a two-batch loader. Only
data loading and model construction are ours; the stand-in modules carry the attribute names the
reference code reaches for.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import torch
from torch import nn

# repo folder name (under --refs) -> (GitHub repository, the commit the research notes read)
REFS = {
    "BalanceBenchmark": ("GeWu-Lab/BalanceBenchmark", "4c1482fca5aaa8d4278af8e26020daa039e3ccf3"),
    "Valuate-and-Enhance-Multimodal-Cooperation": ("GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation",
                                                   "7ed12b07ee7d233aa835089185c909aaa3ff6b1e"),
    "BML_TPAMI2024": ("GeWu-Lab/BML_TPAMI2024", "4b3aa4fd841856c4acbebf48549e6c59fbf7635e"),
    "greedy_multimodal_learning": ("nyukat/greedy_multimodal_learning", "a190e03755bd8d0883b2c5c0cd7921d2561ce2ee"),
    "ReconBoost": ("huacong/ReconBoost", "14ab57ac26e0ad7badb29c4e08ec4ca9d4bb0932"),
    "NeurIPS24-LFM": ("njustkmg/NeurIPS24-LFM", "ad44fa09fee471c9267a7cba526b222c54d45493"),
    "MMCosine_ICASSP23": ("GeWu-Lab/MMCosine_ICASSP23", "00ba0a9cbd9b866b5017e972a1266d7b664bf86e"),
    "CML": ("QingyangZhang/CML", "9d2496e6f37ad5571d44165da0a35b4e46c8a1e6"),
    "OGM-GE_CVPR2022": ("GeWu-Lab/OGM-GE_CVPR2022", "343dc1d95c9bda88f105c0da8d24f185e0e98b54"),
    "Modal-Imbalance-PMR": ("fanyunfeng-bit/Modal-Imbalance-PMR", "3615e48983555089b0e693380087617c3797a641"),
    "AGM_ICCV2023": ("lihong2303/AGM_ICCV2023", "5a65542c70b1c7c15c5df291e77fa9cf2bbb9549"),
    "Multimodal-Learning-with-Alternating-Unimodal-Adaptation": (
        "Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation", "ab6c184579f9ff390e9c9b8216c9900c2a43545b"),
    "MMPareto_ICML2024": ("GeWu-Lab/MMPareto_ICML2024", "a339db39cc25b157df376b50bb894917dc6c01d6"),
    "Diagnosing_Relearning_ECCV2024": ("GeWu-Lab/Diagnosing_Relearning_ECCV2024",
                                       "025085ea82ed784c6ab6e5fb1b08bfe498dd0fc7"),
    "MultiBench": ("pliang279/MultiBench", "49f9be224f342de005b7f001281f33df4301eb22"),
    "ICCV2025-GDL": ("shicaiwei123/ICCV2025-GDL", "b72a55f0fe1bd7fde6354fda9613e2a88a2d695e"),
}

DTYPE = torch.float64  # every recording runs in float64 (the stand-ins cast their inputs)
SEED = 0
N_TRAIN, BATCH, CLASSES, WIDTH = 16, 8, 3, 6
DIMS = {"audio": 5, "visual": 4}  # input features per modality (different, as real encoders' inputs are)


def reference(refs: Path, name: str) -> tuple[Path, dict]:
    """The checkout of ``name`` under ``refs`` and what a recording says of it. A git checkout must
    be at the pinned commit; an extracted archive is taken as it is (its folder name says which)."""
    root = refs / name
    if not root.is_dir():
        raise SystemExit(f"{root}: no checkout of {REFS[name][0]} (see scripts/golden/README.md)")
    repo, commit = REFS[name]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0 and (root / ".git").exists() and head.stdout.strip() != commit:
        raise SystemExit(f"{root} is at {head.stdout.strip()}, the recording needs {repo}@{commit}")
    return root, {"repo": repo, "commit": commit}


class _Stub(types.ModuleType):
    """A module that answers every attribute with another stub: stands in for a reference's
    data-loading imports (librosa, cv2, torchvision...) that the recorded function never calls."""

    def __getattr__(self, key):
        if key.startswith("__"):
            raise AttributeError(key)
        sub = _Stub(f"{self.__name__}.{key}")
        setattr(self, key, sub)
        return sub

    def __call__(self, *a, **k):
        return _Stub(self.__name__ + "()")

    def __mro_entries__(self, bases):  # `class X(stub.Dataset)` still defines a class
        return (object,)


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path, target=None):
        if any(fullname == n or fullname.startswith(n + ".") for n in self.names):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        mod = _Stub(spec.name)
        mod.__path__ = []
        return mod

    def exec_module(self, module):
        pass


def stub_modules(*names: str) -> None:
    """Missing third-party imports become stubs (installed ones are left alone)."""
    # a dotted name (a module of a package that does import) is stubbed whatever is installed
    missing = [n for n in names if "." in n or importlib.util.find_spec(n) is None]
    if missing:
        sys.meta_path.insert(0, _StubFinder(missing))


def load(root: Path, relpath: str, name: str | None = None, path: Path | None = None):
    """Import ``relpath`` (a .py file inside the checkout) as a module, with ``path`` (default: its
    folder... the checkout root) on sys.path so its own relative imports resolve."""
    file = root / relpath
    sys.path.insert(0, str(path or root))
    spec = importlib.util.spec_from_file_location(name or file.stem, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --- the stand-in data -------------------------------------------------------------------------

def data(seed: int = SEED, n: int = N_TRAIN, dims: dict | None = None, classes: int = CLASSES, batch: int = BATCH):
    """Fixed inputs ``x[m]`` (n, F_m) in float64 whose values are float32 numbers (references cast
    inputs with ``.float()``: the cast must lose nothing), and labels with every class in every batch
    (prototypes and per-class statistics of a reference read one batch)."""
    g = torch.Generator().manual_seed(seed)
    dims = dims or DIMS
    x = {m: torch.randn(n, d, generator=g, dtype=torch.float32).to(DTYPE) for m, d in dims.items()}
    y = torch.arange(n) % classes  # every batch of BATCH >= classes rows holds every class, shuffled within it
    y = torch.cat([y[rows][torch.randperm(len(rows), generator=g)] for rows in map(torch.tensor, batches(n, batch))])
    return x, y


def batches(n: int = N_TRAIN, size: int = BATCH) -> list[list[int]]:
    return [list(range(s, min(n, s + size))) for s in range(0, n, size)]


class Conv1x1(nn.Module):
    """The stand-in encoder: a 1x1 convolution (a linear map with a 4-D weight, so the references
    that modulate only convolution kernels see it) and a ReLU, on a (B, F) input seen as (B, F, 1, 1)."""

    def __init__(self, d_in: int, d_out: int = WIDTH):
        super().__init__()
        self.conv = nn.Conv2d(d_in, d_out, 1)

    def forward(self, x):
        x = x.to(DTYPE)
        return torch.relu(self.conv(x.reshape(len(x), -1, 1, 1))).flatten(1)


def seeded(seed: int, build):
    """``build()`` under a fixed seed in float64: the stand-in's initial weights."""
    torch.manual_seed(seed)
    return build().to(DTYPE)


def tensors(obj):
    """Tensors (nested in dicts/lists) as nested lists of Python numbers, for JSON."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, dict):
        return {str(k): tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [tensors(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars
        return obj.tolist()
    return obj


def params(named: dict[str, nn.Parameter | torch.Tensor]) -> dict:
    return {k: v.detach().clone() for k, v in named.items()}


def write(out: Path, record: dict) -> Path:
    """One method's numbers as JSON (floats by repr: the same run writes the same bytes)."""
    path = out / f"{record['method']}.json"
    path.write_text(_dump(tensors(record)) + "\n")
    return path


def _dump(obj, indent: str = "") -> str:
    """JSON with one key per line and every list on one line (readable diffs, small files)."""
    if isinstance(obj, dict) and obj:
        inner = indent + " "
        rows = [f"{inner}{json.dumps(k)}: {_dump(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(rows) + "\n" + indent + "}"
    return json.dumps(obj, separators=(", ", ": "), allow_nan=False)


# --- reading what a reference's step computed, without editing it ------------------------------

class Recorder:
    """Snapshots after every optimizer step: the named locals of the reference function that called
    ``step()`` (its losses, scores, coefficients) and every parameter of the stand-in."""

    def __init__(self, model: nn.Module, watch: tuple[str, ...] = (), names=None):
        self.model, self.watch, self.names = model, watch, names
        self.steps: list[dict] = []

    def snapshot(self, frame) -> None:
        local = frame.f_locals
        seen = {k: _number(local[k]) for k in self.watch if k in local}
        named = dict(self.model.named_parameters())
        if self.names is not None:
            named = {self.names(k): v for k, v in named.items() if self.names(k) is not None}
        self.steps.append({"values": seen, "params": params(named)})


def caller():
    """The first frame outside torch and this file: the reference's function that stepped."""
    frame = sys._getframe(1)
    torch_dir = str(Path(torch.__file__).parent)
    while frame.f_code.co_filename.startswith(torch_dir) or frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return frame


def _number(v):
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, dict):  # a reference may mutate it after the step (AMCo's dependence flags)
        return {k: _number(x) for k, x in v.items()}
    return v


def recording(opt_cls):
    """``opt_cls`` whose ``step`` snapshots (``Recorder``) the calling frame after stepping."""

    class Recording(opt_cls):
        recorder: Recorder | None = None

        def step(self, closure=None):
            out = super().step(closure)
            if self.recorder is not None:
                self.recorder.snapshot(caller())
            return out

    Recording.__name__ = opt_cls.__name__
    return Recording


class AVStandIn(nn.Module):
    """The GeWu-Lab references' ``AVClassifier`` shape: ``audio_net``, ``visual_net`` and a
    ``fusion_module(a, v) -> (a, v, out)`` (the reference's own fusion class where it has one)."""

    def __init__(self, fusion: nn.Module, dims: dict | None = None):
        super().__init__()
        dims = dims or DIMS
        self.audio_net = Conv1x1(dims["audio"])
        self.visual_net = Conv1x1(dims["visual"])
        self.fusion_module = fusion

    def forward(self, audio, visual):
        return self.fusion_module(self.audio_net(audio), self.visual_net(visual))


def renamer(*pairs: tuple[str, str], strip: str = ""):
    """A reference's parameter name -> mmsent's: the first ``(their prefix, our prefix)`` that
    matches is swapped (after removing ``strip`` in front); a name no pair matches is None (a
    parameter mmsent's model does not have)."""

    def rename(name: str) -> str | None:
        name = name.removeprefix(strip) if strip else name
        for ref, ours in pairs:
            if name.startswith(ref):
                return ours + name[len(ref):]
        return None

    return rename


# A GeWu stand-in's parameter name -> mmsent's (encoders.audio.conv.weight, head.net.weight)
av_names = renamer(("audio_net.", "encoders.audio."), ("visual_net.", "encoders.visual."),
                   ("fusion_module.fc_out.", "head.net."), strip="module.")


def loader(x: dict, y, order=("audio", "visual"), batch: int = BATCH):
    """The two-batch loader of an audio-visual reference: (spec, image, label) tuples."""
    return [tuple(x[m][rows] for m in order) + (y[rows],) for rows in batches(len(y), batch)]


class Conv1x1Maps(Conv1x1):
    """``Conv1x1`` that keeps its (B, D, 1, 1) map, for references whose model pools the encoder
    maps itself (AGM's ``AVClassifier``); ``bias=False`` makes it map a zero input to a zero
    feature, so zeroing an input (the reference) and zeroing its feature (mmsent) agree."""

    def __init__(self, d_in: int, d_out: int = WIDTH, bias: bool = True):
        super().__init__(d_in, d_out)
        self.conv = nn.Conv2d(d_in, d_out, 1, bias=bias)

    def forward(self, x):
        x = x.to(DTYPE)
        return torch.relu(self.conv(x.reshape(len(x), -1, 1, 1)))


class Quiet:
    """A logger / summary writer / progress bar that records nothing."""

    def __getattr__(self, key):
        return lambda *a, **k: None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def cpu_only() -> None:
    """A reference that moves its tensors with ``.cuda()`` runs here on the CPU: ``.cuda()`` is the
    identity (device placement only; nothing the method computes changes)."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self


BB_STUBS = ("librosa", "cv2", "torchvision", "transformers", "timm", "PIL", "einops", "pandas", "matplotlib",
            "seaborn", "torchaudio", "h5py", "inquirer", "memory_profiler", "fvcore", "ptflops")


def bb_module(root: Path, dotted: str):
    """A module of BalanceBenchmark's ``balancemm`` package, imported without running the package
    ``__init__`` files (``balancemm.trainer``'s imports every trainer, some of which do not import at
    this commit): each package on the way is registered empty, with its folder as its path."""
    stub_modules(*BB_STUBS)
    parts = dotted.split(".")
    for i in range(1, len(parts)):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(root.joinpath(*parts[:i]))]
            sys.modules[name] = pkg
    return importlib.import_module(dotted)


def load_fixed(root: Path, relpath: str, name: str, line: int, bad: str, good: str):
    """``load`` for a file that does not compile at its commit: line ``line`` must read ``bad``
    exactly and becomes ``good`` -- a syntax slip, never the method's logic. The recording says so."""
    file = root / relpath
    lines = file.read_text().splitlines(keepends=True)
    if lines[line - 1].rstrip("\n") != bad:
        raise SystemExit(f"{file}:{line} is not the expected line {bad!r}; the recording needs the pinned commit")
    lines[line - 1] = good + "\n"
    module = types.ModuleType(name)
    module.__file__ = str(file)
    sys.modules[name] = module
    exec(compile("".join(lines), str(file), "exec"), module.__dict__)
    return module


# BalanceBenchmark's BaseClassifierModel around the stand-in encoders: its parameter names
BB_NAMES = (("modality_encoder.audio.", "encoders.audio."), ("modality_encoder.visual.", "encoders.visual."),
            ("fusion_module.fc_out.", "head.net."))
BB_DIMS = {"audio": 5, "visual": 4}


def bb_model(model_mod, cls: str, mods=("audio", "visual")):
    """BalanceBenchmark's model class ``cls`` (a concat head over 6-wide features) on stand-in
    ``Conv1x1`` encoders of the modalities ``mods``, built by the reference's own constructor."""
    model_mod.create_encoders = lambda enc: {m: Conv1x1(BB_DIMS[m]) for m in mods}
    args = {"n_classes": 3, "fusion": "concat", "device": " ", "modality_size": {m: 6 for m in mods},
            "encoders": {m: {"name": "Transformer"} for m in mods}}
    return getattr(model_mod, cls)(args)


def bb_trainer(trainer):
    """A BalanceBenchmark trainer with its progress bar and its per-batch summary switched off."""
    trainer.progbar_wrapper = lambda iterable, **k: iterable
    trainer._format_iterable = lambda *a, **k: None
    return trainer


def bb_batches(x: dict, y, rows) -> list[dict]:
    """BalanceBenchmark's batches: one dict of modalities and ``label`` per list of row indices."""
    return [{"audio": x["audio"][r], "visual": x["visual"][r], "label": y[r]} for r in rows]


def stepping(opt_cls, steps: list, model: nn.Module, names):
    """``opt_cls`` whose ``step(closure)`` appends the closure's loss and every (renamed) parameter
    of ``model`` to ``steps`` after stepping (a Lightning-style trainer steps through closures)."""

    class Stepping(opt_cls):
        def step(self, closure=None):
            loss = super().step(closure)
            steps.append({"loss": loss.detach().clone(), "params": params({names(k): v for k, v in model.named_parameters()})})
            return loss

    Stepping.__name__ = opt_cls.__name__
    return Stepping
