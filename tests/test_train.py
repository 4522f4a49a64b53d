"""mmsent/train.py through the command a user types, on small data: what a run writes (results,
logs, checkpoints, its record), determinism, resume equal to an uninterrupted run, a run folder
that is never overwritten, optimizers, N modalities and the dry run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
from conftest import log_records, logged_epochs  # noqa: E402

SMALL = ["data.n_train=96", "data.n_val=32", "data.n_test=48", "data.batch_size=32", "model.dim=8",
         "model.hidden=16", "model.seq_len=2"]


def run_cli(tmp_path, *args):
    # no timeout: a loaded machine may take many times longer, and a wall-clock limit would fail it
    p = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--quiet", *args], cwd=tmp_path,
                       capture_output=True, text=True)
    return p.returncode, p.stderr.strip()


def train(tmp_path, *args, name="run"):
    out = tmp_path / name
    rc = cli.main(["train", "--quiet", "--out", str(out), *args, *SMALL])
    return rc, out


def test_train_writes_results_logs_and_checkpoints(tmp_path):
    rc, out = train(tmp_path, "--strategy", "dgl", "--alpha", "2", "--epochs", "3", "--fusion", "concat")
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["test"]) == {"multi", "text", "audio", "vision"}
    assert {"acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc5", "acc7", "mae", "corr"} <= set(res["test"]["multi"])
    assert set(res["val"]) == {"multi", "text", "audio", "vision"}
    assert res["config"]["strategy"]["name"] == "dgl" and res["config"]["strategy"]["alpha"] == 2.0
    assert 0 <= res["best_epoch"] < 3
    lines = log_records(out / "metrics.jsonl")
    assert [line["epoch"] for line in lines] == [0, 1, 2]
    gn = lines[0]["grad_norm"]
    assert set(gn) == {"text", "audio", "vision"} and all(v["unimodal"] > 0 and v["multimodal"] > 0 for v in gn.values())
    best = max(lines, key=lambda r: -r["val"]["multi"]["loss"])  # selection is on validation loss
    assert best["epoch"] == res["best_epoch"]
    assert res["val"]["multi"]["loss"] == pytest.approx(best["val"]["multi"]["loss"])
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    assert not list(out.glob("*.tmp"))


def test_same_seed_same_result_and_resume_matches_uninterrupted(tmp_path):
    _, a = train(tmp_path, "--strategy", "dgl", "--epochs", "4", name="a")
    _, b = train(tmp_path, "--strategy", "dgl", "--epochs", "4", name="b")
    ra, rb = (json.loads((p / "results.json").read_text()) for p in (a, b))
    assert ra["test"] == rb["test"]
    _, c = train(tmp_path, "--strategy", "dgl", "--epochs", "2", name="c")
    assert cli.main(["train", "--quiet", "--out", str(c), "--resume", "--epochs", "4"]) == 0
    rc = json.loads((c / "results.json").read_text())
    assert rc["test"] == ra["test"] and rc["best_epoch"] == ra["best_epoch"]
    assert logged_epochs(c / "metrics.jsonl") == [0, 1, 2, 3]


@pytest.mark.parametrize("name", ["vanilla", "unimodal"])
def test_other_strategies_and_classification(tmp_path, name):
    extra = ["strategy.modality=text"] if name == "unimodal" else []
    rc, out = train(tmp_path, "--strategy", name, "--epochs", "1", "data.task=classification", "data.num_classes=3", *extra)
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["test"]["multi"]) == {"loss", "acc", "f1"}


def test_n_modalities_from_config(tmp_path):
    rc, out = train(tmp_path, "--strategy", "dgl", "--epochs", "1", "data.n_modalities=5")
    assert rc == 0 and set(json.loads((out / "results.json").read_text())["test"]) == {"multi", "m0", "m1", "m2", "m3", "m4"}


def test_existing_run_dir_is_not_overwritten(tmp_path):
    rc, out = train(tmp_path, "--epochs", "1")
    before = (out / "best.pt").read_bytes()
    rc, err = run_cli(tmp_path, "--out", str(out), "--epochs", "1")
    assert rc == 2 and "not empty" in err
    assert (out / "best.pt").read_bytes() == before


def test_a_run_that_died_before_its_first_epoch_can_be_started_again(tmp_path):
    from mmsent.rundir import MARKER

    out = tmp_path / "dead"
    out.mkdir()
    (out / MARKER).write_text("")  # what a run of ours that died before its first checkpoint holds
    (out / "config.json").write_text("{}")
    rc, out = train(tmp_path, "--epochs", "1", name="dead")
    assert rc == 0 and (out / "results.json").is_file()
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    rc, err = run_cli(tmp_path, "--out", str(stranger), "--epochs", "1")
    assert rc == 2 and "not an mmsent run directory" in err and (stranger / "notes.txt").read_text() == "mine"


def test_sgd_optimizer_and_unknown_optimizer(tmp_path):
    rc, out = train(tmp_path, "--strategy", "dgl", "--epochs", "1", "train.optimizer=sgd", "train.lr=0.01")
    assert rc == 0
    rc, err = run_cli(tmp_path, "--out", str(tmp_path / "x"), "train.optimizer=lbfgs")
    assert rc == 2 and "'train.optimizer' must be adam or sgd, got 'lbfgs'" in err and not (tmp_path / "x").exists()


def test_a_run_folder_from_before_the_flat_strategy_section_resumes(tmp_path):
    """A stored config.json with the nested `strategy.args` (every run folder made before the strategy
    settings sat flat) still resumes and keeps its settings; a new run writes them flat."""
    rc, out = train(tmp_path, "--strategy", "dgl", "--alpha", "2", "strategy.truncate_unimodal=false", "--epochs", "1")
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["strategy"]["alpha"] == 2.0 and cfg["strategy"]["truncate_unimodal"] is False and "args" not in cfg["strategy"]
    old = {**cfg, "strategy": {"name": "dgl", "presets": cfg["strategy"]["presets"],
                               "args": {"alpha": 2.0, "truncate_unimodal": False}}}
    (out / "config.json").write_text(json.dumps(old))
    assert cli.main(["train", "--quiet", "--out", str(out), "--resume", "--epochs", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["strategy_settings"]["alpha"] == 2.0 and results["strategy_settings"]["truncate_unimodal"] is False
    assert len((out / "metrics.jsonl").read_text().splitlines()) >= 2


def test_a_run_records_what_it_was_made_with(tmp_path, capsys):
    """results.json and the first line of metrics.jsonl: version, commit, libraries, device, ranks,
    command, times; a resume adds its own line and is counted; `report` prints it."""
    import numpy
    import torch

    import mmsent

    out = tmp_path / "run"
    argv = ["train", "--quiet", "--epochs", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["provenance"]
    assert first["mmsent"] == mmsent.__version__ and first["torch"] == torch.__version__
    assert first["numpy"] == numpy.__version__ and first["python"] == ".".join(map(str, sys.version_info[:3]))
    assert (first["device"], first["dtype"], first["world_size"], first["backend"]) == ("cpu", "float32", 1, None)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a checkout (CI clones one): its commit
        assert first["git"]["commit"] == head.stdout.strip() and isinstance(first["git"]["dirty"], bool)
    assert cli.main(["train", "--quiet", "--epochs", "2", "--out", str(out), "--resume"]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert ["provenance" in r for r in lines] == [True, False, True, False]  # a line per start, before its epochs
    prov = json.loads((out / "results.json").read_text())["provenance"]
    assert prov["started"] == first["started"] and prov["resumed"] == [lines[2]["provenance"]["started"]]
    assert prov["started"] <= prov["ended"] and "--resume" in prov["command"]
    capsys.readouterr()
    assert cli.main(["report", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"{out}: made with: mmsent {mmsent.__version__}" in said and "1 process" in said and "resumed 1x" in said


def test_dry_run_checks_everything_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--dry-run", "--strategy", "dgl", "--out", str(out), *SMALL]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"dry run (nothing written): would train {out}: dataset synthetic (train 96, val 32, test 48")
    assert "strategy dgl" in said and not out.exists()
    assert cli.main(["train", "--dry-run", "--out", str(out), "train.lr=-1", *SMALL]) == 2  # the same checks as a run
    assert "train.lr" in capsys.readouterr().err and not out.exists()
    (out / "x").mkdir(parents=True)
    assert cli.main(["train", "--dry-run", "--out", str(out), *SMALL]) == 2  # a run would refuse this folder
    assert "exists, is not empty and is not an mmsent run directory" in capsys.readouterr().err
    assert cli.main(["table", "--dataset", "synthetic", "--seeds", "0", "1", "--methods", "DGL", "--runs-dir",
                     str(tmp_path / "t"), "--dry-run", *SMALL]) == 0
    assert "2 to train: DGL (new, new)" in capsys.readouterr().out and not (tmp_path / "t").exists()
