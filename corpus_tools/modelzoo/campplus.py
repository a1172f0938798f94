"""Old path of :mod:`corpus_tools.models.campplus`, named inside earlier prepared checkpoints."""

from corpus_tools.models.campplus import CAMPPlus, CAMPPlusEmbedding

__all__ = ["CAMPPlus", "CAMPPlusEmbedding"]
