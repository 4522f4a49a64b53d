"""The protocol of the paper's Tables 1 and 2: every strategy, vanilla fusion and the unimodal-only
models, over several seeds, under one training recipe; model selection on validation only. The
columns and the cell metric come from the dataset's registry entry (``DATASETS``): MOSI and MOSEI
report Acc-2 (has0) over audio / visual / text / multi (Table 2 right), the audio-visual corpora
accuracy over audio / visual / multi (Table 1, and Table 2 left with --fusion mmtm); a dataset
without labels gets one column per modality key of its data and its task's headline metric.

Each (method, seed) is one ``cli.py train`` run in ``<runs>/<method>-s<seed>``. Finished runs
(with ``results.json``) are never re-run; an interrupted one resumes from its ``last.pt``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from mmsent.config import Config, ConfigError, choose, differences, load_config
from mmsent.data import DATASETS, build_dataset
from mmsent.files import make_dir, write_text
from mmsent.interrupt import PARENT_ENV, Interrupted
from mmsent.recipes import recipe, train_argv, train_config
from mmsent.report import cell, load_results, percent, summarize, summarize_probes
from mmsent.strategies import STRATEGIES
from mmsent.tasks import TASKS
from mmsent.rundir import RunError, load_run_config



def _row(name: str) -> list[str]:
    """The overrides of a strategy's row: the strategy, and the model it needs (MMCosine: linear concat)."""
    return [f"strategy={name}", *(f"model.{k}={v}" for k, v in STRATEGIES[name].needs_model.items())]


def strategy_rows(fusion: str | None = None, dense: bool = False) -> dict[str, list[str]]:
    """Row label -> strategy overrides, for every registered strategy with a ``label``, in the
    registry's (the paper's) order; unimodal-only rows come first, per dataset. Per-method
    hyper-parameters live in the dataset's config (strategy.presets), so a single
    `cli.py train --strategy X` run is the same run as the table's row. With ``fusion`` (a table
    over one head, ``model.fusion=X`` for every row), only the methods defined on that head; with
    ``dense`` (a segmentation dataset), only those defined for dense prediction."""
    return {cls.label: _row(name) for name, cls in STRATEGIES.items()
            if cls.label and (fusion is None or cls.defined_on(fusion)) and (cls.dense_ok or not dense)}


def table_fusion(overrides) -> str | None:
    """The head a table's every row is given (its last ``model.fusion=X`` override), if any."""
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("model.fusion=")]
    return given[-1] if given else None


def modality_columns(dataset: str, data: str | None = None, overrides=(), config: str | None = None) -> dict[str, str]:
    """Modality key -> column label: the registry's labels, else the keys of the data itself."""
    if choose(DATASETS, "dataset", dataset).modalities is None:
        path = Path(config) if config else recipe(dataset)
        cfg = load_config(path if path is not None and path.is_file() else None,
                          [("data.dataset", dataset), *([("data.path", data)] if data else []), *overrides])
        return labels_of(dataset, build_dataset(cfg.data, planning=True).modalities)  # its keys: nothing built
    return labels_of(dataset, [])


def labels_of(dataset: str, keys) -> dict[str, str]:
    """The registry's column labels, else each key capitalised, in the data's order."""
    return dict(DATASETS[dataset].modalities or {m: m.capitalize() for m in keys})


def unimodal_only(columns: dict[str, str]) -> dict[str, str]:
    """Row label -> modality, for the unimodal-only rows."""
    return {f"{label}-only": m for m, label in columns.items()}


def table_rows(columns: dict[str, str], fusion: str | None = None, dense: bool = False) -> dict[str, list[str]]:
    """Every row of a table: one unimodal-only model per modality, then the strategies (those
    defined on ``fusion`` when the table fixes the head, and for dense prediction when ``dense``)."""
    uni = {row: ["strategy=unimodal", f"strategy.modality={m}"] for row, m in unimodal_only(columns).items()}
    return {**uni, **strategy_rows(fusion, dense)}


def slug(method: str) -> str:
    return method.lower().replace("&", "n").replace(" ", "_").replace("-", "_")


def effective(config: dict) -> dict:
    """What a run was made with: its config less the presets of other strategies (the recipe's
    ``strategy.presets`` holds every strategy's; only the run's own acts on it)."""
    s = config.get("strategy", {})
    own = {s.get("name"): s.get("presets", {}).get(s.get("name"))}
    return {**config, "strategy": {**s, "presets": own}}


def stale_reason(out: Path, want: Config) -> str | None:
    """Why the finished run in ``out`` is not the run ``want`` describes (None: it is): its config,
    and the strategy settings it recorded with their code defaults (runs from before that record
    are judged on their config alone)."""
    try:  # through the loader: keys added to the config since the run read as their defaults
        have = load_run_config(out).to_dict()
        ran = json.loads((out / "results.json").read_text()).get("strategy_settings")
    except (RunError, ConfigError, OSError, ValueError) as e:
        return f"its config.json or results.json does not load: {e}"
    diff = differences(effective(have), effective(json.loads(json.dumps(want.to_dict()))))
    if ran is not None and not diff:
        now = json.loads(json.dumps(asdict(want.strategy.settings)))
        diff = differences({"settings": ran}, {"settings": now}, "strategy.")
    return "; ".join(diff) if diff else None


_CHILDREN: set = set()  # training processes of the running table, stopped with it


def run_one(cmd: list[str], out: Path, threads: int) -> tuple[Path, int, str]:
    if (out / "results.json").is_file():
        return out, 0, "done before"
    # a run of ours that died before its first checkpoint is started again in place by `train`
    resume = ["--resume"] if (out / "last.pt").is_file() else []
    # `python -m mmsent` from the same mmsent as this table's, installed or in a checkout
    home = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([home, *filter(None, [os.environ.get("PYTHONPATH")])]),
               **{PARENT_ENV: str(os.getpid())})  # the child dies with the table, even on kill -9
    p = subprocess.Popen([sys.executable, "-m", "mmsent", "train", "--quiet", *cmd, *resume],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)  # Ctrl-C reaches the table alone, which stops its children
    _CHILDREN.add(p)
    try:
        _, err = p.communicate()
    finally:
        _CHILDREN.discard(p)
    return out, p.returncode, (err.strip().splitlines() or [""])[-1]


def stop_children() -> None:
    """SIGTERM every training child (each stops at a safe point, its run resumable) and wait."""
    for p in list(_CHILDREN):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in list(_CHILDREN):
        p.wait()


def custom_row(text: str) -> tuple[str, list[str]]:
    """``"LABEL:key=value,key=value"`` -> (label, overrides): an ablation row of its own."""
    label, _, spec = text.partition(":")
    overrides = [o.strip() for o in spec.split(",") if o.strip()]
    if not label.strip() or not overrides or any("=" not in o for o in overrides):
        raise ValueError(f"custom row {text!r} must look like 'LABEL:key=value[,key=value...]'")
    return label.strip(), overrides


def choose_rows(dataset: str, data: str | None, methods: list[str] | None, overrides=(),
                config: str | None = None) -> dict[str, list[str]]:
    """The table's rows, label -> overrides, in order: ``methods`` names rows by label, ``all`` (the
    default) every row defined on the table's head, 'LABEL:key=value,...' a row of its own."""
    fusion, dense = table_fusion(overrides), DATASETS[dataset].dense
    rows = table_rows(modality_columns(dataset, data, [o for o in overrides if o.startswith("data.")], config), fusion,
                      dense)
    every = list(rows)  # what `all` (and no --methods) stands for
    for text in [m for m in methods or [] if ":" in m]:
        label, extra = custom_row(text)
        rows[label] = extra
    named = [m.partition(":")[0].strip() for m in methods] if methods else ["all"]
    methods = list(dict.fromkeys(r for m in named for r in (every if m == "all" else [m])))
    left_out = [cls for cls in STRATEGIES.values() if cls.label in methods and cls.label not in rows]
    if dense and any(not cls.dense_ok for cls in left_out):
        raise ValueError("not defined for dense prediction: " + ", ".join(c.label for c in left_out if not c.dense_ok))
    if left_out:
        raise ValueError(f"not defined on model.fusion={fusion}: "
                         + ", ".join(f"{c.label} (its head: {c.needs_model['fusion']})" for c in left_out))
    unknown = [m for m in methods if m not in rows]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from all, {', '.join(rows)} or give 'LABEL:key=value,...'")
    return {m: rows[m] for m in methods}


def run_table(*, dataset: str, data: str | None, seeds: list[int], runs_dir: Path, jobs: int = 1,
              methods: list[str] | None = None, overrides: list[str] = (), config: str | None = None,
              progress=print, dry_run: bool = False) -> dict[str, list[Path]]:
    """Train every (method, seed) run not finished yet under ``runs_dir`` and return the run
    directories per method. A finished run made with another config than the one its row gives now
    (``recipes.train_config``: a changed preset, recipe or strategy default) is refused with one
    line, never reused as if it were the new run and never deleted."""
    rows = choose_rows(dataset, data, methods, overrides, config)
    methods = list(rows)
    runs, dirs = [], {m: [] for m in methods}  # each run described once, as train_config's keywords
    for method in methods:
        for seed in seeds:
            out = runs_dir / f"{slug(method)}-s{seed}"
            dirs[method].append(out)
            runs.append((out, dict(dataset=dataset, data=data, config=config, seed=seed, out=str(out),
                                   overrides=[*rows[method], *overrides])))
    tasks = [(train_argv(**run), out) for out, run in runs]

    done_before = [(out, run) for out, run in runs if (out / "results.json").is_file()]
    if done_before:
        stale = [(out, why) for out, run in done_before
                 if (why := stale_reason(out, train_config(**run, notes=False)))]
        if stale:
            (out, why), more = stale[0], len(stale) - 1
            raise ValueError(f"{out} holds a finished run made with another config ({why})"
                             + (f", and {more} more run(s) like it" if more else "")
                             + "; move them away or pass another --runs-dir")
    for out, run in runs:  # every row's config is built before any run starts: a misspelled key is one line now
        if not (out / "results.json").is_file():
            try:
                train_config(**run, notes=False)
            except ConfigError as e:
                raise ValueError(f"row {out.name.rsplit('-s', 1)[0]!r}: {e}") from None
    if dry_run:
        state = lambda out: "done" if (out / "results.json").is_file() else "resumes" if (out / "last.pt").is_file() else "new"  # noqa: E731
        todo = sum(state(out) != "done" for out, _ in runs)
        progress(f"dry run (nothing written): {len(dirs)} rows x {len(seeds)} seeds in {runs_dir}, {todo} to train: "
                 + ", ".join(f"{m} ({', '.join(state(d) for d in ds)})" for m, ds in dirs.items()))
        return dirs
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failed, finished = [], 0
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = [pool.submit(run_one, cmd, out, threads) for cmd, out in tasks]
        for i, f in enumerate(futures, 1):
            out, rc, msg = f.result()
            progress(f"[{i}/{len(tasks)}] {out.name}: " + ("ok" if rc == 0 else f"FAILED ({msg})")
                     + (" (cached)" if msg == "done before" else ""))
            finished += rc == 0
            if rc:
                failed.append(out)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: stop every child at a safe point, then say so
        pool.shutdown(wait=False, cancel_futures=True)
        stop_children()
        pool.shutdown(wait=True)
        signum = getattr(e, "signum", signal.SIGINT)
        raise Interrupted(signum, f"interrupted by {signal.Signals(signum).name}: the table stopped with {finished} of "
                          f"{len(tasks)} runs done; run the same command again to finish it (unfinished runs resume)") from None
    pool.shutdown(wait=True)
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed, e.g. {failed[0]}; re-run the same command to retry them")
    return dirs


BASELINE = "Multimodal Baseline"  # the row every other row is compared with (when the table has it)


def write_table(dirs: dict[str, list[Path]], out_dir: Path, dataset: str, command: str,
                name: str | None = None, references: dict[str, list[Path]] | None = None) -> tuple[Path, Path]:
    """The Markdown and CSV tables of ``dirs`` (label -> run dirs, one per seed). Every row is
    compared with each reference row (default: the multimodal baseline; ``references`` adds rows, or
    supplies a reference's runs when ``dirs`` lacks them): see ``mmsent.significance``."""
    make_dir(out_dir)
    md = out_dir / f"{name or dataset + '_table'}.md"
    csv_path = out_dir / f"{name or dataset + '_table'}.csv"
    rows, lines = [], []
    results = {method: load_results(run_dirs) for method, run_dirs in dirs.items()}
    first = next(iter(results.values()))[0]
    labels = labels_of(dataset, [b for b in first["test"] if b != "multi"])
    columns = {**labels, "multi": "Multi"}
    metric = DATASETS[dataset].headline or TASKS[first["task"]].headline
    only = unimodal_only(labels)
    n_seeds = max(len(v) for v in dirs.values())
    title = {k: v for t in TASKS.values() for k, v in t.titles.items()}.get(metric, metric)
    lines.append(f"Test {title} at the validation-selected epoch, mean ± std over {n_seeds} seeds.\n")
    lines.append(f"Command: `{command}`\n")
    lines.append("| Method | " + " | ".join(columns.values()) + " | Val Multi |")
    lines.append("|---|" + "---|" * (len(columns) + 1))
    for method, run_dirs in dirs.items():
        summary = summarize(results[method])
        cells = []
        for branch in columns:
            # a unimodal-only model fills only its own column, as in the paper
            show = branch == only[method] if method in only else True
            if branch not in summary or not show:
                cells.append("-")
                continue
            cells.append(cell(metric, *summary[branch][metric]))
        cells.append(cell(metric, *summarize(results[method], "val")["multi"][metric]))  # what selection sees
        idle = sum(bool(r.get("never_acted")) and idle_is_vanilla(r) for r in results[method])
        if idle:  # the method never acted before the selected epoch in these seeds: the row is vanilla there
            cells[list(columns).index("multi")] += f" (never acted: {idle}/{len(run_dirs)} seeds)"
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
        probes = summarize_probes(results[method])
        for branch, metrics in [*summary.items(), *((f"probe:{m}", v) for m, v in probes.items())]:
            rows.append({"method": method, "branch": branch, "seeds": len(run_dirs),
                         **({"never_acted_seeds": idle} if branch == "multi" else {}),
                         **{f"{k}_{s}": v for k, (mean, std) in metrics.items() for s, v in (("mean", mean), ("std", std))}})
    refs = {**({BASELINE: dirs[BASELINE]} if BASELINE in dirs else {}), **(references or {})}
    for ref, ref_dirs in refs.items():
        section, diff_rows = significance_section(dirs, results, ref, ref_dirs, metric, title, set(only))
        lines += section
        rows += diff_rows
    if all(summarize_probes(r) for r in results.values()):
        lines += ["", f"Linear probe of each frozen encoder at the selected epoch (test {title}; regularisation chosen "
                  "on validation). A unimodal-only row shows the encoder it trained.", "",
                  "| Method | " + " | ".join(labels.values()) + " |", "|---|" + "---|" * len(labels)]
        for method, res in results.items():
            probes = summarize_probes(res)
            cells = [cell(metric, *probes[m][metric]) if (method not in only or only[method] == m) else "-"
                     for m in labels]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    write_text(md, "\n".join(lines) + "\n")
    write_text(csv_path, _csv_text(rows, list(dict.fromkeys(k for r in rows for k in r))))
    return md, csv_path


def idle_is_vanilla(result: dict) -> bool:
    """Whether the run's method, when it never acted, trained plain joint training (results
    written before ``Strategy.idle_is_vanilla`` existed say never_acted for methods where it
    does not mean that)."""
    from mmsent.strategies import STRATEGIES

    name = ((result.get("config") or {}).get("strategy") or {}).get("name")
    return bool(getattr(STRATEGIES.get(name), "idle_is_vanilla", False))


def reference_runs(labels, dirs: dict[str, list[Path]], runs_dir: Path, seeds) -> dict[str, list[Path]]:
    """The runs of each reference row: the table's own, else the finished ones in ``runs_dir`` (an
    ``--update`` that re-makes some rows still compares them with the baseline's runs)."""
    out = {}
    for label in labels:
        found = dirs.get(label) or [d for s in seeds if ((d := runs_dir / f"{slug(label)}-s{s}") / "results.json").is_file()]
        if not found:
            raise ValueError(f"--reference {label!r}: no finished runs of it in {runs_dir}; add it to --methods")
        out[label] = found
    return out


def _seed_of(run: Path) -> str:
    """The seed of a table run (``<method>-s<seed>``), which pairs it with the reference's run."""
    return Path(run).name.rsplit("-s", 1)[-1]


def significance_section(dirs, results, ref: str, ref_dirs: list[Path], metric: str, title: str,
                         skip: set) -> tuple[list[str], list[dict]]:
    """The Markdown lines and CSV rows comparing every row's fused model with ``ref``'s, seed by seed
    and over test samples (``mmsent.significance``)."""
    from mmsent.significance import SAMPLE_TESTS, paired_t, read_predictions, sample_test, stars, t_quantile

    ref_results = dict(zip(map(_seed_of, ref_dirs), load_results(ref_dirs)))
    ref_preds = {_seed_of(d): read_predictions(d) for d in ref_dirs}
    scale = 100 if percent(metric) else 1
    how = SAMPLE_TESTS.get(metric, f"none for {metric}, a ratio over the whole split")
    unit = ", in percentage points" if scale == 100 else ""
    n = max(len(v) for v in dirs.values())
    width = t_quantile(0.975, n - 1) / n ** 0.5 if n > 1 else float("nan")
    lines = ["", f"Difference from {ref} (test {title} of Multi, row minus {ref}{unit}), seed against seed: mean and "
             f"95 % t-interval over the paired seeds, the paired t-test's p, and p over the test samples "
             f"({how}). "
             f"* p < 0.05, ** p < 0.01 (per row, uncorrected). With {n} seeds the interval spans ±{width:.2f} standard "
             "deviations of the per-seed differences.", "",
             "| Method | Δ Multi [95 % CI] | p (seeds) | p (samples) |", "|---|---|---|---|"]
    rows = []
    fmt = lambda v: f"{scale * v:+.2f}"  # noqa: E731
    for method, run_dirs in dirs.items():
        if method == ref or method in skip:
            continue
        paired = [(d, r) for d, r in zip(run_dirs, results[method]) if _seed_of(d) in ref_results]
        seeds = paired_t([r["test"]["multi"][metric] for _, r in paired],
                         [ref_results[_seed_of(d)]["test"]["multi"][metric] for d, _ in paired])
        samples = sample_test(metric, [read_predictions(d) for d, _ in paired], [ref_preds[_seed_of(d)] for d, _ in paired])
        p_samples, n_samples = samples if samples else (float("nan"), 0)
        ci = f" [{fmt(seeds.low)}, {fmt(seeds.high)}]" if seeds.n > 1 else " (1 seed)"
        p_seed = f"{seeds.p:.3f}{stars(seeds.p)}" if seeds.n > 1 else "-"
        p_sample = (f"{p_samples:.3g}{stars(p_samples)}" if samples else "- (no predictions)" if metric in SAMPLE_TESTS
                    else "-")
        lines.append(f"| {method} | {fmt(seeds.mean)}{ci} | {p_seed} | {p_sample} |")
        rows.append({"method": method, "branch": f"diff:{ref}", "seeds": seeds.n, "delta": seeds.mean,
                     "delta_low": seeds.low, "delta_high": seeds.high, "p_seeds": seeds.p, "p_samples": p_samples,
                     "samples": n_samples})
    return lines, rows


def _csv_text(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _table_lines(md_text: str) -> list[str]:
    return md_text.rstrip("\n").split("\n")


def _sections(lines: list[str]) -> list[tuple[str, int, int, int]]:
    """The tables of a Markdown table file: ``(key, caption, header, end)`` line indices, where the
    key names what the section holds -- its header row, and for a comparison section the reference
    it compares with (those share a header) -- so that two files' sections pair up by meaning, not
    by position (a table made before a section existed lacks it)."""
    out = []
    for i, line in enumerate(lines):
        if not line.startswith("| Method |"):
            continue
        caption = next((k for k in range(i - 1, -1, -1) if lines[k].strip() and not lines[k].startswith("|")), i)
        key = line + (lines[caption].split(" (")[0] if lines[caption].startswith("Difference from") else "")
        end = i + 1
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        out.append((key, caption, i, end))
    return out


def merge_tables(old_md: str, new_md: str, old_rows: list[dict], new_rows: list[dict], note: str,
                 drop=()) -> tuple[str, list[dict]]:
    """``table --update``: the rows of ``new_*`` (a table of some methods) replace the same methods'
    rows of ``old_*`` in place, in every section (the results table, each comparison, the probe
    table), sections paired by what they hold; a method the old table lacks is appended to each
    section; a section the old table lacks is added whole, saying it holds the re-made rows only.
    Every other row is kept verbatim, and ``note`` (which rows were re-made, by which command) is
    added under the command line after any earlier such notes. The methods in ``drop`` lose their
    rows everywhere (a method no longer defined for the table)."""
    method_of = lambda line: line.split("|")[1].strip() if line.startswith("| ") else None  # noqa: E731
    new_lines, old_lines = _table_lines(new_md), _table_lines(old_md)
    fresh: dict[str, dict[str, str]] = {}  # section key -> method -> its row there
    new_sections = _sections(new_lines)
    for key, _, header, end in new_sections:
        fresh[key] = {method_of(line): line for line in new_lines[header + 2:end]}
    old_sections = _sections(old_lines)
    section_at = {i: key for key, _, header, end in old_sections for i in range(header + 2, end)}
    last_of = {end - 1: key for key, _, _, end in old_sections}
    notes = [i for i, line in enumerate(old_lines)
             if line.startswith("Command:") or line.startswith("Re-made rows:") or line.startswith("Removed rows:")]
    old_keys = [key for key, *_ in old_sections]
    # a section only the new table has goes before the first old section that follows it there
    added: dict[int, list[str]] = {}
    for n, (key, caption, header, end) in enumerate(new_sections):
        if key in old_keys:
            continue
        after = next((k for k, *_ in new_sections[n + 1:] if k in old_keys), None)
        at = next((c for k, c, _, _ in old_sections if k == after), len(old_lines)) if after else len(old_lines)
        rows = [line for line in new_lines[header + 2:end] if method_of(line) not in drop]
        added.setdefault(at, []).extend([new_lines[caption] + " This section holds the re-made rows only (it is newer "
                                         "than the other rows' runs).", "", *new_lines[header:header + 2], *rows, ""])
    out, seen = [], set()
    for i, line in enumerate(old_lines):
        out += added.get(i, [])
        m = method_of(line)
        key = section_at.get(i)
        if key is not None and m in drop:
            pass
        elif key is not None:
            seen.add((key, m))
            out.append(fresh.get(key, {}).get(m, line))
        else:
            out.append(line)
        if i in last_of:  # methods this section lacks: after its rows
            out += [row for m, row in fresh.get(last_of[i], {}).items()
                    if (last_of[i], m) not in seen and m not in drop]
        if notes and i == notes[-1]:
            out += ["", note]
    if added.get(len(old_lines)):
        out += ["", *added[len(old_lines)]]
    while out and not out[-1].strip():
        out.pop()
    done = {r["method"] for r in new_rows}
    kept = [r for r in old_rows if r["method"] not in done and r["method"] not in drop]
    order = list(dict.fromkeys([r["method"] for r in old_rows] + [r["method"] for r in new_rows]))
    rows = sorted(kept + new_rows, key=lambda r: order.index(r["method"]))
    return "\n".join(out) + "\n", rows


def update_table(md: Path, csv_path: Path, new_md: Path | None, new_csv: Path | None, command: str,
                 methods: list[str], drop=()) -> None:
    """Write the merge of the re-made rows (``new_*``; None: rows are only dropped) into the committed
    table (``merge_tables``)."""
    with csv_path.open(newline="") as f:
        old_rows = list(csv.DictReader(f))
    new_rows = []
    if new_csv is not None:
        with new_csv.open(newline="") as f:
            new_rows = list(csv.DictReader(f))
    note = (f"Re-made rows: {', '.join(methods)} (`{command}`); every other row is the command above's."
            if methods else f"Removed rows: {', '.join(drop)} (`{command}`).")
    if methods and drop:
        note += f" Removed rows: {', '.join(drop)}."
    text, rows = merge_tables(md.read_text(), new_md.read_text() if new_md else "", old_rows, new_rows, note, drop)
    fields = list(dict.fromkeys(k for r in old_rows + new_rows for k in r))
    csv_text = _csv_text(rows, fields)  # both made before either file changes
    write_text(md, text)
    write_text(csv_path, csv_text)
