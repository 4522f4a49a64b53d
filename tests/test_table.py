"""`cli.py table` (all methods over seeds, resumable, parallel, --update) end to end; plots are tests/test_plots.py's."""
import csv
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402

TINY = ["data.n_train=64", "data.n_val=32", "data.n_test=32", "data.batch_size=32", "model.dim=8", "model.hidden=16",
        "model.seq_len=2", "train.epochs=2"]


@pytest.mark.slow
def test_table_runs_writes_md_csv_and_resumes(tmp_path, capsys):
    args = ["table", "--dataset", "synthetic", "--seeds", "0", "1", "--jobs", "2", "--runs-dir", str(tmp_path / "runs"),
            "--out", str(tmp_path / "results"), "--methods", "Audio-only", "Multimodal Baseline", "DGL", *TINY]
    assert cli.main(args) == 0
    md = (tmp_path / "results/synthetic_table.md").read_text()
    assert "| Audio-only |" in md and "| DGL |" in md and "python cli.py table" in md
    audio_only = next(line for line in md.splitlines() if line.startswith("| Audio-only"))
    assert audio_only.count(" - ") == 3  # only its own column
    rows = list(csv.DictReader((tmp_path / "results/synthetic_table.csv").open()))
    dgl_multi = next(r for r in rows if r["method"] == "DGL" and r["branch"] == "multi")
    accs = [json.loads((tmp_path / f"runs/dgl-s{s}/results.json").read_text())["test"]["multi"]["acc2_has0"] for s in (0, 1)]
    assert float(dgl_multi["acc2_has0_mean"]) == pytest.approx(sum(accs) / 2)
    assert dgl_multi["seeds"] == "2" and "mae_std" in dgl_multi
    # a run interrupted after its first checkpoint resumes; a finished one is not re-run
    (tmp_path / "runs/dgl-s1/results.json").unlink()
    stamp = (tmp_path / "runs/dgl-s0/results.json").stat().st_mtime_ns
    capsys.readouterr()
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert out.count("(cached)") == 5 and "dgl-s1: ok\n" in out
    assert (tmp_path / "runs/dgl-s0/results.json").stat().st_mtime_ns == stamp
    assert (tmp_path / "runs/dgl-s1/results.json").is_file()
    # every row against the baseline (and against DGL when asked), from the runs' own test predictions
    assert cli.main([*args, "--reference", "DGL"]) == 0
    md = (tmp_path / "results/synthetic_table.md").read_text()
    against = md.split("Difference from Multimodal Baseline")[1].split("Difference from DGL")[0]
    assert "| DGL | " in against and "(no predictions)" not in against and "| Audio-only |" not in against
    assert "| Multimodal Baseline | " in md.split("Difference from DGL")[1]
    diff = next(r for r in csv.DictReader((tmp_path / "results/synthetic_table.csv").open())
                if r["method"] == "DGL" and r["branch"] == "diff:Multimodal Baseline")
    base = [json.loads((tmp_path / f"runs/multimodal_baseline-s{s}/results.json").read_text())["test"]["multi"]["acc2_has0"]
            for s in (0, 1)]
    assert float(diff["delta"]) == pytest.approx((accs[0] - base[0] + accs[1] - base[1]) / 2)
    assert diff["samples"] == str(len((tmp_path / "runs/dgl-s0/test_predictions.csv").read_text().splitlines()) - 1)


def test_table_rejects_unknown_method(tmp_path, capsys):
    assert cli.main(["table", "--dataset", "synthetic", "--methods", "Magic", "--runs-dir", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err
    # a reference that is neither a row nor finished runs stops the table before any training
    assert cli.main(["table", "--dataset", "synthetic", "--methods", "DGL", "--reference", "Nope", "--runs-dir",
                     str(tmp_path / "r")]) == 2
    assert "--reference 'Nope': no finished runs of it" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_custom_rows_with_their_own_overrides(tmp_path):
    """'LABEL:key=value,...' is a row of its own; a label may hold '=' (it stopped a whole study once)."""
    args = ["table", "--dataset", "synthetic", "--seeds", "0", "--runs-dir", str(tmp_path / "runs"), "--out",
            str(tmp_path / "res"), "--name", "ablation", "--methods", "DGL a=2:strategy=dgl,strategy.alpha=2", *TINY]
    assert cli.main(args) == 0
    cfg = json.loads((tmp_path / "runs/dgl_a=2-s0/config.json").read_text())
    assert cfg["strategy"] == {**cfg["strategy"], "name": "dgl", "alpha": 2.0} and cfg["train"]["epochs"] == 2
    assert "| DGL a=2 |" in (tmp_path / "res/ablation.md").read_text()
    assert cli.main([*args[:-len(TINY) - 2], "--methods", "Broken:strategy", *TINY]) == 2


def test_a_finished_run_made_with_another_config_is_refused_not_reused(tmp_path, capsys):
    """Changing a preset or the recipe and re-running the table must not present the old runs as the
    new rows: one line naming the run and the difference, exit 2, nothing deleted or re-written.
    Presets of other strategies and config keys added since the run (read as their defaults) are no
    difference."""
    args = ["table", "--dataset", "synthetic", "--seeds", "0", "--runs-dir", str(tmp_path / "runs"), "--out",
            str(tmp_path / "res"), "--methods", "DGL", *TINY]
    assert cli.main(args) == 0
    run = tmp_path / "runs/dgl-s0"
    stamp = (run / "results.json").stat().st_mtime_ns
    capsys.readouterr()
    assert cli.main([*args, "train.epochs=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(run) in err and "train.epochs: 2 -> 3" in err
    assert cli.main([*args, "strategy.presets.dgl.alpha=2"]) == 2
    assert "strategy.presets.dgl: None -> {'alpha': 2" in capsys.readouterr().err
    assert (run / "results.json").stat().st_mtime_ns == stamp
    # another strategy's preset, and a key the run's config.json predates, leave the run reusable
    cfg = json.loads((run / "config.json").read_text())
    del cfg["model"]["encoder_hidden"]
    (run / "config.json").write_text(json.dumps(cfg))
    assert cli.main([*args, "strategy.presets.ogm_ge.alpha=0.5"]) == 0
    assert "(cached)" in capsys.readouterr().out and (run / "results.json").stat().st_mtime_ns == stamp
    # the run recorded every strategy setting, defaults included; a default that changed since is a
    # difference although no config mentions it (simulated: the run says it ran at alpha 0.5)
    results = json.loads((run / "results.json").read_text())
    assert results["strategy_settings"]["alpha"] == 1.0
    results["strategy_settings"]["alpha"] = 0.5
    (run / "results.json").write_text(json.dumps(results))
    assert cli.main(args) == 2
    assert "strategy.settings.alpha: 0.5 -> 1.0" in capsys.readouterr().err


def test_table_update_replaces_only_the_remade_rows_in_every_section():
    """``table --update``: the re-made methods' rows replace theirs in the results table and the probe
    table, in place; other rows stay verbatim; a method the old table lacks is appended to each
    section; the CSV likewise; a note names the re-made rows, after the earlier notes it keeps."""
    from mmsent.table import merge_tables

    old = ("Title\n\nCommand: `full`\n\nRe-made rows: X (`old`)\n\n| Method | A | Multi |\n|---|---|---|\n"
           "| Base | 1 | 2 |\n| Opm | 3 | 4 |\n| Zed | 5 | 6 |\n\nProbe\n\n| Method | A |\n|---|---|\n"
           "| Base | 7 |\n| Opm | 8 |\n| Zed | 9 |\n")
    new = ("T\n\nCommand: `part`\n\n| Method | A | Multi |\n|---|---|---|\n| Opm | 30 | 40 |\n| New | 50 | 60 |\n\n"
           "P\n\n| Method | A |\n|---|---|\n| Opm | 80 |\n| New | 90 |\n")
    old_rows = [{"method": m, "branch": "multi", "x": str(i)} for i, m in enumerate(["Base", "Opm", "Zed"])]
    new_rows = [{"method": "Opm", "branch": "multi", "x": "new"}, {"method": "New", "branch": "multi", "x": "n"}]
    text, rows = merge_tables(old, new, old_rows, new_rows, "Re-made rows: Opm, New (`part`)")
    lines = text.splitlines()
    assert lines.count("Re-made rows: Opm, New (`part`)") == 1
    assert lines.index("Re-made rows: Opm, New (`part`)") == lines.index("Re-made rows: X (`old`)") + 2
    body = [line for line in lines if line.startswith("| ") and "Method" not in line]
    assert body == ["| Base | 1 | 2 |", "| Opm | 30 | 40 |", "| Zed | 5 | 6 |", "| New | 50 | 60 |",
                    "| Base | 7 |", "| Opm | 80 |", "| Zed | 9 |", "| New | 90 |"]
    assert [(r["method"], r["x"]) for r in rows] == [("Base", "0"), ("Opm", "new"), ("Zed", "2"), ("New", "n")]


def test_table_update_pairs_sections_by_what_they_hold_not_by_position():
    """An old table made before comparison sections existed ([results, probe]) updated by a new one
    ([results, difference from Base, difference from Opm, probe]): each probe row lands in the probe
    table (pairing by position put the difference rows there), the comparison sections are added
    whole before the probe table with a sentence saying they hold the re-made rows only, and two
    comparison sections, which share a header, pair up by the reference they compare with."""
    from mmsent.table import merge_tables

    diff = lambda ref, rows: (f"Difference from {ref} (test acc of Multi, row minus {ref}), seed against seed.\n\n"  # noqa: E731
                              "| Method | Δ Multi [95 % CI] | p (seeds) | p (samples) |\n|---|---|---|---|\n" + rows + "\n")
    old = ("Title\n\nCommand: `full`\n\n| Method | A | Multi |\n|---|---|---|\n| Base | 1 | 2 |\n| Opm | 3 | 4 |\n"
           "| Zed | 5 | 6 |\n\nProbe\n\n| Method | A |\n|---|---|\n| Base | 7 |\n| Opm | 8 |\n| Zed | 9 |\n")
    new = ("T\n\nCommand: `part`\n\n| Method | A | Multi |\n|---|---|---|\n| Base | 10 | 20 |\n| Opm | 30 | 40 |\n\n"
           + diff("Base", "| Opm | +1 | 0.1 | 0.2 |\n") + diff("Opm", "| Base | -1 | 0.1 | 0.2 |\n")
           + "P\n\n| Method | A |\n|---|---|\n| Base | 70 |\n| Opm | 80 |\n")
    text, _ = merge_tables(old, new, [], [], "Re-made rows: Base, Opm (`part`)")
    lines = text.splitlines()
    probe = lines[lines.index("Probe") + 2:]
    assert probe == ["| Method | A |", "|---|---|", "| Base | 70 |", "| Opm | 80 |", "| Zed | 9 |"], text
    assert lines[lines.index("| Base | 10 | 20 |") + 2] == "| Zed | 5 | 6 |"
    firsts = [i for i, line in enumerate(lines) if line.startswith("Difference from")]
    assert len(firsts) == 2 and firsts[1] < lines.index("Probe"), text
    assert lines[firsts[0]].startswith("Difference from Base") and lines[firsts[0]].endswith("holds the re-made rows "
                                                                                              "only (it is newer than the other rows' runs).")
    assert lines[firsts[0] + 4] == "| Opm | +1 | 0.1 | 0.2 |" and lines[firsts[1] + 4] == "| Base | -1 | 0.1 | 0.2 |"
    # the merged table merged again with a newer Base row: each comparison keeps its own rows
    newer = new.replace("| Opm | +1 | 0.1 | 0.2 |", "| Opm | +2 | 0.3 | 0.4 |")
    again, _ = merge_tables(text, newer, [], [], "Re-made rows: Opm (`again`)")
    assert "| Opm | +2 | 0.3 | 0.4 |" in again and "| Base | -1 | 0.1 | 0.2 |" in again and "| Opm | +1 |" not in again
    assert again.count("Difference from") == 2


def test_table_update_drops_rows_with_a_note(tmp_path):
    """``table --update --drop LABEL``: the rows leave every section and the CSV, nothing is trained,
    and the file says which rows were removed by which command; --drop without --update is refused."""
    import cli

    old = ("Title\n\nCommand: `full`\n\n| Method | A |\n|---|---|\n| Base | 1 |\n| Mla | 2 |\n\nProbe\n\n"
           "| Method | A |\n|---|---|\n| Base | 3 |\n| Mla | 4 |\n")
    (tmp_path / "t.md").write_text(old)
    (tmp_path / "t.csv").write_text("method,branch,x\nBase,multi,1\nMla,multi,2\n")
    args = ["table", "--dataset", "avdigits", "--name", "t", "--out", str(tmp_path)]
    assert cli.main([*args, "--drop", "Mla"]) == 2
    assert cli.main([*args, "--update", "--drop", "Mla"]) == 0
    text = (tmp_path / "t.md").read_text()
    assert "| Mla |" not in text and text.count("| Base |") == 2
    assert "Removed rows: Mla (`python cli.py table" in text
    assert (tmp_path / "t.csv").read_text().splitlines() == ["method,branch,x", "Base,multi,1"]


def test_a_table_over_one_head_has_the_methods_defined_there():
    """`all` is every row; with model.fusion=mmtm for every row, the methods that need a head of their
    own (MMCosine: linear concat, MLA and ReconBoost: one shared classifier, AMCo: class mixing) are left
    out and Greedy and LFM (defined on MMTM too) stay; naming a left-out one is one line."""
    from mmsent.table import choose_rows

    every = choose_rows("avdigits", None, None)
    assert list(every)[:3] == ["Audio-only", "Visual-only", "Multimodal Baseline"] and len(every) == 2 + 19
    assert every["MMCosine"] == ["strategy=mmcosine", "model.fusion=concat", "model.hidden=0"]
    mmtm = choose_rows("avdigits", None, ["all", "DGL-MH:strategy=dgl_mh"], ["model.fusion=mmtm"])
    assert set(every) - set(mmtm) == {"MMCosine", "MLA", "ReconBoost", "AMCo"}
    assert {"Greedy", "LFM", "DGL", "OGM_GE"} <= set(mmtm) and list(mmtm)[-1] == "DGL-MH"
    assert mmtm["DGL-MH"] == ["strategy=dgl_mh"]
    with pytest.raises(ValueError, match=r"not defined on model.fusion=mmtm: MLA \(its head: shared\)"):
        choose_rows("avdigits", None, ["DGL", "MLA"], ["model.fusion=mmtm"])
    assert list(choose_rows("mosi", None, ["DGL", "all"])) == ["DGL"] + [m for m in choose_rows("mosi", None, None)
                                                                       if m != "DGL"]
