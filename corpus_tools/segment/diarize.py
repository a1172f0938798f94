"""Speaker diarization for the wx-diar stage: who speaks when, and which speaker each segment gets.

A pyannote-style pipeline gives speaker turns; WhisperX's ``assign_word_speakers`` labels each
aligned segment (and its words) with the speaker whose turns overlap it most.
"""

from __future__ import annotations

import numpy as np

from corpus_tools.audio import SAMPLE_RATE


def label_speakers(pipeline, audio: np.ndarray, aligned: dict) -> dict:
    """Diarize ``audio`` and label each segment of the wx-align output with its speaker."""
    import pandas as pd
    import whisperx

    turns = diarize_turns(pipeline, audio)
    df = pd.DataFrame(turns, columns=["start", "end", "speaker"])
    res = whisperx.assign_word_speakers(df, {"segments": [dict(s) for s in aligned["segments"]]})
    segs = []
    for s in res["segments"]:
        segs.append({"start": float(s["start"]), "end": float(s["end"]), "text": s.get("text", ""),
                     "speaker": s.get("speaker"), "words": s.get("words", [])})
    return {"segments": segs, "turns": [list(t) for t in turns]}


def diarize_turns(pipeline, audio: np.ndarray) -> list[tuple[float, float, str]]:
    """Run a pyannote-style pipeline and return sorted (start, end, speaker) turns."""
    import torch

    out = pipeline({"waveform": torch.from_numpy(np.ascontiguousarray(audio)).unsqueeze(0),
                    "sample_rate": SAMPLE_RATE})
    ann = getattr(out, "speaker_diarization", out)  # pyannote 4 returns a DiarizeOutput
    if hasattr(ann, "itertracks"):
        turns = [(float(seg.start), float(seg.end), str(label)) for seg, _, label in ann.itertracks(yield_label=True)]
    else:  # a DataFrame or list of rows
        rows = ann.to_dict("records") if hasattr(ann, "to_dict") else list(ann)
        turns = [(float(r["start"]), float(r["end"]), str(r["speaker"])) if isinstance(r, dict)
                 else (float(r[0]), float(r[1]), str(r[2])) for r in rows]
    return sorted(turns)
