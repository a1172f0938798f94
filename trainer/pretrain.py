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

This file is the arguments and the loop; what both training loops share (processes, seeds,
training state on disk, the bookkeeping of a step) is ``trainer.runtime``, and what pre-training
measures is ``trainer.metrics``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from corpus_tools.bad_data import DEFAULT_MAX_BAD_FRACTION, BadDataTally
from corpus_tools.data.tar_index import list_shards
from corpus_tools.simulate.conditions import parse_condition
from corpus_tools.simulate.simulator import Simulator
from trainer import checkpoint as ckpt_lib
from trainer import runtime as rt
from trainer.guard import DEFAULT_MAX_BAD_STEPS, StepGuard, step_verdict, weights_finite
from trainer.hf import load_pretrained
from trainer.metrics import (Meter, SimulationCounts, audio_seconds, flops_per_audio_second, named_metrics,
                             peak_flops)
from trainer.model import Wav2Vec2Config, Wav2Vec2ForPreTraining, codebook_similarity, count_parameters, load_config_file
from trainer.runlog import RunLog
from trainer.schedules import Schedule, lr_heuristic


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
# settings and helpers


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
    source = args.simulate_source
    if source is None and parse_condition(args.simulate).source == "speech":
        source = list_shards(args.shards)  # the stream's own shards (globs, braces, lists alike)
    return Simulator(args.simulate, noise=args.noise, music=args.music, stems=args.stems, seed=args.seed,
                     source=source, batch_seconds=batch_seconds, max_utterance_seconds=args.max_utterance_seconds)


def make_stream(shards: str, batch_seconds: float, args: PretrainArgs, dist: rt.Dist, *, train: bool,
                start_batch: int = 0, transform=None):
    return rt.shard_loader(shards, batch_seconds, args, dist, train=train, start_batch=start_batch,
                           max_utterance_seconds=args.max_utterance_seconds,
                           max_span_seconds=args.max_span_seconds, transform=transform)


@torch.no_grad()
def validate(model: Wav2Vec2ForPreTraining, loader, dist: rt.Dist, autocast, max_batches: int, seed: int,
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


# ---------------------------------------------------------------------------------------------
# the loop


def pretrain(args: PretrainArgs) -> dict[str, Any]:
    """Pre-train; returns step, hours seen, best validation loss, the last train log record and the model.

    Raises ``DivergedError`` (too many non-finite steps), ``BadDataError`` (more bad data than
    ``max_bad_fraction``) and ``CheckpointSaveError`` (a checkpoint could not be written) on
    every rank alike, after logging what happened.
    """
    dist = rt.start_run(args.seed)
    say = rt.sayer(dist, args.quiet)
    cfg, train = resolve_settings(args)
    run_dir = Path(args.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    accum, per_gpu = int(train["accumulation"]), float(train["batch_seconds"])
    global_seconds = dist.world * accum * per_gpu
    peak_lr = lr_heuristic(global_seconds, args.lr_rule) if str(train["lr"]) == "auto" else float(train["lr"])
    schedule = Schedule(train["schedule"], peak_lr, int(train["steps"]), args.cycle_steps, args.cycle_steps)

    # Model and optimizer (fresh, initialised from HF/fairseq, or resumed from the newest readable checkpoint).
    resume_from, ckpt = rt.load_resume_checkpoint(run_dir, args.resume, dist, trust=args.trust_checkpoint)
    if args.init and resume_from is None:
        model = load_pretrained(args.init, trust=args.trust_checkpoint)
        cfg = model.cfg
    else:
        model = Wav2Vec2ForPreTraining(cfg)
    model.to(dist.device).train()
    optimizer = make_optimizer(model, peak_lr, float(train["weight_decay"]), dist.device)
    state = {"step": 0, "hours_seen": 0.0, "best_val": math.inf}
    data, guard = rt.bad_data_tally(args), StepGuard(args.max_bad_steps)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        rt.resume_state(ckpt, state, optimizer, data, guard)
        say(f"resumed from {resume_from} at step {state['step']}")
    raw_model = model
    if args.compile:
        model = torch.compile(model)
    model = rt.ddp_wrap(model, dist)
    autocast, use_bf16 = rt.autocast_for(args.precision, dist)
    loader = make_stream(args.shards, per_gpu, args, dist, train=True, start_batch=state["step"] * accum,
                         transform=make_transform(args, per_gpu))
    batches = iter(loader)  # created before the RNG restore: the DataLoader iterator draws a seed
    if ckpt is not None:
        rt.restore_rng(ckpt, dist, say)
    log = RunLog(run_dir, dist.main, args.tensorboard, start_step=state["step"])
    steps = int(train["steps"])
    last_step = min(steps, args.stop_after) if args.stop_after else steps
    plan = rt.StepPlan(run_dir, last_step, int(train["log_every"]), int(train["ckpt_every"]),
                       clipped=bool(args.max_grad_norm))
    flops_per_sec = flops_per_audio_second(cfg)
    peak = peak_flops(dist.device)
    say(f"{cfg.name}: {count_parameters(raw_model) / 1e6:.1f} M parameters on {dist.device} "
        f"({'bf16' if use_bf16 else 'fp32'}); global batch = {dist.world} GPU(s) × {accum} accumulation × "
        f"{per_gpu:g} s = {global_seconds:g} s of audio; peak LR {peak_lr:.3g} ({schedule.name}); "
        f"steps {state['step']} → {last_step}")

    def train_record(step: int, lr: float, **extra) -> None:
        """The interval's log record ``rec`` (reduces the meters over ranks) and the progress line."""
        nonlocal meter, grad_norms, t_log, sim_counts, counts, rec
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
        say(line + counts.summary())
        meter, grad_norms, t_log, sim_counts, counts = Meter(), [], time.time(), SimulationCounts(), rt.StepCounts()

    meter, grad_norms, t_log, rec, sim_counts, counts = Meter(), [], time.time(), {}, SimulationCounts(), rt.StepCounts()
    with rt.closing(dist, log):
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
                out = rt.forward_backward(model, batch, accum, micro == accum - 1, dist, autocast)
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
            state["step"] = step = step + 1
            checkpoint_now = plan.after(step, verdict, data, guard, counts, lambda **why: train_record(step, lr, **why))

            if args.val_shards and (step % int(train["val_every"]) == 0 or step == last_step):
                val_loader = make_stream(args.val_shards, per_gpu, args, dist, train=False)
                with rt.keep_rng(dist):
                    v = validate(raw_model, val_loader, dist, autocast, args.val_batches, args.seed, data)
                v = {"split": "val", "step": step, **v, "hours_seen": state["hours_seen"]}
                log.write(v)
                say(f"validation at step {step}: loss {v.get('loss', math.nan):.4g} "
                    f"acc {v.get('accuracy', math.nan):.3f}")
                if v.get("loss", math.nan) < state["best_val"] and weights_finite(raw_model):
                    state["best_val"] = v["loss"]
                    rt.save_best(run_dir, dist, lambda: {"config": cfg.to_dict(), "model": raw_model.state_dict(),
                                                         "step": step, "val": v, "hours_seen": state["hours_seen"]})
                t_log = time.time()  # validation time is not training throughput

            if checkpoint_now:
                plan.check_weights(raw_model, log, step)
                rt.save_training_checkpoint(run_dir, step, dist, args.keep_checkpoints, lambda rng: {
                    "config": cfg.to_dict(), "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                    "step": state["step"], "hours_seen": state["hours_seen"], "best_val": state["best_val"],
                    "schedule": schedule.to_dict(), "args": ckpt_lib.plain_args(args), "train": train, "rng": rng,
                    "world_size": dist.world, "data": {"batches_per_rank": state["step"] * train["accumulation"],
                                                       "seed": args.seed}, **rt.robust_state(data, guard)})
    return {"step": state["step"], "hours_seen": state["hours_seen"], "best_val": state["best_val"],
            "run_dir": str(run_dir), "last_train": rec, "model": raw_model, "skipped_steps": guard.skipped,
            "bad_utterances": data.bad, "bad_shards": data.bad_shards}
