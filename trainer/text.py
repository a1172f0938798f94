"""The letter vocabulary of CTC fine-tuning: token ids for normalised transcripts.

Normalisation itself (``normalize_text`` and its helpers) lives in :mod:`corpus_tools.text`,
so that ``corpus shard`` writes the very text the trainer trains on.

The vocabulary (``VOCAB``; index = CTC class) is, in this order::

    0 <blank>   1 |   2 '   3 a   4 b   …   28 z

``|`` is the word separator: ``encode("zo'n boek")`` spells ``z o ' n | b o e k`` (no separator
before the first or after the last word).
"""

from __future__ import annotations

from corpus_tools.text import APOSTROPHE, LETTERS

BLANK = "<blank>"
WORD_SEPARATOR = "|"
VOCAB: tuple[str, ...] = (BLANK, WORD_SEPARATOR, APOSTROPHE, *LETTERS)
BLANK_ID = 0
WORD_SEPARATOR_ID = 1
TOKEN_TO_ID = {t: i for i, t in enumerate(VOCAB)}


# -- letters <-> ids -----------------------------------------------------------------------


def encode(normalized: str) -> list[int]:
    """Token ids of a normalised transcript: letters, ``'`` and ``|`` between words."""
    ids: list[int] = []
    for w, word in enumerate(normalized.split()):
        if w:
            ids.append(WORD_SEPARATOR_ID)
        try:
            ids.extend(TOKEN_TO_ID[c] for c in word)
        except KeyError as e:
            raise ValueError(f"{normalized!r} is not normalised: {e.args[0]!r} is not in the vocabulary; "
                             "run normalize_text first") from None
    return ids


def ids_to_text(ids) -> str:
    """Text of a token-id sequence (already CTC-collapsed): ``|`` → space; blanks are skipped."""
    chars = [" " if i == WORD_SEPARATOR_ID else VOCAB[i] for i in ids if i != BLANK_ID]
    return " ".join("".join(chars).split())


def ctc_collapse(ids) -> list[int]:
    """Greedy CTC rule: merge repeats, then drop blanks."""
    out: list[int] = []
    prev = None
    for i in ids:
        i = int(i)
        if i != prev and i != BLANK_ID:
            out.append(i)
        prev = i
    return out
