"""Broadcast archive → speech pre-training corpus: ingest, segment, simulate, shard."""

__version__ = "0.1.0"
