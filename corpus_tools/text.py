"""Transcript normalisation to a letter vocabulary: lower-case a–z, apostrophe and space.

This is the text a letter (character) vocabulary can read: the 26 letters of the English
alphabet and an apostrophe, with words separated by one space. The letter vocabulary of
wav2vec 2.0 fine-tuning (Baevski et al., 2020) is these letters plus a word separator and
the CTC blank; Vaessen's thesis (section 6.2.1) normalises Dutch so that train and test text fit it,
and nanow2v2's ``character_vocabulary.json`` holds the same symbols. One home for the rule:
``corpus shard`` writes it into the shard json (``transcription``), and the trainer
(``trainer.text``, which adds the token ids) normalises its targets with it.
``normalize_text`` handles English and Dutch (other languages get the English rules):

1. Apostrophe look-alikes (’ ‘ ʼ ′ ` ´) become ``'``.
2. Numbers are spelled out in the utterance's language (``digits="spell"``, the default) or
   dropped (``digits="drop"``). Digits are not in the vocabulary, and spelling keeps the
   words that were spoken (Common Voice has "3 keer" read as "drie keer"). Integers are spelled
   as cardinals ("21" → "twenty one" / "eenentwintig", "1984" → "one thousand nine hundred eighty
   four" / "duizendnegenhonderdvierentachtig"); a decimal separator between digits is read
   ("3,5" → "drie komma vijf", "3.5" → "three point five"); a Dutch "." or English "," followed by
   exactly three digits is a thousands separator ("1.000" → "duizend"); "%" and "&" are read
   ("procent"/"percent", "en"/"and"). No ordinals, currencies or years-as-pairs: those are
   language-specific readings we cannot guess reliably.
3. Lower case; every letter is folded to its closest ASCII letter(s): Unicode NFKD with the
   combining marks dropped (é→e, ë→e, ç→c, ĳ→ij), plus the letters NFKD leaves alone
   (ß→ss, æ→ae, œ→oe, ø→o, ł→l, đ/ð→d, þ→th, ı→i). Letters of other scripts are dropped.
4. Everything else — punctuation, hyphens, symbols, double quotation marks — becomes a space;
   spaces are collapsed and trimmed.
5. Apostrophes: a run of them counts as one. One inside a word stays ("zo'n", "auto's",
   "it's"). One at the start of a word stays only when the word is a leading clitic of the
   language ("'s avonds", "'t is", "'n boek"; English "'em", "'tis", "'cause"), listed in
   ``manifests/clitics/<lang>.txt``; any other leading or trailing apostrophe is a single
   quotation mark and goes ("'hallo'" → "hallo", "‘Titanic’" → "titanic"). A trailing
   possessive apostrophe goes too ("boys'" → "boys", "Kees'" → "kees"): it is not spoken.
   Languages without a list use the English one.

The result is idempotent: normalising normalised text changes nothing.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from pathlib import Path

APOSTROPHE = "'"
LETTERS = tuple(string.ascii_lowercase)
LANGUAGES = ("en", "nl")
DIGIT_POLICIES = ("spell", "drop")

_APOSTROPHES = str.maketrans({c: "'" for c in "\u2019\u2018\u02bc\u2032\u0060\u00b4\u02b9\u02bb\uff07"})
# Letters NFKD does not decompose into ASCII.
_SPECIAL_LETTERS = str.maketrans({
    "ß": "ss", "ẞ": "ss", "æ": "ae", "Æ": "ae", "œ": "oe", "Œ": "oe", "ø": "o", "Ø": "o",
    "ł": "l", "Ł": "l", "đ": "d", "Đ": "d", "ð": "d", "Ð": "d", "þ": "th", "Þ": "th", "ı": "i",
    "ħ": "h", "Ħ": "h", "ŀ": "l", "Ŀ": "l", "ŧ": "t", "Ŧ": "t",
})
_NOT_VOCAB = re.compile(r"[^a-z']+")
_APOSTROPHE_RUN = re.compile(r"'{2,}")
CLITICS_DIR = Path(__file__).resolve().parents[1] / "manifests" / "clitics"
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


# -- numbers -------------------------------------------------------------------------------

_EN_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
            "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_EN_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_EN_SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (10**3, "thousand")]

_NL_ONES = ["nul", "een", "twee", "drie", "vier", "vijf", "zes", "zeven", "acht", "negen", "tien", "elf",
            "twaalf", "dertien", "veertien", "vijftien", "zestien", "zeventien", "achttien", "negentien"]
_NL_TENS = ["", "", "twintig", "dertig", "veertig", "vijftig", "zestig", "zeventig", "tachtig", "negentig"]
_NL_SCALES = [(10**12, "biljoen"), (10**9, "miljard"), (10**6, "miljoen")]
_MAX_SPELLED = 10**15  # longer digit strings are read digit by digit


def _en_below_1000(n: int) -> list[str]:
    words: list[str] = []
    if n >= 100:
        words += [_EN_ONES[n // 100], "hundred"]
        n %= 100
        if n == 0:
            return words
    if n < 20:
        return words + [_EN_ONES[n]]
    words.append(_EN_TENS[n // 10])
    if n % 10:
        words.append(_EN_ONES[n % 10])
    return words


def _spell_scales(n: int, scales, spell) -> tuple[list[str], int]:
    """Words for the millions, billions, … of ``n`` (largest first) and what is left below them."""
    words: list[str] = []
    for scale, name in scales:
        if n >= scale:
            words += [spell(n // scale), name]
            n %= scale
    return words, n


def spell_en(n: int) -> str:
    """English cardinal without "and" or hyphens: 1984 → "one thousand nine hundred eighty four"."""
    if n < 1000:
        return " ".join(_en_below_1000(n))
    words, n = _spell_scales(n, _EN_SCALES, spell_en)
    if n:
        words += _en_below_1000(n)
    return " ".join(words)


def _nl_below_1000(n: int) -> str:
    """Dutch writes numbers below a million as one word: 121 → "honderdeenentwintig"."""
    out = ""
    if n >= 100:
        hundreds = n // 100
        out = ("" if hundreds == 1 else _NL_ONES[hundreds]) + "honderd"
        n %= 100
        if n == 0:
            return out
    if n < 20:
        return out + _NL_ONES[n]
    unit = n % 10
    # "tweeëntwintig": the diaeresis is folded away, as every other accent.
    return out + (f"{_NL_ONES[unit]}en" if unit else "") + _NL_TENS[n // 10]


def spell_nl(n: int) -> str:
    """Dutch cardinal: 21 → "eenentwintig", 1984 → "duizendnegenhonderdvierentachtig",
    2500000 → "twee miljoen vijfhonderdduizend"."""
    if n < 1000:
        return _nl_below_1000(n)
    words, n = _spell_scales(n, _NL_SCALES, spell_nl)
    if n:
        thousands, rest = divmod(n, 1000)
        word = ""
        if thousands:
            word = ("" if thousands == 1 else _nl_below_1000(thousands)) + "duizend"
        if rest:
            word += _nl_below_1000(rest)
        words.append(word)
    return " ".join(words)


def spell_integer(digits: str, language: str) -> str:
    """Spell a run of digits as a cardinal (leading zeros and very long runs digit by digit)."""
    spell = spell_nl if language == "nl" else spell_en
    if (len(digits) > 1 and digits[0] == "0") or int(digits) >= _MAX_SPELLED:
        return " ".join(spell(int(d)) for d in digits)
    return spell(int(digits))


def spell_number(token: str, language: str) -> str:
    """Spell a number token like ``1.000``, ``3,5`` or ``42`` (see the module docstring)."""
    thousands, decimal, point = (".", ",", "komma") if language == "nl" else (",", ".", "point")
    parts = re.split(r"([.,])", token)
    groups, seps = parts[0::2], parts[1::2]
    # Thousands separators: every group after the first has exactly three digits.
    if seps and all(s == thousands for s in seps) and all(len(g) == 3 for g in groups[1:]):
        return spell_integer("".join(groups), language)
    words = [spell_integer(groups[0], language)]
    for sep, group in zip(seps, groups[1:]):
        words.append(point if sep == decimal else "")
        words.append(spell_integer(group, language))
    return " ".join(w for w in words if w)


_SYMBOLS = {"en": {"%": " percent ", "&": " and "}, "nl": {"%": " procent ", "&": " en "}}


def _replace_numbers(text: str, language: str, digits: str) -> str:
    for symbol, word in _SYMBOLS.get(language, _SYMBOLS["en"]).items():
        text = text.replace(symbol, word)
    if digits == "drop":
        return re.sub(r"\d+", " ", text)
    return _NUMBER.sub(lambda m: f" {spell_number(m.group(0), language)} ", text)


# -- normalisation -------------------------------------------------------------------------


def fold_to_ascii(text: str) -> str:
    """Lower-case ``text`` and fold every letter to its closest ASCII letter(s); other characters stay."""
    text = text.translate(_APOSTROPHES).translate(_SPECIAL_LETTERS)
    decomposed = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in decomposed if not unicodedata.combining(c))
    # NFKD can expose more special letters (e.g. from compatibility forms); lower-casing can too.
    return text.translate(_SPECIAL_LETTERS).lower().translate(_SPECIAL_LETTERS)


def normalize_text(text: str | None, language: str = "en", *, digits: str = "spell") -> str:
    """Normalise a transcript to the letter vocabulary: ``[a-z']`` words separated by one space.

    ``language`` ("en" or "nl"; region suffixes like "nl-BE" are accepted) chooses how numbers
    are spelled and which leading clitics keep their apostrophe. ``digits``: "spell" (default) or "drop". See the module docstring.
    """
    if digits not in DIGIT_POLICIES:
        raise ValueError(f"digits must be one of {DIGIT_POLICIES}, not {digits!r}")
    if not text:
        return ""
    lang = _base_language(language)
    text = text.translate(_APOSTROPHES)
    text = _replace_numbers(text, lang, digits)
    text = fold_to_ascii(text)
    text = _APOSTROPHE_RUN.sub("'", _NOT_VOCAB.sub(" ", text))
    clitics = leading_clitics(lang)
    words = (_strip_quotes(w, clitics) for w in text.split())
    return " ".join(w for w in words if w)


def _base_language(language: str | None) -> str:
    """``nl-BE`` / ``en_US`` → ``nl`` / ``en``."""
    return (language or "en").lower().replace("_", "-").split("-")[0]


@functools.cache
def _read_clitics(path: Path) -> frozenset[str]:
    words = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            words.add(fold_to_ascii(line).strip("'"))
    return frozenset(words)


def leading_clitics(language: str | None) -> frozenset[str]:
    """The words of ``language`` written with a leading apostrophe, without it (``{"s", "t", "n", …}``),
    from ``manifests/clitics/<lang>.txt`` (read once); English for a language without a list."""
    path = CLITICS_DIR / f"{_base_language(language)}.txt"
    return _read_clitics(path if path.exists() else CLITICS_DIR / "en.txt")


def _strip_quotes(word: str, clitics: frozenset[str]) -> str:
    """``word`` (``[a-z']+``) without the apostrophes at its ends, except a leading clitic's."""
    core = word.strip("'")
    if core and word.startswith("'") and core in clitics:
        return "'" + core
    return core
