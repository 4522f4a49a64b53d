"""Audio-visual corpora on tiny fixtures written here in the real layouts (CREMA-D's AudioWAV/ +
Image-01-FPS/ + train.csv/test.csv; a Kinetics-Sounds-style folder of videos): decoding against
independent numpy references, augmentation and determinism, every bad-input case, prepare with
ffmpeg (resumable), and training runs through the CLI with concat and MMTM heads."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from scipy.io import wavfile

from mmsent.config import load_config
from mmsent.data import DataError, build_dataset
from mmsent.data.av_decode import AVSettings, fit_length, load_frames, read_wav
from mmsent.data.media import find_ffmpeg
from mmsent.train import set_epoch_lr
from mmsent.evaluate import branch_predictions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_av_blocks import numpy_log_stft  # noqa: E402

import cli  # noqa: E402
from conftest import log_records  # noqa: E402

EMOTIONS = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
# 64 STFT frames keep every ResNet map at least two columns wide: on one-column maps torch's CPU
# convolution kernels misbehaved here (bf16 garbage gradients, one segfault in a float32 backward)
SMALL = ["data.audio_frames=64", "data.image_size=48", "data.num_workers=0", "data.batch_size=4", "model.width=4",
         "data.valid_fraction=0.25"]


def clip_name(i: int) -> str:
    return f"{1001 + i}_DFA_{EMOTIONS[i % 6]}_XX"


def write_clip(root: Path, name: str, i: int, *, rate=16000, seconds=0.3, frames=3):
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.5 * np.sin(2 * np.pi * (200 + 100 * (i % 6)) * t)
    (root / "AudioWAV").mkdir(parents=True, exist_ok=True)
    wavfile.write(root / "AudioWAV" / f"{name}.wav", rate, (wave * 32767).astype(np.int16))
    d = root / "Image-01-FPS" / name
    d.mkdir(parents=True, exist_ok=True)
    for k in range(frames):
        img = np.zeros((32, 40, 3), np.uint8)
        img[..., i % 3] = 40 * (i % 6) + 20 * k
        img[:16, :20] = 255  # structure, so crops and flips change the tensor
        Image.fromarray(img).save(d / f"{k:05d}.jpg")


def make_cremad(root: Path, n_train=12, n_test=5) -> Path:
    names = [clip_name(i) for i in range(n_train + n_test)]
    for i, n in enumerate(names):
        write_clip(root, n, i)
    # the real split files: "clip,label" rows, UTF-8 with a byte-order mark
    (root / "train.csv").write_text("".join(f"{n},{n.split('_')[2]}\n" for n in names[:n_train]), encoding="utf-8-sig")
    (root / "test.csv").write_text("".join(f"{n},{n.split('_')[2]}\n" for n in names[n_train:]), encoding="utf-8-sig")
    return root


def cremad_cfg(root: Path, *extra):
    overrides = [(k, yaml.safe_load(v)) for k, v in (o.split("=", 1) for o in SMALL + list(extra))]
    return load_config(Path(cli.ROOT) / "configs/cremad.yaml", [("data.path", str(root)), *overrides])


def test_loader_sizes_labels_and_every_test_clip(tmp_path):
    root = make_cremad(tmp_path / "CREMA-D")
    ds = build_dataset(cremad_cfg(root).data)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 3, 5)  # every 4th train clip validates
    # training batches never hold a single clip (BatchNorm): 9 = 4 + 5, every clip used once
    sizes = [len(b) for b in ds.train.batches(4, shuffle=True, generator=torch.Generator().manual_seed(0))]
    assert sizes == [4, 5]
    assert not set(ds.val.ids) & set(ds.train.ids)
    assert ds.num_classes == 6 and ds.task == "classification"
    want = {clip_name(i): i % 6 for i in range(17)}  # CREMA-D order NEU HAP SAD FEA DIS ANG
    assert all(int(y) == want[c] for c, y in zip(ds.train.ids + ds.test.ids, torch.cat([ds.train.y, ds.test.y])))
    batches = list(ds.test.batches(4))
    assert [len(b) for b in batches] == [4, 1] and sum((b.ids for b in batches), []) == ds.test.ids
    b = batches[0]
    assert b.x["audio"].shape == (4, 257, 64) and b.x["visual"].shape == (4, 1, 3, 48, 48)


def test_spectrogram_of_a_clip_equals_numpy_stft_of_the_tiled_wave(tmp_path):
    root = make_cremad(tmp_path / "c")
    ds = build_dataset(cremad_cfg(root, "data.sample_rate=16000").data)  # no resampling: an exact reference
    rate, raw = wavfile.read(root / "AudioWAV" / f"{ds.test.ids[0]}.wav")
    wave = raw.astype(np.float64) / 32768.0
    n = 63 * 353  # (audio_frames - 1) * hop samples, the clip tiled as the authors' np.tile
    wave = np.tile(wave, -(-n // len(wave)))[:n]
    got = ds.test.batch(torch.tensor([0])).x["audio"][0].double().numpy()
    want = numpy_log_stft(wave)
    assert got.shape == want.shape == (257, 64)
    # float32 decoding: compare magnitudes (the log of near-zero bins amplifies float32 rounding)
    np.testing.assert_allclose(np.exp(got), np.exp(want), rtol=1e-4, atol=1e-5 * np.exp(want).max())


def test_resampling_keeps_the_tone_and_long_clips_are_cut(tmp_path):
    rate = 16000
    t = np.arange(rate) / rate
    wavfile.write(tmp_path / "a.wav", rate, (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16))
    x = read_wav(tmp_path / "a.wav", 22050)
    assert abs(len(x) - 22050) <= 1
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * 22050 / len(x) - 440) < 2
    long = np.arange(10.0)
    assert fit_length(long, 4, None).tolist() == [3, 4, 5, 6]  # centred at test time
    assert fit_length(np.arange(3.0), 7, None).tolist() == [0, 1, 2, 0, 1, 2, 0]  # tiled


def test_frames_sampling_augmentation_and_determinism(tmp_path):
    root = make_cremad(tmp_path / "c")
    folder = root / "Image-01-FPS" / clip_name(0)
    spec = AVSettings(frames=1, image_size=32)
    a = load_frames(folder, spec, None)
    b = load_frames(folder, spec, None)
    assert a.shape == (1, 3, 32, 32) and np.array_equal(a, b)
    # centre frame at test time: frame 1 of 3 (value 20 on channel 0 before normalisation)
    want = (20 / 255 - 0.485) / 0.229
    assert abs(float(np.median(a[0, 0])) - want) < 0.05
    seeds = [load_frames(folder, spec, np.random.default_rng(s)) for s in range(4)]
    assert any(not np.array_equal(seeds[0], s) for s in seeds[1:])  # crops/flips/frame choice vary
    np.testing.assert_array_equal(load_frames(folder, spec, np.random.default_rng(7)),
                                  load_frames(folder, spec, np.random.default_rng(7)))


def test_batches_are_the_same_with_worker_processes(tmp_path):
    root = make_cremad(tmp_path / "c")
    one = build_dataset(cremad_cfg(root).data)
    two = build_dataset(cremad_cfg(root, "data.num_workers=2").data)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for a, b in zip(one.train.batches(4, shuffle=True, generator=g1), two.train.batches(4, shuffle=True, generator=g2)):
        assert a.ids == b.ids
        torch.testing.assert_close(a.x["visual"], b.x["visual"])
        torch.testing.assert_close(a.x["audio"], b.x["audio"])


def test_every_frame_of_every_split_is_checked_before_the_first_epoch(tmp_path):
    """A test clip's frame cut in half was found only after training; now the corpus is refused as it
    loads, naming the frame. What PIL reads is accepted: a PNG saved under .jpg, and a JPEG with bytes
    after its end marker (some cameras append data), both decoded in full because their bytes do not
    look like a plain JPEG."""
    from PIL import Image

    root = make_cremad(tmp_path / "c")
    test_clip = (root / "test.csv").read_text(encoding="utf-8-sig").split(",")[0]
    frames = sorted((root / "Image-01-FPS" / test_clip).iterdir())
    assert frames[0].read_bytes()[:3] == b"\xff\xd8\xff" and frames[0].read_bytes()[-2:] == b"\xff\xd9"
    Image.open(frames[0]).convert("RGB").save(frames[0], format="PNG")
    frames[-1].write_bytes(frames[-1].read_bytes() + b"trailer")
    build_dataset(cremad_cfg(root).data)  # both readable: accepted
    data = frames[0].read_bytes()
    cut = sorted((root / "Image-01-FPS" / test_clip).iterdir())[-1]
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(cut, format="JPEG")  # large enough that half of it keeps the whole header
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])
    with pytest.raises(DataError, match=f"{cut.name}: not a readable image"):
        build_dataset(cremad_cfg(root).data)
    cut.write_bytes(b"\xff\xd8\xff" + bytes(40))  # a JPEG's first bytes and nothing else
    with pytest.raises(DataError, match=f"{cut.name}: not a readable image"):
        build_dataset(cremad_cfg(root).data)
    assert data == frames[0].read_bytes()


def test_bad_inputs_name_the_file_clip_or_label(tmp_path):
    root = make_cremad(tmp_path / "corrupt")
    (root / "AudioWAV" / f"{clip_name(2)}.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    with pytest.raises(DataError, match=f"{clip_name(2)}.wav: not a readable WAV"):
        build_dataset(cremad_cfg(root).data)

    root = make_cremad(tmp_path / "noframes")
    for p in (root / "Image-01-FPS" / clip_name(4)).iterdir():
        p.unlink()
    with pytest.raises(DataError, match=f"clip '{clip_name(4)}' has no frames folder"):
        build_dataset(cremad_cfg(root).data)

    root = make_cremad(tmp_path / "label")
    with open(root / "test.csv", "a") as f:
        f.write("9999_IEO_CAL_XX,CALM\n")
    with pytest.raises(DataError, match="unknown class label 'CALM'"):
        build_dataset(cremad_cfg(root).data)

    root = make_cremad(tmp_path / "twice")
    with open(root / "test.csv", "a") as f:
        f.write(f"{clip_name(0)},NEU\n")  # a train clip in test too
    with pytest.raises(DataError, match=f"clip '{clip_name(0)}' is listed twice \\(train and test\\)"):
        build_dataset(cremad_cfg(root).data)

    root = make_cremad(tmp_path / "nosplit")
    (root / "test.csv").unlink()
    with pytest.raises(DataError, match="no split file"):
        build_dataset(cremad_cfg(root).data)


def test_bad_corpus_through_the_cli_is_one_line_and_no_run_dir(tmp_path, capsys):
    root = make_cremad(tmp_path / "c")
    (root / "AudioWAV" / f"{clip_name(0)}.wav").write_bytes(b"not audio")
    rc = cli.main(["train", "--quiet", "--dataset", "cremad", "--data", str(root), "--out", str(tmp_path / "run"), *SMALL])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and f"{clip_name(0)}.wav" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args", [
    ["--strategy", "dgl"],
    ["--strategy", "dgl", "--fusion", "mmtm"],
    ["--strategy", "unimodal", "--fusion", "mmtm", "strategy.modality=visual"],
    ["--strategy", "ogm_ge", "train.amp=true"],
])
def test_one_epoch_end_to_end_through_the_cli(tmp_path, args):
    root = make_cremad(tmp_path / "CREMA-D")
    out = tmp_path / "run"
    rc = cli.main(["train", "--quiet", "--dataset", "cremad", "--data", str(root), "--epochs", "1", "--out", str(out),
                   *SMALL, *args])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["test"]) == {"multi", "audio", "visual"}
    assert all(0 <= res["test"][k]["acc"] <= 1 for k in res["test"])
    cfg = json.loads((out / "config.json").read_text())
    if "dgl" in args:  # the CREMA-D preset alpha = 4 reaches the strategy
        assert cfg["strategy"]["presets"]["dgl"] == {"alpha": 4.0}
    log = log_records(out / "metrics.jsonl")
    assert set(log[0]["grad_norm"]) == {"audio", "visual"}


def test_step_decay_of_the_learning_rate():
    cfg = load_config(None, [("train.lr_step", 2), ("train.lr_gamma", 0.1)]).train
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    got = []
    for epoch in range(5):
        set_epoch_lr(opt, cfg, epoch)
        got.append(opt.param_groups[0]["lr"])
    np.testing.assert_allclose(got, [2e-3, 2e-3, 2e-4, 2e-4, 2e-5])


# ------------------------------------------------------------------ prepare (ffmpeg)
needs_ffmpeg = pytest.mark.skipif(find_ffmpeg() is None, reason="ffmpeg not installed (pip install imageio-ffmpeg)")


def make_video(path: Path, seconds: int, freq: int):
    import subprocess

    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([find_ffmpeg(), "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"testsrc=size=48x32:rate=10:duration={seconds}", "-f", "lavfi", "-i",
                    f"sine=frequency={freq}:sample_rate=16000:duration={seconds}", "-c:v", "mpeg4", "-c:a", "aac",
                    "-shortest", str(path)], check=True)


def make_ks(root: Path, n=8) -> Path:
    """Kinetics-Sounds style: videos in class folders, one splits.csv."""
    rows = ["clip,label,split"]
    for i in range(n):
        label = ["playing drums", "singing"][i % 2]
        make_video(root / "video" / label.replace(" ", "_") / f"clip{i:02d}.mp4", 2, 300 + 200 * (i % 2))
        rows.append(f"clip{i:02d},{label},{'test' if i >= n - 2 else 'train'}")
    (root / "splits.csv").write_text("\n".join(rows) + "\n")
    return root


@needs_ffmpeg
def test_prepare_extracts_frames_and_audio_resumes_and_trains(tmp_path, monkeypatch):
    import mmsent.data.media as media

    raw = make_ks(tmp_path / "raw")
    out = tmp_path / "ks"
    calls = []
    real = media._prepare_clip

    def crash_on_third(clip, *a):
        calls.append(clip.id)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a crash mid-way
        return real(clip, *a)

    monkeypatch.setattr(media, "_prepare_clip", crash_on_third)
    assert cli.main(["data", "prepare", "ks", f"src={raw}", f"out={out}"]) == 130  # Ctrl-C: one line
    assert not (out / "splits.csv").exists() and sorted(p.name for p in (out / "frames").iterdir()) == ["clip00", "clip01"]
    kept = (out / "audio" / "clip00.wav").stat().st_mtime_ns
    monkeypatch.setattr(media, "_prepare_clip", real)
    assert cli.main(["data", "prepare", "ks", f"src={raw}", f"out={out}"]) == 0
    assert (out / "audio" / "clip00.wav").stat().st_mtime_ns == kept  # finished clips are not redone
    assert len(list((out / "frames" / "clip05").glob("*.jpg"))) == 2  # 2 s at 1 frame per second
    rate, wave = wavfile.read(out / "audio" / "clip05.wav")
    assert rate == 16000 and abs(len(wave) - 32000) < 1600
    assert (out / "classes.txt").read_text().split() == ["playing_drums", "singing"]
    rc = cli.main(["train", "--quiet", "--dataset", "ks", "--data", str(out), "--epochs", "1", "--strategy", "dgl",
                   "--out", str(tmp_path / "run"), "data.frames=3", *SMALL])
    assert rc == 0


def test_a_video_only_clip_without_ffmpeg_says_how_to_fix_it(tmp_path, monkeypatch, capsys):
    import mmsent.data.media as media

    root = make_cremad(tmp_path / "c", n_train=4, n_test=1)
    name = clip_name(0)
    (root / "AudioWAV" / f"{name}.wav").unlink()
    (root / "VideoFlash").mkdir()
    (root / "VideoFlash" / f"{name}.flv").write_bytes(b"\x00")
    monkeypatch.setattr(media, "find_ffmpeg", lambda: None)
    rc = cli.main(["data", "prepare", "cremad", f"src={root}", f"out={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "needs ffmpeg" in err and f"{name}.flv" in err
    rc = cli.main(["train", "--quiet", "--dataset", "cremad", "--data", str(root), "--out", str(tmp_path / "r"), *SMALL])
    assert rc == 2 and "it has a video: run python cli.py data prepare cremad" in capsys.readouterr().err


def test_table_protocol_on_an_audio_visual_corpus(tmp_path, capsys):
    """Table 1's layout: accuracy in Audio / Visual / Multi columns, unimodal-only rows per modality."""
    root = make_cremad(tmp_path / "CREMA-D")
    rc = cli.main(["table", "--dataset", "cremad", "--data", str(root), "--seeds", "0", "--runs-dir",
                   str(tmp_path / "runs"), "--out", str(tmp_path / "results"), "--methods", "Visual-only", "DGL",
                   "train.epochs=1", *SMALL])
    assert rc == 0, capsys.readouterr().err
    md = (tmp_path / "results/cremad_table.md").read_text()
    assert md.startswith("Test accuracy (%)") and "| Method | Audio | Visual | Multi |" in md
    visual_only = next(line for line in md.splitlines() if line.startswith("| Visual-only |"))
    assert visual_only.split("|")[2].strip() == "-" and "±" in visual_only.split("|")[3]
    cfg = json.loads((tmp_path / "runs/visual_only-s0/config.json").read_text())
    assert cfg["strategy"]["modality"] == "visual"


@pytest.fixture(scope="module")
def av_dataset(tmp_path_factory):
    root = make_cremad(tmp_path_factory.mktemp("av") / "CREMA-D", n_train=16, n_test=4)
    return build_dataset(cremad_cfg(root).data)


def _av_cases():
    from mmsent.strategies import STRATEGIES

    # every strategy but unimodal-only, on the head it needs (else linear concat) and on MMTM where
    # it is defined there (MMCosine, ReconBoost and AMCo need their own heads and refuse MMTM)
    return [(name, fusion) for name in sorted(STRATEGIES) if name != "unimodal"
            for fusion in (STRATEGIES[name].needs_model.get("fusion", "concat"), "mmtm")
            if fusion != "mmtm" or STRATEGIES[name].defined_on("mmtm")]


# strategies whose head is trained on inputs other than the full features, by design: MLA and
# DGL-MH fit it on masked passes, OPM and AMCo drop or mask part of the input of the fused pass
OWN_STATISTICS = {"mla", "dgl_mh", "opm", "amco"}


@pytest.mark.parametrize("name,fusion", _av_cases())
def test_every_strategy_steps_on_the_audio_visual_model(av_dataset, fusion, name):
    """Each strategy's epoch hooks and training steps on (narrow) ResNet encoders with the linear or
    MMTM head. In the first step the head's BatchNorm running statistics must end where ONE
    train-mode pass on the full features puts them: every masked pass (DGL's, the branches of
    G-Blending, OGM-GE, MMPareto, AGM's coalitions, CML's removals, valuation's copies) leaves them
    alone. The strategies in OWN_STATISTICS train the head on other inputs by design and are exempt."""
    import copy

    from mmsent.config import load_config
    from mmsent.models import build_model
    from mmsent.strategies import STRATEGIES
    from mmsent.tasks import build_task
    from mmsent.train import build_optimizer, build_strategy

    # width 4: the check is about which passes touch the statistics, not about the ResNets' size
    cfg = load_config(Path(cli.ROOT) / "configs/cremad.yaml",
                      [("strategy", name), ("model.fusion", fusion), ("model.width", 4),
                       *((f"model.{k}", v) for k, v in STRATEGIES[name].needs_model.items() if k != "fusion"),
                       # its between-epoch machinery acts within the two epochs below
                       *((f"strategy.{k}", v) for k, v in STRATEGIES[name].short_run.items())])
    torch.manual_seed(0)
    task = build_task("classification", 6)
    model = build_model(cfg.model, av_dataset, task.out_dim)
    strategy = build_strategy(cfg, model, build_optimizer(model, cfg.train), task)
    strategy.steps_per_epoch = 4
    running = lambda m: {k: v.clone() for k, v in m.head.state_dict().items() if "running" in k}  # noqa: E731
    for epoch in range(2):
        strategy.on_epoch_start(epoch, av_dataset)
        for i, batch in enumerate(av_dataset.train.batches(4, shuffle=True, generator=torch.Generator().manual_seed(epoch))):
            if epoch == 0 and i == 0:
                ref = copy.deepcopy(model).train()
                with torch.no_grad():
                    ref.head(ref.encode(batch))
            logs = strategy.train_step(batch)
            assert np.isfinite(logs["loss"])
            if epoch == 0 and i == 0 and name not in OWN_STATISTICS:
                want, got = running(ref), running(model)
                assert (len(want) > 0) == (fusion == "mmtm")
                for k in want:
                    torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=k)
    preds = branch_predictions(strategy, av_dataset.test)
    assert set(preds) == {"multi", "audio", "visual"} and all(p.shape == (4, 6) for p in preds.values())


def test_frames_reach_the_model_c_contiguous(tmp_path):
    """Channels-last frames crashed torch 2.13's CPU convolution backward (heap corruption)."""
    root = make_cremad(tmp_path / "c")
    b = build_dataset(cremad_cfg(root).data).train.batch(torch.arange(2))
    assert b.x["visual"].is_contiguous() and b.x["audio"].is_contiguous()


def test_the_pipeline_learns_a_tone_coded_corpus(tmp_path):
    """End-to-end sanity of decoding, labels and the training loop: the fixture's audio is a tone
    whose pitch encodes the class, so DGL's audio branch and the fused model must learn it (six
    classes, chance 17 %); the frames carry only a faint colour cue."""
    root = make_cremad(tmp_path / "CREMA-D", n_train=48, n_test=12)
    out = tmp_path / "run"
    rc = cli.main(["train", "--quiet", "--dataset", "cremad", "--data", str(root), "--out", str(out), "--epochs", "12",
                   "--strategy", "dgl", "train.optimizer=adam", "train.lr=3e-3", *SMALL])
    assert rc == 0
    test = json.loads((out / "results.json").read_text())["test"]
    assert test["audio"]["acc"] >= 0.75 and test["multi"]["acc"] >= 0.75, test


def test_class_folder_layout_needs_no_split_file(tmp_path):
    """The OGM-GE/DGL Kinetics-Sounds layout: audio/<split>/<class>/<clip>.wav and
    visual/<split>_img/Image-01-FPS/<class>/<clip>/*.jpg, no CSV."""
    root = tmp_path / "ks"
    for i in range(10):
        split, label = ("test" if i >= 8 else "train"), ["playing_drums", "singing"][i % 2]
        t = np.arange(4800) / 16000
        (root / "audio" / split / label).mkdir(parents=True, exist_ok=True)
        wavfile.write(root / "audio" / split / label / f"c{i}.wav", 16000,
                      (0.3 * np.sin(2 * np.pi * (300 + 200 * (i % 2)) * t) * 32767).astype(np.int16))
        frames = root / "visual" / f"{split}_img" / "Image-01-FPS" / label / f"c{i}"
        frames.mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.full((32, 40, 3), 60 * k + i, np.uint8)).save(frames / f"{k:05d}.jpg")
    cfg = load_config(Path(cli.ROOT) / "configs/ks.yaml", [("data.path", str(root)), ("data.valid_fraction", 0.25),
                                                           ("data.audio_frames", 64), ("data.image_size", 48)])
    ds = build_dataset(cfg.data)
    assert ds.num_classes == 2 and (len(ds.train) + len(ds.val), len(ds.test)) == (8, 2)
    assert sorted(ds.test.ids) == ["c8", "c9"] and ds.test.y.tolist() == [0, 1]
    assert ds.test.batch(torch.arange(2)).x["visual"].shape == (2, 3, 3, 48, 48)


def test_download_of_an_audio_visual_corpus_says_to_prepare_it(capsys):
    assert cli.main(["data", "download", "cremad"]) == 2
    err = capsys.readouterr().err
    assert "cremad: no download; get the raw files and run: python cli.py data prepare cremad" in err and "CMU" not in err


def test_the_corpus_walk_follows_links_inside_it_survives_link_cycles_and_stops_at_links_out(tmp_path):
    """A linked folder inside the corpus is listed; a link cycle does not hang nor list anything
    twice; a link to a folder out of the corpus (to / it would walk the whole filesystem) is not
    followed, and a clip whose media only it held is one line naming the link."""
    from mmsent.data.av_corpus import scan, walk

    real = tmp_path / "elsewhere"
    (real / "clip1").mkdir(parents=True)
    (real / "clip1" / "0001.jpg").write_bytes(b"")
    root = tmp_path / "corpus"
    (root / "store" / "clip2").mkdir(parents=True)
    (root / "store" / "clip2" / "0001.jpg").write_bytes(b"")
    (root / "frames").symlink_to(root / "store")
    (root / "loop").symlink_to(root)  # a cycle: must not hang, nothing listed twice
    (root / "away").symlink_to(real)
    (root / "slash").symlink_to("/")
    skipped = []
    names = [p.relative_to(root).as_posix() for p in walk(root, skipped)]
    assert "frames/clip2/0001.jpg" in names and len(names) == len(set(names))
    assert not any(n.startswith(("away/", "slash/")) for n in names) and {p.name for p in skipped} == {"away", "slash"}
    (root / "splits.csv").write_text("clip,label,split\nclip1,zero,train\nclip2,zero,test\n")
    with pytest.raises(DataError, match="a link to a folder out of the corpus .* clip 'clip1' has no media"):
        scan("avdigits", root)


def test_valuation_resamples_a_single_copy_through_a_batchnorm_head(tmp_path):
    """One re-sampled copy in a batch: its branch goes through MMTM's train-mode BatchNorm, which
    cannot normalise one sample of 1 x 1 maps on its own (32-pixel inputs, as avdigits' digits: the
    avdigits MMTM table crashed on it); the copy is the row of the whole batch's masked pass."""
    from mmsent.models import build_model
    from mmsent.tasks import build_task
    from mmsent.train import build_optimizer, build_strategy

    cfg = cremad_cfg(make_cremad(tmp_path / "c", n_train=8, n_test=2), "data.image_size=32", "data.audio_frames=32",
                     "strategy=valuation", "model.fusion=mmtm")
    data = build_dataset(cfg.data)
    torch.manual_seed(0)
    task = build_task("classification", 6)
    model = build_model(cfg.model, data, task.out_dim)
    s = build_strategy(cfg, model, build_optimizer(model, cfg.train), task)
    s.on_epoch_start(0, data)
    n = len(data.train)
    s.copies = torch.zeros(n, 2, dtype=torch.long)
    s.copies[2, 1] = 1  # sample 2's visual branch, once
    logs = s.train_step(data.train.batch(torch.arange(4)))
    assert np.isfinite(logs["loss"]) and logs["resampled"] == 0.25
