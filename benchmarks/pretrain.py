"""Pre-training throughput: seconds of audio per second (and MFU on GPU), ours next to torchaudio and HF.

    python benchmarks/pretrain.py                        # CPU: cpu-5m, ours vs torchaudio vs HF (< 3 min on 2 cores)
    python benchmarks/pretrain.py --device cuda          # GPU: base at 150 s per step, same three models
    python benchmarks/pretrain.py --config base --batch-seconds 150 --steps 20 --compile --baselines none
    python benchmarks/pretrain.py --shards shards/       # real batches instead of synthetic ones
    torchrun --standalone --nproc-per-node 1 benchmarks/pretrain.py --ddp --config base --baselines none

A step is what ``trainer pretrain`` does per optimizer step: forward (masking, quantizer,
negatives, losses) + backward + AdamW, bf16 autocast on CUDA, fp32 on CPU. Synthetic batches
fill ``--batch-seconds`` with utterances of ``--utterance-seconds`` (padding-free, like
length-sorted shards); ``--jitter`` makes lengths vary by up to that fraction (padding + masks).
Every model gets the same batches, the same threads and the same AdamW (``make_optimizer``);
``--warmup`` steps are not timed. A model's audio s/s = audio per step ÷ its median step time
(the median keeps a shared CPU's noise out); on the CPU the models take their steps in turn
(one step each, round after round) so that load from elsewhere hits all of them alike; on
the GPU they run one after another, each alone in memory (peak memory per model).
MFU = audio s/s × training FLOPs per audio second (``trainer.metrics.flops_per_audio_second``,
the same count for all three models) ÷ the GPU's dense bf16 peak.

Output: one JSON line per model on stdout, then one ``"comparison"`` line with
``ours_over_torchaudio`` and ``ours_over_hf`` (target ≥ 1.2 against torchaudio); a one-line
summary goes to stderr.

Baselines (``--baselines torchaudio,hf``; ``none`` for ours alone):

* ``torchaudio``: ``torchaudio.models.wav2vec2_model`` at the config's dimensions (CNN layers,
  conv bias and norm, d_model, layers, heads, FFN, positional conv kernel and groups, pre/post-LN,
  dropouts, no LayerDrop) plus the smallest head that does the same work per step as ours:
  CNN gradient ×``gradient_scale``, span masking with a learned mask embedding (our
  ``span_mask``), targets = a Linear projection of the CNN features of the masked frames,
  context = a Linear projection of the transformer output, ``num_negatives`` distractors from
  the same utterance (our ``sample_negatives``), cosine-similarity InfoNCE at ``logit_temp``
  (our ``contrastive_logits``), summed, + the L2 feature penalty. It leaves out the Gumbel
  quantizer (the C → G·V classifier, the Gumbel softmax and the codebook lookup) and the
  diversity loss, so it does slightly less work than ours: the ratio is a lower bound.
  torchaudio always uses exact GELU (ours: the config's ``activation``) and an unpadded CNN
  (ours: ``conv_padding``); ``cpu-5m`` uses ``gelu`` and ``none`` so all three match.
* ``hf``: ``transformers.Wav2Vec2ForPreTraining`` built from ``trainer.hf.to_hf_config`` (the
  same architecture, quantizer and loss; its default attention, SDPA). HF draws mask and
  negative indices on the host with numpy (``_compute_mask_indices``,
  ``_sample_negative_indices``); as in its data collator, they are drawn before the timed
  steps, so HF's step excludes work ours does inside the step.

``--compile`` compiles every model (a baseline that does not compile is reported as skipped).
``--ddp`` (ours alone) wraps the model in DistributedDataParallel as ``trainer pretrain`` does,
NCCL on CUDA and gloo on CPU, and all-reduces the loss each step; under ``torchrun`` it joins
the launcher's group, otherwise it starts a one-process group itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from trainer.components import GradMultiply, length_mask  # noqa: E402
from trainer.losses import contrastive_logits, l2_penalty, sample_negatives  # noqa: E402
from trainer.masking import span_mask  # noqa: E402
from trainer.metrics import flops_per_audio_second, peak_flops  # noqa: E402
from trainer.model import Wav2Vec2Config, Wav2Vec2ForPreTraining, count_parameters, load_config  # noqa: E402
from trainer.pretrain import make_optimizer  # noqa: E402

SAMPLE_RATE = 16000
TARGET_RATIO = 1.2  # ours ≥ 1.2 × torchaudio

# Benchmark-only configs: (bundled config to start from, overrides, description).
BENCH_CONFIGS = {
    "cpu-5m": ("base", dict(conv_channels=[256] * 7, d_model=256, layers=4, heads=4, ffn_dim=1024,
                            conv_padding="none", activation="gelu"),
               "≈5.2 M parameters: 7×256 CNN, 4 post-LN layers, d=256, 4 heads, FFN 1024, BASE positional conv, "
               "quantizer and loss; unpadded CNN and exact GELU, so ours, torchaudio and HF compute the same network"),
}


def resolve_config(name: str) -> Wav2Vec2Config:
    """A benchmark config (``cpu-5m``), a bundled config name or a YAML path."""
    if name in BENCH_CONFIGS:
        base, overrides, _ = BENCH_CONFIGS[name]
        return load_config(base, name=name, **overrides)
    return load_config(name)


# ---------------------------------------------------------------------------------------------
# batches


def synthetic_batches(batch_seconds: float, utterance_seconds: float, jitter: float, seed: int):
    """Endless batches of speech-like noise: ``floor(batch / utt)`` utterances per batch."""
    g = torch.Generator().manual_seed(seed)
    n = max(1, int(batch_seconds // utterance_seconds))
    longest = int(utterance_seconds * SAMPLE_RATE)
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


def make_batches(args, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``count`` batches every model sees, in the same order (drawn once, kept on the host)."""
    source = (shard_batches(args.shards, args.batch_seconds, 0) if args.shards
              else synthetic_batches(args.batch_seconds, args.utterance_seconds, args.jitter, 0))
    return [next(source) for _ in range(count)]


# ---------------------------------------------------------------------------------------------
# the models


class TorchaudioPreTraining(nn.Module):
    """``torchaudio.models.wav2vec2_model`` + a quantizer-free contrastive head (module docstring)."""

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        from torchaudio.models import wav2vec2_model

        self.cfg = cfg
        self.backbone = wav2vec2_model(
            extractor_mode="group_norm" if cfg.conv_norm == "group" else "layer_norm",
            extractor_conv_layer_config=list(zip(cfg.conv_channels, cfg.conv_kernels, cfg.conv_strides)),
            extractor_conv_bias=cfg.conv_bias, encoder_embed_dim=cfg.d_model,
            encoder_projection_dropout=cfg.feature_dropout, encoder_pos_conv_kernel=cfg.pos_conv_kernel,
            encoder_pos_conv_groups=cfg.pos_conv_groups, encoder_num_layers=cfg.layers,
            encoder_num_heads=cfg.heads, encoder_attention_dropout=cfg.attention_dropout,
            encoder_ff_interm_features=cfg.ffn_dim, encoder_ff_interm_dropout=cfg.activation_dropout,
            encoder_dropout=cfg.dropout, encoder_layer_norm_first=cfg.norm_first, encoder_layer_drop=0.0,
            aux_num_out=None)
        self.mask_embedding = nn.Parameter(torch.empty(cfg.d_model).uniform_())
        self.project_targets = nn.Linear(cfg.conv_channels[-1], cfg.final_dim)
        self.project_context = nn.Linear(cfg.d_model, cfg.final_dim)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        padded = bool((lengths < audio.shape[-1]).any())
        features, frame_lengths = self.backbone.feature_extractor(audio, lengths if padded else None)
        B, T, _ = features.shape
        if frame_lengths is None:
            frame_lengths = torch.full((B,), T, dtype=torch.long, device=audio.device)
        if cfg.gradient_scale != 1.0:
            features = GradMultiply.apply(features, cfg.gradient_scale)
        x = self.backbone.encoder.feature_projection(features)
        mask_time = span_mask(frame_lengths, T, cfg.mask_prob, cfg.mask_length)
        x = torch.where(mask_time[..., None], self.mask_embedding.to(x.dtype), x)
        attention_mask, valid = None, None
        if padded:  # what torchaudio's Encoder._preprocess does with lengths
            valid = length_mask(frame_lengths, T)
            x = x.masked_fill(~valid[..., None], 0.0)
            attention_mask = (-10000.0 * (~valid)[:, None, None, :].to(x.dtype)).expand(B, 1, T, T)
        context = self.backbone.encoder.transformer(x, attention_mask=attention_mask)
        targets = self.project_targets(features[mask_time])
        predicted = self.project_context(context[mask_time])
        rows = torch.arange(B, device=audio.device)[:, None].expand_as(mask_time)[mask_time]
        negatives, usable = sample_negatives(rows, cfg.num_negatives)
        logits = contrastive_logits(predicted, targets, negatives, cfg.logit_temp)[usable]
        ce = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device),
                             reduction="sum")
        return ce + cfg.l2_weight * l2_penalty(features, valid)


class Runner:
    """One model under test: ``build()``, ``prepare(batches)`` (untimed), ``step(i)``, ``release()``."""

    name = ""

    def __init__(self, cfg: Wav2Vec2Config, args, device: torch.device):
        self.cfg, self.args, self.device = cfg, args, device
        self.bf16 = device.type == "cuda" and args.precision != "fp32"
        self.model: nn.Module | None = None
        self.batches: list = []
        self.extra: dict = {}

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def make_model(self) -> nn.Module:
        raise NotImplementedError

    def build(self) -> None:
        torch.manual_seed(0)
        self.model = self.make_model().to(self.device).train()
        self.opt = make_optimizer(self.model, 1e-4, 0.01, self.device)
        self.forward_model = (torch.compile(self.model, backend=self.args.compile_backend) if self.args.compile
                              else self.model)

    def prepare(self, batches: list) -> None:
        self.batches = batches

    def loss(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def step(self, i: int) -> None:
        with self.autocast():
            loss = self.loss(i)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def to_device(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        audio, lengths = self.batches[i]
        return audio.to(self.device, non_blocking=True), lengths.to(self.device, non_blocking=True)

    def release(self) -> None:
        self.model = self.opt = self.forward_model = None
        self.batches = []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class Ours(Runner):
    name = "ours"

    def make_model(self) -> nn.Module:
        return Wav2Vec2ForPreTraining(self.cfg)

    def build(self) -> None:
        super().build()
        if self.args.ddp:  # the order of trainer pretrain: compile, then DDP (trainer.runtime.ddp_wrap)
            local = int(os.environ.get("LOCAL_RANK", 0))
            self.forward_model = torch.nn.parallel.DistributedDataParallel(
                self.forward_model, device_ids=[local] if self.device.type == "cuda" else None,
                broadcast_buffers=False)

    def loss(self, i: int) -> torch.Tensor:
        return self.forward_model(*self.to_device(i))["loss"]

    def step(self, i: int) -> None:
        super().step(i)
        if self.args.ddp:  # the trainer all-reduces its metrics too; make sure the backend really runs
            t = torch.ones(1, device=self.device)
            torch.distributed.all_reduce(t)


class Torchaudio(Runner):
    name = "torchaudio"

    def make_model(self) -> nn.Module:
        return TorchaudioPreTraining(self.cfg)

    def loss(self, i: int) -> torch.Tensor:
        return self.forward_model(*self.to_device(i))


class HuggingFace(Runner):
    name = "hf"

    def make_model(self) -> nn.Module:
        import transformers
        from transformers import Wav2Vec2ForPreTraining as HFPreTraining

        from trainer.hf import to_hf_config

        transformers.logging.set_verbosity_error()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "HF has no feature-encoder padding" for 50hz configs
            model = HFPreTraining(to_hf_config(self.cfg))
        self.extra = {"transformers": transformers.__version__,
                      "attention": getattr(model.config, "_attn_implementation", None)}
        return model

    def prepare(self, batches: list) -> None:
        """Mask and negative indices per batch, drawn by HF's own numpy helpers (its collator's job)."""
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

        super().prepare(batches)
        cfg, model = self.cfg, self.model
        self.inputs = []
        for audio, lengths in batches:
            B, S = audio.shape
            T = int(model._get_feat_extract_output_lengths(torch.tensor(S)))
            attention_mask = sub_mask = None
            if bool((lengths < S).any()):
                attention_mask = length_mask(lengths, S).long()
                sub_mask = model._get_feature_vector_attention_mask(T, attention_mask)
            mask = _compute_mask_indices((B, T), cfg.mask_prob, cfg.mask_length, attention_mask=sub_mask,
                                         min_masks=2)
            negatives = _sample_negative_indices((B, T), cfg.num_negatives, mask_time_indices=mask)
            self.inputs.append({
                "attention_mask": None if attention_mask is None else attention_mask.to(self.device),
                "mask_time_indices": torch.from_numpy(mask).to(self.device),
                "sampled_negative_indices": torch.from_numpy(negatives).to(self.device)})

    def loss(self, i: int) -> torch.Tensor:
        audio, _ = self.to_device(i)
        return self.forward_model(audio, **self.inputs[i]).loss

    def release(self) -> None:
        self.inputs = []
        super().release()


RUNNERS: dict[str, type[Runner]] = {"ours": Ours, "torchaudio": Torchaudio, "hf": HuggingFace}


# ---------------------------------------------------------------------------------------------
# timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(runner: Runner, i: int) -> float:
    sync(runner.device)
    t0 = time.perf_counter()
    runner.step(i)
    sync(runner.device)
    return time.perf_counter() - t0


def start(runner: Runner, batches: list, warmup: int) -> None:
    """Build, prepare and warm up (compilation included); not timed."""
    runner.build()
    runner.prepare(batches)
    for i in range(warmup):
        runner.step(i)
    sync(runner.device)


def compiled(args) -> str | bool:
    return args.compile_backend if args.compile else False


def report(runner: Runner, times: list[float], batches: list, args, device: torch.device,
           peak_memory: float | None) -> dict:
    cfg = runner.cfg
    audio = [float(lengths.sum()) / SAMPLE_RATE for _, lengths in batches[args.warmup:]]
    median = statistics.median(times)
    per_step = statistics.mean(audio)
    flops = flops_per_audio_second(cfg, args.utterance_seconds)
    result = {"config": cfg.name, "model": runner.name,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "precision": "bf16" if runner.bf16 else "fp32", "compile": compiled(args), "ddp": args.ddp,
              "parameters_m": round(count_parameters(runner.model) / 1e6, 2), "batch_seconds": args.batch_seconds,
              "utterance_seconds": args.utterance_seconds, "utterances": int(batches[0][0].shape[0]),
              "warmup": args.warmup, "steps": len(times),
              "step_seconds": round(median, 4), "step_seconds_mean": round(statistics.mean(times), 4),
              "audio_seconds_per_second": round(per_step / median, 2),
              "audio_seconds_per_second_mean": round(sum(audio) / sum(times), 2),
              "gflop_per_audio_second": round(flops / 1e9, 2)}
    if device.type == "cpu":
        result["threads"] = torch.get_num_threads()
    peak = peak_flops(device)
    if peak:
        result["mfu"] = round(per_step / median * flops / peak, 4)
    if peak_memory is not None:
        result["peak_memory_gb"] = round(peak_memory / 1e9, 2)
    result.update(runner.extra)
    return result


def skipped(cfg: Wav2Vec2Config, name: str, why: str) -> dict:
    return {"config": cfg.name, "model": name, "skipped": why}


def why_not(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def bench(config: str, args, device: torch.device, emit: Callable[[dict], None]) -> None:
    """Time ours and the baselines on one config; ``emit`` each model's line and the comparison."""
    cfg = resolve_config(config)
    batches = make_batches(args, args.warmup + args.steps)
    runners: list[Runner] = [RUNNERS[name](cfg, args, device) for name in ["ours", *args.baselines]]
    results: dict[str, dict] = {}

    def attempt(runner: Runner, what: Callable[[], None]) -> bool:
        """Run ``what`` for a baseline; on failure report it skipped (ours fails loudly)."""
        if runner.name == "ours":
            what()
            return True
        try:
            what()
            return True
        except Exception as exc:  # noqa: BLE001 - a baseline that cannot run is reported, not fatal
            results[runner.name] = skipped(cfg, runner.name, why_not(exc))
            runner.release()
            return False

    if args.interleave:
        live = [r for r in runners if attempt(r, lambda r=r: start(r, batches, args.warmup))]
        times: dict[str, list[float]] = {r.name: [] for r in live}
        for i in range(args.warmup, args.warmup + args.steps):
            for r in list(live):
                if not attempt(r, lambda r=r, i=i: times[r.name].append(timed(r, i))):
                    live.remove(r)
        for r in live:
            results[r.name] = report(r, times[r.name], batches, args, device, None)
            r.release()
    else:
        for r in runners:
            step_times: list[float] = []

            def run(r=r, step_times=step_times) -> None:
                start(r, batches, args.warmup)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                for i in range(args.warmup, args.warmup + args.steps):
                    step_times.append(timed(r, i))

            if attempt(r, run):
                peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
                results[r.name] = report(r, step_times, batches, args, device, peak)
                r.release()

    for r in runners:
        emit(results[r.name])
    if not args.baselines:
        return
    ours = results["ours"]["audio_seconds_per_second"]
    comparison = {"comparison": cfg.name, "device": results["ours"]["device"], "compile": compiled(args),
                  "threads": results["ours"].get("threads"),
                  "ours_audio_seconds_per_second": ours}
    for name in args.baselines:
        rate = results[name].get("audio_seconds_per_second")
        comparison[f"{name}_audio_seconds_per_second"] = rate
        comparison[f"ours_over_{name}"] = round(ours / rate, 3) if rate else None
    if "torchaudio" in args.baselines and comparison.get("ours_over_torchaudio") is not None:
        comparison["target_over_torchaudio"] = TARGET_RATIO
        comparison["target_met"] = comparison["ours_over_torchaudio"] >= TARGET_RATIO
    emit(comparison)
    parts = [f"ours {ours:g} s/s"]
    for name in args.baselines:
        rate, ratio = comparison[f"{name}_audio_seconds_per_second"], comparison[f"ours_over_{name}"]
        parts.append(f"{name} {rate:g} s/s (ours {ratio:.2f}×)" if rate else f"{name} skipped")
    print(f"{cfg.name} on {comparison['device']}: " + ", ".join(parts), file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# command line


def start_ddp(device: torch.device) -> None:
    """Join torchrun's process group, or start a one-process group when run without torchrun."""
    if "RANK" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append",
                   help=f"config name(s) or YAML path(s), also {', '.join(BENCH_CONFIGS)}; "
                        "default: cpu-5m on CPU, base on GPU")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--baselines", default="torchaudio,hf",
                   help="comma-separated: torchaudio, hf; 'none' for ours alone (default: torchaudio,hf)")
    p.add_argument("--batch-seconds", type=float, default=None, help="per step (default 150 on GPU, 8 on CPU)")
    p.add_argument("--utterance-seconds", type=float, default=None, help="default 12.5 on GPU, 4 on CPU")
    p.add_argument("--jitter", type=float, default=0.0, help="relative length variation (adds padding)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per model (default 20 on GPU, 4 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per model (default 5 on GPU, 1 on CPU)")
    p.add_argument("--precision", choices=["auto", "fp32"], default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend (default inductor; aot_eager checks the graphs without code generation)")
    p.add_argument("--ddp", action="store_true", help="ours in DistributedDataParallel (NCCL on GPU, gloo on CPU)")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                   help="models take steps in turn (default on CPU) instead of one after another (default on GPU)")
    p.add_argument("--shards", default=None, help="use real batches from these shards")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = p.parse_args(argv)
    names = [] if args.baselines.strip().lower() in ("", "none") else \
        [b.strip().lower() for b in args.baselines.split(",") if b.strip()]
    unknown = sorted(set(names) - {"torchaudio", "hf"})
    if unknown:
        p.error(f"unknown baseline(s) {unknown}; use torchaudio, hf or none")
    if args.ddp and names:
        p.error("--ddp times ours alone; add --baselines none")
    args.baselines = list(dict.fromkeys(names))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    args.batch_seconds = args.batch_seconds or (150.0 if gpu else 8.0)
    args.utterance_seconds = min(args.utterance_seconds or (12.5 if gpu else 4.0), args.batch_seconds)
    args.steps = args.steps or (20 if gpu else 4)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    args.interleave = (not gpu) if args.interleave is None else args.interleave
    main_rank = True
    if args.ddp:
        start_ddp(device)
        main_rank = torch.distributed.get_rank() == 0
        if gpu:
            device = torch.device("cuda", torch.cuda.current_device())

    def emit(record: dict) -> None:
        if main_rank:
            print(json.dumps(record), flush=True)

    try:
        for config in args.config or (["base"] if gpu else ["cpu-5m"]):
            bench(config, args, device, emit)
    finally:
        if args.ddp:
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except FileNotFoundError as exc:  # an unknown --config or --shards folder: say so in one line
        raise SystemExit(f"error: {exc}") from None
