"""Commands shown in README and docs cannot rot: every `cli.py` / `mmsent` command in a bash block
parses with today's CLI, and every train / table / sweep whose data exists here passes --dry-run
(config, data, model and rows checked, nothing written). The results pages are the CSVs' and the
docs' links point at files that exist."""
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
from mmsent.cli import parse  # noqa: E402

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHARED = ROOT.parent / "shared/data"


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `cli.py`) of every command line in the docs' bash blocks."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                m = re.search(r"(?:^|\s|;)(?:python |\S*/python )?(?:cli\.py|-m mmsent)\s+(.*)$|^\s*mmsent\s+(.*)$", line)
                if not m:
                    continue
                rest = (m.group(1) or m.group(2)).split("; done")[0].split(" && ")[0]
                words = shlex.split(rest, comments=True)
                out.append((f"{doc.relative_to(ROOT)}: {line.strip()[:80]}", words))
    return out


COMMANDS = documented_commands()
PLACEHOLDERS = {"PATH": str(SHARED / "mosi/mosi_utterance.pkl"), "PATH/mosi_utterance.pkl": str(SHARED / "mosi/mosi_utterance.pkl")}
LOOP_VARIABLES = {"$st": "dgl", "$s": "0", "$m": "text"}  # the docs' for-loops (longest name first)


def fill(word: str) -> str:
    word = PLACEHOLDERS.get(word, word)
    for var, value in LOOP_VARIABLES.items():
        word = word.replace(var, value)
    return word


def test_the_docs_show_commands_of_every_kind():
    kinds = {argv[0] for _, argv in COMMANDS if argv}
    assert {"train", "table", "sweep", "report", "plot", "predict", "data"} <= kinds and len(COMMANDS) > 40


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_documented_command_parses_and_dry_runs(where, argv, tmp_path, monkeypatch, capsys):
    argv = [fill(a) for a in argv if a != "..."]
    args = parse(argv)  # an option that no longer exists fails here (SystemExit)
    if args.command not in ("train", "table", "sweep") or getattr(args, "resume", False):
        return  # report / plot / predict / data / --resume act on files made by an earlier command
    data = getattr(args, "data", None)
    own = args.dataset in (None, "features")
    if own and data and data.endswith((".npz", ".pkl")) and not Path(data).exists() and not data.startswith(str(SHARED)):
        data = str(_views(tmp_path / Path(data).name))  # a user's own feature file, made here
        argv = [data if a == args.data else a for a in argv]
    needs = [p for p in (data, getattr(args, "config", None)) if p]
    if any(not (ROOT / p).exists() and not Path(p).exists() for p in needs):
        pytest.skip(f"needs {needs} (../shared or a user's file)")
    if args.command == "train" and not data and args.dataset in ("mosi", None) and not (SHARED / "mosi").is_dir():
        pytest.skip("needs ../shared/data/mosi")
    monkeypatch.chdir(ROOT)  # the docs' relative paths (configs/, ../shared) are the checkout's
    before = sorted(p.name for p in (ROOT / "runs").glob("*")) if (ROOT / "runs").is_dir() else []
    # a table's plan against this checkout's own runs/ would depend on what was run here before
    extra = ["--runs-dir", str(tmp_path / "runs")] if args.command == "table" else []
    rc = cli.main([*argv, *extra, "--dry-run"])
    out = capsys.readouterr()
    if rc == 2 and "needs the package" in out.err:
        pytest.skip(out.err.strip())  # an optional extra (MiniLM weights) not installed here
    if rc != 0 and not SHARED.is_dir():  # a recipe's default data (MOSI, avdigits) lives in ../shared
        pytest.skip(f"needs ../shared (absent here): {out.err.strip().splitlines()[-1] if out.err.strip() else where}")
    assert rc == 0, (where, out.err)
    assert "dry run (nothing written)" in out.out, (where, out.out)
    after = sorted(p.name for p in (ROOT / "runs").glob("*")) if (ROOT / "runs").is_dir() else []
    assert after == before, where


def _views(path: Path) -> Path:
    """A small feature file in the layout the docs describe (six keys, ten classes)."""
    rng = np.random.default_rng(0)
    keys = ["v0", "v1", "v2", "v3", "v4", "v5", "eeg", "emg"]
    arrays = {}
    for split, n in (("train", 40), ("valid", 20), ("test", 20)):
        arrays.update({f"{split}/{k}": rng.normal(size=(n, 4)).astype(np.float32) for k in keys})
        arrays[f"{split}/classification_labels"] = np.arange(n) % 10
    if path.suffix == ".pkl":
        import pickle

        parts = {("valid" if s == "valid" else s): {k.split("/")[1]: v for k, v in arrays.items() if k.startswith(s + "/")}
                 for s in ("train", "valid", "test")}
        path.write_bytes(pickle.dumps(parts))
    else:
        np.savez(path, **arrays)
    return path


def test_links_in_the_docs_point_at_files_that_exist():
    broken = []
    for doc in DOCS:
        prose = re.sub(r"`[^`]*`", "", re.sub(r"```.*?```", "", doc.read_text(), flags=re.S))  # code is not links
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", prose):
            if not target.startswith(("http://", "https://")) and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken


def test_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
