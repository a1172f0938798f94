"""wav2vec 2.0 pre-training and CTC fine-tuning on corpus_tools shards."""

__version__ = "0.1.0"
