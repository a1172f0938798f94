"""Transcript normalisation and the letter vocabulary (SPEC §6, thesis §6.2.1)."""

from __future__ import annotations

import pytest

from corpus_tools.text import normalize_text, spell_en, spell_nl
from trainer.text import BLANK_ID, VOCAB, WORD_SEPARATOR_ID, ctc_collapse, encode, ids_to_text


def test_vocabulary_order():
    assert len(VOCAB) == 29
    assert VOCAB[:3] == ("<blank>", "|", "'") and BLANK_ID == 0 and WORD_SEPARATOR_ID == 1
    assert "".join(VOCAB[3:]) == "abcdefghijklmnopqrstuvwxyz"


@pytest.mark.parametrize("raw, expected", [
    # Dutch accents fold to the closest ASCII letter.
    ("Één café, drieëntwintig ideeën", "een cafe drieentwintig ideeen"),
    ("Ĳsselmeer en ĳs", "ijsselmeer en ijs"),
    ("België, Curaçao, façade, coöperatie", "belgie curacao facade cooperatie"),
    ("Ångström über naïve Øresund Æsop Straße œuvre", "angstrom uber naive oresund aesop strasse oeuvre"),
    # Apostrophes kept, typographic ones mapped to '.
    ("’s Avonds zo’n auto’s", "'s avonds zo'n auto's"),
    ("zo´n ‘t huis", "zo'n 't huis"),
    ("'s-Hertogenbosch", "'s hertogenbosch"),
    ("Hij zei: ' hallo '", "hij zei hallo"),
    # Hyphens and all other punctuation become spaces.
    ("Noord-Holland, e-mail; ‘vrij-uit’ (soms) — «ja»?!", "noord holland e mail vrij uit soms ja"),
    ("co-operate; well...ok", "co operate well ok"),
    ("  veel    spaties\tand\nlines ", "veel spaties and lines"),
])
def test_normalize_dutch_and_english(raw, expected):
    assert normalize_text(raw, "nl") == expected


def test_english_apostrophes_and_case():
    # A trailing apostrophe (plural possessive) is dropped: "boys'" is spoken "boys".
    assert normalize_text("DON'T you know the boys' toys?", "en") == "don't you know the boys toys"
    assert normalize_text("rock ’n’ roll", "en") == "rock 'n roll"


@pytest.mark.parametrize("raw, lang, expected", [
    # Quotation marks become spaces, single or double, straight or typographic.
    ("Hij zei 'hallo' tegen mij", "nl", "hij zei hallo tegen mij"),
    ("‘Titanic’ draait weer", "nl", "titanic draait weer"),
    ('"ja", zei ze', "nl", "ja zei ze"),
    ("“Nee” en „toch” en ‚wel‘", "nl", "nee en toch en wel"),
    ("''dubbel''", "nl", "dubbel"),
    # ... while apostrophes inside words stay,
    ("'Zo'n auto's!'", "nl", "zo'n auto's"),
    ("‘m’n fiets’", "nl", "m'n fiets"),
    # ... and so do the leading clitics of the language,
    ("'s Avonds is 't stil", "nl", "'s avonds is 't stil"),
    ("'n boek, 'k weet 't", "nl", "'n boek 'k weet 't"),
    ("'t Is 'n feest,' zei hij", "nl", "'t is 'n feest zei hij"),
    # ... but a trailing apostrophe does not.
    ("Kees' fiets", "nl", "kees fiets"),
    ("'hello', it's me", "en", "hello it's me"),
    ("He said 'don't'", "en", "he said don't"),
    ("'Tis the night; 'twas cold 'cause give 'em 'til dawn", "en",
     "'tis the night 'twas cold 'cause give 'em 'til dawn"),
    ("the 'Titanic' and the boys' 'toys'", "en", "the titanic and the boys toys"),
    # English keeps tokenised contractions and the Dutch place names it quotes; Dutch 'k is not English.
    ("John 's car, I 'm in 's-Hertogenbosch", "en", "john 's car i 'm in 's hertogenbosch"),
    ("'k weet", "en", "k weet"),
])
def test_quotation_marks_become_spaces_but_clitics_stay(raw, lang, expected):
    assert normalize_text(raw, lang) == expected


def test_clitic_lists_are_data_files():
    from corpus_tools.text import CLITICS_DIR, leading_clitics

    for lang in ("nl", "en"):
        assert (CLITICS_DIR / f"{lang}.txt").is_file()
    assert {"s", "t", "n"} <= leading_clitics("nl")
    assert {"em", "til", "cause", "tis", "twas"} <= leading_clitics("en") and "k" not in leading_clitics("en")
    assert leading_clitics("nl-BE") == leading_clitics("nl") and leading_clitics("de") == leading_clitics("en")


@pytest.mark.parametrize("raw, lang, expected", [
    ("3 keer", "nl", "drie keer"),
    ("21 jaar", "nl", "eenentwintig jaar"),
    ("in 1984", "nl", "in duizendnegenhonderdvierentachtig"),
    ("1.250 euro", "nl", "duizendtweehonderdvijftig euro"),
    ("2,5 kilo", "nl", "twee komma vijf kilo"),
    ("2500000", "nl", "twee miljoen vijfhonderdduizend"),
    ("007", "nl", "nul nul zeven"),
    ("3 dogs", "en", "three dogs"),
    ("in 1984", "en", "in one thousand nine hundred eighty four"),
    ("1,000 cats", "en", "one thousand cats"),
    ("3.5 mice", "en", "three point five mice"),
    ("A4-papier", "nl", "a vier papier"),
    ("50% & meer", "nl", "vijftig procent en meer"),
    ("R&D 5%", "en", "r and d five percent"),
])
def test_digits_are_spelled(raw, lang, expected):
    assert normalize_text(raw, lang) == expected


def test_digits_can_be_dropped_and_bad_policy_fails():
    assert normalize_text("3 keer 21", "nl", digits="drop") == "keer"
    with pytest.raises(ValueError, match="digits"):
        normalize_text("3", "nl", digits="keep")


def test_number_spelling_edges():
    assert spell_nl(0) == "nul" and spell_nl(100) == "honderd" and spell_nl(101) == "honderdeen"
    assert spell_nl(80) == "tachtig" and spell_nl(1000) == "duizend" and spell_nl(2000) == "tweeduizend"
    assert spell_en(0) == "zero" and spell_en(115) == "one hundred fifteen" and spell_en(10**6) == "one million"


def test_region_codes_and_empty_text():
    assert normalize_text("3", "nl-BE") == "drie" and normalize_text("3", "en_US") == "three"
    assert normalize_text("", "nl") == "" and normalize_text(None) == "" and normalize_text("?!-", "nl") == ""


def test_normalised_text_fits_the_vocabulary_and_round_trips():
    text = normalize_text("Zo’n 3 Ĳsvogels—’s nachts!", "nl")
    ids = encode(text)
    assert all(0 < i < len(VOCAB) for i in ids)
    assert ids_to_text(ids) == text == "zo'n drie ijsvogels 's nachts"
    assert encode("ab cd") == [3, 4, WORD_SEPARATOR_ID, 5, 6]
    with pytest.raises(ValueError, match="not normalised"):
        encode("Ab")


def test_ctc_collapse():
    # a a blank a | b b → "aa b"
    assert ctc_collapse([3, 3, 0, 3, 1, 1, 4, 4, 0]) == [3, 3, 1, 4]
    assert ids_to_text(ctc_collapse([0, 0, 1, 3, 0, 1])) == "a"
