"""Write segments manifests as WebDataset tar shards (nanow2v2's layout).

Layout of an output directory::

    shard.000000.tar ... shard.000041.partial.tar   the shards
    shards.parquet                                  index: one row per shard (written last)
    _shard_distribution.csv                         which key went to which shard (nanow2v2)
    .state/plan.json, .state/shard.NNNNNN.json      resume markers (fingerprint + checksums)

Only the shards have ``.tar`` in their names: loaders find shards by a recursive glob
(nanow2v2 uses ``*.tar``, ``*.tar*`` and ``*.*.tar*``, hidden files included), so neither a
marker (``.state/shard.000000.json``) nor the temp file of a shard being written
(``.shard.000000.tmp``) may match. Folders written by earlier versions, whose markers were
``.state/{shard}.tar.json``, are migrated when they are resumed.

Each utterance is two tar members sharing a key: ``{key}.json`` then ``{key}.wav`` (or
``.flac``), 16 kHz mono 16-bit PCM. The json carries both our field names and nanow2v2's
(``speaker``/``speaker_id``, ``recording``/``recording_id``, ``language``/``language_tag``,
``id``/``sample_id``). The text is kept twice: ``transcript`` is the manifest's text as
given, ``transcription`` (the key nanow2v2 trains on) is that text normalised to the letter
vocabulary by :func:`corpus_tools.text.normalize_text` for the row's language (lower case
a–z, apostrophe, single spaces). Who reads what: wav shards are read by our reader
(:mod:`corpus_tools.data`), nanow2v2 and the ``webdataset`` library; flac shards by our
reader and ``webdataset`` only, because nanow2v2 decodes ``.wav`` members and nothing else.

Guarantees:

* **Deterministic bytes** — the plan (which segment goes to which shard) depends only on
  the manifest rows, the options and the seed; members are sorted by key; tar metadata is
  fixed (mtime 2023-01-01, uid/gid 0, ``research``/``data``, mode 0444); json has sorted
  keys; audio is 16-bit PCM from ``corpus_tools.audio.encode_audio``.
* **Atomic, resumable** — a shard is written as ``.{stem}.tmp`` (``.shard.000001.tmp``),
  fsynced and renamed, then its marker is written. A rerun trusts a shard only when its
  marker matches the plan's fingerprint and the file size; anything else is rewritten
  (identical bytes). A crash never leaves a truncated tar under a final name.
* **Exact hours** — each segment holds ``round(duration * SAMPLE_RATE)`` frames (the decoded
  range trimmed or zero-padded to that), and the index's hours are the manifest's.
* **Training data only, unless asked** — ``split="train"`` (the default) writes the rows
  whose ``split`` is null or train; dev and test rows need ``split="dev"|"test"|"all"``
  (:func:`corpus_tools.splits.select_segments`). A row's split is a top-level json key.

Modules: :mod:`.plan` (which segment goes where), :mod:`.tar_writer` (one tar shard),
:mod:`.state` (plan file, resume markers, index and distribution tables), :mod:`.write`
(a whole directory), :mod:`.index` (reading and verifying a finished directory). The names
below are the package's public API.
"""

from corpus_tools.shards.index import read_index, verify_shards
from corpus_tools.shards.plan import (STRATEGIES, ShardSpec, letter_transcript, plan_fingerprint, plan_shards,
                                      prepare_segments, safe_keys, shard_name)
from corpus_tools.shards.state import (DISTRIBUTION_NAME, INDEX_NAME, INDEX_SCHEMA, STATE_DIR, finished_marker,
                                       index_frame, marker_path, migrate_state, open_out_dir, read_marker,
                                       read_plan)
from corpus_tools.shards.tar_writer import TAR_MTIME, json_bytes, temp_path, write_one_shard
from corpus_tools.shards.write import FORMATS, cut_segment, write_shards

__all__ = [
    "DISTRIBUTION_NAME", "FORMATS", "INDEX_NAME", "INDEX_SCHEMA", "STATE_DIR", "STRATEGIES", "TAR_MTIME",
    "ShardSpec", "cut_segment", "finished_marker", "index_frame", "json_bytes", "letter_transcript",
    "marker_path", "migrate_state", "open_out_dir", "plan_fingerprint", "plan_shards", "prepare_segments",
    "read_index", "read_marker", "read_plan", "safe_keys", "shard_name", "temp_path", "verify_shards",
    "write_one_shard", "write_shards",
]
