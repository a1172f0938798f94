"""Data-quality simulation on LibriSpeech (thesis §6.2.2, Table 13).

One implementation, two modes:

* **online** — the trainer passes a :class:`~corpus_tools.simulate.simulator.Simulator` as
  ``ShardBatchStream(transform=...)``; it receives each training batch as ``list[Utterance]``
  plus a ``numpy`` Generator and returns the degraded list;
* **offline** — ``corpus simulate`` (:mod:`corpus_tools.simulate.offline`) forms the same
  duration batches, calls the very same ``Simulator`` with ``batch_rng(seed, batch_index)``
  and writes listenable shards.

Modules: ``conditions`` (the condition table, ``manifests/simulation_conditions.yaml``),
``signal`` (active power, SNR, fitting and mixing), ``pools`` (noise / music / stem clips and
speech partners), ``simulator`` (the batch transform), ``offline`` (the shard writer).

Rules (see ``docs/simulate.md``):

* selection is per batch: ``count_selected(n, X)`` = X % of the batch's training utterances
  rounded half up, never fewer than one; concat conditions apply to every utterance;
* mixing SNR is uniform in [0, 15] dB, measured on the **active** power of both signals
  (mean square over 20 ms frames within 40 dB of the loudest frame);
* substitutions are cropped (random offset) or repeated (random start) to the exact length;
* speech partners come from the same batch when one fits the rule, else from the source pool;
* concatenation doubles the audio, so concat batches are formed on half the budget
  (``length_growth``) and a concatenation is cut to ``min(max_utterance_seconds,
  batch_seconds / rows)`` — the same rule online and offline, and never over the budget;
* utterances whose ``split`` is dev or test (``corpus_tools.splits``) are never touched.
"""

from corpus_tools.simulate.conditions import (CONDITIONS_FILE, Condition, Settings, count_selected,
                                              load_settings, parse_condition,
                                              valid_condition_names)
from corpus_tools.simulate.offline import simulate_offline, source_items
from corpus_tools.simulate.pools import ClipPool, SpeechPool
from corpus_tools.simulate.signal import active_power, fit_length, measure_snr, mix_at_snr
from corpus_tools.simulate.simulator import Simulator

__all__ = [
    "CONDITIONS_FILE", "ClipPool", "Condition", "Settings", "Simulator", "SpeechPool",
    "active_power", "count_selected", "fit_length", "load_settings", "measure_snr", "mix_at_snr",
    "parse_condition", "simulate_offline", "source_items", "valid_condition_names",
]
