"""mmsent/cli.py: flags and overrides and the order they compose in, the default command, data
inferred from a path, messages naming the command typed, and one-line errors with exit code 2
that leave no run directory behind (what a run writes is tests/test_train.py's)."""
import json
import pickle
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402

SHARED_MOSI = ROOT.parent / "shared/data/mosi/mosi_utterance.pkl"
from test_train import SMALL, run_cli, train  # noqa: E402


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


def test_flags_and_overrides_compose_in_one_order(tmp_path):
    """`--alpha 2 strategy=dgl` trained with alpha = 1: the flag was applied, then dropped."""
    rc, out = train(tmp_path, "--alpha", "2", "strategy=dgl", "--epochs", "1")
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["strategy"]["name"] == "dgl" and cfg["strategy"]["alpha"] == 2.0


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
