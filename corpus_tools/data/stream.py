"""``ShardBatchStream``: batches of utterances from tar shards, for training and evaluation.

This is the data path of the trainer (and of ``corpus simulate``): it lives in
``corpus_tools`` so that the curation side batches exactly like training without
importing ``trainer``.

Pipeline, per data consumer (one DDP rank × one DataLoader worker, see ``consumers``)::

    shards ──shuffle (seed, epoch)──► this consumer's share ──► read tar headers + .json only
          ──► sample shuffle buffer ──► duration batcher (priority queue, thesis §5.2.3)
          ──► decode the audio of the emitted batch ──► transform (simulation hook) ──► Batch

Audio is decoded only when a batch is emitted: the batcher works on ``num_frames`` from
each utterance's ``.json``, so skipping ``start_batch`` batches for an exact resume costs
a pass over tar headers, not a decode of the audio.

Damage is skipped, never fatal (``corpus_tools.bad_data``): an utterance whose json does not
parse or whose audio does not decode, is empty or holds non-finite samples is left out of its
batch, and a shard that is truncated or unreadable past some point ends there. Each skip is a
*skip event* carried by the batch it was found for (``Batch.skipped``); a batch whose
utterances were all bad is yielded empty rather than left out, so batch ``b`` of a rank is the
same batch in a resumed run (``start_batch``).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from corpus_tools.audio import SAMPLE_RATE
from corpus_tools.bad_data import short_reason, skip_event
from corpus_tools.data.batch import Batch, Utterance, collate
from corpus_tools.data.batching import SPAN_POLICIES, DurationBatcher
from corpus_tools.data.consumers import consumer_plan, rank_and_world
from corpus_tools.data.members import MappedShards, decode_into
from corpus_tools.data.rng import batch_rng, epoch_rng
from corpus_tools.data.tar_index import ShardRecord, list_shards, read_shard_records


class _RecordBatch(list):
    """A batch of records with the skip events handed out with it (taken from ``events``)."""

    def __init__(self, records: Iterable[ShardRecord], events: list[dict]):
        super().__init__(records)
        self.skipped = events[:]
        events.clear()


def _decode_record(maps: MappedShards, rec: ShardRecord, out: np.ndarray) -> tuple[int, str | None]:
    """Decode a record's audio into ``out``: (frames, None) or (0, why it is unusable)."""
    try:
        raw = rec.data if rec.data is not None else maps.view(rec.shard, rec.offset, rec.size)
    except (OSError, ValueError) as e:  # the shard moved or shrank since its headers were read
        return 0, f"audio cannot be read ({short_reason(e)})"
    return decode_into(raw, out, rec.crop)


def _check_transform_lengths(transform, batch_seconds: float, max_utterance_seconds: float) -> None:
    """A length-growing transform cuts its output to its own budget: it must be the stream's."""
    for name, ours in (("batch_seconds", batch_seconds),
                       ("max_utterance_seconds", max_utterance_seconds)):
        theirs = getattr(transform, name, None)
        if theirs is not None and abs(float(theirs) - float(ours)) > 1e-9:
            raise ValueError(f"the transform {transform!r} fits its output to {name}={theirs:g} "
                             f"but the stream uses {ours:g}: give both the same {name}")


class ShardBatchStream(torch.utils.data.IterableDataset):
    """Batches of utterances from tar shards, split over DDP ranks and DataLoader workers.

    Args:
        shards: a directory, glob, or list of shard paths (see ``list_shards``).
        batch_seconds: budget per batch, padding included (``len(batch) * longest``).
        seed: seeds shard order, sample shuffling, cropping and the transform's rng.
        rank, world_size: DDP position; default from ``torch.distributed`` / torchrun env.
        infinite: loop over epochs forever (training); else one epoch (validation).
        shuffle: shuffle shards and samples (off: file order, for evaluation).
        shuffle_buffer: sample shuffle buffer size (250 as nanow2v2).
        bucket_buffer: priority-queue size of the duration batcher (50 as nanow2v2's SSL).
        max_utterance_seconds: longer utterances are randomly cropped to this.
        max_span_seconds, span_policy: see ``DurationBatcher`` (default split at 10 s).
        transform: ``f(utts, rng) -> utts`` applied before collation (the online simulation).
            A transform with ``length_growth`` g (concatenation: 2) gets batches formed on
            ``batch_seconds / g`` of utterances cropped to ``min(max_utterance_seconds,
            batch_seconds / g)``, so that what it returns still fits ``batch_seconds``.
        start_batch: skip this many batches of this rank's stream (exact resume; exact for
            an infinite stream — DataLoader workers are read round-robin).
        target_padding, max_queue: let the batcher's queue grow while no batch pads less
            than ``target_padding`` (see ``DurationBatcher``).
    """

    def __init__(self, shards, batch_seconds: float, *, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, infinite: bool = True, shuffle: bool = True,
                 shuffle_buffer: int = 250, bucket_buffer: int = 50,
                 max_utterance_seconds: float = 30.0, max_span_seconds: float | None = 10.0,
                 span_policy: str = "split",
                 transform: Callable[[list[Utterance], np.random.Generator], list[Utterance]]
                 | None = None,
                 start_batch: int = 0, target_padding: float = 0.03,
                 max_queue: int | None = None):
        super().__init__()
        self.shards = list_shards(shards)
        if not self.shards:
            raise FileNotFoundError(f"no shards found in {shards}")
        if batch_seconds <= 0:
            raise ValueError("batch_seconds must be positive")
        if span_policy not in SPAN_POLICIES:
            raise ValueError(f"span_policy must be one of {SPAN_POLICIES}, not {span_policy!r}")
        self.batch_seconds = float(batch_seconds)
        self.seed = int(seed)
        self.rank, self.world_size = rank_and_world(rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        self.infinite = infinite
        self.shuffle = shuffle
        self.shuffle_buffer = max(1, int(shuffle_buffer))
        self.bucket_buffer = max(1, int(bucket_buffer))
        self.length_growth = float(getattr(transform, "length_growth", 1.0) or 1.0)
        if self.length_growth != 1.0:
            _check_transform_lengths(transform, self.batch_seconds, max_utterance_seconds)
        # An utterance must fit a batch on its own, so cap it at the budget too.
        self.max_frames = int(min(max_utterance_seconds, self.batch_seconds / self.length_growth)
                              * SAMPLE_RATE)
        self.max_span_seconds = max_span_seconds
        self.span_policy = span_policy
        self.transform = transform
        self.start_batch = int(start_batch)
        self.target_padding = target_padding
        self.max_queue = max_queue
        self.epoch = 0  # first epoch; set_epoch() changes it for finite streams
        self.worker_override: tuple[int, int] | None = None  # (worker, num_workers) for tests

    def set_epoch(self, epoch: int) -> None:
        """Use a different shuffle for the next pass (finite streams)."""
        self.epoch = int(epoch)

    def _worker(self) -> tuple[int, int]:
        """(virtual worker, workers). The DataLoader reads workers round-robin from worker 0,
        so after skipping ``start_batch`` batches worker 0 must play the part of worker
        ``start_batch % workers`` for the resumed order to match the original one."""
        if self.worker_override is not None:
            w, n = self.worker_override
        else:
            info = torch.utils.data.get_worker_info()
            w, n = (0, 1) if info is None else (info.id, info.num_workers)
        return (w + self.start_batch) % n, n

    # records --------------------------------------------------------------------------

    def _epoch_records(self, epoch: int, consumer: int, consumers: int,
                       events: list[dict]) -> Iterator[ShardRecord]:
        """This consumer's records of an epoch; its skip events are appended to ``events``."""
        whole, shared = consumer_plan(self.shards, consumer, consumers, epoch, self.seed,
                                      self.shuffle)
        for path in whole:
            yield from read_shard_records(path, events.append)
        i = 0

        def ours(event: dict) -> None:  # every consumer reads a shared shard: one reports
            if i % consumers == consumer:
                events.append(event)

        for path in shared:
            for rec in read_shard_records(path, ours):
                if i % consumers == consumer:
                    yield rec
                i += 1

    def _shuffled(self, records: Iterator[ShardRecord], rng: np.random.Generator) -> Iterator[ShardRecord]:
        if not self.shuffle or self.shuffle_buffer <= 1:
            yield from records
            return
        buf: list[ShardRecord] = []
        for rec in records:
            if len(buf) < self.shuffle_buffer:
                buf.append(rec)
                continue
            j = int(rng.integers(len(buf)))
            buf[j], rec = rec, buf[j]
            yield rec
        order = rng.permutation(len(buf))
        for j in order:
            yield buf[j]

    def _crop(self, rec: ShardRecord, rng: np.random.Generator) -> ShardRecord:
        if rec.num_frames > self.max_frames:
            rec.crop = int(rng.integers(rec.num_frames - self.max_frames + 1)) if self.shuffle else 0
            rec.num_frames = self.max_frames
        return rec

    def record_batches(self) -> Iterator[list[ShardRecord]]:
        """This consumer's batches of undecoded records (what ``__iter__`` decodes)."""
        worker, workers = self._worker()
        consumers = self.world_size * workers
        consumer = self.rank * workers + worker
        epoch = self.epoch
        events: list[dict] = []  # skip events not handed out yet
        while True:
            rng = epoch_rng(self.seed, epoch, consumer, consumers)
            batcher = DurationBatcher(self.batch_seconds / self.length_growth * SAMPLE_RATE,
                                      bucket_buffer=self.bucket_buffer,
                                      max_span=None if self.max_span_seconds is None
                                      else self.max_span_seconds * SAMPLE_RATE,
                                      span_policy=self.span_policy,
                                      target_padding=self.target_padding,
                                      max_queue=self.max_queue)
            emitted = 0
            records = self._epoch_records(epoch, consumer, consumers, events)
            for rec in self._shuffled(records, rng):
                rec = self._crop(rec, rng)
                for b in batcher.push(rec, rec.num_frames):
                    emitted += 1
                    yield _RecordBatch(b, events)
            for b in batcher.flush():
                emitted += 1
                yield _RecordBatch(b, events)
            all_bad = emitted == 0 and bool(events)
            if events and (all_bad or not self.infinite):
                # damage after the last batch of a pass, or a pass in which every utterance was
                # bad: an empty batch hands the events on (the consumer's limit must see them)
                yield _RecordBatch([], events)
            if not self.infinite:
                return
            if emitted == 0 and not all_bad:  # looping on would hang the DataLoader (and DDP)
                raise RuntimeError(
                    f"rank {self.rank} worker {worker} of {consumers} data consumers got no "
                    f"utterances from {len(self.shards)} shards: the data set has fewer "
                    f"utterances than ranks × workers (or span_policy='drop' drops them all)")
            epoch += 1

    # decoding -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        worker, workers = self._worker()
        consumer = self.rank * workers + worker
        # Batch b of this rank comes from worker b % workers (DataLoader's round-robin).
        skip = max(0, (self.start_batch - worker + workers - 1) // workers)
        maps = MappedShards()
        try:
            for index, recs in enumerate(self.record_batches()):
                if index < skip:
                    continue
                skipped = list(recs.skipped)
                if self.transform is None:
                    batch = self._decode_batch(recs, maps, skipped)
                else:
                    rng = batch_rng(self.seed, index, consumer, workers)
                    utts = [u for u in (self._decode_one(r, maps, skipped) for r in recs)
                            if u is not None]
                    batch = collate(self.transform(utts, rng) if utts else [])
                batch.skipped = skipped
                yield batch
        finally:
            maps.close()

    def _decode_one(self, rec: ShardRecord, maps: MappedShards,
                    skipped: list[dict]) -> Utterance | None:
        out = np.zeros(rec.num_frames, dtype=np.float32)
        n, problem = _decode_record(maps, rec, out)
        if problem is not None:
            skipped.append(skip_event(rec.shard, rec.key, problem))
            return None
        return Utterance(rec.key, out[:n], rec.meta)

    def _decode_batch(self, recs: list[ShardRecord], maps: MappedShards,
                      skipped: list[dict]) -> Batch:
        """Decode straight into the padded batch tensor (no per-utterance copies); a bad
        utterance's row is reused by the next one, and the tensor cut to the rows kept."""
        longest = max((r.num_frames for r in recs), default=0)
        audio = torch.empty((len(recs), longest), dtype=torch.float32)
        arr = audio.numpy()
        kept, lengths = [], []
        for rec in recs:
            row = len(kept)
            n, problem = _decode_record(maps, rec, arr[row, : rec.num_frames])
            if problem is not None:
                skipped.append(skip_event(rec.shard, rec.key, problem))
                continue
            arr[row, n:] = 0.0
            kept.append(rec)
            lengths.append(n)
        if len(kept) < len(recs):
            audio = audio[: len(kept), : max((r.num_frames for r in kept), default=0)].contiguous()
        return Batch(audio, torch.tensor(lengths, dtype=torch.int64), [r.key for r in kept],
                     [r.meta for r in kept])


def make_loader(stream: ShardBatchStream, num_workers: int = 0, *, pin_memory: bool = False,
                prefetch_factor: int | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader over a ``ShardBatchStream`` (batches are formed in the workers)."""
    kwargs = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = stream.infinite
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers,
                                       pin_memory=pin_memory, **kwargs)
