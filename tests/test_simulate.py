"""Data-quality simulation (issue 7): conditions, selection, SNR, partners, lengths, seeds.

The fixtures build a small LibriSpeech-layout corpus from real speech (pyannote's 2-speaker
sample, espeak-ng voices, the alsa voice clips) with fake speaker/chapter ids, a MUSAN-like
noise manifest, an FMA-like music manifest (asc-music mp3 excerpts) and a stems folder.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf

from corpora import librispeech, music_manifest, musan, shard_utterances, speech
from corpus_tools.audio import load_audio, write_audio
from corpus_tools.data.rng import batch_rng
from corpus_tools.simulate import (ClipPool, Simulator, active_power, count_selected, fit_length,
                                   measure_snr, mix_at_snr, parse_condition, simulate_offline,
                                   valid_condition_names)

SR = 16_000
PYANNOTE_SAMPLE = (Path(__file__).resolve().parents[1] / ".venv/lib/python3.11/site-packages/"
                   "pyannote/audio/sample/sample.wav")
ALSA = Path("/usr/share/sounds/alsa")
MUSIC = sorted(Path("/usr/share/games/asc/music").glob("*.mp3"))
SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the bank of the river.",
    "She sells sea shells by the sea shore every summer morning.",
    "A journey of a thousand miles begins with a single step.",
    "The library closes early on Sundays and public holidays.",
    "Please remember to water the plants while I am away.",
    "Every chapter of the old book was read aloud by a volunteer.",
]
# (speaker, chapter, espeak voice): two chapters for some speakers, as in LibriSpeech
VOICES = [("101", "5001", "en-us+m1"), ("101", "5002", "en-us+m1"), ("202", "6001", "en-gb+f2"),
          ("303", "7001", "en+m3"), ("303", "7002", "en+m3"), ("404", "8001", "en-gb-scotland+f3"),
          ("505", "9001", "en-029+m4")]
PYANNOTE_CUTS = [("900", "9900", 10.57, 14.49), ("900", "9900", 18.20, 21.49),
                 ("910", "9910", 14.60, 17.92), ("910", "9910", 21.80, 24.80),
                 ("910", "9910", 24.80, 27.80)]
ALSA_VOICES = ["Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left",
               "Rear_Right", "Side_Left", "Side_Right"]


# -- fixtures -------------------------------------------------------------------------


def build_librispeech(root: Path) -> Path:
    """LibriSpeech layout (speaker/chapter/spk-chap-utt.flac + trans.txt) and its manifest."""
    chapters: dict[tuple[str, str], list[tuple[str, np.ndarray]]] = {}
    for k, (spk, chap, voice) in enumerate(VOICES):
        texts = [SENTENCES[(k + j) % len(SENTENCES)] for j in range(4)]
        chapters[(spk, chap)] = [(text.upper(), speech(text, voice, 150 + 15 * j, gain=0.6))
                                 for j, text in enumerate(texts)]
    sample = load_audio(PYANNOTE_SAMPLE)
    for spk, chap, a, b in PYANNOTE_CUTS:
        chapters.setdefault((spk, chap), []).append(("", sample[int(a * SR):int(b * SR)]))
    chapters[("606", "9606")] = [(name.replace("_", " ").upper(), load_audio(ALSA / f"{name}.wav"))
                                 for name in ALSA_VOICES]
    librispeech(root, {"train-clean-100": chapters})
    rows = []
    for (spk, chap), utts in chapters.items():
        for i, (text, _) in enumerate(utts):
            utt = f"{spk}-{chap}-{i:04d}"
            path = root / "train-clean-100" / spk / chap / f"{utt}.flac"
            dur = sf.info(path).frames / SR
            rows.append(dict(segment_id=utt, recording_id=utt, path=str(path), start=0.0, end=dur,
                             duration=dur, text=text, speaker=spk, method="librispeech",
                             language="en", session=chap))
    manifest = root / "librispeech.parquet"
    pl.DataFrame(rows).write_parquet(manifest)
    return manifest


def build_noise(root: Path) -> Path:
    """MUSAN-like noise: white, brown, dial tone (technical), alsa Noise.wav (ambient)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(2.5 * SR)) / SR
    clips = {
        "noise-free-sound-0001": (0.05 * rng.standard_normal(3 * SR), "ambient"),
        "noise-free-sound-0002": (np.cumsum(rng.standard_normal(5 * SR)) * 2e-3, "ambient"),
        "noise-sound-bible-0003": (0.1 * (np.sin(2 * np.pi * 350 * t)
                                          + np.sin(2 * np.pi * 440 * t)), "technical"),
        "noise-sound-bible-0004": (load_audio(ALSA / "Noise.wav"), "ambient"),
    }
    audio = {cid: np.asarray(x, dtype=np.float32) for cid, (x, _) in clips.items()}
    for x in audio.values():
        x -= x.mean()
    folder = musan(root / "musan", {("noise", "free-sound"): {cid: partial(write_audio, x=x)
                                                               for cid, x in audio.items()}})
    rows = []
    for cid, x in audio.items():
        dur = x.size / SR
        rows.append(dict(segment_id=cid, recording_id=cid, path=str(folder / "noise" / "free-sound" / f"{cid}.wav"),
                         start=0.0, end=dur, duration=dur, category=clips[cid][1]))
    manifest = root / "musan_noise.parquet"
    pl.DataFrame(rows).write_parquet(manifest)
    return manifest


def build_music(root: Path) -> Path:
    """FMA-like music: 8 s excerpts of the asc-music mp3s (start/end into the file)."""
    return music_manifest(root, [(f"{i:06d}-{int(start)}", p.stem, p, start, start + 8.0)
                                 for i, p in enumerate(MUSIC) for start in (20.0, 60.0)], genre="Soundtrack")


def build_stems(root: Path, music: Path) -> Path:
    """A `corpus stem`-shaped folder without running Demucs: instrumental = the music clip,
    vocal = a sung-ish espeak line; one clip's vocal stem is silent (usable_vocal False)."""
    out = root / "stems"
    rows = []
    for i, r in enumerate(pl.read_parquet(music).to_dicts()[:4]):
        cid = r["segment_id"]
        instr = load_audio(r["path"], r["start"], r["end"]) * 0.5
        vocal = (np.zeros(instr.size, dtype=np.float32) if i == 3 else
                 np.resize(speech(SENTENCES[i], "en-us+f4", 120, gain=0.6), instr.size))
        write_audio(out / "vocals" / f"{cid}.wav", vocal)
        write_audio(out / "instrumental" / f"{cid}.wav", instr)
        rows.append(dict(clip_id=cid, vocal_path=f"vocals/{cid}.wav",
                         instrumental_path=f"instrumental/{cid}.wav",
                         vocal_speech_seconds=0.0 if i == 3 else 3.0, usable_vocal=i != 3))
    pl.DataFrame(rows).write_parquet(out / "stems.parquet")
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    music = build_music(root)
    return dict(root=root, source=build_librispeech(root / "LibriSpeech"),
                noise=build_noise(root), music=music, stems=build_stems(root, music))


# -- helpers --------------------------------------------------------------------------


def read_shards(folder: Path) -> dict[str, tuple[np.ndarray, dict]]:
    """source segment id -> (audio, json) of every utterance in the folder's shards."""
    out = shard_utterances(folder)
    assert all(k.split("-", 1)[1] == m["id"] for k, (a, m) in out.items())
    return {m["id"]: (a, m) for k, (a, m) in out.items()}


def clean_audio(corpus) -> dict[str, np.ndarray]:
    return {r["segment_id"]: load_audio(r["path"], r["start"], r["end"])
            for r in pl.read_parquet(corpus["source"]).to_dicts()}


def run(corpus, cond: str, out: Path, seed: int = 3, **kw) -> tuple[dict, pl.DataFrame]:
    kw.setdefault("batch_seconds", 24.0)
    summary = simulate_offline(cond, corpus["source"], out, noise=corpus["noise"],
                               music=corpus["music"], stems=corpus["stems"], seed=seed, **kw)
    return summary, pl.read_parquet(out / "simulation.parquet")


def check_fractions(table: pl.DataFrame, percent: int) -> None:
    for (b,), g in table.group_by(["batch"]):
        n, k = g.height, int(g["modified"].sum())
        assert k >= 1, f"batch {b}: nothing modified"
        assert abs(k - percent / 100 * n) <= 1.0, f"batch {b}: {k}/{n} modified for {percent} %"
        assert k == count_selected(n, percent)


MIX_CONDITIONS = ["2spk-mix-33", "mix-noise-10", "mix-noise-55", "mix-music-33", "mix-instr-50",
                  "mix-vocal-33"]


# -- conditions -----------------------------------------------------------------------


def test_parse_condition_names():
    assert parse_condition("baseline").op == "none"
    c = parse_condition("1spk-concat")
    assert (c.op, c.partner, c.percent) == ("concat", "same-session", 100)
    assert parse_condition("2spk-concat").partner == "different-speaker"
    for name, op, src in [("2spk-mix-10", "mix", "speech"), ("sub-noise-33", "sub", "noise"),
                          ("sub-music-50", "sub", "music"), ("mix-noise-55", "mix", "noise"),
                          ("mix-music-7", "mix", "music"), ("mix-instr-100", "mix", "instr"),
                          ("mix-vocal-1", "mix", "vocal")]:
        c = parse_condition(name)
        assert (c.op, c.source, c.name) == (op, src, name)
        assert c.percent == int(name.rsplit("-", 1)[1])
    assert parse_condition(" MIX-Noise-033 ").name == "mix-noise-33"


@pytest.mark.parametrize("bad", ["mix-noise", "mix-noise-0", "mix-noise-101", "mix-noise-1.5",
                                 "noise-mix-10", "1spk-concat-10", "", "basline"])
def test_unknown_condition_lists_valid_names(bad):
    with pytest.raises(ValueError) as err:
        parse_condition(bad)
    for name in valid_condition_names():
        assert name in str(err.value)
    assert "mix-vocal-X" in str(err.value) and "baseline" in str(err.value)


def test_count_selected_rounds_and_keeps_one():
    assert [count_selected(n, 10) for n in (1, 4, 5, 14, 15, 25)] == [1, 1, 1, 1, 2, 3]
    assert [count_selected(n, 33) for n in (1, 3, 5, 6, 10)] == [1, 1, 2, 2, 3]
    assert [count_selected(n, 50) for n in (1, 2, 3, 5, 8)] == [1, 1, 2, 3, 4]
    assert count_selected(0, 50) == 0 and count_selected(7, 100) == 7
    for n in range(1, 60):
        for x in (1, 10, 33, 50, 55, 99):
            k = count_selected(n, x)
            assert k >= 1 and abs(k - n * x / 100) <= 1


# -- signal helpers -------------------------------------------------------------------


def test_active_power_ignores_silence_and_is_scale_invariant():
    rng = np.random.default_rng(1)
    x = np.zeros(5 * SR, dtype=np.float32)
    x[SR:3 * SR] = 0.1 * rng.standard_normal(2 * SR)
    assert active_power(x) == pytest.approx(float(np.mean(x[SR:3 * SR] ** 2)), rel=1e-3)
    assert active_power(3 * x) == pytest.approx(9 * active_power(x), rel=1e-5)
    assert active_power(np.zeros(SR, dtype=np.float32)) == 0.0


def test_fit_length_crops_and_repeats_exactly():
    rng = np.random.default_rng(0)
    x = np.arange(1000, dtype=np.float32)
    for n in (1, 999, 1000, 1001, 3333):
        y, off, reps = fit_length(x, n, rng)
        assert y.size == n
        assert np.array_equal(y, x[(off + np.arange(n)) % x.size])
        assert reps == (1 if n <= x.size else math.ceil((off + n) / x.size))


def test_mix_at_snr_hits_target_and_never_clips():
    rng = np.random.default_rng(2)
    speech = (0.9 * np.sin(np.arange(2 * SR) / 7.0)).astype(np.float32)
    noise = rng.standard_normal(2 * SR).astype(np.float32)
    for snr in (0.0, 7.3, 15.0):
        y, scale, gain = mix_at_snr(speech, noise, snr)
        assert np.abs(y).max() <= 0.99 + 1e-6
        assert measure_snr(gain * speech, y - gain * speech) == pytest.approx(snr, abs=1e-3)


# -- the conditions end to end (offline) --------------------------------------------------


@pytest.mark.parametrize("cond", MIX_CONDITIONS)
def test_mix_conditions(corpus, cond, tmp_path):
    summary, table = run(corpus, cond, tmp_path)
    pct = parse_condition(cond).percent
    check_fractions(table, pct)
    assert summary["batches"] >= 3
    out = read_shards(tmp_path)
    clean = clean_audio(corpus)
    speakers = dict(zip(table["id"], table["speaker"]))
    for key, (audio, meta) in out.items():
        rec = meta["simulation"]
        assert audio.size == clean[key].size  # mixing never changes the length
        if not rec["modified"]:
            np.testing.assert_allclose(audio, clean[key], atol=1 / 32768)
            continue
        assert 0.0 <= rec["snr_db"] <= 15.0
        g = rec["gain"]
        measured = measure_snr(g * clean[key], audio - g * clean[key])
        assert -0.05 <= measured <= 15.05
        assert measured == pytest.approx(rec["snr_db"], abs=0.3)
        if cond.startswith("2spk"):
            assert rec["partner_speaker"] != speakers[key]
            assert rec["partner_speaker"] == speakers[rec["partner_id"]]
        else:
            assert rec["interferer_id"]
    if cond.startswith("mix-vocal"):  # the silent vocal stem is never used
        assert "000001-60" not in set(table["interferer_id"].drop_nulls())


@pytest.mark.parametrize("cond", ["sub-noise-33", "sub-music-50", "sub-music-10"])
def test_substitutions_have_exact_length(corpus, cond, tmp_path):
    _, table = run(corpus, cond, tmp_path)
    check_fractions(table, parse_condition(cond).percent)
    out = read_shards(tmp_path)
    clean = clean_audio(corpus)
    src = corpus["noise"] if "noise" in cond else corpus["music"]
    pool = ClipPool.from_manifest(src, "x")
    ids = [e["id"] for e in pool.entries]
    repeated = 0  # substitutions that had to repeat a short clip
    for key, (audio, meta) in out.items():
        rec = meta["simulation"]
        assert audio.size == clean[key].size == meta["num_frames"]
        if rec["modified"]:
            clip = pool.load(ids.index(rec["interferer_id"]))
            expect = clip[(rec["interferer_offset"] + np.arange(audio.size)) % clip.size]
            np.testing.assert_allclose(audio, np.clip(expect, -1, 1), atol=2 / 32768)
            assert meta["transcript"] == "" and rec["original_transcript"] is not None
            repeated += rec["repeats"] > 1
    if "noise" in cond:  # the 2.5 s dial tone and 3 s white noise are shorter than many
        assert repeated >= 1


@pytest.mark.parametrize("cond", ["1spk-concat", "2spk-concat"])
def test_concatenations(corpus, cond, tmp_path):
    _, table = run(corpus, cond, tmp_path)
    assert table["modified"].all()  # concat applies to every utterance
    out = read_shards(tmp_path)
    clean = clean_audio(corpus)
    rows = {r["segment_id"]: r for r in pl.read_parquet(corpus["source"]).to_dicts()}
    ids = {r["id"]: r for r in table.to_dicts()}
    assert {"batch", "pool"} >= set(table["partner_from"]) and len(set(table["partner_from"])) >= 1
    for key, (audio, meta) in out.items():
        rec = meta["simulation"]
        partner = rec["partner_id"]
        assert partner != key
        n, kept = clean[key].size, rec["partner_kept_frames"]
        # the concatenation is cut to the batch's length cap: the partner's start is kept
        assert rec["boundary"] == n and audio.size == n + kept and kept > 0
        assert kept == min(clean[partner].size, rec["length_cap"] - n)
        assert rec["partner_num_frames"] == clean[partner].size
        np.testing.assert_allclose(audio[:n], clean[key], atol=1 / 32768)
        np.testing.assert_allclose(audio[n:], clean[partner][:kept], atol=1 / 32768)
        if cond == "1spk-concat":
            assert rows[partner]["session"] == rows[key]["session"] == rec["partner_session"]
        else:
            assert rows[partner]["speaker"] != rows[key]["speaker"]
        assert meta["duration"] == pytest.approx(audio.size / SR)
    assert set(ids) == set(out)


def test_1spk_concat_falls_back_to_the_pool(corpus, tmp_path):
    # tiny batches: a same-chapter partner is rarely in the batch, so the pool must serve
    _, table = run(corpus, "1spk-concat", tmp_path, batch_seconds=6.0)
    assert "pool" in set(table["partner_from"])
    assert table["modified"].all()


def test_baseline_is_a_plain_copy(corpus, tmp_path):
    _, table = run(corpus, "baseline", tmp_path)
    assert not table["modified"].any()
    clean = clean_audio(corpus)
    for key, (audio, meta) in read_shards(tmp_path).items():
        np.testing.assert_allclose(audio, clean[key], atol=1 / 32768)
        assert meta["simulation"] == {"batch": meta["simulation"]["batch"],
                                      "condition": "baseline", "modified": False}


@pytest.mark.parametrize("cond", ["mix-noise-33", "2spk-mix-50", "sub-music-10", "1spk-concat"])
def test_same_seed_is_byte_identical(corpus, cond, tmp_path):
    run(corpus, cond, tmp_path / "a", seed=11)
    run(corpus, cond, tmp_path / "b", seed=11)
    run(corpus, cond, tmp_path / "c", seed=12)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert any(n.endswith(".tar") for n in names)
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes(), n
    tars = sorted((tmp_path / "a").glob("*.tar"))
    assert any(t.read_bytes() != (tmp_path / "c" / t.name).read_bytes() for t in tars)


# -- online: the ShardBatchStream transform ----------------------------------------------


def _utts(corpus, n=6, split=None):
    from corpus_tools.data.batch import Utterance

    rows = pl.read_parquet(corpus["source"]).to_dicts()[::5][:n]
    return [Utterance(r["segment_id"], load_audio(r["path"]),
                      {"id": r["segment_id"], "speaker": r["speaker"], "session": r["session"],
                       "transcript": r["text"], **({"split": split} if split else {})})
            for r in rows]


def test_transform_does_not_mutate_and_is_seeded(corpus):
    sim = Simulator("mix-noise-50", noise=corpus["noise"])
    utts = _utts(corpus)
    before = [u.audio.copy() for u in utts]
    a = sim(utts, batch_rng(5, 0))
    b = sim(utts, batch_rng(5, 0))
    for u, x in zip(utts, before):
        assert np.array_equal(u.audio, x) and "simulation" not in u.meta
    assert [np.array_equal(x.audio, y.audio) for x, y in zip(a, b)] == [True] * len(a)
    assert sum(u.meta["simulation"]["modified"] for u in a) == count_selected(len(utts), 50)


def test_validation_is_never_degraded(corpus):
    sim = Simulator("sub-noise-100", noise=corpus["noise"])
    utts = _utts(corpus, split="val")
    out = sim(utts, batch_rng(0, 0))
    for u, v in zip(utts, out):
        assert np.array_equal(u.audio, v.audio)
        assert v.meta["simulation"]["modified"] is False
    mixed = utts[:3] + _utts(corpus)[3:]
    out = sim(mixed, batch_rng(0, 1))
    assert [u.meta["simulation"]["modified"] for u in out] == [False] * 3 + [True] * 3


def test_online_stream_matches_offline_batch_rng(corpus, tmp_path):
    """The stream hands the transform batch_rng(seed, index): offline == online per batch."""
    from corpus_tools.data.stream import ShardBatchStream

    run(corpus, "baseline", tmp_path / "shards", batch_seconds=30.0)  # plain shards of the source
    seen = []
    sim = Simulator("2spk-mix-33", source=tmp_path / "shards")

    def transform(utts, rng):
        seen.append(([u.audio.copy() for u in utts], [dict(u.meta) for u in utts]))
        return sim(utts, rng)

    stream = ShardBatchStream(tmp_path / "shards", 20.0, seed=9, infinite=False,
                              transform=transform)
    batches = list(stream)
    assert len(batches) >= 3
    from corpus_tools.data.batch import Utterance

    for i, (batch, (audios, metas)) in enumerate(zip(batches, seen)):
        utts = [Utterance(k, a, m) for k, a, m in zip(batch.keys, audios, metas)]
        again = sim(utts, batch_rng(9, i))
        for row, u in enumerate(again):
            n = int(batch.lengths[row])
            assert np.array_equal(batch.audio[row, :n].numpy(), u.audio)
        assert sum(m["simulation"]["modified"] for m in batch.meta) == count_selected(len(utts), 33)


def test_simulator_requires_its_source(corpus):
    with pytest.raises(ValueError, match="--noise"):
        Simulator("mix-noise-10")
    with pytest.raises(ValueError, match="--stems"):
        Simulator("mix-vocal-10", noise=corpus["noise"])
    with pytest.raises(ValueError, match="valid"):
        Simulator("mix-nose-10")


def test_stem_pool_excludes_unusable_vocals(corpus):
    vocal = ClipPool.from_stems(corpus["stems"], "vocal")
    instr = ClipPool.from_stems(corpus["stems"], "instr")
    assert len(vocal) == 3 and len(instr) == 4


# -- CLI --------------------------------------------------------------------------------


def test_cli_simulate(corpus, tmp_path):
    from typer.testing import CliRunner

    from corpus_tools.cli import app

    r = CliRunner().invoke(app, ["simulate", "--help"])
    assert r.exit_code == 0 and "mix-vocal-X" in r.output
    r = CliRunner().invoke(app, ["simulate", "mix-nosie-10", "--source", str(corpus["source"]),
                                 "-o", str(tmp_path / "x")])
    assert r.exit_code != 0 and "mix-noise-X" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["simulate", "mix-noise-10", "--source", str(corpus["source"]),
                                 "-o", str(tmp_path / "x")])
    assert r.exit_code != 0 and "--noise" in r.output and "Traceback" not in r.output
    out = tmp_path / "ok"
    r = CliRunner().invoke(app, ["simulate", "sub-noise-33", "--source", str(corpus["source"]),
                                 "--noise", str(corpus["noise"]), "-o", str(out), "--seed", "4",
                                 "--batch-seconds", "24", "--shard-size", "20"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "simulation.json").read_text())
    assert summary["condition"] == "sub-noise-33" and summary["modified"] >= summary["batches"]
    assert len(list(out.glob("shard.*.tar"))) == len(summary["shards"]) >= 2
    assert pl.read_parquet(out / "shards.parquet")["count"].sum() == summary["utterances"]
    assert list(out.glob("*.partial.tar"))
    r = CliRunner().invoke(app, ["simulate", "sub-noise-33", "--source", str(corpus["source"]),
                                 "--noise", str(corpus["noise"]), "-o", str(out)])
    assert r.exit_code != 0 and "--overwrite" in r.output


def test_cli_takes_corpus_folders(corpus, tmp_path):
    """`--source LibriSpeech/ --noise musan/` as in the SPEC: folders are imported on the fly."""
    from typer.testing import CliRunner

    from corpus_tools.cli import app

    out = tmp_path / "dirs"
    r = CliRunner().invoke(app, ["simulate", "mix-noise-50", "--librispeech",
                                 str(corpus["root"] / "LibriSpeech"), "--musan",
                                 str(corpus["root"] / "musan"), "-o", str(out),
                                 "--batch-seconds", "24"])
    assert r.exit_code == 0, r.output
    table = pl.read_parquet(out / "simulation.parquet")
    check_fractions(table, 50)
    assert set(table["id"]) == set(pl.read_parquet(corpus["source"])["segment_id"])
    assert set(table["interferer_id"].drop_nulls()) <= {
        r["segment_id"] for r in pl.read_parquet(corpus["noise"]).to_dicts()}


def test_shards_as_source(corpus, tmp_path):
    """`corpus shard` output as the source: ids, speakers and sessions come from the json."""
    from corpus_tools.manifests import read_segments
    from corpus_tools.shards import write_shards

    write_shards(read_segments(corpus["source"]), tmp_path / "shards", samples_per_shard=16,
                 progress=False)
    _, table = run(corpus | {"source": tmp_path / "shards"}, "2spk-mix-50", tmp_path / "out")
    check_fractions(table, 50)
    rows = {r["segment_id"]: r for r in pl.read_parquet(corpus["source"]).to_dicts()}
    assert set(table["id"]) == set(rows)
    for r in table.filter(pl.col("modified")).to_dicts():
        assert rows[r["partner_id"]]["speaker"] != rows[r["id"]]["speaker"]
    for audio, meta in read_shards(tmp_path / "out").values():
        assert meta["key"].endswith(meta["id"].replace(".", "_"))


@pytest.mark.parametrize("cond", ["2spk-concat", "sub-noise-50"])
def test_shard_source_keeps_transcript_and_letter_transcription_consistent(corpus, cond, tmp_path):
    """From `corpus shard` json: the joined (or emptied) text is the original under
    `transcript` and its letter form under nanow2v2's `transcription`."""
    from corpus_tools.manifests import read_segments
    from corpus_tools.shards import letter_transcript, write_shards

    write_shards(read_segments(corpus["source"]), tmp_path / "shards", samples_per_shard=16,
                 progress=False)
    _, table = run(corpus | {"source": tmp_path / "shards"}, cond, tmp_path / "out")
    changed = upper = 0
    for _, meta in read_shards(tmp_path / "out").values():
        assert meta["transcription"] == letter_transcript(meta["transcript"], meta["language"])
        if meta["simulation"]["modified"]:
            changed += 1
            if cond == "sub-noise-50":
                assert meta["transcript"] == meta["transcription"] == ""
            else:  # the source's upper-case LibriSpeech text stays in `transcript` only
                upper += meta["transcript"] != meta["transcript"].lower()
    assert changed and (upper or cond == "sub-noise-50")


def test_validation_flag_in_shard_extra(corpus):
    sim = Simulator("sub-noise-100", noise=corpus["noise"])
    utts = _utts(corpus, n=3)
    for u in utts:
        u.meta["extra"] = {"split": "val"}
    assert not any(u.meta["simulation"]["modified"] for u in sim(utts, batch_rng(0, 0)))


# -- concatenation: one length rule online and offline -------------------------------------

MAX_UTT = 30.0


def check_concat_batch(lengths: list[int], batch_seconds: float) -> None:
    assert len(lengths) * max(lengths) <= batch_seconds * SR, (
        f"{len(lengths)} rows × {max(lengths) / SR:.2f} s > {batch_seconds} s budget")
    assert max(lengths) <= MAX_UTT * SR


@pytest.fixture(scope="module")
def plain_shards(corpus, tmp_path_factory):
    from corpus_tools.manifests import read_segments
    from corpus_tools.shards import write_shards

    out = tmp_path_factory.mktemp("plain")
    write_shards(read_segments(corpus["source"]), out, samples_per_shard=12, progress=False)
    return out


@pytest.mark.parametrize("cond", ["1spk-concat", "2spk-concat"])
@pytest.mark.parametrize("seed", [0, 5, 9])
def test_concat_online_equals_offline_within_the_budget(plain_shards, cond, seed):
    """The stream forms concat batches on half the budget; the Simulator cuts the concatenation
    to min(max_utterance_seconds, budget / rows): same utterances as the offline call with
    batch_rng(seed, i), and rows × longest never passes the budget."""
    from corpus_tools.data.batch import Utterance
    from corpus_tools.data.stream import ShardBatchStream

    budget = 10.0
    sim = Simulator(cond, source=plain_shards, batch_seconds=budget, max_utterance_seconds=MAX_UTT)
    assert sim.length_growth == 2.0
    seen = []

    def transform(utts, rng):
        seen.append(([u.audio.copy() for u in utts], [dict(u.meta) for u in utts]))
        return sim(utts, rng)

    transform.length_growth = sim.length_growth
    stream = ShardBatchStream(plain_shards, budget, seed=seed, infinite=False, transform=transform,
                              max_utterance_seconds=MAX_UTT)
    batches = list(stream)
    assert len(batches) >= 3
    for i, (batch, (audios, metas)) in enumerate(zip(batches, seen)):
        lengths = batch.lengths.tolist()
        check_concat_batch(lengths, budget)
        utts = [Utterance(k, a, m) for k, a, m in zip(batch.keys, audios, metas)]
        again = sim(utts, batch_rng(seed, i))
        for row, (u, own) in enumerate(zip(again, audios)):
            n = lengths[row]
            assert np.array_equal(batch.audio[row, :n].numpy(), u.audio)
            rec, meta = u.meta["simulation"], batch.meta[row]
            assert meta["num_frames"] == n and meta["duration"] == pytest.approx(n / SR)
            assert rec["modified"] and rec["boundary"] == own.size  # half budget: room for a partner
            assert rec["partner_kept_frames"] == n - own.size > 0
            assert rec["partner_kept_frames"] <= rec["partner_num_frames"]
            assert np.array_equal(u.audio[:own.size], own)


@pytest.mark.parametrize("cond", ["1spk-concat", "2spk-concat"])
def test_offline_concat_shards_keep_the_budget_and_are_never_recropped(corpus, cond, tmp_path):
    from corpus_tools.data.stream import ShardBatchStream

    budget = 8.0
    for seed in (1, 2):
        out = tmp_path / str(seed)
        _, table = run(corpus, cond, out, seed=seed, batch_seconds=budget)
        for (b,), g in table.group_by(["batch"]):
            check_concat_batch(g["num_frames"].to_list(), budget)
        assert table["modified"].sum() >= table["batch"].n_unique()
        written = {sid: audio for sid, (audio, meta) in read_shards(out).items()}
        back = list(ShardBatchStream(out, budget, seed=seed, infinite=False))
        assert sum(len(b) for b in back) == len(written)
        for batch in back:
            for row, meta in enumerate(batch.meta):
                n, sid = int(batch.lengths[row]), meta["id"]
                assert n == written[sid].size, f"{sid} re-cropped by the reader"
                np.testing.assert_allclose(batch.audio[row, :n].numpy(), written[sid], atol=1e-6)


def test_concat_stream_refuses_a_simulator_with_another_budget(plain_shards):
    from corpus_tools.data.stream import ShardBatchStream

    with pytest.raises(ValueError, match="batch_seconds"):
        ShardBatchStream(plain_shards, 20.0, transform=Simulator("2spk-concat"))
