"""End-to-end runs through cli.py on small data: results layout, logs, determinism, resume, and
one-line errors with exit code 2 that leave no run directory behind."""
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
from conftest import log_records, logged_epochs  # noqa: E402

SHARED_MOSI = ROOT.parent / "shared/data/mosi/mosi_utterance.pkl"
SMALL = ["data.n_train=96", "data.n_val=32", "data.n_test=48", "data.batch_size=32", "model.dim=8",
         "model.hidden=16", "model.seq_len=2"]


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


def run_cli(tmp_path, *args):
    # no timeout: a loaded machine may take many times longer, and a wall-clock limit would fail it
    p = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--quiet", *args], cwd=tmp_path,
                       capture_output=True, text=True)
    return p.returncode, p.stderr.strip()


def test_bad_inputs_exit_2_with_one_line_and_no_run_dir(tmp_path, capsys):
    bad_pickle = tmp_path / "bad.pkl"
    bad_pickle.write_bytes(b"not a pickle at all")
    wrong = tmp_path / "wrong.pkl"
    wrong.write_bytes(pickle.dumps({s: {"regression_labels": [0.5]} for s in ("train", "valid", "test")}))
    cases = [
        (["--dataset", "mosi", "--data", str(tmp_path / "missing.pkl")], "missing.pkl: file not found"),
        (["--dataset", "mosi", "--data", str(bad_pickle)], "bad.pkl"),
        (["--dataset", "mosi", "--data", str(wrong)], "wrong.pkl: no modality among text, audio, vision in split 'train'"),
        (["--fusion", "transformer"], "unknown fusion 'transformer'; choose from concat, concat_mix, dense, esanet, film, gated, late_mean, mlpmixer, mmtm, mmtm_seq, shared, sum"),
        (["--strategy", "magic"], "unknown strategy 'magic'"),
        (["train.nope=1"], "unknown config key 'train.nope'"),
        (["train.epochs=many"], "'train.epochs' must be int"),
        (["--strategy", "dgl", "strategy.beta=1"], "unknown config key 'strategy.beta'"),
        (["--strategy", "dgl", "strategy.alpha=abc"], "'strategy.alpha' must be float, got 'abc'"),
        (["--strategy", "dgl", "--alpha", "nan"], "'strategy.alpha' must be a finite number >= 0, got nan"),
        (["--strategy", "unimodal", "strategy.modality=smell"], "unknown modality 'smell'"),
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--fusion", "mmtm"], "fusion 'mmtm' needs spectrogram/frames encoders"),
        (["--strategy", "mmcosine", "--fusion", "mlpmixer"], "mmcosine needs a linear late-fusion head to split per modality: "
                                     "set model.fusion=concat and model.hidden=0"),
        (["--strategy", "umt", "strategy.teacher_epochs=0"], "'strategy.teacher_epochs' must be an integer >= 1"),
        (["--dataset", "cremad", "--data", str(tmp_path / "nowhere")], "nowhere: not a directory"),
    ]
    for k, (args, msg) in enumerate(cases):
        if k == 0:  # one case as a real process: its exit status and all it writes to stderr
            rc, err = run_cli(tmp_path, "--out", str(tmp_path / "out"), *args)
        else:  # the rest through cli.main itself (a subprocess each cost ~3 s of torch import)
            rc = cli.main(["train", "--quiet", "--out", str(tmp_path / "out"), *args])
            err = capsys.readouterr().err.strip()
        assert rc == 2, (args, err)
        assert msg in err and len(err.splitlines()) == 1 and "Traceback" not in err, (args, err)
        assert not (tmp_path / "out").exists(), args


def test_a_strategy_gets_the_head_it_needs_unless_the_user_chose_another(tmp_path, capsys):
    """``--strategy mmcosine`` alone trains: its linear late-fusion head replaces the recipe's
    mixer, with a note (an explicit ``--fusion mlpmixer`` is refused instead, above)."""
    small = [a for a in SMALL if not a.startswith("model.hidden=")]
    out = tmp_path / "a"
    assert cli.main(["train", "--quiet", "--out", str(out), "--strategy", "mmcosine", "--epochs", "1", *small]) == 0
    assert "needs model.fusion=concat model.hidden=0; using it" in capsys.readouterr().err
    model = json.loads((out / "config.json").read_text())["model"]
    assert (model["fusion"], model["hidden"]) == ("concat", 0)
    args = ["train", "--quiet", "--out", str(tmp_path / "b"), "--strategy", "mmcosine", "--epochs", "1", *small]
    assert cli.main([*args, "model.hidden=0"]) == 0
    assert "needs model.fusion=concat; using it" in capsys.readouterr().err
    # the user's own hidden layer is kept, and refused in one line
    rc, _ = train(tmp_path, "--strategy", "mmcosine", "--epochs", "1", name="c")  # SMALL: model.hidden=16
    assert rc == 2 and "set model.fusion=concat and model.hidden=0" in capsys.readouterr().err


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


def test_default_train_command_runs(tmp_path):
    """`python cli.py train` with no dataset: the synthetic default, end to end."""
    rc, err = run_cli(tmp_path, "--out", str(tmp_path / "default"))
    assert rc == 0, err
    res = json.loads((tmp_path / "default/results.json").read_text())
    assert res["config"]["data"]["dataset"] == "synthetic"
    assert res["test"]["multi"]["acc2_has0"] > 0.8  # the planted signal is learnable


@pytest.mark.skipif(not SHARED_MOSI.is_file(), reason="../shared MOSI data not present")
def test_real_mosi_dgl_run(tmp_path):
    rc = cli.main(["train", "--quiet", "--dataset", "mosi", "--data", str(SHARED_MOSI), "--fusion", "mlpmixer",
                   "--strategy", "dgl", "--alpha", "2", "--epochs", "2", "--out", str(tmp_path / "mosi")])
    assert rc == 0
    res = json.loads((tmp_path / "mosi/results.json").read_text())
    assert res["test"]["text"]["acc2_has0"] > 0.65  # text carries the MOSI signal


def test_sgd_optimizer_and_unknown_optimizer(tmp_path):
    rc, out = train(tmp_path, "--strategy", "dgl", "--epochs", "1", "train.optimizer=sgd", "train.lr=0.01")
    assert rc == 0
    rc, err = run_cli(tmp_path, "--out", str(tmp_path / "x"), "train.optimizer=lbfgs")
    assert rc == 2 and "'train.optimizer' must be adam or sgd, got 'lbfgs'" in err and not (tmp_path / "x").exists()


def test_flags_and_overrides_compose_in_one_order(tmp_path):
    """`--alpha 2 strategy=dgl` trained with alpha = 1: the flag was applied, then dropped."""
    rc, out = train(tmp_path, "--alpha", "2", "strategy=dgl", "--epochs", "1")
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["strategy"]["name"] == "dgl" and cfg["strategy"]["alpha"] == 2.0


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


def test_alpha_flag_sets_only_dgls_weight(tmp_path):
    """`--alpha` said "DGL weight" but set OGM-GE's tanh slope, AGM's strength, any strategy's alpha."""
    for strategy in ("ogm_ge", "agm", "vanilla"):
        rc, err = run_cli(tmp_path, "--strategy", strategy, "--alpha", "0.5", "--out", str(tmp_path / "x"))
        assert rc == 2 and err.splitlines() == [err] and not (tmp_path / "x").exists(), err
        assert f"--alpha is DGL's weight on the unimodal losses (dgl, dgl_mh); strategy {strategy!r} has no such " \
               "weight: set its own settings with strategy.KEY=VALUE" in err
    rc, out = train(tmp_path, "--strategy", "ogm_ge", "strategy.alpha=0.5", "--epochs", "1")
    assert rc == 0 and json.loads((out / "config.json").read_text())["strategy"]["alpha"] == 0.5


def test_data_without_dataset_is_inferred_or_refused(tmp_path, capsys):
    """`--data FILE.pkl` without --dataset trained on the synthetic data without a word."""
    import numpy as np

    rng = np.random.default_rng(0)
    split = lambda n: {"a": rng.normal(size=(n, 3)).astype(np.float32), "b": rng.normal(size=(n, 2, 4)),  # noqa: E731
                       "classification_labels": rng.integers(0, 3, n)}
    path = tmp_path / "mine.pkl"
    path.write_bytes(pickle.dumps({"train": split(40), "valid": split(10), "test": split(12)}))
    rc = cli.main(["train", "--quiet", "--data", str(path), "--epochs", "1", "--out", str(tmp_path / "r"), *SMALL[3:]])
    assert rc == 0 and "read as dataset 'features'" in capsys.readouterr().err
    res = json.loads((tmp_path / "r/results.json").read_text())
    assert res["config"]["data"]["dataset"] == "features" and set(res["test"]) == {"multi", "a", "b"}
    assert res["task"] == "classification"
    folder = tmp_path / "csd"
    folder.mkdir()
    rc, err = run_cli(tmp_path, "--data", str(folder), "--out", str(tmp_path / "o"))
    assert rc == 2 and "cannot tell which dataset" in err and "--dataset" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv0, said", [("/home/u/.venv/bin/mmsent", "mmsent"),
                                         ("/site-packages/mmsent/__main__.py", "python -m mmsent"),
                                         (str(ROOT / "cli.py"), "python cli.py")])
def test_messages_suggest_the_command_the_user_typed(tmp_path, monkeypatch, capsys, argv0, said):
    """An installed `mmsent` is told to run `mmsent train ... --resume`, not a checkout's `python cli.py`."""
    from mmsent.checks import command

    monkeypatch.setattr(sys, "argv", [argv0])
    assert command() == said
    assert cli.main(["data", "download", "cremad"]) == 2
    assert f"get the raw files and run: {said} data prepare cremad" in capsys.readouterr().err


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
