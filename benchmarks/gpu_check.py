"""The GPU check (run by ``benchmarks/gpu_check.sh``): what must hold the first time mmsent meets a
CUDA device, measured and written as a dated table under ``results/gpu/``.

1. every strategy, a few steps with bfloat16 autocast, on the audio-visual model with the concat
   head and with MMTM (where the strategy is defined on it): the loss is finite and the
   parameters move;
2. the CREMA-D-shaped step (spectrogram 257 x 299, one 224 x 224 frame, ResNet18 pair) for
   vanilla, DGL (one backward) and the authors' two-backward DGL, in bfloat16, with peak memory;
3. ``torchrun --nproc_per_node 1`` training one epoch (nccl on CUDA, gloo on CPU);
4. the cached input pipeline's clips/s (its STFT, crop and normalisation on the device) beside the
   model's.

``--cpu`` runs the same checks on the CPU at a small size (narrow ResNets, short inputs, fewer
steps), so the script cannot rot: CI runs it (``tests/test_gpu_check.py``).

    benchmarks/gpu_check.sh            # on a GPU machine; writes results/gpu/<date>-<device>.md
    benchmarks/gpu_check.sh --cpu      # the same, on CPU, small
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from dgl_overhead import TwoBackwardDGL, time_steps  # noqa: E402

from mmsent.config import load_config  # noqa: E402
from mmsent.data import Dataset, Split  # noqa: E402
from mmsent.models import build_model  # noqa: E402
from mmsent.strategies import STRATEGIES  # noqa: E402
from mmsent.tasks import Classification  # noqa: E402
from mmsent.loop import autocast  # noqa: E402
from mmsent.train import build_optimizer, build_strategy  # noqa: E402

SIZES = {  # (spectrogram frames, image side, ResNet width, batch, steps)
    "gpu": dict(frames=299, image=224, width=64, batch=32, steps=10),
    "cpu": dict(frames=64, image=48, width=4, batch=8, steps=2),
}


def av_dataset(n: int, frames: int, image: int, seed: int = 0) -> Dataset:
    """An in-memory CREMA-D-shaped dataset (random inputs, 6 classes; labels tied to the inputs a
    little, so the branches differ)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 6
    audio = torch.randn(n, 257, frames, generator=g) + y[:, None, None] * 0.1
    visual = torch.randn(n, 1, 3, image, image, generator=g) + y[:, None, None, None, None] * 0.1
    ones = torch.ones(n, 1, dtype=torch.bool)
    split = Split({"audio": audio, "visual": visual}, {"audio": ones, "visual": ones}, y, [str(i) for i in range(n)])
    return Dataset(split, split, split, "classification", 6, {"audio": 1, "visual": 3},
                   kinds={"audio": "spectrogram", "visual": "frames"})


def strategy_steps(device: torch.device, size: dict) -> list[dict]:
    """Check 1: every strategy, bfloat16, concat and MMTM."""
    ds = av_dataset(4 * size["batch"], size["frames"], size["image"])
    rows = []
    for name, cls in sorted(STRATEGIES.items()):
        for fusion in (cls.needs_model.get("fusion", "concat"), "mmtm"):
            if fusion == "mmtm" and not cls.defined_on("mmtm"):
                continue
            over = [f"strategy={name}", f"model.fusion={fusion}", f"model.width={size['width']}", "train.amp=true",
                    *(f"model.{k}={v}" for k, v in cls.needs_model.items() if k != "fusion"),
                    *(f"strategy.{k}={json.dumps(v)}" for k, v in cls.short_run.items())]
            if name == "unimodal":
                over.append("strategy.modality=audio")
            row = {"strategy": name, "fusion": fusion}
            try:
                cfg = load_config(ROOT / "configs/cremad.yaml", over)
                torch.manual_seed(0)
                task = Classification(6)
                model = build_model(cfg.model, ds, task.out_dim).to(device)
                strategy = build_strategy(cfg, model, build_optimizer(model, cfg.train), task, batch_size=size["batch"],
                                          steps_per_epoch=2, min_batch=2)
                before = [p.detach().clone() for p in model.parameters()]
                losses = []
                for epoch in range(2):
                    strategy.on_epoch_start(epoch, ds)
                    for i, batch in enumerate(ds.train.batches(size["batch"], shuffle=True,
                                                               generator=torch.Generator().manual_seed(epoch))):
                        if i == 2:
                            break
                        with autocast(device, True):
                            losses.append(strategy.train_step(batch.to(device, non_blocking=True))["loss"])
                moved = sum(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters()))
                ok = all(math.isfinite(v) for v in losses) and moved > 0
                row.update(ok=ok, loss=losses[-1], moved=f"{moved}/{len(before)}")
            except Exception as e:  # noqa: BLE001  (the table records it; the script goes on)
                row.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
            rows.append(row)
    return rows


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux: the process's peak


def step_times(device: torch.device, size: dict) -> dict:
    """Check 2: vanilla / DGL / two-backward DGL, bfloat16, concat head."""
    ds = av_dataset(size["batch"], size["frames"], size["image"])
    batch = ds.train.batch(torch.arange(size["batch"])).to(device)
    cfg = load_config(ROOT / "configs/cremad.yaml", [f"model.width={size['width']}"])
    runners = {}
    for name in ("vanilla", "dgl", "dgl_two_backward"):
        torch.manual_seed(0)
        model = build_model(cfg.model, ds, 6).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        runners[name] = (TwoBackwardDGL(model, opt, Classification(6), alpha=4.0) if name == "dgl_two_backward"
                         else STRATEGIES[name](model, opt, Classification(6), **({"alpha": 4.0} if name == "dgl" else {})))

    class Autocast:  # every runner's step under bfloat16 autocast, synchronised for honest timing
        def __init__(self, r):
            self.r = r

        def train_step(self, b):
            with autocast(device, True):
                self.r.train_step(b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    medians, ratios = time_steps({k: Autocast(r) for k, r in runners.items()}, batch, size["steps"])
    return {"batch": size["batch"], "ms": {k: 1000 * v for k, v in medians.items()}, "ratio": ratios,
            "clips_per_s": size["batch"] / medians["vanilla"], "peak_mb": peak_memory_mb(device)}


def torchrun_one(device: torch.device, tmp: Path) -> dict:
    """Check 3: one rank under torchrun trains an epoch and records its backend."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", str(ROOT / "cli.py"),
           "train", "--quiet", "--strategy", "dgl", "--epochs", "1", "--device", device.type, "--out", str(tmp / "ddp"),
           "data.n_train=64", "data.n_val=16", "data.n_test=16", "train.probe=false"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
    row = {"ok": p.returncode == 0, "seconds": time.perf_counter() - t0}
    if p.returncode == 0:
        prov = json.loads((tmp / "ddp" / "results.json").read_text())["provenance"]
        row.update(world_size=prov.get("world_size"), backend=prov.get("backend"))
    else:
        row["error"] = (p.stderr.strip().splitlines() or ["?"])[-1][:160]
    return row


def pipeline(device: torch.device, size: dict, tmp: Path, model_clips_per_s: float) -> dict:
    """Check 4: clips/s of the cached pipeline (2 persistent workers, the STFT, crop and
    normalisation left for the device: ``data.finish=device``), counted once each batch is ready
    on the device, against the model's; the second of two epochs."""
    from input_pipeline import clips_per_second, make_cremad_shaped

    from mmsent.data import build_dataset

    corpus = make_cremad_shaped(tmp / "CREMA-D", 48 if size["width"] < 64 else 256)
    over = [f"data.path={corpus}", f"data.audio_frames={size['frames']}", f"data.image_size={size['image']}",
            f"data.cache={tmp / 'cache'}", "data.num_workers=2", "data.finish=device"]
    split = build_dataset(load_config(ROOT / "configs/cremad.yaml", over).data).train
    rate = clips_per_second(split, size["batch"], deferred=True, device=device)
    return {"cache_clips_per_s": rate, "model_clips_per_s": model_clips_per_s, "loader_keeps_up": rate >= model_clips_per_s}


def report(device: torch.device, steps: list[dict], times: dict, ddp: dict, pipe: dict) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    lines = [f"# GPU check, {datetime.date.today().isoformat()}: {name}", "",
             f"`benchmarks/gpu_check.sh{' --cpu' if device.type == 'cpu' else ''}`; torch {torch.__version__}; "
             "bfloat16 autocast throughout.", "",
             "## Every strategy, a few steps", "", "| strategy | fusion | ok | last loss | parameters moved | error |",
             "|---|---|---|---|---|---|"]
    for r in steps:
        lines.append(f"| {r['strategy']} | {r['fusion']} | {'yes' if r['ok'] else '**no**'} | "
                     f"{r.get('loss', float('nan')):.4f} | {r.get('moved', '-')} | {r.get('error', '')} |")
    ms = times["ms"]
    lines += ["", f"## Step time, CREMA-D-shaped batch of {times['batch']} (concat head)", "",
              "| vanilla ms | DGL ms (one backward) | DGL ms (two backward, Algorithm 1) | DGL / vanilla | two-backward / vanilla | peak memory MB |",
              "|---|---|---|---|---|---|",
              f"| {ms['vanilla']:.1f} | {ms['dgl']:.1f} | {ms['dgl_two_backward']:.1f} | {times['ratio']['dgl']:.2f} | "
              f"{times['ratio']['dgl_two_backward']:.2f} | {times['peak_mb']:.0f} |", "",
              "## torchrun --nproc_per_node 1", "",
              f"{'ok' if ddp['ok'] else '**failed**'}: backend {ddp.get('backend')}, world size {ddp.get('world_size')}, "
              f"{ddp['seconds']:.1f} s{'; ' + ddp['error'] if 'error' in ddp else ''}", "",
              "## Input pipeline (cache, 2 workers, STFT / crop / normalisation on the device) against the model", "",
              f"cache {pipe['cache_clips_per_s']:.0f} clips/s ready on the device, vanilla step {pipe['model_clips_per_s']:.0f} clips/s: "
              f"the loader {'keeps up' if pipe['loader_keeps_up'] else '**is the bottleneck**'}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="run on the CPU at a small size (CI)")
    ap.add_argument("--out", default=str(ROOT / "results" / "gpu"), help="folder for the dated table")
    args = ap.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("error: no CUDA device; run with --cpu to check the same paths on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    size = SIZES["cpu" if args.cpu else "gpu"]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed-size inputs throughout
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        steps = strategy_steps(device, size)
        times = step_times(device, size)
        ddp = torchrun_one(device, tmp)
        pipe = pipeline(device, size, tmp, times["clips_per_s"])
    text = report(device, steps, times, ddp, pipe)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device).replace(" ", "-").lower()
    path = out / f"{datetime.date.today().isoformat()}-{tag}.md"
    path.write_text(text)
    print(text)
    print(f"wrote {path}")
    failed = [f"{r['strategy']}/{r['fusion']}" for r in steps if not r["ok"]] + ([] if ddp["ok"] else ["torchrun"])
    if failed:
        print(f"error: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
