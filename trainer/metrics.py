"""What pre-training measures: metric sums over ranks, the online simulation's counts, and model
FLOPs utilisation (MFU = audio seconds per second × training FLOPs per audio second / peak FLOP/s).
"""

from __future__ import annotations

import torch

from corpus_tools.audio import SAMPLE_RATE
from trainer.model import Wav2Vec2Config
from trainer.runtime import Dist, all_reduce_sum

# Dense bf16 peak FLOP/s used for the MFU estimate, by substring of the device name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                   "A10G": 70e12, "L4": 121e12, "V100": 125e12}


def flops_per_audio_second(cfg: Wav2Vec2Config, utterance_seconds: float = 12.0) -> float:
    """Training FLOPs (forward + backward = 3 × forward) per second of 16 kHz audio.

    Counts the conv encoder, projections, positional conv, transformer matmuls and attention for
    utterances of ``utterance_seconds`` (≈45 GFLOP for BASE).
    """
    fwd, rate, c_in = 0.0, float(SAMPLE_RATE), 1
    for c, k, s in zip(cfg.conv_channels, cfg.conv_kernels, cfg.conv_strides):
        rate /= s
        fwd += 2 * rate * c * c_in * k
        c_in = c
    frames, d = rate, cfg.d_model
    fwd += 2 * frames * c_in * d                                          # feature projection
    fwd += 2 * frames * d * (d // cfg.pos_conv_groups) * cfg.pos_conv_kernel  # positional conv
    fwd += cfg.layers * 2 * frames * (4 * d * d + 2 * d * cfg.ffn_dim)     # QKV, out, FFN
    fwd += cfg.layers * 4 * frames * (frames * utterance_seconds) * d      # scores + weighted sum
    fwd += 2 * frames * (c_in * cfg.codebooks * cfg.codebook_entries + d * cfg.final_dim)
    return 3 * fwd


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


class SimulationCounts:
    """Utterances the online simulation modified, summed between two log records.

    Read from each batch's ``meta[i]["simulation"]["modified"]``; ``batches_unmodified`` counts
    batches in which the simulation changed nothing (the rules promise at least one per batch).
    """

    def __init__(self):
        self.modified = self.utterances = self.batches_unmodified = self.batches = 0

    def add(self, batch) -> None:
        records = [m["simulation"] for m in batch.meta if isinstance(m, dict) and "simulation" in m]
        if not records:
            return
        modified = sum(bool(r.get("modified")) for r in records)
        self.modified += modified
        self.utterances += len(records)
        self.batches += 1
        self.batches_unmodified += modified == 0

    def reduce(self, dist: Dist) -> dict[str, int]:
        """Totals over ranks; empty when no batch carried a simulation record."""
        modified, utterances, unmodified, batches = all_reduce_sum(
            [self.modified, self.utterances, self.batches_unmodified, self.batches], dist)
        if not batches:
            return {}
        return {"sim_modified": int(modified), "sim_utterances": int(utterances),
                "sim_batches_unmodified": int(unmodified)}


class Meter:
    """Sums per-micro-batch metrics on the device; reduced over ranks only when logged."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.seconds = 0.0
        self.padded_seconds = 0.0

    def add(self, out: dict[str, torch.Tensor], seconds: float, padded_seconds: float) -> None:
        for k, v in out.items():
            v = v.detach().float()
            if v.dim() == 0:
                self.sums[k] = self.sums.get(k, 0) + v
            else:  # per-codebook vectors
                for g, x in enumerate(v):
                    self.sums[f"{k}_cb{g}"] = self.sums.get(f"{k}_cb{g}", 0) + x
        self.count += 1
        self.seconds += seconds
        self.padded_seconds += padded_seconds

    def reduce(self, dist: Dist) -> dict[str, float]:
        keys = sorted(self.sums)
        if dist.ddp:  # a rank whose micro-batches were all empty (bad data) has no metrics yet
            gathered = [None] * dist.world
            torch.distributed.all_gather_object(gathered, keys)
            keys = sorted({k for ks in gathered for k in ks})
        vals = all_reduce_sum([float(self.sums.get(k, 0.0)) for k in keys]
                              + [self.count, self.seconds, self.padded_seconds], dist)
        count, seconds, padded = vals[-3:]
        out = {k: v / max(count, 1) for k, v in zip(keys, vals)}
        out["padding_fraction"] = 1 - seconds / padded if padded else 0.0
        out["_seconds"] = seconds
        return out


def audio_seconds(batch) -> tuple[float, float]:
    """(unpadded, padded) seconds of audio in a batch."""
    return float(batch.lengths.sum()) / SAMPLE_RATE, batch.audio.shape[0] * batch.audio.shape[1] / SAMPLE_RATE


LOG_RENAMES = {"code_perplexity": "ppl", "prob_perplexity": "prob_ppl"}


def named_metrics(m: dict[str, float]) -> dict[str, float]:
    """'code_perplexity_cb0' → 'ppl_cb0' etc.; drops the private '_…' keys."""
    out = {}
    for k, v in m.items():
        if k.startswith("_"):
            continue
        for old, new in LOG_RENAMES.items():
            if k.startswith(old):
                k = new + k[len(old):]
        out[k] = v
    return out
