"""``cli.py data prepare cremad|ks|vggsound src=RAW out=DIR``: raw media -> what training reads.

For every clip of the split file: the WAV is decoded, resampled to ``sample_rate`` and written as
16-bit mono (or extracted from the clip's video with ffmpeg), and the frames are copied (or
extracted from the video with ffmpeg at ``fps`` frames per second). The output is a corpus folder
in the same layout ``load_av`` reads (``audio/<clip>.wav``, ``frames/<clip>/NNNNN.jpg``,
``splits.csv``), plus ``classes.txt``.

Resumable: a clip's frames folder and WAV appear under their final names only when complete
(written under temporary names, then renamed), so a crash loses at most the clip in progress and a
re-run skips every finished clip.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsent.checks import command
from mmsent.data.av_corpus import Clip, scan
from mmsent.data.av_decode import read_wav
from mmsent.data.batch import DataError
from mmsent.data.job import Job, option
from mmsent.files import claim_folder, make_dir, write_failed, write_text


def find_ffmpeg() -> str | None:
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:  # a static binary from PyPI (`pip install imageio-ffmpeg`), if installed
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


def _ffmpeg(args: list[str], video: Path) -> None:
    exe = find_ffmpeg()
    if exe is None:
        raise DataError(f"{video}: extracting frames/audio from a video needs ffmpeg, which was not found; install it "
                        "(apt install ffmpeg, or pip install imageio-ffmpeg) or provide extracted WAVs and frames")
    r = subprocess.run([exe, "-nostdin", "-y", "-loglevel", "error", "-i", str(video), *args],
                       capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        raise DataError(f"{video}: ffmpeg failed ({last})")


def write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    from scipy.io import wavfile

    wavfile.write(path, sample_rate, (np.clip(wave, -1, 1) * 32767).astype(np.int16))


def _prepare_clip(clip: Clip, out: Path, sample_rate: int, fps: int) -> None:
    frames_dir, wav = out / "frames" / clip.id, out / "audio" / f"{clip.id}.wav"
    # scan() admits plain names only; a path that resolves elsewhere is never created nor removed
    for p in (frames_dir, wav):
        if p.resolve().parent != (out / p.parent.name).resolve():
            raise DataError(f"clip {clip.id!r}: its output {p} would lie outside {out}")
    if not frames_dir.is_dir():
        tmp = frames_dir.with_name(frames_dir.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            jpgs = sorted(p for p in clip.frames.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")) if clip.frames else []
            if jpgs:
                for k, p in enumerate(jpgs):
                    shutil.copyfile(p, tmp / f"{k:05d}.jpg")
            elif clip.video is not None:
                _ffmpeg(["-vf", f"fps={fps}", "-q:v", "2", str(tmp / "%05d.jpg")], clip.video)
                if not any(tmp.iterdir()):
                    raise DataError(f"{clip.video}: ffmpeg wrote no frames")
            else:
                raise DataError(f"clip {clip.id!r}: no frames folder and no video found under the source folder")
            os.replace(tmp, frames_dir)
        except BaseException as e:  # a full disk mid-clip: no partial folder left to fill it
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):
                raise write_failed(frames_dir, e) from None
            raise
    if not wav.is_file():
        tmp = wav.with_name(wav.name + ".part.wav")
        try:
            if clip.wav is not None:
                write_wav(tmp, read_wav(clip.wav, sample_rate), sample_rate)
            elif clip.video is not None:
                _ffmpeg(["-vn", "-ac", "1", "-ar", str(sample_rate), "-c:a", "pcm_s16le", str(tmp)], clip.video)
                read_wav(tmp, sample_rate)  # a video without an audio track fails here, naming the file
            else:
                raise DataError(f"clip {clip.id!r}: no WAV and no video found under the source folder")
            os.replace(tmp, wav)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise write_failed(wav, e) from None
            raise


@dataclass(frozen=True, kw_only=True)
class PrepareOptions:
    src: str = option("the raw corpus folder (split file, WAVs or videos, frames)", "DIR")
    out: str = option("the prepared folder to write (audio/, frames/, classes.txt, splits.csv)", "DIR")


def prepare(dataset: str, opts: PrepareOptions, settings, progress=None) -> str:
    """``cli.py data prepare``: the raw corpus -> a prepared folder, at the settings' sample rate and
    fps (the recipe's, unless ``sample_rate=`` / ``fps=`` say otherwise)."""
    n = prepare_av(dataset, Path(opts.src), Path(opts.out), sample_rate=settings.sample_rate, fps=settings.fps,
                   progress=progress)
    return (f"prepared {n} clips in {opts.out}; train with: {command()} train --dataset {dataset} "
            f"--data {opts.out} --strategy dgl")


def prepare_av(dataset: str, src: Path, out: Path, *, sample_rate: int, fps: int = 1, progress=None) -> int:
    """Prepare every clip of ``src``'s split file into ``out``; returns the number of clips."""
    clips, classes = scan(dataset, src)
    # a user's folder is never written into (its classes.txt would be replaced): new, empty or ours
    claim_folder(out, "prepared", "out", frozenset({"audio", "frames", "classes.txt", "splits.csv"}),
                 frozenset({"audio", "frames"}))
    make_dir(out / "audio")
    make_dir(out / "frames")
    for k, clip in enumerate(clips):
        _prepare_clip(clip, out, sample_rate, fps)
        if progress:
            progress(k + 1, len(clips))
    # The index comes last: a folder without splits.csv is visibly unfinished.
    rows = io.StringIO(newline="")
    csv.writer(rows).writerows([("clip", "label", "split"), *((c.id, classes[c.label], c.split) for c in clips)])
    write_text(out / "classes.txt", "\n".join(classes) + "\n")
    write_text(out / "splits.csv", rows.getvalue())
    return len(clips)


@dataclass(frozen=True, kw_only=True)
class CacheOptions:
    data: str = option("the audio-visual corpus folder, as training reads it", "DIR")
    out: str = option("the cache folder to write", "DIR")


def cache(dataset: str, opts, settings, progress=None) -> str:
    """``cli.py data cache``: decode a corpus (``data=``) into a cache folder (``out=``) at the
    recipe's settings and the command's overrides (``sample_rate=``, ``cache_size=``)."""
    import dataclasses

    from mmsent.data import av_cache
    from mmsent.data.av import checked_clips

    out = Path(opts.out)
    av_cache.refuse_foreign(out, "out")
    spec = dataclasses.replace(settings, cache="")
    clips, _ = checked_clips(dataset, Path(opts.data))
    av_cache.build(dataset, clips, spec, out, progress)
    return (f"cached {len(clips)} clips in {out} (sample rate {spec.sample_rate}, frames {av_cache.cache_size(spec)} px); "
            f"train with: {command()} train --dataset {dataset} --data {opts.data} data.cache={out}")


PREPARE, CACHE = Job(prepare, PrepareOptions), Job(cache, CacheOptions)
