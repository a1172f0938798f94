"""Pre-training throughput: seconds of audio per second (and MFU on GPU) for a config.

    python benchmarks/pretrain.py                        # base and tiny on the current device
    python benchmarks/pretrain.py --config base --batch-seconds 150 --steps 20 --compile
    python benchmarks/pretrain.py --shards shards/       # real batches instead of synthetic ones

A step is what ``trainer pretrain`` does per optimizer step: forward (masking, quantizer,
negatives, losses) + backward + AdamW, bf16 autocast on CUDA, fp32 on CPU. Synthetic batches
fill ``--batch-seconds`` with utterances of ``--utterance-seconds`` (padding-free, like
length-sorted shards); ``--jitter`` makes lengths vary by up to that fraction (padding + masks).
MFU = audio s/s × training FLOPs per audio second (``trainer.metrics.flops_per_audio_second``)
÷ the GPU's dense bf16 peak. Prints one JSON line per config.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from trainer.model import Wav2Vec2ForPreTraining, count_parameters, load_config  # noqa: E402
from trainer.metrics import flops_per_audio_second, peak_flops  # noqa: E402
from trainer.pretrain import make_optimizer  # noqa: E402


def synthetic_batches(batch_seconds: float, utterance_seconds: float, jitter: float, seed: int):
    """Endless batches of speech-like noise: ``floor(batch / utt)`` utterances per batch."""
    g = torch.Generator().manual_seed(seed)
    n = max(1, int(batch_seconds // utterance_seconds))
    longest = int(utterance_seconds * 16000)
    while True:
        lengths = torch.full((n,), longest, dtype=torch.int64)
        if jitter > 0:
            lengths = (longest * (1 - jitter * torch.rand(n, generator=g))).long()
            lengths[0] = longest
        audio = 0.1 * torch.randn(n, longest, generator=g)
        audio *= (torch.arange(longest)[None] < lengths[:, None])
        yield audio, lengths


def shard_batches(shards: str, batch_seconds: float, seed: int):
    from corpus_tools.data.stream import ShardBatchStream, make_loader

    for batch in make_loader(ShardBatchStream(shards, batch_seconds, seed=seed, rank=0, world_size=1), 4):
        yield batch.audio, batch.lengths


def bench(config: str, args, device: torch.device) -> dict:
    cfg = load_config(config)
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(cfg).to(device).train()
    opt = make_optimizer(model, 1e-4, 0.01, device)
    step_model = torch.compile(model) if args.compile else model
    bf16 = device.type == "cuda" and args.precision != "fp32"
    batches = (shard_batches(args.shards, args.batch_seconds, 0) if args.shards
               else synthetic_batches(args.batch_seconds, args.utterance_seconds, args.jitter, 0))

    def step():
        audio, lengths = next(batches)
        audio, lengths = audio.to(device, non_blocking=True), lengths.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            out = step_model(audio, lengths)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(lengths.sum()) / 16000

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    seconds, t0 = 0.0, time.perf_counter()
    for _ in range(args.steps):
        seconds += step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    rate = seconds / wall
    result = {"config": config, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "precision": "bf16" if bf16 else "fp32", "compile": args.compile,
              "parameters_m": round(count_parameters(model) / 1e6, 2), "batch_seconds": args.batch_seconds,
              "utterance_seconds": args.utterance_seconds, "steps": args.steps,
              "step_seconds": round(wall / args.steps, 4), "audio_seconds_per_second": round(rate, 1),
              "gflop_per_audio_second": round(flops_per_audio_second(cfg, args.utterance_seconds) / 1e9, 1)}
    peak = peak_flops(device)
    if peak:
        result["mfu"] = round(rate * flops_per_audio_second(cfg, args.utterance_seconds) / peak, 4)
    if device.type == "cuda":
        result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", help="config name(s); default: base and tiny")
    p.add_argument("--batch-seconds", type=float, default=None, help="per step (default 150 on GPU, 16 on CPU)")
    p.add_argument("--utterance-seconds", type=float, default=12.5)
    p.add_argument("--jitter", type=float, default=0.0, help="relative length variation (adds padding)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on GPU, 3 on CPU)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--precision", choices=["auto", "fp32"], default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--shards", default=None, help="use real batches from these shards")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    args.batch_seconds = args.batch_seconds or (150.0 if gpu else 16.0)
    args.utterance_seconds = min(args.utterance_seconds, args.batch_seconds)
    args.steps = args.steps or (20 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    for config in args.config or ["base", "tiny"]:
        print(json.dumps(bench(config, args, device)), flush=True)


if __name__ == "__main__":
    main()
