"""Shard folders other loaders read: nanow2v2's shard globs and decoding, its letter vocabulary.

nanow2v2 (``nikvaessen/w2v2-batch-size``, ``nanow2v2/data/datapipe.py``) finds shards with
``pathlib.Path(folder).rglob(pattern)`` for ``*.tar`` (its LibriSpeech configs), ``*.tar*`` (its
broadcast-data config) and ``*.*.tar*`` (its default), keeps every hit (hidden files and
directories included), opens each with ``tarfile.open(fileobj=..., mode="r")``, groups members
WebDataset-style, decodes only ``.wav`` members (16 kHz asserted), and reads ``sample_id``,
``sample_rate``, ``num_frames`` and ``transcription`` from the json. The helpers below do the
same steps (the real datapipe runs in the last test when it is installed).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf

from corpora import start_slow_shard_writer
from corpus_tools import shards as sh
from corpus_tools.data.tar_index import list_shards, read_shard_records

PATTERNS = ("*.tar", "*.tar*", "*.*.tar*")
TEXTS = ["Hello WORLD, it's me", "Zo’n Café, 12 auto’s!", "THE QUICK Brown fox", "",
         "'S Avonds — «ja»?", "DON'T you know the boys' toys"]


def make_manifest(root: Path, n_recordings: int = 2, seconds: float = 9.0) -> pl.DataFrame:
    rng = np.random.default_rng(7)
    rows = []
    for r in range(n_recordings):
        sr = (16000, 22050)[r % 2]
        t = np.arange(int(sr * seconds)) / sr
        x = 0.3 * np.sin(2 * np.pi * (220 + 40 * r) * t) + 0.05 * rng.standard_normal(t.size)
        path = root / f"rec{r}.{('wav', 'flac')[r % 2]}"
        sf.write(path, x.astype(np.float32), sr)
        start, i = 0.0, 0
        while start + 1.6 <= seconds:
            d = float(rng.uniform(0.8, 1.6))
            rows.append({"segment_id": f"rec{r}.seg{i:02d}", "recording_id": f"rec{r}", "path": str(path),
                         "start": start, "end": start + d, "duration": d,
                         "text": TEXTS[(r * 7 + i) % len(TEXTS)], "speaker": f"spk{i % 2}",
                         "method": "unit", "language": ("en", "nl")[r % 2], "session": f"rec{r}"})
            start += d + 0.1
            i += 1
    return pl.DataFrame(rows)


# -- what nanow2v2 does ---------------------------------------------------------------------


def nano_find_shards(folder: Path, pattern: str) -> list[str]:
    """datapipe.py ``find_shards`` with ``allow_partial=True`` (as every shipped config)."""
    return sorted({str(f) for f in Path(folder).rglob(pattern)})


def nano_samples(paths: list[str]):
    """FileOpener → TarArchiveLoader(mode "r") → decode → WebDataset → construct_data_sample."""
    for shard in paths:
        group: dict | None = None
        with open(shard, "rb") as fh, tarfile.open(fileobj=fh, mode="r") as tf:
            for ti in tf:
                if not ti.isfile():
                    continue
                name = os.path.normpath(os.path.join(shard, ti.name))
                prefix, suffix = re.match(r"^(.*?)(\.[^/]*)$", name).groups()
                value = tf.extractfile(ti).read()
                if suffix.endswith(".wav"):
                    audio, sr = sf.read(io.BytesIO(value), dtype="float32", always_2d=True)
                    assert sr == 16_000
                    value = audio.T
                elif suffix.endswith(".json"):
                    value = json.loads(value)
                if group is None or group["__key__"] != prefix:
                    if group is not None:
                        yield nano_sample(group)
                    group = {"__key__": prefix}
                group[suffix] = value
        if group is not None:
            yield nano_sample(group)


def nano_sample(element: dict) -> dict:
    meta, wav = element[".json"], element[".wav"]
    assert meta["num_frames"] == wav.shape[1]
    return {"key": meta["sample_id"], "sample_rate": meta["sample_rate"], "audio": wav,
            "transcription": meta.get("transcription")}


@pytest.fixture(scope="module")
def nano_tokenizer(tmp_path_factory):
    """nanow2v2's character vocabulary (character_vocabulary.json) in its tokenizer."""
    from transformers import Wav2Vec2CTCTokenizer

    chars = ["<blank>", "<s>", "</s>", "<unk>", "|", "'", *"abcdefghijklmnopqrstuvwxyz"]
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.json"
    vocab.write_text(json.dumps({c: i for i, c in enumerate(chars)}))
    return Wav2Vec2CTCTokenizer(str(vocab), bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                pad_token="<blank>", word_delimiter_token="|")


# -- folders: finished, killed mid-write, resumed ---------------------------------------------


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> pl.DataFrame:
    return make_manifest(tmp_path_factory.mktemp("rec"))


@pytest.fixture(scope="module")
def finished(manifest, tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from corpus_tools.cli import app

    src = tmp_path_factory.mktemp("m") / "segs.parquet"
    manifest.write_parquet(src)
    out = tmp_path_factory.mktemp("finished") / "shards"
    res = CliRunner().invoke(app, ["shard", str(src), "-o", str(out), "--samples-per-shard", "4",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


def kill_mid_write(manifest: pl.DataFrame, out: Path) -> None:
    """Run write_shards in a process and SIGKILL it while a shard is half written."""
    proc = start_slow_shard_writer(manifest, out.parent / "segs.parquet", out, 4, 0.2)
    deadline = time.time() + 60

    def half_written() -> bool:  # a finished shard plus the hidden temp file of the next one
        if not out.is_dir() or not list(out.glob("shard.*.tar")):
            return False
        return any(p.is_file() and p.stat().st_size > 0 for p in out.iterdir()
                   if p.name.startswith(".") and p.name != sh.STATE_DIR)

    while time.time() < deadline and proc.poll() is None and not half_written():
        time.sleep(0.02)
    assert proc.poll() is None, "the writer finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def killed(manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("killed") / "shards"
    kill_mid_write(manifest, out)
    assert not (out / sh.INDEX_NAME).exists()
    return out


@pytest.fixture(scope="module")
def resumed(killed, manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resumed") / "shards"
    shutil.copytree(killed, out)
    sh.write_shards(manifest, out, samples_per_shard=4, progress=False)
    return out


def finished_shards(folder: Path) -> list[str]:
    """The complete shards of a folder: those in its index, else those with a final name."""
    if (folder / sh.INDEX_NAME).is_file():
        return sorted(str(folder / n) for n in pl.read_parquet(folder / sh.INDEX_NAME)["name"])
    return sorted(str(p) for p in folder.glob("shard.*.tar"))


@pytest.mark.parametrize("state", ["finished", "killed", "resumed"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_nanow2v2_globs_find_only_finished_shards(state, pattern, request):
    folder = request.getfixturevalue(state)
    expected = finished_shards(folder)
    assert expected, "no finished shard to look for"
    found = nano_find_shards(folder, pattern)
    assert found == expected, f"{pattern} under a {state} folder also matches " \
                              f"{sorted(set(found) - set(expected))}"
    samples = list(nano_samples(found))  # every hit opens as a tar and decodes
    assert len(samples) == sum(1 for s in expected for _ in read_shard_records(s))


def test_no_name_under_a_shard_folder_but_a_shard_contains_tar(killed, resumed):
    for folder in (killed, resumed):
        names = {p.relative_to(folder).as_posix() for p in folder.rglob("*")}
        shards = {Path(s).name for s in finished_shards(folder)}
        assert {n for n in names if ".tar" in n} == shards


def test_finished_and_resumed_folders_are_the_same_bytes(finished, resumed):
    digest = {Path(p).name: Path(p).read_bytes() for p in finished_shards(finished)}
    assert {Path(p).name: Path(p).read_bytes() for p in finished_shards(resumed)} == digest


def test_list_shards_never_returns_markers_or_temp_files(finished, killed, tmp_path):
    parent = tmp_path / "sets"
    shutil.copytree(finished, parent / "a")
    shutil.copytree(killed, parent / "b")
    expected = [str(parent / "a" / Path(p).name) for p in finished_shards(finished)] + \
               [str(parent / "b" / Path(p).name) for p in finished_shards(killed)]
    assert sorted(list_shards(parent)) == sorted(expected)
    assert list_shards(parent / "b") == [str(parent / "b" / Path(p).name) for p in finished_shards(killed)]


# -- an earlier version's half-written folder ---------------------------------------------------


OLD_MARKER = re.compile(r"^(.+\.tar)\.json$")


def as_written_by_the_old_version(folder: Path, drop_last: bool = True) -> None:
    """Markers back to ``.state/{shard}.tar.json``, the last shard replaced by the old temp
    name ``.{shard}.tmp`` (what a kill left behind) and no index."""
    names = [Path(p).name for p in finished_shards(folder)]
    for name in names:
        new = sh.marker_path(folder, name)
        new.rename(folder / sh.STATE_DIR / f"{name}.json")
    (folder / sh.INDEX_NAME).unlink()
    if drop_last:
        last = names[-1]
        (folder / sh.STATE_DIR / f"{last}.json").unlink()
        data = (folder / last).read_bytes()
        (folder / last).unlink()
        (folder / f".{last}.tmp").write_bytes(data[: len(data) // 2])


def test_old_version_folder_resumes_keeps_its_shards_and_loses_tar_named_files(manifest, tmp_path):
    no_text = manifest.with_columns(pl.lit("").alias("text"))  # json unchanged by the new key
    out = tmp_path / "old"
    sh.write_shards(no_text, out, samples_per_shard=4, progress=False)
    ref = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    as_written_by_the_old_version(out)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert nano_find_shards(out, "*.tar*") != finished_shards(out)  # the old names match
    sh.write_shards(no_text, out, samples_per_shard=4, progress=False)
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == ref
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept, "finished shards were rewritten"
    for pattern in PATTERNS:
        assert nano_find_shards(out, pattern) == finished_shards(out)


def test_old_version_folder_with_raw_transcriptions_is_brought_up_to_date(manifest, tmp_path, monkeypatch):
    """Shards an earlier version wrote kept the raw text in ``transcription``: resuming such a
    folder needs no --overwrite and ends with the bytes of a fresh run."""
    fresh = tmp_path / "fresh"
    sh.write_shards(manifest, fresh, samples_per_shard=4, progress=False)
    out = tmp_path / "old"
    with monkeypatch.context() as m:
        m.setattr(sh, "letter_transcript", lambda text, language: text)  # the old json
        sh.write_shards(manifest, out, samples_per_shard=4, progress=False)
    as_written_by_the_old_version(out)
    sh.write_shards(manifest, out, samples_per_shard=4, progress=False)
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == \
           {p.name: p.read_bytes() for p in fresh.glob("*.tar")}
    for pattern in PATTERNS:
        assert nano_find_shards(out, pattern) == finished_shards(out)


# -- transcripts a letter vocabulary reads -------------------------------------------------------


@pytest.mark.slow
def test_transcription_encodes_without_unknown_letters(finished, manifest, nano_tokenizer):
    from corpus_tools.text import normalize_text
    from trainer.text import encode

    by_id = {r["segment_id"]: r for r in manifest.iter_rows(named=True)}
    samples = list(nano_samples(nano_find_shards(finished, "*.*.tar*")))
    assert len(samples) == manifest.height
    upper = 0
    for s in samples:
        text = s["transcription"]
        ids = nano_tokenizer(text_target=text)["input_ids"]
        assert nano_tokenizer.unk_token_id not in ids, f"{text!r} has letters nanow2v2 cannot encode"
        assert len(ids) == len(text)
        upper += any(c.isupper() for c in by_id[s["key"]]["text"])
    assert upper, "the manifest has no upper-case text to normalise"
    for p in finished_shards(finished):
        for rec in read_shard_records(p):
            row = by_id[rec.meta["id"]]
            assert rec.meta["transcript"] == row["text"]  # the original text, kept
            assert rec.meta["transcription"] == normalize_text(row["text"], row["language"])
            # the trainer normalises what it reads: the original and the letter form give the same targets
            assert encode(normalize_text(rec.meta["transcript"], row["language"])) == \
                   encode(normalize_text(rec.meta["transcription"], row["language"]))


# -- formats: which reader reads what ------------------------------------------------------------


def test_flac_shards_are_for_our_reader_and_wav_for_both(manifest, finished, tmp_path):
    import webdataset as wds

    from corpus_tools.data.stream import ShardBatchStream

    flac = tmp_path / "flac"
    sh.write_shards(manifest, flac, samples_per_shard=4, fmt="flac", progress=False)

    def ours(folder):
        stream = ShardBatchStream(str(folder), batch_seconds=100, shuffle=False, infinite=False,
                                  rank=0, world_size=1)
        return {u.key: u.audio for b in stream for u in b.utterances()}

    wav_audio, flac_audio = ours(finished), ours(flac)
    assert len(wav_audio) == manifest.height and wav_audio.keys() == flac_audio.keys()
    for k in wav_audio:  # the same audio (libsndfile rounds float → 16 bit differently for flac: ±1 step)
        np.testing.assert_allclose(flac_audio[k], wav_audio[k], rtol=0, atol=1.01 / 32768)
    nano = {s["key"]: s["audio"][0] for s in nano_samples(nano_find_shards(finished, "*.tar"))}
    assert len(nano) == manifest.height
    for s in nano_samples(nano_find_shards(finished, "*.tar")):
        key = sh.safe_keys([s["key"]])[0]
        np.testing.assert_array_equal(s["audio"][0], wav_audio[key])
    with pytest.raises(KeyError, match=r"\.wav"):  # nanow2v2 decodes only .wav members
        list(nano_samples(nano_find_shards(flac, "*.tar")))
    ds = wds.WebDataset([str(p) for p in sorted(flac.glob("*.tar"))], shardshuffle=False,
                        empty_check=False).decode()
    assert sum(1 for s in ds if "flac" in s and "json" in s) == manifest.height


# -- nanow2v2 itself ---------------------------------------------------------------------------


NANO_SRC, NANO_PY = os.environ.get("NANOW2V2_SRC"), os.environ.get("NANOW2V2_PYTHON")


@pytest.mark.skipif(not (NANO_SRC and NANO_PY),
                    reason="nanow2v2 is not installed here: set NANOW2V2_SRC (a checkout of "
                           "nikvaessen/w2v2-batch-size) and NANOW2V2_PYTHON (a Python with torchdata<0.10) "
                           "to run its real datapipe on our shard folders")
def test_nanow2v2_datapipe_reads_our_folders(finished, killed, resumed):
    script = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from nanow2v2.data.datapipe import load_samples_from_shards
from nanow2v2.data.encode import encode_transcription
vocab = json.load(open(sys.argv[1] + "/character_vocabulary.json"))["char_to_idx"]
out = {}
for folder in sys.argv[2:]:
    for pattern in ("*.tar", "*.tar*", "*.*.tar*"):
        dp, shards = load_samples_from_shards(folder, pattern, allow_partial=True, sample_buffer=10)
        samples = list(dp)
        unk = sum(int((encode_transcription(s.transcription, vocab) == vocab["<unk>"]).sum()) for s in samples)
        assert all(s.audio_tensor.shape[1] == s.audio_length_frames for s in samples)
        out[folder + "|" + pattern] = {"shards": shards, "samples": len(samples), "unk": unk}
print(json.dumps(out))
"""
    folders = [finished, killed, resumed]
    res = subprocess.run([NANO_PY, "-c", script, NANO_SRC, *map(str, folders)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for folder in folders:
        n = sum(1 for s in finished_shards(folder) for _ in read_shard_records(s))
        for pattern in PATTERNS:
            r = got[f"{folder}|{pattern}"]
            assert r["shards"] == finished_shards(folder) and r["samples"] == n and r["unk"] == 0
