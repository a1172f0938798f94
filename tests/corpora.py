"""Test data in one place: the public corpora's folder layouts, espeak-ng speech, shards of real
speech, and the subprocess runners (CLI, torchrun) the training tests share.

The layout builders write what each release ships (folder names, transcript files, tsv/csv
headers); the caller chooses the audio. An utterance's audio is either samples (16 kHz mono,
written as 16-bit) or a writer ``f(path)`` for anything else (tones at other rates, mp3, opus).
Not a test module: the test files import it (``tests/`` is on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import soundfile as sf

from corpus_tools.audio import SAMPLE_RATE

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
Audio = np.ndarray | Callable[[Path], object]


# -- audio -----------------------------------------------------------------------------------


def tone(path: Path, seconds: float, sr: int = SAMPLE_RATE, fmt: str | None = None,
         subtype: str | None = None, freq: float = 220.0) -> Path:
    """A sine of ``seconds`` at ``sr`` written to ``path`` (format from the suffix unless ``fmt``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format=fmt,
             subtype=subtype)
    return path


def mp3_tone(seconds: float, sr: int) -> Callable[[Path], Path]:
    return lambda path: tone(path, seconds, sr=sr, fmt="MP3", subtype="MPEG_LAYER_III")


def speech(text: str, voice: str, speed: int = 150, gain: float = 1.0) -> np.ndarray:
    """espeak-ng speech, 16 kHz mono float32, scaled by ``gain``."""
    from corpus_tools.samples import espeak

    return (espeak(text, voice, speed) * gain).astype(np.float32)


def espeak_file(path: Path, text: str, voice: str, speed: int, pitch: int) -> float:
    """espeak-ng's own wav (its native rate) at ``path``; returns the duration in seconds."""
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
                   check=True, capture_output=True)
    return sf.info(str(path)).duration


def put_audio(path: Path, audio: Audio) -> Path:
    """Write ``audio`` (samples or a writer) to ``path``; mp3 by suffix, else 16-bit PCM."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if callable(audio):
        audio(path)
    elif path.suffix == ".mp3":
        sf.write(path, audio, SAMPLE_RATE, format="MP3", subtype="MPEG_LAYER_III")
    else:
        sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
    return path


# -- corpus layouts --------------------------------------------------------------------------

LS_SPEAKERS_TXT = ("; ID  |SEX| SUBSET           |MINUTES| NAME\n"
                   "19    | F | train-clean-100  | 25.19 | Kara Shallenberg\n"
                   "26    | M | train-clean-100  | 25.08 | Denny Sayers\n")


def librispeech(root: Path, subsets: dict[str, dict[tuple[str, str], list]],
                speakers: str | None = None) -> Path:
    """LibriSpeech: ``{subset: {(speaker, chapter): [utterance, ...]}}`` →
    ``subset/SPK/CH/SPK-CH-UTTT.flac`` + ``SPK-CH.trans.txt`` (and ``SPEAKERS.TXT`` if given).
    An utterance is a transcript (audio: a tone of 1, 1.5, 2, ... s) or ``(transcript, audio)``."""
    for subset, chapters in subsets.items():
        for (spk, ch), utts in chapters.items():
            folder = root / subset / spk / ch
            lines = []
            for i, utt in enumerate(utts):
                text, audio = utt if isinstance(utt, tuple) else (utt, None)
                uid = f"{spk}-{ch}-{i:04d}"
                path = folder / f"{uid}.flac"
                tone(path, 1.0 + 0.5 * i) if audio is None else put_audio(path, audio)
                lines.append(f"{uid} {text}")
            (folder / f"{spk}-{ch}.trans.txt").write_text("\n".join(lines) + "\n")
    if speakers is not None:
        (root / "SPEAKERS.TXT").write_text(speakers)
    return root


def mls(root: Path, splits: dict[str, list[tuple]], metainfo: str | None = None) -> Path:
    """Multilingual LibriSpeech: ``{split: [(speaker, book, index, text, audio[, ext]), ...]}`` →
    ``split/audio/SPK/BOOK/SPK_BOOK_IIIIII.flac`` + ``split/transcripts.txt``."""
    for split, utts in splits.items():
        lines = []
        for spk, book, i, text, audio, *ext in utts:
            uid = f"{spk}_{book}_{i:06d}"
            put_audio(root / split / "audio" / spk / book / f"{uid}.{ext[0] if ext else 'flac'}", audio)
            lines.append(f"{uid}\t{text}")
        (root / split / "transcripts.txt").write_text("\n".join(lines) + "\n")
    if metainfo is not None:
        (root / "metainfo.txt").write_text(metainfo)
    return root


CV_HEADER = ("client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\t"
             "age\tgender\taccents\tvariant\tlocale\tsegment")


def cv_row(client: str, clip: str, sentence: str, sentence_id: str = "sid", age: str = "",
           gender: str = "") -> str:
    """One Common Voice v18 tsv row (locale nl, 2 up votes)."""
    return "\t".join([client, clip, sentence_id, sentence, "", "2", "0", age, gender, "", "", "nl", ""])


def commonvoice(root: Path, clips: dict[str, Audio], lists: dict[str, list[str]]) -> Path:
    """Common Voice: ``clips/<name>`` + ``<list>.tsv`` (header + the given rows) per list."""
    for name, audio in clips.items():
        put_audio(root / "clips" / name, audio)
    for name, rows in lists.items():
        (root / f"{name}.tsv").write_text("\n".join([CV_HEADER, *rows]) + "\n")
    return root


def musan(root: Path, clips: dict[tuple[str, str], dict[str, Audio]],
          files: dict[tuple[str, str], dict[str, str]] | None = None) -> Path:
    """MUSAN: ``{(subset, source): {clip_id: audio}}`` → ``subset/source/clip_id.wav``, and the
    text files (ANNOTATIONS, LICENSE) of ``files``: ``{(subset, source): {name: text}}``."""
    for (subset, source), items in clips.items():
        for cid, audio in items.items():
            put_audio(root / subset / source / f"{cid}.wav", audio)
    for (subset, source), texts in (files or {}).items():
        for name, text in texts.items():
            (root / subset / source / name).write_text(text)
    return root


FMA_TRACKS_HEADER = (",album,artist,set,set,track,track,track,track\n"
                     ",title,name,split,subset,genre_top,genres,genres_all,title\n"
                     "track_id,,,,,,,,\n")


def fma(root: Path, tracks: dict[int, Audio], metadata: Iterable[str], genres: Iterable[str]) -> Path:
    """FMA: ``fma_large/TTT/TTTTTT.mp3`` per track id, ``fma_metadata/tracks.csv`` (its three
    header lines + ``metadata`` rows) and ``genres.csv`` (header + ``genres`` rows)."""
    for tid, audio in tracks.items():
        put_audio(root / "fma_large" / f"{tid // 1000:03d}" / f"{tid:06d}.mp3", audio)
    meta = root / "fma_metadata"
    meta.mkdir()
    (meta / "tracks.csv").write_text(FMA_TRACKS_HEADER + "".join(f"{r}\n" for r in metadata))
    (meta / "genres.csv").write_text("genre_id,#tracks,parent,title,top_level\n"
                                     + "".join(f"{r}\n" for r in genres))
    return root


def music_manifest(root: Path, clips: Iterable[tuple], genre: str = "Test") -> Path:
    """``root/fma.parquet``: music clips ``(segment_id, recording_id, path, start, end)``; a
    clip without an end is the whole file (no duration)."""
    import polars as pl

    rows = [dict(segment_id=c, recording_id=r, path=str(p), start=s, end=e,
                 duration=None if e is None else e - (s or 0.0), genre=genre) for c, r, p, s, e in clips]
    path = root / "fma.parquet"
    pl.DataFrame(rows, schema_overrides={"start": pl.Float64, "end": pl.Float64,
                                         "duration": pl.Float64}).write_parquet(path)
    return path


# -- shards of real speech -------------------------------------------------------------------


def sample_wav() -> Path:
    """pyannote.audio's sample.wav: a real 30 s two-speaker telephone call."""
    from corpus_tools.samples import pyannote_sample_dir

    return pyannote_sample_dir() / "sample.wav"


ALSA = Path("/usr/share/sounds/alsa")
ALSA_VOICES = ["Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left", "Rear_Right",
               "Side_Left", "Side_Right"]


def alsa_voice_rows(session: str | None = None) -> list[dict]:
    """Manifest rows of the eight alsa-utils voice clips (1.4 s each); each its own session
    unless ``session`` is given."""
    return [dict(segment_id=f"alsa-{name}", recording_id=name, path=str(ALSA / f"{name}.wav"), start=0.0,
                 end=1.4, duration=1.4, text="", speaker=name, method="test", language="en",
                 session=session or name) for name in ALSA_VOICES]


def sample_pieces(path: Path, offset: float, n: int, prefix: str) -> list[dict]:
    """2–6 s pieces of a 30 s two-speaker recording, overlapping, at varied offsets."""
    rows, t = [], offset
    for i in range(n):
        d = 2.0 + (i * 1.3) % 4.0
        if t + d > 29.9:
            t = offset + (i % 5) * 0.37
        rows.append(dict(segment_id=f"{prefix}-{i:03d}", recording_id="sample", path=str(path), start=t, end=t + d,
                         duration=d, text="", speaker=None, method="test", language="en", session="sample"))
        t += 1.1
    return rows


def sample_shards(out: str | Path, n: int, prefix: str, per_shard: int, text: str = "") -> str:
    """``n`` pieces of sample.wav, each transcribed ``text``, in shards of ``per_shard``."""
    import polars as pl

    from corpus_tools.shards import write_shards

    rows = [dict(r, text=text) for r in sample_pieces(sample_wav(), 0.0, n, prefix)]
    write_shards(pl.DataFrame(rows), out, samples_per_shard=per_shard, progress=False)
    return str(out)


def file_tree(d: Path, pattern: str = "*", skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Relative path → sha256 of every file under ``d`` matching ``pattern``, leaving out hidden
    files and folders (a killed run's temp files) and the folders named in ``skip``."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(d).rglob(pattern)) if p.is_file()
            and not any(part.startswith(".") or part in skip for part in p.relative_to(d).parts)}


def shard_utterances(folder: Path) -> dict[str, tuple[np.ndarray, dict]]:
    """tar key -> (audio, json) of every utterance in the folder's tar shards."""
    out: dict[str, list] = {}
    for shard in sorted(Path(folder).glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                key, ext = m.name.split(".", 1)
                data = tar.extractfile(m).read()
                slot = out.setdefault(key, [None, None])
                if ext == "json":
                    slot[1] = json.loads(data)
                else:
                    slot[0] = sf.read(io.BytesIO(data), dtype="float32")[0]
    return {k: (a, m) for k, (a, m) in out.items()}


def start_slow_shard_writer(manifest, src: Path, out: Path, samples_per_shard: int,
                            delay: float) -> subprocess.Popen:
    """``write_shards`` of ``manifest`` (saved at ``src``) into ``out`` in a child process that
    cuts each segment ``delay`` s late, so that a kill lands inside a shard."""
    manifest.write_parquet(src)
    script = f"""
import time, polars as pl
import corpus_tools.shards.write as sh
orig = sh.cut_segment
def slow(*a, **k):
    time.sleep({delay})  # make the kill land inside a shard
    return orig(*a, **k)
sh.cut_segment = slow
sh.write_shards(pl.read_parquet({str(src)!r}), {str(out)!r}, samples_per_shard={samples_per_shard}, progress=False)
"""
    return subprocess.Popen([sys.executable, "-c", script])


# -- runs --------------------------------------------------------------------------------------


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m <args>`` from the repository, one OpenMP thread, output captured."""
    return subprocess.run([sys.executable, "-m", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def torchrun(*args: str, timeout: int) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 <args>`` (2 gloo ranks on the CPU)."""
    exe = Path(sys.executable).with_name("torchrun")
    return subprocess.run([str(exe), "--standalone", "--nproc-per-node", "2", *args], env=ENV,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


PRETRAIN_WORKER = """
import os, sys, numpy as np, torch
torch.set_num_threads(1)
from trainer.pretrain import PretrainArgs, pretrain
shards, out = sys.argv[1], sys.argv[2]
calls = []
{transform}
result = pretrain(PretrainArgs(shards=shards, out=out, config="tiny", quiet=False, num_workers=0, {args}))
torch.save(result["model"].state_dict(), os.path.join(out, f"rank{{os.environ['RANK']}}.pt"))
"""


def pretrain_worker(args: str, transform: str = "") -> str:
    """A script for :func:`run_ddp_worker`: tiny pre-training on ``argv[1]`` into ``argv[2]`` with
    the extra PretrainArgs ``args`` (source text); ``transform`` may define the transform, which
    can count its calls on this rank in ``calls``."""
    return PRETRAIN_WORKER.format(args=args, transform=textwrap.dedent(transform))


def run_ddp_worker(source: str, tmp_path: Path, *args: str, timeout: int):
    """Run the script ``source`` on 2 ranks with ``args`` and an output folder; it must succeed.
    Returns the process and the two ranks' saved weights (``rank0.pt``, ``rank1.pt``)."""
    import torch

    worker = tmp_path / "worker.py"
    worker.write_text(source)
    out = tmp_path / "ddp"
    proc = torchrun(str(worker), *args, str(out), timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, out, torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")


def read_log(run: str | Path) -> list[dict]:
    """Every record of a run's log.jsonl."""
    return [json.loads(x) for x in (Path(run) / "log.jsonl").read_text().splitlines()]
