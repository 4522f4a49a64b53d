"""Bad input by classes, not cases: for each kind of file mmsent reads, Hypothesis makes a valid
file, applies ONE random corruption (type, dtype, shape, key, size, value, truncation, encoding or
nesting) and runs the command that reads it. The property, for every corruption nobody listed:

* the command either succeeds (the corruption was harmless; anything it dropped was said in a
  ``warning:`` line), or exits 2 with one ``error:`` line (``warning:`` lines may come before it),
  no traceback, and nothing written (no run folder);
* the user's file is not touched (its bytes before and after are the same).

In CI the examples are derandomized with a fixed budget (about a minute for all suites); set
``MMSENT_FUZZ_EXAMPLES`` for a larger local run. Every failing example Hypothesis found is kept
below as a named regression test (``test_regression_*``)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402

EXAMPLES = int(os.environ.get("MMSENT_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TINY = ["train.epochs=1", "train.probe=false", "train.grad_probe=false", "data.batch_size=4", "model.dim=4",
        "model.hidden=4", "model.seq_len=1"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def run_cli(argv) -> tuple[int, str]:
    """rc and stderr of ``cli.py argv`` in this process; warnings (which pytest would otherwise
    capture) appear as the ``warning:`` lines the CLI prints."""
    import warnings

    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = cli.main(argv)
    return rc, "".join(f"warning: {w.message}\n" for w in caught) + err.getvalue()


def assert_one_line_or_success(rc: int, err: str, run: Path) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    if rc == 0:
        return
    assert rc == 2, (rc, err)
    rest = [line for line in lines if not line.startswith(("warning:", "note:"))]
    assert len(rest) == 1 and rest[0].startswith("error:"), err
    assert not run.exists(), f"{run} written by a refused command"


# --- feature files --------------------------------------------------------------------------------

def valid_features(rng: np.random.Generator, classification: bool) -> dict:
    """An MMSA-layout dict: three splits, two or three modalities of shapes (n, L, F) / (n, F), labels, ids."""
    out = {}
    for split, n in (("train", 8), ("valid", 4), ("test", 4)):
        part = {"a": rng.normal(size=(n, 2, 3)).astype(np.float32), "b": rng.normal(size=(n, 5)).astype(np.float32)}
        if classification:
            part["classification_labels"] = np.arange(n) % 3
        else:
            part["regression_labels"] = rng.normal(size=n).astype(np.float32)
        part["id"] = np.array([f"{split}{i}" for i in range(n)])
        out[split] = part
    return out


CORRUPTIONS = ["split_key_int", "modality_key_int", "split_typo", "split_case", "drop_split", "type_str", "type_list",
               "type_none", "type_dict", "dtype_object", "dtype_bool", "dtype_complex", "dtype_str", "shape_zero_len",
               "shape_zero_feat", "shape_1d", "shape_4d", "shape_rows", "value_nan", "value_huge", "value_inf",
               "label_huge", "label_frac", "label_neg", "label_2d", "ids_dup", "ids_len", "ids_shared", "key_dot",
               "key_forward", "key_empty", "nested", "truncate", "garbage", "not_a_dict", "empty_split", "one_modality"]


def corrupt(data: dict, kind: str, rng: np.random.Generator, split: str, classification: bool):
    """One corruption of ``kind`` in ``split`` (returns the new object; file-level kinds return bytes)."""
    part = data[split]
    label = "classification_labels" if classification else "regression_labels"
    if kind == "split_key_int":
        data[7] = data.pop(split)
    elif kind == "modality_key_int":
        part[3] = part.pop("a")
    elif kind == "split_typo":
        data[{"train": "trian", "valid": "valdiation", "test": "tset"}[split]] = part
    elif kind == "split_case":
        data[split.capitalize()] = dict(part)
    elif kind == "drop_split":
        del data[split]
    elif kind in ("type_str", "type_list", "type_none", "type_dict"):
        part["a"] = {"type_str": "abc", "type_list": [[1, 2], [3]], "type_none": None, "type_dict": {"x": 1}}[kind]
    elif kind == "dtype_object":
        part["b"] = part["b"].astype(object)
    elif kind == "dtype_bool":
        part["b"] = part["b"] > 0
    elif kind == "dtype_complex":
        part["b"] = part["b"].astype(np.complex64)
    elif kind == "dtype_str":
        part["b"] = part["b"].astype(str)
    elif kind == "shape_zero_len":
        part["a"] = np.zeros((len(part[label]), 0, 3), np.float32)
    elif kind == "shape_zero_feat":
        part["a"] = np.zeros((len(part[label]), 2, 0), np.float32)
    elif kind == "shape_1d":
        part["a"] = np.zeros(len(part[label]), np.float32)
    elif kind == "shape_4d":
        part["a"] = np.zeros((len(part[label]), 2, 3, 2), np.float32)
    elif kind == "shape_rows":
        part["a"] = part["a"][:-1]
    elif kind == "value_nan":
        part["a"][0, 0, 0] = np.nan
    elif kind == "value_huge":
        part["b"] = part["b"].astype(np.float64)
        part["b"][0, 0] = 1e308
    elif kind == "value_inf":
        part["b"][0, 0] = np.inf
    elif kind == "label_huge":
        part[label] = part[label].astype(np.float64)
        part[label][0] = 1e308
    elif kind == "label_frac":
        part[label] = part[label].astype(np.float64) + 0.5
    elif kind == "label_neg":
        part[label] = part[label].astype(np.float64) - 5
    elif kind == "label_2d":
        part[label] = np.stack([part[label]] * 2, 1)
    elif kind == "ids_dup":
        part["id"] = np.array(["same"] * len(part["id"]))
    elif kind == "ids_len":
        part["id"] = part["id"][:-1]
    elif kind == "ids_shared":
        part["id"] = np.array([f"train{i}" for i in range(len(part["id"]))])
    elif kind in ("key_dot", "key_forward", "key_empty"):
        for p in data.values():
            p[{"key_dot": "a.b", "key_forward": "forward", "key_empty": ""}[kind]] = p.pop("a")
    elif kind == "nested":
        part["a"] = {"inner": part["a"]}
    elif kind == "not_a_dict":
        return [data]
    elif kind == "empty_split":
        for k in list(part):
            part[k] = part[k][:0]
    elif kind == "one_modality":
        for p in data.values():
            p.pop("b")
    return data


def write_features(path: Path, data, kind: str, rng: np.random.Generator) -> None:
    blob = pickle.dumps(data, protocol=4)
    if kind == "truncate":
        blob = pickle.dumps(valid_features(rng, True), protocol=4)
        blob = blob[: int(len(blob) * rng.uniform(0.05, 0.95))]
    elif kind == "garbage":
        blob = bytes(rng.integers(0, 256, size=300, dtype=np.uint8))
    path.write_bytes(blob)


@FUZZ
@given(kind=st.sampled_from(CORRUPTIONS), split=st.sampled_from(["train", "valid", "test"]),
       classification=st.booleans(), seed=st.integers(0, 2**16), strategy=st.sampled_from(["vanilla", "dgl"]))
def test_a_corrupted_feature_file_trains_or_is_one_line(tmp_path_factory, kind, split, classification, seed, strategy):
    tmp = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(seed)
    data = corrupt(valid_features(rng, classification), kind, rng, split, classification)
    path = tmp / "views.pkl"
    write_features(path, data, kind, rng)
    before, run = digest(path), tmp / "run"
    rc, err = run_cli(["train", "--quiet", "--data", str(path), "--strategy", strategy, "--out", str(run), *TINY])
    assert_one_line_or_success(rc, err, run)
    assert digest(path) == before


@pytest.mark.parametrize("kind,expect", [
    ("split_key_int", "split key 7 is a int"),
    ("modality_key_int", "has a key 3 of type int"),
    ("shape_zero_len", "a modality needs at least one step and one feature"),
    ("split_typo", "looks like the split"),
    ("split_case", "looks like the split"),
    ("value_huge", "exceeds float32's range"),
    ("label_huge", "exceeds float32's range"),
    ("ids_dup", "ids must be unique within a split"),
    ("key_dot", "contains '.'"),
    ("key_forward", "is a reserved name"),
    ("key_empty", "is empty"),
])
def test_regression_each_class_of_bad_feature_file_is_one_line(tmp_path, kind, expect):
    """The classes the probe found (a non-string key in a split, a modality of length 0, a
    misspelled or case-differing split, values beyond float32, duplicate ids, modality keys a
    torch module cannot hold) and the line each gives."""
    rng = np.random.default_rng(0)
    path = tmp_path / "views.pkl"
    write_features(path, corrupt(valid_features(rng, True), kind, rng, "train", True), kind, rng)
    rc, err = run_cli(["train", "--quiet", "--data", str(path), "--out", str(tmp_path / "run"), *TINY])
    assert rc == 2 and expect in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_regression_a_modality_listed_twice_is_one_line(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "views.pkl"
    write_features(path, valid_features(rng, True), "none", rng)
    rc, err = run_cli(["train", "--quiet", "--data", str(path), "--out", str(tmp_path / "run"), "data.modalities=[a, a]", *TINY])
    assert rc == 2 and "names 'a' twice" in err, err


def test_regression_one_modality_is_refused_for_a_multimodal_strategy(tmp_path):
    """README says N >= 2: a file with one modality is one line for any strategy but unimodal."""
    rng = np.random.default_rng(0)
    path = tmp_path / "views.pkl"
    write_features(path, corrupt(valid_features(rng, True), "one_modality", rng, "train", True), "none", rng)
    for strategy in ("vanilla", "dgl"):
        rc, err = run_cli(["train", "--quiet", "--data", str(path), "--strategy", strategy, "--out", str(tmp_path / "run"), *TINY])
        assert rc == 2 and "one modality" in err, err
    rc, _ = run_cli(["train", "--quiet", "--data", str(path), "--strategy", "unimodal", "strategy.args.modality=a",
                     "--out", str(tmp_path / "uni"), *TINY])
    assert rc == 0


def test_regression_ids_in_two_splits_are_said(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "views.pkl"
    write_features(path, corrupt(valid_features(rng, True), "ids_shared", rng, "test", True), "none", rng)
    rc, err = run_cli(["train", "--quiet", "--data", str(path), "--out", str(tmp_path / "run"), *TINY])
    assert rc == 0 and "appear in both 'train' and 'test'" in err, err


def test_regression_an_npz_with_an_upper_case_suffix_is_read_as_npz(tmp_path):
    rng = np.random.default_rng(0)
    flat = {f"{s}/{k}": v for s, part in valid_features(rng, True).items() for k, v in part.items()}
    path = tmp_path / "views.NPZ"
    with open(path, "wb") as f:
        np.savez(f, **flat)
    rc, err = run_cli(["train", "--quiet", "--data", str(path), "--dataset", "features", "--out", str(tmp_path / "run"), *TINY])
    assert rc == 0, err


# --- configs and sweep specs ----------------------------------------------------------------------

def yaml_corruptions():
    leaf = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                     st.booleans(), st.none(), st.lists(st.integers(), max_size=3))
    return st.recursive(leaf, lambda inner: st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


@FUZZ
@given(section=st.sampled_from(["data", "model", "train", "strategy", "seed", "device", "top"]), value=yaml_corruptions(),
       key=st.sampled_from(["epochs", "lr", "batch_size", "dim", "fusion", "name", "args", "n_train", "new_key"]))
def test_a_corrupted_config_trains_or_is_one_line(tmp_path_factory, section, value, key):
    import yaml

    tmp = tmp_path_factory.mktemp("config")
    cfg = {"data": {"dataset": "synthetic", "n_train": 16, "n_val": 8, "n_test": 8, "batch_size": 8},
           "model": {"dim": 4, "hidden": 4, "seq_len": 1}, "train": {"epochs": 1, "probe": False, "grad_probe": False}}
    if section == "top":
        cfg[key] = value
    elif section in ("seed", "device"):
        cfg[section] = value
    else:
        cfg.setdefault(section, {})
        if isinstance(cfg[section], dict):
            cfg[section][key] = value
    path = tmp / "cfg.yaml"
    try:
        path.write_text(yaml.safe_dump(cfg))
    except (yaml.YAMLError, UnicodeEncodeError):
        return
    before, run = digest(path), tmp / "run"
    rc, err = run_cli(["train", "--quiet", "--config", str(path), "--out", str(run)])
    assert_one_line_or_success(rc, err, run)
    assert digest(path) == before


@FUZZ
@given(text=st.one_of(st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                      st.text(alphabet="{}[]:,&*!- \n\tab01", max_size=120)))
def test_a_garbage_config_file_is_one_line(tmp_path_factory, text):
    tmp = tmp_path_factory.mktemp("garbage")
    path = tmp / "cfg.yaml"
    path.write_text(text, encoding="latin-1")
    before, run = digest(path), tmp / "run"
    rc, err = run_cli(["train", "--quiet", "--config", str(path), "--out", str(run), "data.n_train=16", "data.n_val=8",
                       "data.n_test=8", "train.epochs=1", "train.probe=false", "model.dim=4", "model.hidden=4"])
    assert_one_line_or_success(rc, err, run)
    assert digest(path) == before


# --- run files: results.json, metrics.jsonl, checkpoints ------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    rc, err = run_cli(["train", "--quiet", "--out", str(run), "data.n_train=16", "data.n_val=8", "data.n_test=8",
                       "train.epochs=2", "train.probe=false", "model.dim=4", "model.hidden=4", "model.seq_len=1"])
    assert rc == 0, err
    return run


def json_corruptions():
    return st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6),
                     st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def leaves(tree, prefix=()):
    """Every (path, value) of a JSON tree's leaves."""
    if isinstance(tree, dict):
        return [x for k, v in tree.items() for x in leaves(v, (*prefix, k))] or [(prefix, tree)]
    if isinstance(tree, list):
        return [x for i, v in enumerate(tree) for x in leaves(v, (*prefix, i))] or [(prefix, tree)]
    return [(prefix, tree)]


def set_leaf(tree, path, value):
    node = tree
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


@FUZZ
@given(file=st.sampled_from(["results.json", "metrics.jsonl", "config.json", "last.pt", "best.pt"]),
       how=st.sampled_from(["truncate", "garbage", "value", "leaf", "empty", "deep", "bigint"]), value=json_corruptions(),
       seed=st.integers(0, 2**16), command=st.sampled_from(["report", "plot", "predict", "resume"]))
def test_a_corrupted_run_file_is_one_line(finished_run, tmp_path_factory, file, how, value, seed, command):
    import shutil

    tmp = tmp_path_factory.mktemp("runfile")
    run = tmp / "run"
    shutil.copytree(finished_run, run)
    target = run / file
    rng = np.random.default_rng(seed)
    blob = target.read_bytes()
    if how == "truncate":
        blob = blob[: int(len(blob) * rng.uniform(0.0, 0.95))]
    elif how == "garbage":
        blob = bytes(rng.integers(0, 256, size=200, dtype=np.uint8))
    elif how == "empty":
        blob = b""
    elif how == "deep":
        blob = b"[" * 60000 + b"]" * 60000
    elif how == "bigint":
        blob = b'{"epoch": ' + b"9" * 5000 + b"}"
    elif how == "leaf" and (file.endswith(".json") or file == "metrics.jsonl"):
        lines = blob.decode().splitlines() if file == "metrics.jsonl" else [blob.decode()]
        i = int(rng.integers(len(lines)))
        tree = json.loads(lines[i])
        spots = [p for p, _ in leaves(tree) if p]
        if spots:
            set_leaf(tree, spots[int(rng.integers(len(spots)))], value)
        lines[i] = json.dumps(tree)
        blob = ("\n".join(lines) + "\n").encode()
    elif how == "leaf":
        return
    elif file.endswith(".json"):
        tree = json.loads(blob)
        key = sorted(tree)[int(rng.integers(len(tree)))]
        tree[key] = value
        blob = json.dumps(tree).encode()
    elif file == "metrics.jsonl":
        lines = blob.decode().splitlines()
        i = int(rng.integers(len(lines)))
        row = json.loads(lines[i])
        row[sorted(row)[int(rng.integers(len(row)))]] = value
        lines[i] = json.dumps(row)
        blob = ("\n".join(lines) + "\n").encode()
    target.write_bytes(blob)
    before = {p.name: digest(p) for p in run.iterdir() if p.is_file()}
    out = tmp / "out"
    argv = {"report": ["report", str(run)], "plot": ["plot", str(run), "--out", str(out)],
            "predict": ["predict", "--run", str(run), "--out", str(out / "preds.csv")],
            "resume": ["train", "--quiet", "--out", str(run), "--resume", "--epochs", "3"]}[command]
    rc, err = run_cli(argv)
    assert "Traceback" not in err, err
    if rc != 0:
        rest = [line for line in err.splitlines() if line.strip() and not line.startswith(("warning:", "note:"))]
        assert rc == 2 and len(rest) == 1 and rest[0].startswith("error:"), (rc, err)
        if command != "resume":
            assert not out.exists() or not any(out.iterdir())
    if command != "resume":  # reading a run never changes it
        assert {p.name: digest(p) for p in run.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("file,edit,command", [
    ("results.json", lambda r: r["test"]["multi"].update(mae="abc"), "report"),
    ("metrics.jsonl", "lr", "plot"),
])
def test_regression_a_wrong_type_inside_a_run_file_is_one_line(finished_run, tmp_path, file, edit, command):
    """The probe's cases: a results.json metric that is a string (report), metrics.jsonl values of
    the wrong type (plot)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    if file == "results.json":
        tree = json.loads((run / file).read_text())
        edit(tree)
        (run / file).write_text(json.dumps(tree))
    else:
        lines = [json.loads(line) for line in (run / file).read_text().splitlines()]
        for row in lines:
            if "epoch" in row:
                row["lr"] = "fast"
                row["train"] = {"loss": "x"}
        (run / file).write_text("\n".join(map(json.dumps, lines)) + "\n")
    argv = ["report", str(run)] if command == "report" else ["plot", str(run), "--out", str(tmp_path / "fig")]
    rc, err = run_cli(argv)
    assert "Traceback" not in err and rc == 2 and err.strip().count("\n") == 0 and file in err, err
