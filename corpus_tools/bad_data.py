"""Bad data in shards: skip events, their tally, and the limit that stops a run on a wrong folder.

The shard stream (``corpus_tools.data``) never fails on a damaged utterance or shard. It
skips it and records a *skip event*, ``{"shard", "key", "kind", "reason"}``:

* kind ``"utterance"``: an audio member that does not decode, is empty or holds non-finite
  samples, or a json member that does not parse;
* kind ``"shard"``: a tar that is unreadable or truncated past some point (``key`` is the
  last utterance kept; everything before the damage is still read).

Events travel with the batch they were found for (``Batch.skipped``), because the stream runs
in DataLoader worker processes. The consumer (the trainer, ``trainer evaluate``) counts them
in a ``BadDataTally``, which prints one warning line per event (once per process, the first
``MAX_NAMED`` of them) and says when the share of bad data passes the limit:

    bad > max_fraction × max(read, MIN_DENOMINATOR)

``read`` counts the utterances read, good and bad; an unreadable or truncated shard counts as
one bad utterance (what it lost is unknown). The floor keeps a few bad files early in a run
from stopping it (up to 10 at the default 0.1 %), while a wrong folder, where everything is
bad, stops within the first 11 utterances.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

DEFAULT_MAX_BAD_FRACTION = 0.001
MIN_DENOMINATOR = 10_000
MAX_NAMED = 1000  # warning lines per process; later damage is still counted
UTTERANCE, SHARD = "utterance", "shard"


class BadDataError(ValueError):
    """More bad data than ``--max-bad-fraction`` allows."""


def skip_event(shard: str, key: str | None, reason: str, kind: str = UTTERANCE) -> dict:
    """One skip event (plain types: it is pickled from DataLoader workers)."""
    return {"shard": str(shard), "key": key, "kind": kind, "reason": " ".join(str(reason).split())}


def short_reason(exc: BaseException) -> str:
    """An exception as one short line (libsndfile and tarfile messages can be long)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def describe(event: dict) -> str:
    """``shard.000001.tar: sp-003: audio does not decode (...)`` / ``shard…: truncated …``."""
    name = Path(event["shard"]).name
    if event["kind"] == SHARD:
        return f"{name}: {event['reason']}"
    return f"{name}: {event['key']}: {event['reason']}"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class BadDataTally:
    """Utterances read and bad ones (with shards) over a run; warns and checks the limit.

    ``count`` reads one batch's rows and events (this process only) and warns; ``add`` takes
    the counts to sum (under DDP: the increments of all ranks, so every rank holds the same
    totals and takes the same decision).
    """

    max_fraction: float = DEFAULT_MAX_BAD_FRACTION
    good: int = 0
    bad: int = 0
    bad_shards: int = 0
    warn: Callable[[str], None] = _stderr
    prefix: str = "warning: skipped "
    example: str | None = None
    _warned: set = field(default_factory=set, repr=False)

    @property
    def read(self) -> int:
        return self.good + self.bad

    def count(self, rows: int, events: Iterable[dict]) -> tuple[int, int, int]:
        """(good, bad utterances, bad shards) of one batch; warns once per new event."""
        bad = shards = 0
        for e in events:
            if e["kind"] == SHARD:
                shards += 1
            else:
                bad += 1
            text = describe(e)
            if self.example is None:
                self.example = text
            seen = (e["shard"], e["key"], e["kind"], e["reason"])
            if seen not in self._warned and len(self._warned) <= MAX_NAMED:
                self._warned.add(seen)
                self.warn(self.prefix + text if len(self._warned) <= MAX_NAMED else
                          f"warning: {MAX_NAMED} bad items named; further ones are counted but not named")
        return rows, bad, shards

    def add(self, good: int = 0, bad: int = 0, bad_shards: int = 0) -> None:
        self.good += int(good)
        self.bad += int(bad)
        self.bad_shards += int(bad_shards)

    def exceeded(self) -> str | None:
        """The one-line reason to stop, or None while the bad share is within the limit."""
        units = self.bad + self.bad_shards
        if units == 0 or self.max_fraction >= 1.0:
            return None
        if units <= self.max_fraction * max(self.read + self.bad_shards, MIN_DENOMINATOR):
            return None
        shards = (f" and {self.bad_shards} shard{'s' * (self.bad_shards != 1)} unreadable or truncated"
                  if self.bad_shards else "")
        share = 100.0 * units / max(self.read + self.bad_shards, 1)
        example = f"; e.g. {self.example}" if self.example else ""
        return (f"too much bad data: {self.bad} of {self.read} utterances read are bad{shards} "
                f"({share:.3g} %, above --max-bad-fraction {self.max_fraction:g}){example}; is this the "
                f"right folder? `corpus verify` lists every damaged member")

    def check(self) -> None:
        reason = self.exceeded()
        if reason is not None:
            raise BadDataError(reason)

    def state(self) -> dict[str, int]:
        """Totals for a checkpoint (a resumed run continues them)."""
        return {"good": self.good, "bad": self.bad, "bad_shards": self.bad_shards}

    def load_state(self, state: dict | None) -> None:
        state = state or {}
        self.good, self.bad, self.bad_shards = (int(state.get(k, 0)) for k in ("good", "bad", "bad_shards"))


__all__ = ["BadDataError", "BadDataTally", "DEFAULT_MAX_BAD_FRACTION", "MIN_DENOMINATOR", "describe",
           "short_reason", "skip_event"]
