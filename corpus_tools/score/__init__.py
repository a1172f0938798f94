"""Segmentation quality against reference annotations (`corpus score`).

``reference`` reads RTTM / Audacity label / CSV / CTM files into one Reference per recording,
``metrics`` measures kept segments against it, ``turns`` finds the diarization behind a
method's speaker labels, and ``run.run_score`` is the entry point that writes the tables.
"""

from corpus_tools.score.run import ScoreResult, read_scores, run_score

__all__ = ["ScoreResult", "read_scores", "run_score"]
