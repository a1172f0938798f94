"""Old path of :mod:`corpus_tools.models.diarization`, named in earlier prepared pipeline configs."""

from corpus_tools.models.diarization import LocalSpeakerDiarization

__all__ = ["LocalSpeakerDiarization"]
