"""wav2vec 2.0 self-supervised pre-training loop (nanoGPT style: the whole loop is ``pretrain``).

Single process by default; under ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK in the environment) it
runs DDP with NCCL on GPUs and gloo on CPU. Training counts optimizer steps over an *infinite*
shard stream, so every rank does exactly the same number of forward/backward passes (no DDP
hang from uneven batch counts). Global batch = world size × accumulation × seconds per GPU.

Precision: bf16 autocast on CUDA (``--precision auto``); GroupNorm, the positional conv, the
quantizer softmax and the losses run in float32 inside the model regardless. fp32 on CPU.

Exact resume: model, optimizer, step (→ LR and gumbel τ), per-rank RNG states, hours seen and
the data position (``start_batch = step × accumulation`` of each rank's stream) are saved; a
resumed run continues the same loss sequence bit for bit (same world size, CPU, num_workers=0
for the test; on GPU up to kernel non-determinism).

A long run survives bad data and bad luck: damaged utterances and shards are skipped and
counted (``corpus_tools.bad_data``; ``--max-bad-fraction`` stops a run on a wrong folder), a
step whose loss or gradient norm is not finite is not applied and too many of them stop the
run as diverged (``trainer.guard``), ``--resume`` starts from the newest checkpoint that loads,
and a checkpoint that cannot be written ends the run with the previous one intact.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corpus_tools.bad_data import DEFAULT_MAX_BAD_FRACTION, BadDataError, BadDataTally
from trainer import checkpoint as ckpt_lib
from trainer.guard import (DEFAULT_MAX_BAD_STEPS, DivergedError, StepGuard, StepVerdict, dummy_batch, step_verdict,
                           weights_finite)
from trainer.model import Wav2Vec2Config, Wav2Vec2ForPreTraining, codebook_similarity, count_parameters, load_config_file
from trainer.schedules import Schedule, lr_heuristic

# Dense bf16 peak FLOP/s used for the MFU estimate, by substring of the device name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                   "A10G": 70e12, "L4": 121e12, "V100": 125e12}


@dataclass
class PretrainArgs:
    """Everything ``trainer pretrain`` accepts; ``None`` means "take it from the config's train section"."""

    shards: str
    out: str
    config: str = "base"
    steps: int | None = None
    batch_seconds: float | None = None        # per GPU, padding included (the batcher's budget)
    accumulation: int | None = None
    lr: float | str | None = None             # a number or "auto" (= lr_rule applied to the global batch)
    lr_rule: str = "sqrt"
    schedule: str | None = None
    cycle_steps: int = 25_000                 # half cycle of the triangular schedule
    weight_decay: float | None = None
    max_grad_norm: float = 0.0                # 0 = no clipping (the norm is still logged)
    precision: str = "auto"                   # auto | bf16 | fp32
    compile: bool = False
    log_every: int | None = None
    val_every: int | None = None
    ckpt_every: int | None = None
    keep_checkpoints: int = 2
    val_shards: str | None = None
    val_batches: int = 50
    seed: int = 0
    resume: bool = False
    stop_after: int | None = None             # leave after this step (time-limited jobs); resume later
    num_workers: int | None = None            # None: 0 on CPU, 4 on GPU
    max_utterance_seconds: float = 30.0
    max_span_seconds: float | None = 10.0
    bucket_buffer: int = 50
    shuffle_buffer: int = 250
    simulate: str | None = None
    noise: str | None = None
    music: str | None = None
    stems: str | None = None
    simulate_source: str | None = None
    transform: Any = None                     # a ready-made stream transform (tests, custom hooks)
    init: str | None = None                   # our / HF / fairseq checkpoint to start from
    tensorboard: bool = False
    model_overrides: dict[str, Any] = field(default_factory=dict)
    quiet: bool = False
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION  # stop when more of the data read is bad
    max_bad_steps: int = DEFAULT_MAX_BAD_STEPS  # stop as diverged after this many non-finite steps in a row
    trust_checkpoint: bool = False            # load --init / resume checkpoints with weights_only=False


# ---------------------------------------------------------------------------------------------
# helpers (everything the loop needs but should not be distracted by)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    ddp: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def set_determinism(device: torch.device) -> None:
    """Deterministic kernels on CPU (default) so that runs and exact resumes repeat bit for bit.

    Measured: with 2 intra-op threads, two identical CPU runs of `tiny` drift apart in the
    last bits within 4 steps unless deterministic algorithms are on. On GPU they cost speed,
    so they are opt-in there: TRAINER_DETERMINISTIC=1 (0 switches them off on CPU too).
    """
    flag = os.environ.get("TRAINER_DETERMINISTIC")
    on = device.type == "cpu" if flag is None else flag.strip().lower() in ("1", "true", "yes", "on")
    if on and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)


def setup_distributed() -> Dist:
    """DDP when launched by torchrun, single process otherwise."""
    dist = _setup_distributed()
    set_determinism(dist.device)
    return dist


def _setup_distributed() -> Dist:
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    torch.distributed.init_process_group(backend=backend)
    return Dist(rank, world, local, device, True)


def all_reduce_sum(values: list[float], dist: Dist) -> list[float]:
    if not dist.ddp:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def resolve_settings(args: PretrainArgs) -> tuple[Wav2Vec2Config, dict[str, Any]]:
    """Merge the named config's ``train`` section with the command-line overrides."""
    data = load_config_file(args.config)
    model_cfg = dict(data["model"], **args.model_overrides)
    t = dict(batch_seconds=150.0, accumulation=1, lr="auto", schedule="cyclic", weight_decay=0.01, steps=400_000,
             log_every=100, val_every=5000, ckpt_every=1000)
    t.update(data["train"])
    for key in t:
        value = getattr(args, key)
        if value is not None:
            t[key] = value
    return Wav2Vec2Config.from_dict(model_cfg), t


def flops_per_audio_second(cfg: Wav2Vec2Config, utterance_seconds: float = 12.0) -> float:
    """Training FLOPs (forward + backward = 3 × forward) per second of 16 kHz audio.

    Counts the conv encoder, projections, positional conv, transformer matmuls and attention for
    utterances of ``utterance_seconds`` (research note §6.2: ≈45 GFLOP for BASE).
    """
    fwd, rate, c_in = 0.0, 16000.0, 1
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


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device):
    """AdamW (0.9, 0.98), eps 1e-6; decay on matrices/kernels/codebooks, none on biases, norms, mask vector."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=device.type == "cuda")


def make_transform(args: PretrainArgs, batch_seconds: float):
    """The online data-quality simulation (``--simulate COND``) or a given transform.

    It fits its output to the stream's ``batch_seconds`` and ``max_utterance_seconds``. Speech
    partners the batch lacks come from ``--simulate-source``, else from the training shards
    themselves (as offline from the source); dev/test utterances are never partners.
    """
    if args.transform is not None:
        return args.transform
    if not args.simulate:
        return None
    try:
        from corpus_tools.simulate import Simulator, parse_condition
    except ImportError as e:  # the simulation module is part of corpus_tools
        raise RuntimeError(f"--simulate needs corpus_tools.simulate.Simulator, which could not be imported: {e}") from e
    source = args.simulate_source
    if source is None and parse_condition(args.simulate).source == "speech":
        from corpus_tools.reader import list_shards

        source = list_shards(args.shards)  # the stream's own shards (globs, braces, lists alike)
    return Simulator(args.simulate, noise=args.noise, music=args.music, stems=args.stems, seed=args.seed,
                     source=source, batch_seconds=batch_seconds, max_utterance_seconds=args.max_utterance_seconds)


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


def make_stream(shards: str, batch_seconds: float, args: PretrainArgs, dist: Dist, *, train: bool,
                start_batch: int = 0, transform=None):
    from corpus_tools.reader import ShardBatchStream, make_loader

    stream = ShardBatchStream(shards, batch_seconds, seed=args.seed, rank=dist.rank, world_size=dist.world,
                              infinite=train, shuffle=train, shuffle_buffer=args.shuffle_buffer,
                              bucket_buffer=args.bucket_buffer, max_utterance_seconds=args.max_utterance_seconds,
                              max_span_seconds=args.max_span_seconds, transform=transform, start_batch=start_batch)
    workers = args.num_workers if args.num_workers is not None else (4 if dist.device.type == "cuda" else 0)
    return make_loader(stream, workers if train else min(workers, 1), pin_memory=dist.device.type == "cuda")


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
    return float(batch.lengths.sum()) / 16000.0, batch.audio.shape[0] * batch.audio.shape[1] / 16000.0


LOG_RENAMES = {"code_perplexity": "ppl", "prob_perplexity": "prob_ppl"}


class RunLog:
    """JSONL log (always) + optional TensorBoard, written by rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, start_step: int = 0):
        self.enabled = enabled
        self.path = run_dir / "log.jsonl"
        self.tb = None
        if enabled:
            self._keep_until(start_step)
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: events a killed run wrote after the checkpoint are dropped
                self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
            except Exception as e:  # tensorboard is optional
                print(f"[trainer] TensorBoard disabled ({e}); logging to {self.path} only")

    def _keep_until(self, step: int) -> None:
        """Drop what a previous run logged after ``step`` (the checkpoint this run starts from;
        0 for a fresh start): a run killed after its last checkpoint logged steps that the
        resumed run logs again, and the log must hold each step once."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # the torn last line of a killed run
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{record['split']}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


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


@torch.no_grad()
def validate(model: Wav2Vec2ForPreTraining, loader, dist: Dist, autocast, max_batches: int, seed: int,
             data: BadDataTally | None = None) -> dict[str, float]:
    """Mean metrics over up to ``max_batches`` batches per rank, with fixed masks/negatives (seeded generator).
    Bad utterances are skipped (and named once through ``data``)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=dist.device).manual_seed(seed)
    meter = Meter()
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        if data is not None:
            data.count(len(batch), batch.skipped)
        if len(batch) == 0:
            continue
        seconds, padded = audio_seconds(batch)
        batch = batch.to(dist.device)
        with autocast:
            meter.add(model(batch.audio, batch.lengths, generator=gen), seconds, padded)
    model.train(was_training)
    return named_metrics(meter.reduce(dist))


def save_training_checkpoint(run_dir: Path, model, optimizer, state: dict, cfg: Wav2Vec2Config, schedule: Schedule,
                             args: PretrainArgs, train: dict, dist: Dist, extra: dict | None = None) -> None:
    """Gather every rank's RNG state, then rank 0 writes ``checkpoints/step_N.pt`` atomically and
    prunes old ones; a failed write ends the run on every rank (``CheckpointSaveError``), with the
    previous checkpoints as they were. Never called with non-finite weights (the loop stops first)."""
    rng = [ckpt_lib.rng_state()]
    if dist.ddp:
        rng = [None] * dist.world
        torch.distributed.all_gather_object(rng, ckpt_lib.rng_state())

    def save() -> None:
        path = ckpt_lib.step_checkpoint_path(run_dir, state["step"])
        save_checkpoint_file({
            "config": cfg.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "step": state["step"], "hours_seen": state["hours_seen"], "best_val": state["best_val"],
            "schedule": schedule.to_dict(), "args": ckpt_lib.plain_args(args), "train": train, "rng": rng,
            "world_size": dist.world, "data": {"batches_per_rank": state["step"] * train["accumulation"],
                                               "seed": args.seed}, **(extra or {}),
        }, path, run_dir)
        ckpt_lib.prune_checkpoints(run_dir, args.keep_checkpoints)

    on_main(dist, save)


def save_checkpoint_file(obj: dict, path: Path, run_dir: Path) -> None:
    """``atomic_save``, with the message a full disk needs: which checkpoint is kept."""
    previous = ckpt_lib.latest_checkpoint(run_dir)
    try:
        ckpt_lib.atomic_save(obj, path)
    except ckpt_lib.CheckpointSaveError as e:
        kept = (f"the previous checkpoint {previous.name} is kept; free space and continue with --resume"
                if previous is not None and previous != path else "no earlier checkpoint to resume from")
        raise ckpt_lib.CheckpointSaveError(f"{e}; {kept}") from None


def on_main(dist: Dist, fn) -> None:
    """Run ``fn`` on rank 0. A checkpoint it cannot write is raised on every rank: the others
    would otherwise wait for rank 0 at the next collective until the timeout."""
    error = None
    if dist.main:
        try:
            fn()
        except ckpt_lib.CheckpointSaveError as e:
            error = str(e)
    if dist.ddp:
        box = [error]
        torch.distributed.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise ckpt_lib.CheckpointSaveError(error)


def load_resume_checkpoint(run_dir: Path, resume: bool, dist: Dist, *, trust: bool,
                           required: tuple[str, ...] = ckpt_lib.TRAINING_KEYS) -> tuple[Path | None, dict | None]:
    """The newest readable step checkpoint (``ckpt_lib.resume_checkpoint``), chosen by rank 0 —
    which alone sets damaged ones aside — and then loaded by every rank."""
    path, ckpt, error = None, None, None
    if dist.main:
        try:
            path, ckpt = ckpt_lib.resume_checkpoint(run_dir, resume, trust=trust, required=required,
                                                    say=lambda msg: warn(dist, msg))
        except ValueError as e:
            error = e
    if dist.ddp:
        box = [(None if path is None else str(path), None if error is None else str(error))]
        torch.distributed.broadcast_object_list(box, src=0)
        chosen, message = box[0]
        if not dist.main:
            if message is not None:
                raise ValueError(message)
            path = None if chosen is None else Path(chosen)
            ckpt = None if path is None else ckpt_lib.load_checkpoint(path, trust=trust)
    if error is not None:
        raise error
    return path, ckpt


def say(dist: Dist, args: PretrainArgs, msg: str) -> None:
    if dist.main and not args.quiet:
        print(f"[trainer] {msg}", flush=True)


def warn(dist: Dist, msg: str, prefix: str = "[trainer]") -> None:
    """A warning on stderr (rank 0; --quiet does not silence it)."""
    if dist.main:
        print(f"{prefix} warning: {msg}", file=sys.stderr, flush=True)


def bad_data_tally(args, dist: Dist, prefix: str = "[trainer]") -> BadDataTally:
    """The run's bad-data tally; every rank names the damage it met itself (stderr)."""
    return BadDataTally(float(args.max_bad_fraction),
                        warn=lambda line: print(f"{prefix} {line}", file=sys.stderr, flush=True))


def forward_backward(model, batch, accum: int, last: bool, dist: Dist, autocast, loss_of=None) -> dict | None:
    """Forward and backward of one micro-batch (loss / accum); returns the model output.

    An empty batch (all of it bad data) is skipped and gives None; under DDP the rank runs the
    model on ``dummy_batch()`` with loss weight 0 instead, so that the gradient all-reduce of
    every rank happens. ``loss_of(out, batch)`` computes the loss (default ``out["loss"]``).
    """
    real = len(batch) > 0
    if not real and not dist.ddp:
        return None
    batch = (batch if real else dummy_batch()).to(dist.device, non_blocking=True)
    sync = contextlib.nullcontext() if (not dist.ddp or last) else model.no_sync()
    with sync:
        with autocast:
            out = model(batch.audio, batch.lengths)
        loss = out["loss"] if loss_of is None else loss_of(out, batch)
        (loss / accum if real else loss * 0.0).backward()
    return {**out, "loss": loss} if real else None


class StepCounts:
    """Skipped steps and bad data between two log records (from the all-reduced verdicts)."""

    def __init__(self):
        self.skipped_steps = self.empty_steps = self.bad_utterances = self.bad_shards = 0

    def add(self, verdict: StepVerdict) -> None:
        self.skipped_steps += not verdict.finite
        self.empty_steps += verdict.rows == 0
        self.bad_utterances += verdict.bad
        self.bad_shards += verdict.bad_shards

    def fields(self, data: BadDataTally, guard: StepGuard) -> dict[str, int]:
        out = {"skipped_steps": self.skipped_steps, "skipped_steps_total": guard.skipped,
               "bad_utterances": self.bad_utterances, "bad_shards": self.bad_shards,
               "bad_utterances_total": data.bad, "bad_shards_total": data.bad_shards,
               "utterances_seen_total": data.read}
        if self.empty_steps:
            out["empty_steps"] = self.empty_steps
        return out

    def summary(self) -> str:
        """What went wrong in the interval, for the progress line ('' when nothing did)."""
        parts = []
        if self.skipped_steps:
            parts.append(f"{self.skipped_steps} step(s) not applied (loss or gradient not finite)")
        if self.bad_utterances or self.bad_shards:
            parts.append(f"{self.bad_utterances} bad utterance(s), {self.bad_shards} bad shard(s) skipped")
        return ("; " + "; ".join(parts)) if parts else ""


# How a run ends early; every rank raises the same one at the same step.
RUN_STOPS = (DivergedError, BadDataError, ckpt_lib.CheckpointSaveError)


def divergence(run_dir: Path, step: int, reason: str, clipped: bool) -> DivergedError:
    """The error that ends a diverged run, naming the checkpoint to go back to."""
    last = ckpt_lib.latest_checkpoint(run_dir)
    where = (f"the newest checkpoint, {last.name}, holds finite weights" if last is not None
             else "no checkpoint was written")
    return DivergedError(step, f"{reason}; {where}; lower --lr{'' if clipped else ' or set --max-grad-norm'}")


def robust_state(data: BadDataTally, guard: StepGuard) -> dict:
    """The counters a resumed run continues (saved in the checkpoint)."""
    return {"bad_data": data.state(), "guard": guard.state()}


# ---------------------------------------------------------------------------------------------
# the loop


def pretrain(args: PretrainArgs) -> dict[str, Any]:
    """Pre-train; returns step, hours seen, best validation loss, the last train log record and the model.

    Raises ``DivergedError`` (too many non-finite steps), ``BadDataError`` (more bad data than
    ``max_bad_fraction``) and ``CheckpointSaveError`` (a checkpoint could not be written) on
    every rank alike, after logging what happened.
    """
    dist = setup_distributed()
    torch.manual_seed(args.seed + dist.rank)
    np.random.seed(args.seed + dist.rank)
    random.seed(args.seed + dist.rank)
    if dist.device.type == "cuda":  # the float32 parts (GroupNorm, pos conv, losses) may use TF32
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg, train = resolve_settings(args)
    run_dir = Path(args.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    accum, per_gpu = int(train["accumulation"]), float(train["batch_seconds"])
    global_seconds = dist.world * accum * per_gpu
    peak_lr = lr_heuristic(global_seconds, args.lr_rule) if str(train["lr"]) == "auto" else float(train["lr"])
    schedule = Schedule(train["schedule"], peak_lr, int(train["steps"]), args.cycle_steps, args.cycle_steps)

    # Model and optimizer (fresh, initialised from HF/fairseq, or resumed from the newest readable checkpoint).
    resume_from, ckpt = load_resume_checkpoint(run_dir, args.resume, dist, trust=args.trust_checkpoint)
    if args.init and resume_from is None:
        from trainer.hf import load_pretrained

        model = load_pretrained(args.init, trust=args.trust_checkpoint)
        cfg = model.cfg
    else:
        model = Wav2Vec2ForPreTraining(cfg)
    model.to(dist.device).train()
    optimizer = make_optimizer(model, peak_lr, float(train["weight_decay"]), dist.device)
    state = {"step": 0, "hours_seen": 0.0, "best_val": math.inf}
    data, guard = bad_data_tally(args, dist), StepGuard(args.max_bad_steps)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state.update(step=ckpt["step"], hours_seen=ckpt["hours_seen"], best_val=ckpt["best_val"])
        data.load_state(ckpt.get("bad_data"))
        guard.load_state(ckpt.get("guard"))
        say(dist, args, f"resumed from {resume_from} at step {state['step']}")
    raw_model = model
    if args.compile:
        model = torch.compile(model)
    if dist.ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None, broadcast_buffers=False)

    use_bf16 = args.precision == "bf16" or (args.precision == "auto" and dist.device.type == "cuda")
    autocast = (torch.autocast(device_type=dist.device.type, dtype=torch.bfloat16) if use_bf16
                else contextlib.nullcontext())
    loader = make_stream(args.shards, per_gpu, args, dist, train=True, start_batch=state["step"] * accum,
                         transform=make_transform(args, per_gpu))
    batches = iter(loader)  # created before the RNG restore: the DataLoader iterator draws a seed
    if ckpt is not None:
        rng = ckpt["rng"]
        if ckpt.get("world_size") == dist.world and len(rng) == dist.world:
            ckpt_lib.set_rng_state(rng[dist.rank])
        else:
            say(dist, args, f"world size changed ({ckpt.get('world_size')} → {dist.world}): RNG re-seeded")
    log = RunLog(run_dir, dist.main, args.tensorboard, start_step=state["step"])
    steps = int(train["steps"])
    last_step = min(steps, args.stop_after) if args.stop_after else steps
    flops_per_sec = flops_per_audio_second(cfg)
    peak = peak_flops(dist.device)
    say(dist, args, f"{cfg.name}: {count_parameters(raw_model) / 1e6:.1f} M parameters on {dist.device} "
        f"({'bf16' if use_bf16 else 'fp32'}); global batch = {dist.world} GPU(s) × {accum} accumulation × "
        f"{per_gpu:g} s = {global_seconds:g} s of audio; peak LR {peak_lr:.3g} ({schedule.name}); "
        f"steps {state['step']} → {last_step}")

    def train_record(step: int, lr: float, **extra) -> dict:
        """The interval's log record (reduces the meters over ranks) and the progress line."""
        nonlocal meter, grad_norms, t_log, sim_counts, counts
        m = meter.reduce(dist)
        elapsed = time.time() - t_log
        state["hours_seen"] += m["_seconds"] / 3600
        rec = {"split": "train", "step": step, **named_metrics(m), "lr": lr, "hours_seen": state["hours_seen"],
               "audio_seconds_per_second": m["_seconds"] / max(elapsed, 1e-9),
               **sim_counts.reduce(dist), **codebook_similarity(raw_model.quantizer),
               **counts.fields(data, guard), **extra}
        if grad_norms:
            rec["grad_norm"] = sum(grad_norms) / len(grad_norms)
        if peak:
            rec["mfu"] = rec["audio_seconds_per_second"] / dist.world * flops_per_sec / peak
            rec["max_memory_gb"] = torch.cuda.max_memory_allocated(dist.device) / 1e9
        log.write(rec)
        if "loss" in rec:
            line = (f"step {step}: loss {rec['loss']:.4g} contrastive {rec['contrastive']:.3f} "
                    f"acc {rec['accuracy']:.3f} ppl {rec.get('ppl_cb0', 0):.1f}/{rec.get('ppl_cb1', 0):.1f} "
                    f"τ {rec['temperature']:.3f} lr {lr:.3g} {rec['audio_seconds_per_second']:.0f} s/s "
                    f"{state['hours_seen']:.3f} h seen")
        else:
            line = f"step {step}: no update applied since the last log record"
        say(dist, args, line + counts.summary())
        meter, grad_norms, t_log, sim_counts, counts = Meter(), [], time.time(), SimulationCounts(), StepCounts()
        return rec

    meter, grad_norms, t_log, rec, sim_counts, counts = Meter(), [], time.time(), {}, SimulationCounts(), StepCounts()
    try:
        while state["step"] < last_step:
            step = state["step"]
            lr = schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            raw_model.set_step(step)
            outs, loss_sum, rows, found = [], 0.0, 0, (0, 0, 0)
            for micro in range(accum):
                batch = next(batches)
                seconds, padded = audio_seconds(batch)  # on the host, before the copy (no device sync)
                sim_counts.add(batch)
                found = tuple(a + b for a, b in zip(found, data.count(len(batch), batch.skipped)))
                out = forward_backward(model, batch, accum, micro == accum - 1, dist, autocast)
                if out is not None:
                    outs.append((out, seconds, padded))
                    loss_sum = loss_sum + out["loss"].detach()
                    rows += len(batch)
            grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), args.max_grad_norm or math.inf)
            verdict = step_verdict(loss_sum, grad_norm, rows, found, dist)
            if verdict.apply:  # a non-finite step changes no weight and no optimizer state
                optimizer.step()
                for out, seconds, padded in outs:
                    meter.add(out, seconds, padded)
                grad_norms.append(verdict.grad_norm)
            optimizer.zero_grad(set_to_none=True)
            data.add(verdict.good, verdict.bad, verdict.bad_shards)
            counts.add(verdict)
            state["step"] = step = step + 1
            diverged = guard.record(verdict.finite) if verdict.rows else None
            if diverged is not None:
                rec = train_record(step, lr, diverged=True, reason=diverged)
                raise divergence(run_dir, step, diverged, bool(args.max_grad_norm))
            if data.exceeded() is not None:
                rec = train_record(step, lr, stopped="too much bad data")
                data.check()

            checkpoint_now = step % int(train["ckpt_every"]) == 0 or step == last_step
            if step % int(train["log_every"]) == 0 or checkpoint_now:  # a checkpoint needs the hours seen
                rec = train_record(step, lr)

            if args.val_shards and (step % int(train["val_every"]) == 0 or step == last_step):
                val_loader = make_stream(args.val_shards, per_gpu, args, dist, train=False)
                # fork_rng: validation (its DataLoader draws a seed) must not move the training RNG.
                with torch.random.fork_rng(devices=[dist.device] if dist.device.type == "cuda" else []):
                    v = validate(raw_model, val_loader, dist, autocast, args.val_batches, args.seed, data)
                v = {"split": "val", "step": step, **v, "hours_seen": state["hours_seen"]}
                log.write(v)
                say(dist, args, f"validation at step {step}: loss {v.get('loss', math.nan):.4g} "
                    f"acc {v.get('accuracy', math.nan):.3f}")
                if v.get("loss", math.nan) < state["best_val"] and weights_finite(raw_model):
                    state["best_val"] = v["loss"]
                    on_main(dist, lambda: save_checkpoint_file(
                        {"config": cfg.to_dict(), "model": raw_model.state_dict(), "step": step, "val": v,
                         "hours_seen": state["hours_seen"]}, run_dir / ckpt_lib.CHECKPOINT_DIR / "best.pt", run_dir))
                t_log = time.time()  # validation time is not training throughput

            if checkpoint_now:
                if not weights_finite(raw_model):  # never on disk: stop as diverged instead
                    reason = "the weights are no longer finite (not saved)"
                    log.write({"split": "train", "step": step, "diverged": True, "reason": reason})
                    raise divergence(run_dir, step, reason, bool(args.max_grad_norm))
                save_training_checkpoint(run_dir, raw_model, optimizer, state, cfg, schedule, args, train, dist,
                                         robust_state(data, guard))
    except RUN_STOPS:  # raised on every rank at the same step
        log.close()
        if dist.ddp:
            torch.distributed.destroy_process_group()
        raise
    log.close()
    if dist.ddp:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return {"step": state["step"], "hours_seen": state["hours_seen"], "best_val": state["best_val"],
            "run_dir": str(run_dir), "last_train": rec, "model": raw_model, "skipped_steps": guard.skipped,
            "bad_utterances": data.bad, "bad_shards": data.bad_shards}
