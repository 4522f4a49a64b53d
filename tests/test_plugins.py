"""mmsent/plugins.py: a lab's own task, dataset, encoder, head and strategy, written outside mmsent
and named in $MMSENT_PLUGINS, reach every process of a command -- the help, `cli.py table`'s child
runs (its rows, columns and headline), and README's generated strategy table -- and a plug-in that
cannot be imported is one line."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A lab's components, registered from outside mmsent (one registry line each)."""
import dataclasses

import torch
from torch import nn

from mmsent.checks import NoSettings
from mmsent.data import DATASETS, DatasetSpec, make_synthetic
from mmsent.models import ENCODERS, Encoder
from mmsent.models.fusions import FUSIONS
from mmsent.models.head import Head
from mmsent.strategies import STRATEGIES, Strategy
from mmsent.tasks import TASKS, Task


class Hinge(Task):
    """Binary labels predicted by one score, hinge loss."""
    name, headline, metric_names, percent, shown = "lab_hinge", "hit", ("hit",), ("hit",), ("hit",)
    continuous = True

    def __init__(self, num_classes=1, class_weights=None):
        super().__init__(1)

    def per_sample(self, pred, y):
        return torch.relu(1 - pred.reshape(-1) * (2 * y.to(pred.dtype) - 1))

    def loss(self, pred, y):
        return self.per_sample(pred, y).mean()

    def metrics(self, pred, y):
        return {"hit": float(((pred.reshape(-1).float() > 0) == (y > 0)).float().mean())}


def load_lab(cfg, seed=0):
    ds = make_synthetic(n_train=64, n_val=32, n_test=32, task="classification", num_classes=2, seed=seed)
    return dataclasses.replace(ds, task="lab_hinge", num_classes=1)


class LabEncoder(Encoder):
    Settings = NoSettings

    def __init__(self, in_dim, dim, seq_len):
        super().__init__()
        self.proj, self.seq_len = nn.Linear(in_dim, dim), seq_len

    @classmethod
    def build(cls, spec):
        return cls(spec.in_dim, spec.dim, spec.seq_len)

    def forward(self, x, mask):
        x = x if x.dim() == 3 else x[:, None]
        return self.proj(x).mean(1, keepdim=True).expand(-1, self.seq_len, -1)


class LabHead(Head):
    Settings = NoSettings

    def __init__(self, modalities, dim, seq_len, out_dim, *, hidden=0, dropout=0.0):
        super().__init__()
        self.modalities = list(modalities)
        self.fc = nn.Linear(len(self.modalities) * dim, out_dim)

    def forward(self, feats):
        return self.fc(torch.cat([feats[m].mean(1) for m in self.modalities], -1))


class LabStrategy(Strategy):
    label = "Lab method"
    method = "the lab's method"
    summary = "the loss plus a penalty on the score"
    checked = "tests/test_plugins.py"

    def train_step(self, batch):
        out = self.model(batch)
        loss = self.task.loss(out, batch.y)
        self.update(loss + out.pow(2).mean())
        return {"loss": loss.item()}


TASKS["lab_hinge"] = Hinge
DATASETS["lab"] = DatasetSpec(load_lab, NoSettings, {"text": "Text", "audio": "Audio", "vision": "Vision"})
ENCODERS["lab_enc"] = LabEncoder
FUSIONS["lab_head"] = LabHead
STRATEGIES["lab"] = LabStrategy
'''


def run(tmp_path, *args, plugins="lab_plugin"):
    (tmp_path / "lab_plugin.py").write_text(PLUGIN)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), MMSENT_PLUGINS=plugins, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, env=env)


def test_a_labs_components_reach_the_help_the_tables_and_readme(tmp_path):
    p = run(tmp_path, str(ROOT / "cli.py"), "train", "--help")
    shown = " ".join(p.stdout.split())
    assert p.returncode == 0 and all(n in shown for n in ("| lab;", "| lab_head", "| lab ")), shown
    p = run(tmp_path, str(ROOT / "cli.py"), "table", "--dataset", "lab", "--seeds", "0", "--methods",
            "Multimodal Baseline", "Lab method", "DGL", "--runs-dir", str(tmp_path / "runs"), "--out",
            str(tmp_path / "res"), "model.encoder=lab_enc", "model.fusion=lab_head", "train.epochs=2",
            "train.probe=false", "data.batch_size=16")
    assert p.returncode == 0, p.stderr[-3000:]
    md = (tmp_path / "res" / "lab_table.md").read_text()
    head = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert all(c in head for c in ("Text", "Audio", "Vision")), head
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ")]
    assert {"Multimodal Baseline", "Lab method", "DGL"} <= set(rows), md
    assert "hit" in md  # the lab task's headline metric
    import json
    res = json.loads((tmp_path / "runs" / "lab_method-s0" / "results.json").read_text())
    assert res["task"] == "lab_hinge" and res["config"]["model"]["encoder"] == "lab_enc"
    base = json.loads((tmp_path / "runs" / "multimodal_baseline-s0" / "results.json").read_text())
    assert res["test"]["multi"]["loss"] != base["test"]["multi"]["loss"]  # the lab's own step ran in the child
    p = run(tmp_path, "-c", "import sys; sys.path.insert(0, %r); from update_readme import render; "
            "from mmsent.plugins import load_plugins; load_plugins(); "
            "print(render(open(%r).read()))" % (str(ROOT / "scripts"), str(ROOT / "README.md")))
    assert p.returncode == 0 and "| `lab` | the lab's method | the loss plus a penalty on the score | tests/test_plugins.py |" in p.stdout, p.stderr


def test_a_plugin_that_cannot_be_imported_is_one_line(tmp_path):
    p = run(tmp_path, str(ROOT / "cli.py"), "train", "--help", plugins="lab_plugin, no_such_lab_module")
    assert p.returncode == 2 and p.stderr.splitlines() == [p.stderr.strip()], p.stderr
    assert "plug-in 'no_such_lab_module'" in p.stderr and "ModuleNotFoundError" in p.stderr
