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
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
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


def assert_one_line_if_refused(rc: int, err: str) -> None:
    """No traceback; a non-zero exit is 2 with one ``error:`` line (``warning:``/``note:`` lines
    may come before it)."""
    assert "Traceback" not in err, err
    if rc != 0:
        rest = [line for line in err.splitlines() if line.strip() and not line.startswith(("warning:", "note:"))]
        assert rc == 2 and len(rest) == 1 and rest[0].startswith("error:"), (rc, err)


def write_yaml(path: Path, tree) -> bool:
    """Write ``tree`` as YAML; False for a generated value YAML cannot hold (the case is skipped)."""
    import yaml

    try:
        path.write_text(yaml.safe_dump(tree))
    except (yaml.YAMLError, UnicodeEncodeError):
        return False
    return True


def assert_one_line_or_success(rc: int, err: str, run: Path) -> None:
    assert_one_line_if_refused(rc, err)
    if rc != 0:
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
    rc, _ = run_cli(["train", "--quiet", "--data", str(path), "--strategy", "unimodal", "strategy.modality=a",
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
    if not write_yaml(path, cfg):
        return
    before, run = digest(path), tmp / "run"
    rc, err = run_cli(["train", "--quiet", "--config", str(path), "--out", str(run)])
    assert_one_line_or_success(rc, err, run)
    assert digest(path) == before


def _alias_bomb(levels: int = 5) -> str:
    """Nested anchors: each level a list of nine aliases of the one before (9**levels leaves)."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nmodel: {{encoders: {{a: *l{levels}}}}}\n"


# Structured hostile texts, always tried (Hypothesis's explicit examples) beside the random ones:
# nesting 60,000 deep, as a flow list and as flow mappings, and nested anchors
HOSTILE_YAML = ["model: " + "[" * 60000 + "]" * 60000, "{a: " * 30000 + "1" + "}" * 30000, _alias_bomb()]


@FUZZ
@given(text=st.one_of(st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                      st.text(alphabet="{}[]:,&*!- \n\tab01", max_size=120)))
@example(text=HOSTILE_YAML[0])
@example(text=HOSTILE_YAML[1])
@example(text=HOSTILE_YAML[2])
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


def leaves(tree, prefix=(), lists: bool = True):
    """Every (path, value) of a tree's leaves (mappings, and lists unless ``lists=False``)."""
    if isinstance(tree, dict):
        return [x for k, v in tree.items() for x in leaves(v, (*prefix, k), lists)] or [(prefix, tree)]
    if lists and isinstance(tree, list):
        return [x for i, v in enumerate(tree) for x in leaves(v, (*prefix, i), lists)] or [(prefix, tree)]
    return [(prefix, tree)]


def parent(tree, path):
    """The container holding the leaf at ``path``."""
    for k in path[:-1]:
        tree = tree[k]
    return tree


def set_leaf(tree, path, value):
    parent(tree, path)[path[-1]] = value


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
    assert_one_line_if_refused(rc, err)
    if rc != 0 and command != "resume":
        assert not out.exists() or not any(out.iterdir())
    if command != "resume":  # reading a run never changes it
        assert {p.name: digest(p) for p in run.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("file,edit,command", [
    ("results.json", lambda r: r["test"]["multi"].update(mae="abc"), "report"),
    ("metrics.jsonl", "lr", "plot"),
    # found by the suite above: an empty test mapping (StopIteration in the summary), provenance
    # True (AttributeError), test None or without the fused branch (predict's comparison)
    ("results.json", lambda r: r.update(test={}), "report"),
    ("results.json", lambda r: r.update(provenance=True), "report"),
    ("results.json", lambda r: r.update(test=None), "predict"),
    ("results.json", lambda r: r.update(test={"x": {"mae": 1.0}}), "predict"),
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
    argv = {"report": ["report", str(run)], "plot": ["plot", str(run), "--out", str(tmp_path / "fig")],
            "predict": ["predict", "--run", str(run), "--out", str(tmp_path / "p.csv")]}[command]
    rc, err = run_cli(argv)
    assert "Traceback" not in err and rc in (1, 2) and err.strip().count("\n") == 0, err
    # refused naming the file, or (a results file that holds other branches) predicted with a warning
    assert (rc == 2 and file in err) or (rc == 1 and "not compared" in err), err


# --- sweep specs ----------------------------------------------------------------------------------

SPEC_KEYS = ["config", "overrides", "metric", "direction", "trials", "seeds", "sampler", "sampler_seed",
             "pruner_warmup_epochs", "heartbeat", "space", "space.p", "space.p.type", "space.p.low", "space.p.high",
             "space.p.log", "space.p.grid", "space.p.choices", "space.p.step", "new_key"]


@FUZZ
@given(key=st.sampled_from(SPEC_KEYS), value=yaml_corruptions(), drop=st.booleans())
def test_a_corrupted_sweep_spec_runs_or_is_one_line(tmp_path_factory, key, value, drop):
    """A valid spec (one trial of DGL's alpha on tiny synthetic data) with one key replaced by any
    YAML value, or removed: the dry run is one line or passes, and a spec that passes the dry run
    also runs its trial (or is one line), writing nothing where it is refused."""
    import yaml

    tmp = tmp_path_factory.mktemp("spec")
    spec = {"overrides": ["strategy=dgl"], "metric": "loss", "direction": "minimize", "trials": 1, "seeds": [0],
            "sampler": "tpe", "sampler_seed": 0, "pruner_warmup_epochs": 1, "heartbeat": 30,
            "space": {"strategy.alpha": {"type": "float", "low": 0.5, "high": 2.0}}}
    parts = key.split(".")
    node = spec
    if parts[0] == "space" and len(parts) > 1:
        node = spec["space"]
        parts = ["strategy.alpha", *parts[2:]] if len(parts) > 2 else ["strategy.alpha"]
        if len(parts) == 2:
            node, parts = node["strategy.alpha"], parts[1:]
    if drop:
        node.pop(parts[0], None)
    else:
        node[parts[0]] = value
    path = tmp / "spec.yaml"
    if not write_yaml(path, spec):
        return
    before, out = digest(path), tmp / "sweeps"
    args = ["sweep", str(path), "--out-dir", str(out), "--storage", f"journal:{tmp / 'study.log'}", *TINY,
            "data.n_train=16", "data.n_val=8", "data.n_test=8"]
    rc, err = run_cli([*args, "--dry-run"])
    assert_one_line_or_success(rc, err, out)
    if rc == 0:
        rc, err = run_cli(args)
        assert_one_line_if_refused(rc, err)
    assert digest(path) == before


@FUZZ
@given(text=st.one_of(st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                      st.text(alphabet="{}[]:,&*!- \n\tab01", max_size=120)))
@example(text=HOSTILE_YAML[0].replace("model: ", "space: "))
@example(text=HOSTILE_YAML[1])
@example(text=HOSTILE_YAML[2].replace("model: {encoders: {a:", "space: {p: {choices:"))
def test_a_garbage_sweep_spec_is_one_line(tmp_path_factory, text):
    """Any text as a sweep spec, the structured hostile ones included: a dry run passes or is one line."""
    tmp = tmp_path_factory.mktemp("garbage_spec")
    path = tmp / "spec.yaml"
    path.write_text(text, encoding="latin-1")
    before, out = digest(path), tmp / "sweeps"
    rc, err = run_cli(["sweep", str(path), "--dry-run", "--out-dir", str(out), *TINY])
    assert_one_line_or_success(rc, err, out)
    assert digest(path) == before


# --- checkpoints: a valid last.pt / best.pt with one entry changed ---------------------------------

def tensor_corruptions():
    return st.sampled_from(["drop", "shape", "dtype", "scalar", "string", "none", "nan", "list", "huge"])


@FUZZ
@given(file=st.sampled_from(["last.pt", "best.pt"]), how=tensor_corruptions(), seed=st.integers(0, 2**16),
       command=st.sampled_from(["predict", "resume"]))
def test_a_checkpoint_with_one_entry_changed_is_one_line(finished_run, tmp_path_factory, file, how, seed, command):
    """torch.load'able checkpoints whose contents are wrong: an entry removed, a tensor of another
    shape or dtype, a tensor replaced by a number, text, None or a list, NaN weights, an enormous
    integer. predict (best.pt) and --resume (last.pt) either work (NaN weights predict NaN, said as
    such or not) or say one line; reading never changes the run."""
    import shutil

    import torch

    tmp = tmp_path_factory.mktemp("ckpt")
    run = tmp / "run"
    shutil.copytree(finished_run, run)
    target = run / file
    ckpt = torch.load(target, weights_only=True)
    rng = np.random.default_rng(seed)

    places = [p for p, _ in leaves(ckpt, lists=False) if p]  # a list (param_groups) is one entry
    where = places[int(rng.integers(len(places)))]
    node = parent(ckpt, where)
    old = node[where[-1]]
    if how == "drop":
        del node[where[-1]]
    else:
        tensor = isinstance(old, torch.Tensor)
        node[where[-1]] = {
            "shape": lambda: torch.zeros(*(n + 1 for n in old.shape)) if tensor and old.dim() else torch.zeros(3, 1),
            "dtype": lambda: old.to(torch.int64) if tensor else torch.tensor([1], dtype=torch.int64),
            "scalar": lambda: 3.5, "string": lambda: "x", "none": lambda: None, "list": lambda: [1, 2],
            "nan": lambda: torch.full_like(old, float("nan")) if tensor and old.is_floating_point() else float("nan"),
            "huge": lambda: 10**40,
        }[how]()
    torch.save(ckpt, target)
    before = {p.name: digest(p) for p in run.iterdir() if p.is_file()}
    out = tmp / "out"
    argv = {"predict": ["predict", "--run", str(run), "--out", str(out / "preds.csv")],
            "resume": ["train", "--quiet", "--out", str(run), "--resume", "--epochs", "3"]}[command]
    rc, err = run_cli(argv)
    assert_one_line_if_refused(rc, err)
    if rc != 0:
        assert command == "resume" or not out.exists() or not any(out.iterdir())
    if command == "predict":
        assert {p.name: digest(p) for p in run.iterdir() if p.is_file()} == before


# --- audio-visual corpus folders ------------------------------------------------------------------

AV_CORRUPTIONS = ["wav_truncate", "wav_garbage", "wav_empty", "wav_rate", "wav_bits", "wav_channels", "wav_nan",
                  "jpg_truncate", "jpg_garbage", "jpg_empty", "jpg_png", "jpg_dir", "frames_empty", "wav_missing",
                  "csv_absolute", "csv_parent", "csv_label", "csv_blank", "csv_columns", "csv_latin1", "csv_dup",
                  "csv_empty", "link_out", "link_loop", "name_space"]


def av_corrupt(root: Path, kind: str, rng: np.random.Generator, outside: Path) -> None:
    """One corruption of ``kind`` in a small CREMA-D-layout corpus at ``root``."""
    import struct

    wavs = sorted((root / "AudioWAV").iterdir())
    wav = wavs[int(rng.integers(len(wavs)))]
    clips = sorted((root / "Image-01-FPS").iterdir())
    clip = clips[int(rng.integers(len(clips)))]
    jpg = sorted(clip.iterdir())[0]
    csv = root / ("train.csv" if rng.random() < 0.6 else "test.csv")
    rows = csv.read_text(encoding="utf-8-sig").splitlines()
    blob = wav.read_bytes()
    if kind == "wav_truncate":
        wav.write_bytes(blob[: int(len(blob) * rng.uniform(0, 0.9))])
    elif kind == "wav_garbage":
        wav.write_bytes(bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
    elif kind == "wav_empty":
        wav.write_bytes(b"")
    elif kind == "wav_rate":  # the header's sample rate field (bytes 24..28)
        wav.write_bytes(blob[:24] + struct.pack("<I", int(rng.choice([0, 1, 7, 2**31 - 1, 2**32 - 1]))) + blob[28:])
    elif kind == "wav_bits":  # bits per sample (bytes 34..36)
        wav.write_bytes(blob[:34] + struct.pack("<H", int(rng.choice([0, 3, 24, 64, 65535]))) + blob[36:])
    elif kind == "wav_channels":  # channel count (bytes 22..24)
        wav.write_bytes(blob[:22] + struct.pack("<H", int(rng.choice([0, 2, 3, 65535]))) + blob[24:])
    elif kind == "wav_nan":
        from scipy.io import wavfile

        wavfile.write(wav, 16000, np.full(4000, np.nan, np.float32))
    elif kind == "jpg_truncate":
        jpg.write_bytes(jpg.read_bytes()[: int(jpg.stat().st_size * rng.uniform(0, 0.9))])
    elif kind == "jpg_garbage":
        jpg.write_bytes(bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
    elif kind == "jpg_empty":
        jpg.write_bytes(b"")
    elif kind == "jpg_png":
        from PIL import Image

        Image.open(jpg).convert("RGB").save(jpg, format="PNG")
    elif kind == "jpg_dir":
        jpg.unlink()
        jpg.mkdir()
    elif kind == "frames_empty":
        for p in clip.iterdir():
            p.unlink()
    elif kind == "wav_missing":
        wav.unlink()
    elif kind == "csv_absolute":
        rows[int(rng.integers(len(rows)))] = f"{outside / 'victim'},NEU"
    elif kind == "csv_parent":
        rows[int(rng.integers(len(rows)))] = "../../../victim,NEU"
    elif kind == "csv_label":
        i = int(rng.integers(len(rows)))
        rows[i] = rows[i].split(",")[0] + ",CALM"
    elif kind == "csv_blank":
        rows.insert(int(rng.integers(len(rows) + 1)), "")
    elif kind == "csv_columns":
        i = int(rng.integers(len(rows)))
        rows[i] = rows[i] + ",extra,columns"
    elif kind == "csv_latin1":
        csv.write_bytes(b"\xe9\xff" + "\n".join(rows).encode())
        return
    elif kind == "csv_dup":
        rows.append(rows[0])
    elif kind == "csv_empty":
        rows = []
    elif kind == "link_out":
        (root / "AudioWAV" / "escape").symlink_to(outside, target_is_directory=True)
    elif kind == "link_loop":
        (root / "Image-01-FPS" / "loop").symlink_to(root, target_is_directory=True)
    elif kind == "name_space":
        i = int(rng.integers(len(rows)))
        rows[i] = " " + rows[i]
    csv.write_text("\n".join(rows) + ("\n" if rows else ""), encoding="utf-8-sig")


def tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


@settings(FUZZ, max_examples=max(EXAMPLES // 2, 8))
@given(kind=st.sampled_from(AV_CORRUPTIONS), seed=st.integers(0, 2**16), command=st.sampled_from(["train", "cache"]))
def test_a_corrupted_audio_visual_corpus_trains_or_is_one_line(tmp_path_factory, kind, seed, command):
    """A small real-format corpus (WAV + JPG frames + split CSVs) with one corruption of its media,
    its split files or its links: ``train`` and ``data cache`` either work or say one line, write
    nothing, and touch no file of the corpus or beside it."""
    from test_av_data import SMALL as AV_SMALL, make_cremad

    tmp = tmp_path_factory.mktemp("av")
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "victim").mkdir()
    (outside / "victim" / "keep.txt").write_text("the user's")
    (outside / "victim.part").mkdir()
    (outside / "victim.part" / "keep.txt").write_text("the user's too")
    root = make_cremad(tmp / "CREMA-D", n_train=8, n_test=3)
    av_corrupt(root, kind, np.random.default_rng(seed), outside)
    before, beside = tree_digest(root), tree_digest(outside)
    out = tmp / "out"
    if command == "train":
        argv = ["train", "--quiet", "--dataset", "cremad", "--data", str(root), "--out", str(out), *AV_SMALL,
                "train.epochs=1", "data.batch_size=4", "data.valid_fraction=0.25", "train.probe=false"]
    else:
        argv = ["data", "cache", "cremad", f"data={root}", f"out={out}", "data.image_size=48"]
    rc, err = run_cli(argv)
    assert_one_line_or_success(rc, err, out)
    assert not (tmp / "out.part").exists()
    assert tree_digest(root) == before and tree_digest(outside) == beside


# --- `cli.py data` step arguments -------------------------------------------------------------------

STEP_KEYS = ["src", "out", "sample_rate", "fps", "image_size", "data.sample_rate", "data.fps", "model.dim", "views",
             "", "=", "--src", "Src", "src.x"]
STEP_VALUES = st.one_of(st.sampled_from(["", "0", "-1", "1e400", "nan", "[1, 2]", "{a: 1}", "null", "yes", "16000",
                                         "10**9", "999999999999", "../..", "/", "a=b", "\x00"]),
                        st.text(alphabet="ab01=.-/ []{}:", max_size=12))


@settings(FUZZ, max_examples=max(EXAMPLES // 2, 8))
@given(extra=st.lists(st.tuples(st.sampled_from(STEP_KEYS), STEP_VALUES), max_size=3), drop=st.sampled_from(
    [None, "src", "out"]))
def test_data_step_arguments_prepare_or_are_one_line(tmp_path_factory, extra, drop):
    """``data prepare cremad src=RAW out=DIR`` with up to three more ``key=value`` arguments drawn from
    the step's options, the dataset's bare and dotted settings, other sections and junk (and maybe one
    required option left out): it prepares, or exits 2 with one line (argparse's usage error for a
    flag), writing nothing; the raw corpus is never touched."""
    from test_av_data import make_cremad

    tmp = tmp_path_factory.mktemp("step")
    root = make_cremad(tmp / "raw", n_train=2, n_test=1)
    before = tree_digest(root)
    given = {"src": f"src={root}", "out": f"out={tmp / 'out'}"}
    argv = ["data", "prepare", "cremad", *(v for k, v in given.items() if k != drop),
            *(f"{k}={v}" if k != "=" else v for k, v in extra)]
    # a key given twice: the last one wins, as with config overrides; relative paths from tmp
    outs = [a.split("=", 1)[1] for a in argv[3:] if a.startswith("out=")]
    out = tmp / outs[-1] if outs and outs[-1] else None
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        rc, err = run_cli(argv)
    except SystemExit as e:  # argparse: a --flag or a stray word, usage and one error line
        assert e.code == 2
        rc, err = 2, "error: (argparse)"
    finally:
        os.chdir(cwd)
    assert_one_line_if_refused(rc, err)
    if rc == 0:
        assert (out / "splits.csv").is_file()
    elif out is not None and out.resolve() != root.resolve():
        assert not out.exists() or out.resolve() in (tmp.resolve(), *tmp.resolve().parents) or not any(out.iterdir())
    assert tree_digest(root) == before
