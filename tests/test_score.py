"""`corpus score`: hand-built references whose answers are known exactly, every reference
format, matching, DER/JER against pyannote.metrics called directly, the CLI and its errors,
the report section, and the bundled sample archive scored against its own reference."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from corpus_tools.cli import app
from corpus_tools.manifests import (RECORDINGS_SCHEMA, SEGMENTS_SCHEMA, WorkDir, conform, write_recordings,
                                    write_segments)
from corpus_tools.score import metrics
from corpus_tools.score.reference import Reference, ReferenceError, load_references, match_references
from corpus_tools.score.run import run_score

cli = CliRunner()


# -- helpers ------------------------------------------------------------------------------


def write_workdir(root: Path, recordings: dict[str, tuple[str, float]],
                  segments: dict[str, list[tuple[str, float, float, str | None]]]) -> WorkDir:
    """recordings: id → (file stem, duration); segments: method → [(recording, start, end, speaker)]."""
    wd = WorkDir(root)
    write_recordings(conform(pl.DataFrame([
        dict(recording_id=rid, path=f"/archive/{stem}.wav", status="ok", reason=None, duration=dur)
        for rid, (stem, dur) in recordings.items()]), RECORDINGS_SCHEMA), wd.recordings)
    for method, segs in segments.items():
        rows = [dict(segment_id=f"{rid}_{i}", recording_id=rid, path=f"/archive/{recordings[rid][0]}.wav",
                     start=s, end=e, duration=e - s, text="", speaker=spk, method=method, language="nl",
                     session=rid) for i, (rid, s, e, spk) in enumerate(segs)]
        write_segments(conform(pl.DataFrame(rows, schema_overrides={"speaker": pl.String}),
                               SEGMENTS_SCHEMA), wd.segments(method))
    return wd


def rttm(path: Path, rid: str, turns: list[tuple[float, float, str]], extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"SPEAKER {rid} 1 {s:.3f} {e - s:.3f} <NA> <NA> {spk} <NA> <NA>\n"
                            for s, e, spk in turns) + extra)
    return path


def ref(turns=(), nonspeech=None, words=None) -> Reference:
    return Reference("r", list(turns), list(nonspeech or []), list(words or []), has_turns=True,
                     has_nonspeech=nonspeech is not None, has_words=words is not None)


# -- the numbers, on cases whose answers are known exactly ---------------------------------


def test_segment_half_in_music():
    s = metrics.rates(metrics.recording_sums([(5.0, 15.0, None)],
                                             ref([(0.0, 10.0, "A")], nonspeech=[(10.0, 20.0, "music")])), ())
    assert s["speech_precision"] == pytest.approx(0.5)
    assert s["music_share"] == pytest.approx(0.5)
    assert s["noise_share"] == 0 and s["silence_share"] == pytest.approx(0.0)
    assert s["speech_recall"] == pytest.approx(0.5)


def test_music_under_speech_counts_as_both_and_silence_is_what_nothing_covers():
    r = ref([(0.0, 4.0, "A")], nonspeech=[(2.0, 6.0, "music"), (6.0, 7.0, "silence")])
    s = metrics.rates(metrics.recording_sums([(0.0, 10.0, None)], r), ())
    assert s["speech_precision"] == pytest.approx(0.4)
    assert s["music_share"] == pytest.approx(0.4)  # 2..4 is speech and music
    assert s["silence_share"] == pytest.approx(0.4)  # 6..10: labelled silence and unlabelled time


def test_no_label_track_leaves_music_noise_silence_undefined():
    s = metrics.rates(metrics.recording_sums([(0.0, 10.0, None)], ref([(0.0, 4.0, "A")])), ())
    assert s["speech_precision"] == pytest.approx(0.4)
    assert s["music_share"] is None and s["silence_share"] is None


def test_segment_spanning_two_speakers():
    r = ref([(0.0, 4.0, "A"), (4.0, 10.0, "B"), (10.0, 20.0, "A")])
    # [0,10]: B dominant (6 s), A 4 s > 1 s → a second speaker; [9.5,20]: A 10 s, B 0.5 s → not counted
    s = metrics.rates(metrics.recording_sums([(0.0, 10.0, None), (9.5, 20.0, None)], r), ())
    assert s["speaker_purity"] == pytest.approx((6.0 + 10.0) / (10.0 + 10.5))
    assert s["multi_speaker_segments"] == 1
    assert s["multi_speaker_h"] == pytest.approx(10.0 / 3600)
    assert s["speech_precision"] == pytest.approx(1.0)


def test_second_speaker_for_exactly_one_second_is_not_counted():
    r = ref([(0.0, 5.0, "A"), (5.0, 6.0, "B")])
    s = metrics.rates(metrics.recording_sums([(0.0, 6.0, None)], r), ())
    assert metrics.SECOND_SPEAKER_MIN_S == 1.0 and s["multi_speaker_segments"] == 0


def test_missed_speech_island():
    r = ref([(0.0, 5.0, "A"), (20.0, 22.0, "A")])
    s = metrics.rates(metrics.recording_sums([(0.0, 5.0, None)], r), ())
    assert s["speech_recall"] == pytest.approx(5.0 / 7.0)
    assert s["speech_precision"] == pytest.approx(1.0)
    assert s["reference_speech_h"] == pytest.approx(7.0 / 3600)


def test_overlapping_reference_turns_are_speech_once():
    r = ref([(0.0, 6.0, "A"), (4.0, 8.0, "B")])
    s = metrics.rates(metrics.recording_sums([(0.0, 8.0, None)], r), ())
    assert s["speech_precision"] == pytest.approx(1.0) and s["speech_recall"] == pytest.approx(1.0)
    assert s["speaker_purity"] == pytest.approx(6.0 / 8.0) and s["multi_speaker_segments"] == 1


def test_edge_cutting_through_a_word():
    words = [(1.0, 1.5, "hallo"), (1.5, 2.0, "wereld")]
    segs = [(1.2, 1.505, None), (1.505, 2.0, None)]  # 1.2 is inside "hallo"; 1.505 only 5 ms into "wereld"
    s = metrics.rates(metrics.recording_sums(segs, ref([(1.0, 2.0, "A")], words=words)), ())
    assert metrics.WORD_CUT_TOLERANCE_S == 0.010
    assert s["edges"] == 4 and s["cut_edge_share"] == pytest.approx(0.25)
    assert metrics.count_cut_edges([(1.3, 1.7, None)], words) == 2
    assert metrics.rates(metrics.recording_sums(segs, ref([(1.0, 2.0, "A")])), ())["cut_edge_share"] is None


def test_cover_overlap_equals_pyannote_crop():
    import random

    from pyannote.core import Segment

    rng = random.Random(0)
    intervals = [(a, a + rng.uniform(0.0, 3.0)) for a in (rng.uniform(0, 100) for _ in range(60))]
    cover = metrics.Cover(intervals)
    for _ in range(300):
        a = rng.uniform(-5, 105)
        b = a + rng.choice([0.0, rng.uniform(0, 0.5), rng.uniform(0, 40)])
        want = cover.timeline.crop(Segment(a, b), mode="intersection").duration() if b > a else 0.0
        assert cover.overlap(a, b) == pytest.approx(want, abs=1e-9)
    assert cover.duration() == pytest.approx(cover.timeline.duration())
    assert metrics.Cover([]).overlap(0.0, 10.0) == 0.0


def test_sums_are_micro_averaged():
    a = metrics.recording_sums([(0.0, 10.0, None)], ref([(0.0, 10.0, "A")]))  # precision 1 on 10 s
    b = metrics.recording_sums([(0.0, 30.0, None)], ref([(0.0, 3.0, "A")]))  # precision 0.1 on 30 s
    total = metrics.RecordingSums()
    total += a
    total += b
    assert metrics.rates(total, ())["speech_precision"] == pytest.approx(13.0 / 40.0)  # not (1 + 0.1) / 2


# -- reference formats and matching ---------------------------------------------------------


def test_rttm_speakers_and_nonspeech_types(tmp_path):
    p = tmp_path / "x.rttm"
    p.write_text(";; a comment\n"
                 "SPKR-INFO bc0 1 <NA> <NA> <NA> unknown A <NA> <NA>\n"
                 "SPEAKER bc0 1 1.0 2.0 <NA> <NA> A <NA> <NA>\n"
                 "SPEAKER bc0 1 2.5 1.5 <NA> <NA> B <NA> <NA>\n"
                 "MUSIC bc0 1 5.0 1.0 <NA> <NA> <NA> <NA> <NA>\n"
                 "NOISE bc0 1 6.0 0.5 <NA> <NA> <NA> <NA> <NA>\n"
                 "SILENCE bc0 1 6.5 0.5 <NA> <NA> <NA> <NA> <NA>\n"
                 "NON-SPEECH bc0 1 7.0 1.0 <NA> <NA> Applause <NA> <NA>\n"
                 "NON-SPEECH bc0 1 8.0 1.0 <NA> music <NA> <NA> <NA>\n"
                 "SPEAKER bc1 1 0.0 1.0 <NA> <NA> C <NA> <NA>\n")
    refs = load_references(p)
    assert sorted(refs) == ["bc0", "bc1"]
    r = refs["bc0"]
    assert r.turns == [(1.0, 3.0, "A"), (2.5, 4.0, "B")]
    assert r.nonspeech == [(5.0, 6.0, "music"), (6.0, 6.5, "noise"), (6.5, 7.0, "silence"),
                           (7.0, 8.0, "noise"), (8.0, 9.0, "music")]
    assert r.has_turns and r.has_nonspeech and not r.has_words
    assert not refs["bc1"].has_nonspeech


def test_audacity_labels(tmp_path):
    p = tmp_path / "bc0.labels.txt"
    p.write_text("0.000000\t8.000000\tMusic\n\\\t100.0\t2000.0\n8.5\t9.0\tsilence\n9.0\t9.5\tLaughter\n"
                 "10.0\t10.0\tnoise\n")
    r = load_references(p)["bc0.labels"]
    assert r.nonspeech == [(0.0, 8.0, "music"), (8.5, 9.0, "silence"), (9.0, 9.5, "noise")]
    assert r.alt_ids == {"bc0"} and r.has_nonspeech and not r.has_turns


@pytest.mark.parametrize("header", [True, False])
def test_label_csv(tmp_path, header):
    p = tmp_path / "labels.csv"
    p.write_text(("start,label,recording,end\n1.0,music,bc0,2.0\n3,NOISE,bc1,4.5\n") if header
                 else "bc0,1.0,2.0,music\nbc1,3,4.5,NOISE\n")
    refs = load_references(p)
    assert refs["bc0"].nonspeech == [(1.0, 2.0, "music")] and refs["bc1"].nonspeech == [(3.0, 4.5, "noise")]


def test_ctm_words(tmp_path):
    p = tmp_path / "words.ctm"
    p.write_text(";; words\nbc0 1 0.50 0.30 hallo 0.98\nbc0 1 0.80 0.25 wereld\n")
    r = load_references(p)["bc0"]
    assert r.has_words and r.words == [(0.5, pytest.approx(0.8), "hallo"), (0.8, pytest.approx(1.05), "wereld")]


def test_folder_of_mixed_references_merges_per_recording(tmp_path):
    rttm(tmp_path / "ref" / "a.rttm", "bc000", [(0.0, 1.0, "A")])
    (tmp_path / "ref" / "bc000.txt").write_text("1.0\t2.0\tmusic\n")
    (tmp_path / "ref" / "w.ctm").write_text("bc000 1 0.1 0.2 hoi\n")
    (tmp_path / "ref" / "README.md").write_text("not a reference")
    matched, unmatched = match_references(load_references(tmp_path / "ref"),
                                          [{"recording_id": "bc000", "path": "/a/bc000.wav"}])
    r = matched["bc000"]
    assert unmatched == [] and r.has_turns and r.has_nonspeech and r.has_words
    assert r.turns == [(0.0, 1.0, "A")] and r.nonspeech == [(1.0, 2.0, "music")] and len(r.words) == 1


def test_matching_by_id_and_by_file_stem(tmp_path):
    rttm(tmp_path / "r" / "one.rttm", "news1", [(0.0, 1.0, "A")])  # by recording id
    rttm(tmp_path / "r" / "two.rttm", "journaal_2020", [(0.0, 1.0, "B")])  # by file stem
    rttm(tmp_path / "r" / "three.rttm", "ghost", [(0.0, 1.0, "C")])
    recs = [{"recording_id": "news1", "path": "/a/x.wav"}, {"recording_id": "bc7", "path": "/a/journaal_2020.mp3"},
            {"recording_id": "bc8", "path": "/a/other.wav"}]
    matched, unmatched = match_references(load_references(tmp_path / "r"), recs)
    assert sorted(matched) == ["bc7", "news1"] and matched["bc7"].turns == [(0.0, 1.0, "B")]
    assert unmatched == ["ghost"]


@pytest.mark.parametrize("name,text,message", [
    ("bc0.txt", "0\t1\tspeech\n", "unknown label 'speech'"),
    ("bc0.txt", "0 1 music\n", "start<TAB>end<TAB>label"),
    ("x.rttm", "SPEAKER bc0 1 abc 1.0 <NA> <NA> A <NA> <NA>\n", "times must be numbers"),
    ("x.rttm", "SPEAKER bc0 1 1.0 -1.0 <NA> <NA> A <NA> <NA>\n", "negative start or duration"),
    ("x.rttm", "NON-SPEECH bc0 1 1.0 1.0 <NA> other <NA> <NA> <NA>\n", "unknown label 'other'"),
    ("x.csv", "recording,begin,end,label\nbc0,1,2,music\n", "missing start"),
    ("x.ctm", "bc0 1 0.5 hallo\n", "a CTM line is"),
    ("x.stm", "bc0 1 A 0 1 hallo\n", "unknown reference format"),
])
def test_bad_reference_files_name_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ReferenceError, match=message) as exc:
        load_references(tmp_path / name)
    assert str(tmp_path / name) in str(exc.value)


# -- DER / JER / label purity through the stage cache --------------------------------------

REF_TURNS = [(0.0, 10.0, "A"), (10.0, 20.0, "B"), (20.0, 30.0, "A")]
# the diarization is late by 0.1 s at every change and mislabels 25..30
HYP_TURNS = [(0.0, 10.1, "SPEAKER_00"), (10.1, 20.1, "SPEAKER_01"), (20.1, 25.0, "SPEAKER_00"),
             (25.0, 30.0, "SPEAKER_01")]


SETTINGS = {"whisper_model": "base", "language": "nl", "vad_model": None, "beam_size": 1, "align_model": None,
            "diarize_model": None}


def put_diarization(wd: WorkDir, folder: str, turns, settings: dict) -> Path:
    """A wx-diar stage cache entry as `corpus segment` lays it out (docs/manifests.md)."""
    d = wd.root / "cache" / folder
    d.mkdir(parents=True, exist_ok=True)
    (d / "settings.json").write_text(json.dumps({"stage": "wx-diar", **settings}))
    (d / "bc000.json").write_text(json.dumps({"segments": [], "turns": [list(t) for t in turns]}))
    return d


def diarized_workdir(root: Path) -> WorkDir:
    segs = [("bc000", s, e, f"bc000:{spk}") for s, e, spk in HYP_TURNS]
    wd = write_workdir(root / "work", {"bc000": ("bc000", 30.0)},
                       {"wx-diar": segs, "sad": [("bc000", s, e, None) for _, s, e, _ in segs]})
    (wd.segments_dir / "wx-diar.drops.json").write_text(json.dumps(
        {"kept_seconds": 30.0, "method": "wx-diar", "settings": {**SETTINGS, "device": "cpu", "batch_size": 4}}))
    put_diarization(wd, "wx-diar-0123456789", HYP_TURNS, SETTINGS)
    rttm(root / "ref" / "bc000.rttm", "bc000", REF_TURNS)
    return wd


def pyannote_direct(metric_cls, collar: float | None, turns=HYP_TURNS) -> float:
    from pyannote.core import Annotation, Segment, Timeline

    ref, hyp = Annotation(uri="bc000"), Annotation(uri="bc000")
    for s, e, spk in REF_TURNS:
        ref[Segment(s, e)] = spk
    for s, e, spk in turns:
        hyp[Segment(s, e)] = spk
    metric = metric_cls() if collar is None else metric_cls(collar=collar)
    return metric(ref, hyp, uem=Timeline([Segment(0, 30.0)]))


def test_der_jer_equal_pyannote_called_directly(tmp_path):
    from pyannote.metrics.diarization import DiarizationErrorRate, JaccardErrorRate

    wd = diarized_workdir(tmp_path)
    res = run_score(wd.root, tmp_path / "ref", collars=(0.0, 0.25))
    row = res.methods.filter(pl.col("method") == "wx-diar").row(0, named=True)
    for c in (0.0, 0.25):
        assert row[f"der_collar{c:g}"] == pytest.approx(pyannote_direct(DiarizationErrorRate, c), abs=1e-9)
        assert row[f"jer_collar{c:g}"] == pytest.approx(pyannote_direct(JaccardErrorRate, c), abs=1e-9)
    # at collar 0 the 0.1 s lateness and the mislabelled 5 s count; the 0.25 s collar (±0.125 s)
    # hides the lateness, not the mislabelling
    assert row["der_collar0"] == pytest.approx((0.1 + 0.1 + 5.0) / 30.0, abs=1e-6)
    # collars: 0.125 s at 0 and 30, 0.25 s around 10 and 20 → 29.25 s scored, 25..29.875 wrong
    assert row["der_collar0.25"] == pytest.approx(4.875 / 29.25, abs=1e-6)
    assert row["der_collar0"] > row["der_collar0.25"] > 0
    # label purity: SPEAKER_00 is A for 14.9 of its 15 s, SPEAKER_01 B for 9.9 of 15 s
    from pyannote.metrics.diarization import DiarizationPurity

    assert row["label_purity"] == pytest.approx(pyannote_direct(DiarizationPurity, None), abs=1e-9)
    assert row["label_purity"] == pytest.approx((14.9 + 9.9) / 30.0, abs=1e-6)
    assert row["diarized_recordings"] == 1
    sad = res.methods.filter(pl.col("method") == "sad").row(0, named=True)
    assert sad["der_collar0"] is None and sad["label_purity"] is None


def test_diarization_cache_is_the_folder_whose_settings_match(tmp_path):
    """The folder is chosen by its settings.json, not by recomputing its hash (which another
    version may compute differently): with several, the one agreeing with drops.json; with
    several and none agreeing, DER is left out and a note says so."""
    wd = diarized_workdir(tmp_path)
    put_diarization(wd, "wx-diar-aaaaaaaaaa", [(0.0, 30.0, "X")], {**SETTINGS, "whisper_model": "large-v2"})
    row = run_score(wd.root, tmp_path / "ref", ["wx-diar"]).methods.row(0, named=True)
    assert row["der_collar0"] == pytest.approx((0.2 + 5.0) / 30.0, abs=1e-6)

    put_diarization(wd, "wx-diar-0123456789", HYP_TURNS, {**SETTINGS, "diarize_model": "other"})
    res = run_score(wd.root, tmp_path / "ref", ["wx-diar"])
    assert res.methods.row(0, named=True)["der_collar0"] is None
    assert any("wx-diar: no cached diarization turns for 1 recording(s) (bc000)" in n for n in res.notes)


def test_diarization_cache_prefers_the_folder_agreeing_on_more_settings(tmp_path):
    """After a stage key gains a setting (``speaker_crop_s``), a rerun leaves the old folder
    beside the new one; both agree with drops.json on what they share, and the one the method
    was made from (agreeing on the added setting too) is used."""
    wd = diarized_workdir(tmp_path)
    drops = json.loads((wd.segments_dir / "wx-diar.drops.json").read_text())
    drops["settings"]["speaker_crop_s"] = 3.0
    (wd.segments_dir / "wx-diar.drops.json").write_text(json.dumps(drops))
    put_diarization(wd, "wx-diar-0123456789", [(0.0, 30.0, "X")], SETTINGS)      # before the crop
    put_diarization(wd, "wx-diar-cccccccccc", HYP_TURNS, {**SETTINGS, "speaker_crop_s": 3.0})
    row = run_score(wd.root, tmp_path / "ref", ["wx-diar"]).methods.row(0, named=True)
    assert row["der_collar0"] == pytest.approx((0.2 + 5.0) / 30.0, abs=1e-6)

    put_diarization(wd, "wx-diar-dddddddddd", [(0.0, 30.0, "X")], {**SETTINGS, "speaker_crop_s": 2.0})
    row = run_score(wd.root, tmp_path / "ref", ["wx-diar"]).methods.row(0, named=True)
    assert row["der_collar0"] == pytest.approx((0.2 + 5.0) / 30.0, abs=1e-6)  # 2.0 disagrees


def test_diarization_cache_keyed_on_models(tmp_path):
    """Where the key names the models that made a stage (settings.json and drops.json both
    record them), the models decide; a sole folder is used whatever it records."""
    wd = diarized_workdir(tmp_path)
    drops = json.loads((wd.segments_dir / "wx-diar.drops.json").read_text())
    models = {"diarization": {"name": "pyannote-seg3-campplus", "fingerprint": "abc"}}
    (wd.segments_dir / "wx-diar.drops.json").write_text(json.dumps({**drops, "models": models}))
    put_diarization(wd, "wx-diar-0123456789", HYP_TURNS, {"language": "nl", "beam_size": 1, "models": models})
    row = run_score(wd.root, tmp_path / "ref", ["wx-diar"]).methods.row(0, named=True)
    assert row["der_collar0"] == pytest.approx((0.2 + 5.0) / 30.0, abs=1e-6)  # the sole folder

    other = {"diarization": {"name": "pyannote-seg3-campplus", "fingerprint": "def"}}
    put_diarization(wd, "wx-diar-bbbbbbbbbb", [(0.0, 30.0, "X")], {"language": "nl", "beam_size": 1, "models": other})
    row = run_score(wd.root, tmp_path / "ref", ["wx-diar"]).methods.row(0, named=True)
    assert row["der_collar0"] == pytest.approx((0.2 + 5.0) / 30.0, abs=1e-6)  # same models, not "def"


# -- the command ----------------------------------------------------------------------------


@pytest.fixture()
def tiny(tmp_path):
    """Two recordings with references (bc000 by id, bc001 by file stem), one without."""
    wd = write_workdir(tmp_path / "work",
                       {"bc000": ("bc000", 60.0), "news": ("bc001", 40.0), "bc002": ("bc002", 30.0)},
                       {"seq": [("bc000", 0.0, 30.0, None), ("bc000", 30.0, 60.0, None), ("news", 0.0, 30.0, None),
                                ("bc002", 0.0, 30.0, None)],
                        "sad": [("bc000", 8.0, 20.0, None), ("bc000", 41.0, 50.0, None), ("news", 2.0, 9.0, None)]})
    ref_dir = tmp_path / "ref"
    rttm(ref_dir / "bc000.rttm", "bc000", [(8.0, 14.0, "A"), (14.0, 20.0, "B"), (40.0, 50.0, "A")])
    rttm(ref_dir / "bc001.rttm", "bc001", [(2.0, 9.0, "C")])
    (ref_dir / "bc000.labels.txt").write_text("0\t8\tmusic\n20\t40\tnoise\n")
    (ref_dir / "words.ctm").write_text("bc000 1 40.0 0.5 een\nbc000 1 40.6 0.6 twee\n")
    return wd, ref_dir


def test_cli_prints_table_and_writes_csv_json(tiny):
    wd, ref_dir = tiny
    res = cli.invoke(app, ["score", str(wd.root), "--reference", str(ref_dir)])
    assert res.exit_code == 0, res.output
    for text in ("speech P %", "music %", "spk purity %", "cut edges %", "seq", "sad",
                 "scored 2 recording(s); 1 without a reference skipped"):
        assert text in res.output
    assert "DER" not in res.output  # no method with speaker labels
    df = pl.read_csv(wd.segments_dir / "scores.csv")
    sad = df.filter(pl.col("method") == "sad").row(0, named=True)
    # sad keeps 12 + 9 + 7 s; speech in it 12 + 9 + 7; reference speech 22 + 7
    assert sad["speech_precision"] == pytest.approx(1.0) and sad["speech_recall"] == pytest.approx(28 / 29)
    assert sad["multi_speaker_segments"] == 1  # 8..20 has A for 6 s and B for 6 s
    assert sad["cut_edge_share"] == pytest.approx(1 / 4)  # 41.0 cuts "twee"; bc000 has 2 segments
    seq = df.filter(pl.col("method") == "seq").row(0, named=True)
    assert seq["speech_precision"] == pytest.approx(29 / 90) and seq["recordings"] == 2
    assert seq["music_share"] == pytest.approx(8 / 60)  # over bc000, the one with a label track
    assert seq["noise_share"] == pytest.approx(20 / 60)
    per = pl.read_csv(wd.segments_dir / "scores_per_recording.csv")
    assert per.height == 4 and set(per["recording_id"]) == {"bc000", "news"}
    data = json.loads((wd.segments_dir / "scores.json").read_text())
    assert data["skipped"] == ["bc002"] and data["scored"] == ["bc000", "news"]
    assert [m["method"] for m in data["methods"]] == ["seq", "sad"]


def test_cli_method_selection_and_report_section(tiny, tmp_path):
    from corpus_tools.report import build_report

    wd, ref_dir = tiny
    res = cli.invoke(app, ["score", str(wd.root), "-r", str(ref_dir), "--method", "sad"])
    assert res.exit_code == 0, res.output
    assert [m["method"] for m in json.loads((wd.segments_dir / "scores.json").read_text())["methods"]] == ["sad"]
    out = build_report(wd.root, tmp_path / "r.md")
    text = out.read_text()
    assert "## Segmentation quality" in text and "| sad |" in text and "speech P %" in text


def test_report_has_no_quality_section_without_scores(tiny, tmp_path):
    from corpus_tools.report import build_report

    wd, _ = tiny
    assert "Segmentation quality" not in build_report(wd.root, tmp_path / "r.md").read_text()


def test_cli_reports_references_for_no_recording(tiny):
    wd, ref_dir = tiny
    rttm(ref_dir / "ghost.rttm", "ghost", [(0.0, 1.0, "Z")])
    (ref_dir / "bc002.txt").write_text("0\t30\tmusic\n")  # labels, but no RTTM for bc002
    res = cli.invoke(app, ["score", str(wd.root), "--reference", str(ref_dir)])
    assert res.exit_code == 0, res.output
    assert "1 reference(s) match no ok recording: ghost" in res.output
    assert "1 recording(s) have labels or word times but no RTTM speaker turns and are not scored: bc002" in res.output
    assert "scored 2 recording(s); 0 without a reference skipped" in res.output


def _one_error_line(output: str) -> str:
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ")
    return lines[0]


def test_cli_bad_input_gives_one_clear_line(tiny, tmp_path):
    wd, ref_dir = tiny
    res = cli.invoke(app, ["score", str(wd.root), "--reference", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "reference not found" in _one_error_line(res.output)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bc000.txt").write_text("0\t1\tmusic\n1\t2\tjingle\n")
    res = cli.invoke(app, ["score", str(wd.root), "--reference", str(bad)])
    line = _one_error_line(res.output)
    assert res.exit_code == 2 and "bc000.txt:2: unknown label 'jingle'" in line

    ghost = tmp_path / "ghost.rttm"
    rttm(ghost, "ghost", [(0.0, 1.0, "Z")])
    res = cli.invoke(app, ["score", str(wd.root), "--reference", str(ghost)])
    line = _one_error_line(res.output)
    assert res.exit_code == 2 and "no reference matches a recording" in line and "ghost" in line

    only_labels = tmp_path / "only-labels"
    only_labels.mkdir()
    (only_labels / "bc000.txt").write_text("0\t1\tmusic\n")
    res = cli.invoke(app, ["score", str(wd.root), "--reference", str(only_labels)])
    assert res.exit_code == 2 and "no RTTM speaker turns" in _one_error_line(res.output)

    res = cli.invoke(app, ["score", str(wd.root), "--reference", str(ref_dir), "--method", "w-raw"])
    assert res.exit_code == 2 and "no segments for method(s) w-raw" in _one_error_line(res.output)

    res = cli.invoke(app, ["score", str(tmp_path / "nowork"), "--reference", str(ref_dir)])
    assert res.exit_code == 2 and "recordings.parquet not found" in _one_error_line(res.output)


# -- the bundled sample, scored against its own reference ----------------------------------


def merged(intervals):
    out = []
    for s, e in sorted((float(a), float(b)) for a, b in intervals if b > a):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def covered(s, e, union) -> float:
    return sum(max(0.0, min(e, b) - max(s, a)) for a, b in union)


def independent_scores(segs: list[tuple[float, float]], turns: list[tuple[float, float, str]],
                       labels: list[tuple[float, float, str]]) -> dict[str, float]:
    """The same numbers with plain interval arithmetic, nothing shared with corpus_tools.score."""
    speech = merged([(s, e) for s, e, _ in turns])
    music = merged([(s, e) for s, e, k in labels if k == "music"])
    noise = merged([(s, e) for s, e, k in labels if k == "noise"])
    heard = merged([(s, e) for s, e, _ in turns] + [(s, e) for s, e, k in labels if k in ("music", "noise")])
    speakers = {spk: merged([(s, e) for s, e, k in turns if k == spk]) for _, _, spk in turns}
    kept = sum(e - s for s, e in segs)
    dominant, multi = 0.0, 0
    for s, e in segs:
        talk = sorted((covered(s, e, u) for u in speakers.values()), reverse=True)
        dominant += talk[0]
        multi += len(talk) > 1 and talk[1] > 1.0
    kept_union = merged(segs)
    return {"speech_precision": sum(covered(s, e, speech) for s, e in segs) / kept,
            "speech_recall": sum(covered(s, e, kept_union) for s, e in speech) / sum(e - s for s, e in speech),
            "music_share": sum(covered(s, e, music) for s, e in segs) / kept,
            "noise_share": sum(covered(s, e, noise) for s, e in segs) / kept,
            "silence_share": sum((e - s) - covered(s, e, heard) for s, e in segs) / kept,
            "speaker_purity": dominant / kept, "multi_speaker_segments": multi}


def read_sample_reference(ref_dir: Path, rid: str):
    turns = [(float(f[3]), float(f[3]) + float(f[4]), f[7])
             for f in (line.split() for line in (ref_dir / f"{rid}.rttm").read_text().splitlines())]
    with open(ref_dir / f"{rid}.labels.csv", newline="") as fh:
        labels = [(float(r["start"]), float(r["end"]), r["label"]) for r in csv.DictReader(fh)]
    return turns, labels


def test_sample_reference_follows_the_timeline(tmp_path):
    """The archive's reference: espeak voices and alsa clips trimmed to where the voice is, the
    pyannote call's own RTTM turns shifted to where the call sits, non-speech as labelled."""
    from corpus_tools.samples import build_sample_archive, pyannote_sample_dir

    arch = build_sample_archive(tmp_path / "a", n_broadcasts=1)
    timeline = json.loads((arch / "timelines.json").read_text())["bc000"]
    turns, labels = read_sample_reference(arch / "reference", "bc000")
    call = next(st for st in timeline if st["source"] == "pyannote:sample.wav")
    call_turns = [t for t in turns if t[2].startswith("pyannote:")]
    first = (pyannote_sample_dir() / "sample.rttm").read_text().split()
    assert call_turns[0][0] == pytest.approx(call["start"] + float(first[3]), abs=1e-3)
    assert {t[2] for t in call_turns} == {"pyannote:speaker90", "pyannote:speaker91"}
    speech = [st for st in timeline if st["kind"] == "speech" and not st["source"].startswith("pyannote")]
    others = [t for t in turns if not t[2].startswith("pyannote:")]
    assert len(others) == len(speech)
    for st, (s, e, spk) in zip(speech, others):
        assert st["start"] <= s < e <= st["end"] and e - s > 0.5 * (st["end"] - st["start"])
        assert spk == ("alsa" if st["source"].startswith("alsa:") else st["source"])
    assert labels == [(pytest.approx(st["start"], abs=1e-4), pytest.approx(st["end"], abs=1e-4), st["kind"])
                      for st in timeline if st["kind"] != "speech"]


@pytest.mark.slow
def test_sample_archive_scored_against_its_own_reference(tmp_path, models_dir):
    from corpus_tools.samples import build_sample_archive

    arch = build_sample_archive(tmp_path / "archive", n_broadcasts=1)
    work = tmp_path / "work"
    assert cli.invoke(app, ["ingest", str(arch), "-o", str(work)]).exit_code == 0
    res = cli.invoke(app, ["segment", str(work), "--method", "seq,sad", "--models-dir", str(models_dir),
                           "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = cli.invoke(app, ["score", str(work), "--reference", str(arch / "reference")])
    assert res.exit_code == 0, res.output
    df = pl.read_csv(work / "segments" / "scores.csv")
    seq, sad = (df.filter(pl.col("method") == m).row(0, named=True) for m in ("seq", "sad"))
    assert sad["speech_precision"] > 0.8 and seq["speech_precision"] < sad["speech_precision"]
    assert sad["music_share"] < seq["music_share"]

    turns, labels = read_sample_reference(arch / "reference", "bc000")
    for method, row in (("seq", seq), ("sad", sad)):
        segs = [(r["start"], r["end"]) for r in pl.read_parquet(work / "segments" / f"{method}.parquet").iter_rows(named=True)]
        want = independent_scores(segs, turns, labels)
        for key, value in want.items():
            assert row[key] == pytest.approx(value, abs=1e-6), (method, key)
        printed = next(line for line in res.output.splitlines() if line.strip("│ ").startswith(method))
        assert f"{100 * want['speech_precision']:.1f}" in printed and f"{100 * want['speaker_purity']:.1f}" in printed
