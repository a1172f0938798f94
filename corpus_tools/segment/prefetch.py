"""Decode the next recording while the current one is in the models.

Segmentation is serial per recording (decode → VAD → ASR → align → diarize); without this, the
models (and a GPU) wait while FFmpeg decodes. :func:`decode_ahead` hands out each recording with
a function that returns its audio, decoded in a background thread that starts as soon as the
previous recording is handed out. At most ``depth + 1`` decoded recordings are in memory (a 3 h
recording at 16 kHz float32 is ~700 MB). Decoding runs in FFmpeg/libsndfile/soxr, which release
the GIL, so the thread overlaps with inference even on CPU.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import numpy as np

from corpus_tools.audio import load_audio


def decode_ahead(recs: Iterable[dict], needs_audio: Callable[[dict], bool], depth: int = 1,
                 decode: Callable[[str], np.ndarray] = load_audio
                 ) -> Iterator[tuple[dict, Callable[[], np.ndarray]]]:
    """Yield ``(rec, audio)`` per recording, in order; ``audio()`` returns ``decode(rec["path"])``
    (or raises what decoding raised). Recordings for which ``needs_audio(rec)`` is false (every
    stage cached) are not decoded, and ``audio()`` decodes on demand should they be asked."""
    pending: deque[tuple[dict, Future | None]] = deque()
    it = iter(recs)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-ahead") as pool:
        while True:
            while len(pending) <= depth:  # this recording and the next ``depth``
                rec = next(it, None)
                if rec is None:
                    break
                pending.append((rec, pool.submit(decode, rec["path"]) if needs_audio(rec) else None))
            if not pending:
                return
            rec, fut = pending.popleft()
            yield rec, (fut.result if fut is not None else (lambda path=rec["path"]: decode(path)))
            del rec, fut  # the finished recording's audio must not outlive it here
