"""`benchmarks/gpu_check.sh --cpu` runs every check of the GPU script on the CPU (so the script
cannot rot before a GPU is available): every strategy under bfloat16 autocast on the concat and
MMTM heads, the three step times, torchrun with one rank, the cached pipeline; it writes its table."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_passes_on_the_cpu(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable)
    p = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--cpu", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    (table,) = tmp_path.glob("*-cpu.md")
    text = table.read_text()
    assert "**no**" not in text and "**failed**" not in text
    from mmsent.strategies import STRATEGIES

    assert all(f"| {name} |" in text for name in STRATEGIES)
    assert "ok: backend gloo, world size 1" in text and "| dgl | mmtm | yes |" in text


def test_without_a_gpu_it_says_to_use_cpu(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable)
    p = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "run with --cpu" in p.stderr and not list(tmp_path.iterdir())
