"""`corpus stem` (issue 7): the real Demucs code path with a tiny random-weight HTDemucs saved
in Demucs' own format, resumability, and the Silero SAD filter on real speech vs music."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf

import corpora
from corpus_tools.audio import load_audio, write_audio

SR = 16_000
PYANNOTE_SAMPLE = (Path(__file__).resolve().parents[1] / ".venv/lib/python3.11/site-packages/"
                   "pyannote/audio/sample/sample.wav")
MUSIC = sorted(Path("/usr/share/games/asc/music").glob("*.mp3"))


def music_manifest(root: Path, clips: list[tuple[str, str, float | None, float | None]]) -> Path:
    return corpora.music_manifest(root, [(c, c, p, s, e) for c, p, s, e in clips])


def speech_clip(root: Path) -> str:
    """Real speech (pyannote sample 10.5–14.5 s) as a 44.1 kHz stereo wav, like a music file."""
    x = load_audio(PYANNOTE_SAMPLE, 10.5, 14.5, 44_100)
    path = root / "speech.wav"
    sf.write(path, np.stack([x, x], axis=1), 44_100)
    return str(path)


@pytest.mark.slow
def test_stem_command_runs_demucs_and_resumes(tiny_demucs, tmp_path):
    import torch
    from typer.testing import CliRunner

    from corpus_tools.cli import app

    torch.set_num_threads(2)
    clips = [("music/000002", str(MUSIC[0]), 30.0, 33.5), ("speech-1", speech_clip(tmp_path),
                                                           None, None)]
    manifest = music_manifest(tmp_path, clips)
    out = tmp_path / "stems"
    args = ["stem", str(manifest), "-o", str(out), "--demucs-model", str(tiny_demucs),
            "--device", "cpu", "--batch-size", "2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    df = pl.read_parquet(out / "stems.parquet")
    assert df["clip_id"].to_list() == ["music/000002", "speech-1"]
    assert set(df.columns) >= {"clip_id", "vocal_path", "instrumental_path",
                               "vocal_speech_seconds", "usable_vocal"}
    assert df["usable_vocal"].dtype == pl.Boolean
    for row, expect in zip(df.to_dicts(), (3.5, 4.0)):
        for col in ("vocal_path", "instrumental_path"):
            info = sf.info(out / row[col])
            assert (info.samplerate, info.channels) == (SR, 1)
            assert info.frames == pytest.approx(expect * SR, abs=2)
        assert row["vocal_speech_seconds"] >= 0.0
    assert "/" not in df["vocal_path"][0].split("/", 1)[1]  # clip ids become safe file names
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")}

    # rerun: everything is done, so not even the model is loaded (a bogus name is fine)
    r = CliRunner().invoke(app, ["stem", str(manifest), "-o", str(out), "--demucs-model",
                                 "no-such-model", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "2 already done" in " ".join(r.output.split())

    # a new clip: only it is separated, the finished ones are left alone
    manifest = music_manifest(tmp_path, clips + [("music/000003", str(MUSIC[1]), 40.0, 42.0)])
    r = CliRunner().invoke(app, args[:1] + [str(manifest)] + args[2:])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "1 separated" in text and "2 already done" in text
    assert pl.read_parquet(out / "stems.parquet").height == 3
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())
    assert not list(out.rglob(".*.tmp"))


def test_stem_command_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from corpus_tools.cli import app

    manifest = music_manifest(tmp_path, [("a", str(MUSIC[0]), 0.0, 1.0)])
    r = CliRunner().invoke(app, ["stem", str(manifest), "-o", str(tmp_path / "o"),
                                 "--demucs-model", str(tmp_path / "missing.th"), "--device", "cpu"])
    assert r.exit_code != 0 and "Traceback" not in r.output and "demucs" in r.output.lower()
    r = CliRunner().invoke(app, ["stem", str(tmp_path / "nope.parquet"), "-o", str(tmp_path)])
    assert r.exit_code != 0 and "no such manifest" in r.output
    r = CliRunner().invoke(app, ["stem", "--help"])
    assert r.exit_code == 0 and "--demucs-model" in r.output


def test_sad_tells_speech_from_music():
    from corpus_tools.stems import load_vad, vocal_speech_seconds

    vad = load_vad()
    speech = load_audio(PYANNOTE_SAMPLE)
    assert vocal_speech_seconds(speech, vad) > 15.0
    for mp3 in MUSIC:  # 10 s of instrumental game music each
        assert vocal_speech_seconds(load_audio(mp3, 60.0, 70.0), vad) < 0.5
    assert vocal_speech_seconds(np.zeros(SR, dtype=np.float32), vad) == 0.0


@pytest.mark.slow
def test_unusable_vocal_stems_are_marked(tiny_demucs, tmp_path, monkeypatch):
    """With an ideal separator (vocals = the input), speech is usable and music is not."""
    import corpus_tools.stems as stems
    from corpus_tools.simulate import ClipPool

    def ideal(model, waves, device, shifts=0, overlap=0.25):
        return [(w.mean(0).numpy(), np.zeros(w.shape[-1], dtype=np.float32)) for w in waves]

    monkeypatch.setattr(stems, "separate", ideal)
    manifest = music_manifest(tmp_path, [("speech", speech_clip(tmp_path), None, None),
                                         ("music", str(MUSIC[2]), 60.0, 70.0)])
    df = stems.stem_clips(manifest, tmp_path / "out", model=str(tiny_demucs), device="cpu")
    flags = dict(zip(df["clip_id"], df["usable_vocal"]))
    assert flags == {"speech": True, "music": False}
    assert df.filter(pl.col("clip_id") == "speech")["vocal_speech_seconds"][0] > 2.0
    pool = ClipPool.from_stems(tmp_path / "out", "vocal")
    assert [e["id"] for e in pool.entries] == ["speech"]
    assert len(ClipPool.from_stems(tmp_path / "out", "instr")) == 2


@pytest.mark.slow
def test_broken_clip_is_recorded_not_fatal(tiny_demucs, tmp_path):
    from corpus_tools.stems import stem_clips

    bad = tmp_path / "broken.mp3"
    bad.write_bytes(b"not audio at all")
    write_audio(tmp_path / "ok.wav", load_audio(MUSIC[0], 50.0, 51.0))
    manifest = music_manifest(tmp_path, [("bad", str(bad), 0.0, 1.0),
                                         ("ok", str(tmp_path / "ok.wav"), None, None)])
    df = stem_clips(manifest, tmp_path / "out", model=str(tiny_demucs), device="cpu")
    rows = {r["clip_id"]: r for r in df.to_dicts()}
    assert rows["bad"]["error"] and rows["bad"]["vocal_path"] is None
    assert not rows["bad"]["usable_vocal"] and rows["ok"]["error"] is None
