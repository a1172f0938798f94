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


# -- word times against the audio ---------------------------------------------------------


def W(word, start, end, score=0.9):
    return {"word": word, "start": start, "end": end, "score": score}


def test_words_in_music_are_dropped_and_their_segment_counted():
    """A transcript Whisper hallucinated over music (VAD finds no speech there) is dropped, not
    kept stretched over the music; a segment partly in speech keeps the words in speech only."""
    from corpus_tools.segment.postprocess import keep_words_in_speech

    speech = [[10.0, 12.0], [20.0, 21.0]]
    hallucinated = S(64.6, 70.4, "Ik heb het niet gezien.", words=[W("Ik", 64.6, 65.0), W("heb", 65.0, 66.0),
                                                                    W("het", 66.0, 68.0), W("niet", 68.0, 69.0),
                                                                    W("gezien.", 69.0, 70.4)])
    partly = S(9.0, 14.0, "muziek goedemorgen allemaal", words=[
        W("muziek", 9.0, 9.7),            # 0 s of 0.7 in speech (+ collar: 9.8): dropped
        W("goedemorgen", 9.7, 10.5),      # 0.7 of 0.8 inside collared speech [9.8, 12.2]: kept, clipped
        W("allemaal", 11.9, 14.0)])       # 0.3 of 2.1 inside: dropped
    log = DropLog()
    out = keep_words_in_speech([partly, hallucinated], speech, log=log)
    assert [s["text"] for s in out] == ["goedemorgen"]
    assert out[0]["start"] == pytest.approx(9.8) and out[0]["end"] == pytest.approx(10.5)
    assert out[0]["words"] == [W("goedemorgen", 9.8, 10.5)]
    assert log.counts == {"off-speech": 1} and log.seconds["off-speech"] == pytest.approx(5.8)


def test_word_rule_boundaries_zero_length_and_untimed_words():
    from corpus_tools.segment.postprocess import keep_words_in_speech

    speech = [[1.0, 2.0]]                  # collared: [0.8, 2.2]
    seg = S(0.0, 3.0, "a b c d e", words=[
        W("a", 0.2, 1.4),                  # exactly half (0.6 of 1.2) inside: kept
        W("b", 2.1, 2.1),                  # zero length, its point inside the collar: kept
        W("c", 2.3, 2.3),                  # zero length outside: dropped
        {"word": "d", "start": None, "end": None},   # untimed: not kept
        W("e", 2.19, 2.9)])                # 0.01 of 0.71 inside: dropped
    out = keep_words_in_speech([seg], speech)
    assert [w["word"] for w in out[0]["words"]] == ["a", "b"] and out[0]["text"] == "a b"
    assert (out[0]["start"], out[0]["end"]) == (pytest.approx(0.8), pytest.approx(2.1))
    whole = S(1.0, 2.0, "Hallo, daar.", words=[W("Hallo,", 1.0, 1.5), W("daar.", 1.5, 2.0)])
    assert keep_words_in_speech([whole], speech)[0]["text"] == "Hallo, daar."  # all kept: its own text
    assert keep_words_in_speech([S(0, 1, "x", words=[])], speech, log=(log := DropLog())) == []
    assert log.counts == {"off-speech": 1}  # a segment the aligner could not time
    no_space = S(1.0, 2.0, "你好世界", words=[W("你", 1.0, 1.2), W("好", 1.2, 1.4), W("世", 2.5, 2.6)])
    assert keep_words_in_speech([no_space], speech, joiner="")[0]["text"] == "你好"


def test_tidy_words_keeps_them_inside_the_chunk_and_in_order():
    from corpus_tools.segment.postprocess import tidy_words

    words = [W("a", 4.0, 5.5), W("b", 5.2, 5.1), W("c", 9.0, 12.0), {"word": "d", "start": None, "end": None}]
    out = tidy_words(words, 5.0, 10.0)
    assert [(w["start"], w["end"]) for w in out] == [(5.0, 5.5), (5.5, 5.5), (9.0, 10.0), (None, None)]


def test_dominant_speaker_is_whisperx_rule():
    from corpus_tools.segment.postprocess import dominant_speaker

    turns = [(0.0, 2.0, "A"), (2.0, 3.0, "B"), (3.0, 3.5, "B"), (9.0, 10.0, "C")]
    assert dominant_speaker(1.5, 3.5, turns) == "B"     # B 1.5 s in total, A 0.5 s
    assert dominant_speaker(0.0, 2.5, turns) == "A"
    assert dominant_speaker(5.0, 6.0, turns) is None


def test_sentences_split_as_whisperx_splits_them():
    """Whisper-aligned words are grouped into the Punkt sentences of the chunk text; sentences
    with the same start and end become one."""
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    from corpus_tools.segment.whisper_align import split_sentences

    text = "Hallo? Dit is Diane. Ja."
    words = [W(" Hallo?", 1.0, 1.4), W(" Dit", 2.0, 2.2), W(" is", 2.2, 2.3), W(" Diane.", 2.3, 2.8),
             W(" Ja.", 2.8, 2.8)]
    out = split_sentences(text, words, PunktSentenceTokenizer())
    assert [(s["text"], s["start"], s["end"]) for s in out] == [("Hallo?", 1.0, 1.4), ("Dit is Diane.", 2.0, 2.8),
                                                                ("Ja.", 2.8, 2.8)]
    assert [w["word"] for w in out[1]["words"]] == ["Dit", "is", "Diane."]
    same = split_sentences("Ja. Nee.", [W(" Ja.", 3.0, 3.5), W(" Nee.", 3.0, 3.5)], PunktSentenceTokenizer())
    assert [(s["text"], len(s["words"])) for s in same] == [("Ja. Nee.", 2)]


def test_long_words_at_sentence_boundaries_are_cut_as_faster_whisper_cuts_them():
    from corpus_tools.segment.whisper_align import truncate_long_words

    alignment = [{"word": " Ja", "start": 0.0, "end": 0.3}, {"word": ".", "start": 0.3, "end": 3.0},
                 {"word": " Nee", "start": 3.0, "end": 9.0}, {"word": " hoor", "start": 9.0, "end": 9.3},
                 {"word": " zeg", "start": 9.3, "end": 9.6}, {"word": " maar", "start": 9.6, "end": 9.9}]
    max_duration = truncate_long_words(alignment)
    assert max_duration == pytest.approx(0.6)  # twice the median 0.3 s
    assert alignment[1]["end"] == pytest.approx(0.9)      # a sentence end mark: cut from its start
    assert alignment[2]["start"] == pytest.approx(8.4)    # after a sentence end: cut before its end
