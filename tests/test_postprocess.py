"""The paper's post-processing rules (thesis §6.2.4) as executable cases."""

from __future__ import annotations

import pytest

from corpus_tools.segment.postprocess import (DropLog, drop_short, ends_sentence, filter_phrases,
                                               load_phrases, merge_on_punctuation, merge_on_speaker,
                                               postprocess, sanitise, split_long)


def S(start, end, text="", speaker=None, **kw):
    d = {"start": float(start), "end": float(end), "text": text, **kw}
    if speaker is not None:
        d["speaker"] = speaker
    return d


NL = load_phrases("nl")


def test_dutch_phrase_list_is_the_papers():
    assert {"muziek", "gelach", "tv gelderland", "applaus", "gezang", "***", "."} <= NL


def test_a_phrase_list_file_extends_the_default_unless_told_to_replace_it(tmp_path):
    from corpus_tools.segment.postprocess import PHRASES_DIR, phrase_files

    extra = tmp_path / "extra.txt"
    extra.write_text("# ours\nOndertiteling  TV Gelderland\nApplaus\n", encoding="utf-8")
    both = load_phrases("nl", extra)
    assert NL < both and both - NL == {"ondertiteling tv gelderland"}
    assert load_phrases("nl", extra, default=False) == {"ondertiteling tv gelderland", "applaus"}
    other = tmp_path / "other.txt"
    other.write_text("reclame\n", encoding="utf-8")
    assert load_phrases("nl", [extra, other]) == both | {"reclame"}
    assert phrase_files("nl", [extra]) == [PHRASES_DIR / "nl.txt", extra]
    assert phrase_files("nl", [extra], default=False) == [extra]
    assert phrase_files("xx") == [] and load_phrases("xx") == set()  # no default list for the language
    with pytest.raises(FileNotFoundError, match="phrase list not found"):
        load_phrases("nl", tmp_path / "missing.txt")


def test_phrase_filter_case_insensitive_trimmed_and_empty():
    segs = [S(0, 1, "  Muziek "), S(1, 2, "TV Gelderland"), S(2, 3, "."), S(3, 4, ""),
            S(4, 5, "muziek en meer"), S(5, 6, "***")]
    log = DropLog()
    out = filter_phrases(segs, NL, log)
    assert [s["text"] for s in out] == ["muziek en meer"]
    assert log.counts["phrase"] == 5 and log.seconds["phrase"] == pytest.approx(5.0)


def test_sentence_end():
    assert ends_sentence("Klaar.") and ends_sentence("Echt?") and ends_sentence("Ja! ")
    assert not ends_sentence("en toen") and not ends_sentence("en toen...") and not ends_sentence("zo…")


@pytest.mark.parametrize("text", ['Hij zei: "ja."', "(klaar.)", "zei hij.'", "Echt?”", "»Ga weg!«", "Nou!»",
                                  "zo is het.’", "[applaus.]", "{einde.}", 'Wat? ")', "Klaar.\" "])
def test_sentence_end_before_closing_quotes_and_brackets(text):
    assert ends_sentence(text)


@pytest.mark.parametrize("text", ['en toen…"', 'en toen..."', "(en dan...)", "zo”", '"ja"', "(klaar)", "", ")"])
def test_no_sentence_end_without_a_mark_or_after_an_ellipsis(text):
    assert not ends_sentence(text)


def test_whisper_merge_stops_after_a_quoted_sentence():
    segs = [S(0, 2, 'Hij zei: "ik kom."'), S(2.5, 4, "(Stilte.)"), S(4.5, 6, "Toen…"), S(6.5, 8, 'zei ze "nee."')]
    out = merge_on_punctuation(segs)
    assert [s["text"] for s in out] == ['Hij zei: "ik kom."', "(Stilte.)", 'Toen… zei ze "nee."']


def test_chain_of_merges_until_punctuation():
    segs = [S(0, 2, "dit is"), S(2.5, 4, "een lange"), S(4.2, 6, "zin."), S(6.5, 8, "Nieuw.")]
    out = merge_on_punctuation(segs)
    assert [(s["start"], s["end"], s["text"]) for s in out] == [(0, 6, "dit is een lange zin."), (6.5, 8, "Nieuw.")]


def test_gap_of_exactly_three_seconds_merges_but_longer_does_not():
    assert len(merge_on_punctuation([S(0, 2, "a"), S(5.0, 6, "b.")])) == 1
    assert len(merge_on_punctuation([S(0, 2, "a"), S(5.01, 6, "b.")])) == 2
    assert len(merge_on_speaker([S(0, 2, "a", "A"), S(5.0, 6, "b", "A")])) == 1
    assert len(merge_on_speaker([S(0, 2, "a", "A"), S(5.01, 6, "b", "A")])) == 2


def test_merge_stops_at_gap_then_resumes():
    segs = [S(0, 1, "a"), S(1.5, 2, "b"), S(10, 11, "c"), S(11.2, 12, "d.")]
    out = merge_on_punctuation(segs)
    assert [(s["start"], s["end"]) for s in out] == [(0, 2), (10, 12)]


def test_merge_on_speaker_only_same_known_speaker():
    segs = [S(0, 1, "a", "A"), S(1, 2, "b", "A"), S(2, 3, "c", "B"), S(3, 4, "d", "A"),
            S(4, 5, "e"), S(5, 6, "f")]
    out = merge_on_speaker(segs)
    assert [(s["start"], s["end"], s.get("speaker")) for s in out] == [
        (0, 2, "A"), (2, 3, "B"), (3, 4, "A"), (4, 5, None), (5, 6, None)]


def test_95s_merged_segment_becomes_four_pieces():
    out = split_long([S(0, 95, " ".join(f"w{i}" for i in range(40)))])
    assert len(out) == 4
    assert all(s["end"] - s["start"] == pytest.approx(23.75) for s in out)
    assert out[0]["start"] == 0 and out[-1]["end"] == 95
    assert " ".join(s["text"] for s in out).split() == [f"w{i}" for i in range(40)]


def test_split_uses_word_times_when_present():
    words = [{"word": f"w{i}", "start": i * 4.0, "end": i * 4.0 + 1} for i in range(10)]
    out = split_long([S(0, 40, "x", words=words)])
    assert [s["text"] for s in out] == ["w0 w1 w2 w3 w4", "w5 w6 w7 w8 w9"]


def test_threshold_drop():
    log = DropLog()
    out = drop_short([S(0, 0.5), S(1, 2), S(3, 5.99), S(6, 9)], 3.0, log)
    assert [(s["start"], s["end"]) for s in out] == [(6, 9)]
    assert log.counts["short"] == 3


def test_overlapping_timestamps_and_past_end_of_file():
    segs = [S(0, 5, "a."), S(4, 8, "b."), S(6, 7, "c."), S(9, 14, "d."), S(13.5, 20, "e.")]
    out = sanitise(segs, file_duration=12.0)
    assert [(s["start"], s["end"]) for s in out] == [(0, 4.5), (4.5, 8), (9, 12)]
    assert sanitise([S(12.5, 14, "x.")], 12.0) == []


def test_empty_transcripts_postprocess():
    assert postprocess([], merge="punctuation", min_len=3, phrases=NL, file_duration=10) == []
    assert postprocess([S(0, 5, ""), S(5, 9, "  ")], merge="punctuation", min_len=1, phrases=NL,
                       file_duration=10) == []


def test_full_chain_whisper_3s():
    segs = [S(0, 2, "Muziek"), S(2, 3.5, "Goedemorgen, dit is"), S(3.6, 5, "het nieuws."),
            S(5.2, 5.9, "Ja."), S(6, 40, "heel lang verhaal zonder einde"), S(41, 50, "en dan klaar.")]
    log = DropLog()
    out = postprocess(segs, merge="punctuation", min_len=3.0, phrases=NL, file_duration=48.0, log=log)
    spans = [(round(s["start"], 2), round(s["end"], 2)) for s in out]
    assert spans == [(2, 5), (6, 27), (27, 48)]
    assert all(3.0 <= e - s <= 30.0 for s, e in spans)
    assert log.counts == {"phrase": 1, "short": 1}


def test_full_chain_diar_1s():
    segs = [S(0, 0.4, "ja", "A"), S(0.5, 2, "goed", "A"), S(2.1, 2.5, "nee", "B"),
            S(3, 5, "toch wel", "B"), S(9, 9.8, "oké", "B")]
    out = postprocess(segs, merge="speaker", min_len=1.0, phrases=NL, file_duration=None)
    assert [(s["start"], s["end"], s["speaker"]) for s in out] == [(0, 2, "A"), (2.1, 5, "B")]


def test_bad_merge_mode():
    with pytest.raises(ValueError):
        postprocess([], merge="x", min_len=1, phrases=set(), file_duration=None)
