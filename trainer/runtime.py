"""What both training loops run on: processes, seeds, precision, training state on disk and the
bookkeeping of a step (the run log itself is ``trainer.runlog``).

* ``start_run``: DDP under ``torchrun`` (NCCL on GPUs, gloo on CPU), a single process otherwise;
  per-rank seeds and deterministic kernels, so runs and exact resumes repeat bit for bit.
* Training state: ``save_training_checkpoint`` gathers every rank's RNG state and rank 0 writes
  ``checkpoints/step_N.pt`` atomically; ``load_resume_checkpoint`` picks the newest checkpoint
  that loads (rank 0 alone sets damaged ones aside); ``restore_rng`` continues the random streams.
  A checkpoint that cannot be written ends the run on every rank with the previous one intact.
* A step: ``forward_backward`` of a micro-batch (an all-bad micro-batch still takes part in the
  DDP all-reduce), ``StepPlan.after`` of the verdict every rank agrees on (counts, log steps,
  checkpoint steps), and the errors that end a run early (``RUN_STOPS``), raised on every rank at
  the same step.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from corpus_tools.bad_data import BadDataError, BadDataTally
from corpus_tools.data.stream import ShardBatchStream, make_loader
from trainer import checkpoint as ckpt_lib
from trainer.guard import DivergedError, StepGuard, StepVerdict, dummy_batch, weights_finite
from trainer.runlog import RunLog

# How a run ends early; every rank raises the same one at the same step.
RUN_STOPS = (DivergedError, BadDataError, ckpt_lib.CheckpointSaveError)


# -- processes, seeds, precision ---------------------------------------------------------------


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


def start_run(seed: int) -> Dist:
    """The processes of a run, each seeded with ``seed + rank``."""
    dist = setup_distributed()
    torch.manual_seed(seed + dist.rank)
    np.random.seed(seed + dist.rank)
    random.seed(seed + dist.rank)
    if dist.device.type == "cuda":  # the float32 parts (GroupNorm, pos conv, losses) may use TF32
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dist


def autocast_for(precision: str, dist: Dist) -> tuple[Any, bool]:
    """(the autocast context of ``--precision``, whether it is bf16): bf16 on CUDA for ``auto``."""
    use_bf16 = precision == "bf16" or (precision == "auto" and dist.device.type == "cuda")
    autocast = (torch.autocast(device_type=dist.device.type, dtype=torch.bfloat16) if use_bf16
                else contextlib.nullcontext())
    return autocast, use_bf16


def ddp_wrap(model: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    """A DDP wrapper (registering the parameters trainable now) under torchrun; the model itself otherwise."""
    if not dist.ddp:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None, broadcast_buffers=False)


def all_reduce_sum(values: list[float], dist: Dist) -> list[float]:
    if not dist.ddp:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def keep_rng(dist: Dist):
    """A block (validation: its DataLoader draws a seed) that must not move the training RNG."""
    return torch.random.fork_rng(devices=[dist.device] if dist.device.type == "cuda" else [])


@contextlib.contextmanager
def closing(dist: Dist, log: RunLog):
    """Close the log and the process group at the end of a run, also when it stops early."""
    try:
        yield
    except RUN_STOPS:  # raised on every rank at the same step
        log.close()
        if dist.ddp:
            torch.distributed.destroy_process_group()
        raise
    log.close()
    if dist.ddp:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def shard_loader(shards: str, batch_seconds: float, args, dist: Dist, *, train: bool, max_utterance_seconds: float,
                 max_span_seconds: float | None, transform=None, start_batch: int = 0):
    """This rank's batches of a shard set: infinite and shuffled for training, one pass in file order else."""
    stream = ShardBatchStream(shards, batch_seconds, seed=args.seed, rank=dist.rank, world_size=dist.world,
                              infinite=train, shuffle=train, shuffle_buffer=args.shuffle_buffer,
                              bucket_buffer=args.bucket_buffer, max_utterance_seconds=max_utterance_seconds,
                              max_span_seconds=max_span_seconds, transform=transform, start_batch=start_batch)
    workers = args.num_workers if args.num_workers is not None else (4 if dist.device.type == "cuda" else 0)
    return make_loader(stream, workers if train else min(workers, 1), pin_memory=dist.device.type == "cuda")


# -- messages ----------------------------------------------------------------------------------


def sayer(dist: Dist, quiet: bool, prefix: str = "[trainer]") -> Callable[[str], None]:
    """The progress lines of a run: rank 0, stdout, silenced by ``--quiet``."""
    def say(msg: str) -> None:
        if dist.main and not quiet:
            print(f"{prefix} {msg}", flush=True)
    return say


def warn(dist: Dist, msg: str, prefix: str = "[trainer]") -> None:
    """A warning on stderr (rank 0; --quiet does not silence it)."""
    if dist.main:
        print(f"{prefix} warning: {msg}", file=sys.stderr, flush=True)


# -- training state on disk --------------------------------------------------------------------


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


def save_training_checkpoint(run_dir: Path, step: int, dist: Dist, keep: int,
                             contents: Callable[[list], dict]) -> None:
    """Gather every rank's RNG state, then rank 0 writes ``checkpoints/step_N.pt`` holding
    ``contents(rng)`` atomically and prunes old ones to ``keep``; a failed write ends the run on
    every rank (``CheckpointSaveError``), with the previous checkpoints as they were. Never called
    with non-finite weights (``StepPlan.check_weights`` stops the run first)."""
    rng = [ckpt_lib.rng_state()]
    if dist.ddp:
        rng = [None] * dist.world
        torch.distributed.all_gather_object(rng, ckpt_lib.rng_state())

    def save() -> None:
        save_checkpoint_file(contents(rng), ckpt_lib.step_checkpoint_path(run_dir, step), run_dir)
        ckpt_lib.prune_checkpoints(run_dir, keep)

    on_main(dist, save)


def save_best(run_dir: Path, dist: Dist, contents: Callable[[], dict]) -> None:
    """Rank 0 writes ``checkpoints/best.pt`` (the best validation so far) holding ``contents()``."""
    on_main(dist, lambda: save_checkpoint_file(contents(), run_dir / ckpt_lib.CHECKPOINT_DIR / "best.pt", run_dir))


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


def resume_state(ckpt: dict, state: dict, optimizer, data: BadDataTally, guard: StepGuard) -> None:
    """Continue a checkpoint's optimizer, the counters named in ``state`` and the run's tallies."""
    optimizer.load_state_dict(ckpt["optimizer"])
    state.update({key: ckpt[key] for key in state})
    data.load_state(ckpt.get("bad_data"))
    guard.load_state(ckpt.get("guard"))


def restore_rng(ckpt: dict, dist: Dist, say: Callable[[str], None]) -> None:
    """This rank's RNG state of the checkpoint; with another world size the seeded streams go on."""
    rng = ckpt["rng"]
    if ckpt.get("world_size") == dist.world and len(rng) == dist.world:
        ckpt_lib.set_rng_state(rng[dist.rank])
    else:
        say(f"world size changed ({ckpt.get('world_size')} → {dist.world}): RNG re-seeded")


def robust_state(data: BadDataTally, guard: StepGuard) -> dict:
    """The counters a resumed run continues (saved in the checkpoint)."""
    return {"bad_data": data.state(), "guard": guard.state()}


# -- a step ------------------------------------------------------------------------------------


def bad_data_tally(args, prefix: str = "[trainer]") -> BadDataTally:
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


@dataclass
class StepPlan:
    """When a run logs and saves, and what ends it early; the same rules in both loops."""

    run_dir: Path
    last_step: int
    log_every: int
    ckpt_every: int
    clipped: bool  # --max-grad-norm is set (the advice of a divergence names it otherwise)

    def after(self, step: int, verdict: StepVerdict, data: BadDataTally, guard: StepGuard, counts: StepCounts,
              record: Callable[..., dict]) -> bool:
        """Count a finished step. A run that diverged or read too much bad data is logged
        (``record(**why)``) and stopped, on every rank alike; at a log step ``record()`` writes the
        interval's record. Returns whether a checkpoint is due (it needs the hours seen: logged too)."""
        data.add(verdict.good, verdict.bad, verdict.bad_shards)
        counts.add(verdict)
        diverged = guard.record(verdict.finite) if verdict.rows else None
        if diverged is not None:
            record(diverged=True, reason=diverged)
            raise divergence(self.run_dir, step, diverged, self.clipped)
        if data.exceeded() is not None:
            record(stopped="too much bad data")
            data.check()
        checkpoint_now = step % self.ckpt_every == 0 or step == self.last_step
        if step % self.log_every == 0 or checkpoint_now:
            record()
        return checkpoint_now

    def check_weights(self, model: torch.nn.Module, log: RunLog, step: int) -> None:
        """Before a save: weights that are no longer finite are never written; the run stops as diverged."""
        if not weights_finite(model):
            reason = "the weights are no longer finite (not saved)"
            log.write({"split": "train", "step": step, "diverged": True, "reason": reason})
            raise divergence(self.run_dir, step, reason, self.clipped)


def divergence(run_dir: Path, step: int, reason: str, clipped: bool) -> DivergedError:
    """The error that ends a diverged run, naming the checkpoint to go back to."""
    last = ckpt_lib.latest_checkpoint(run_dir)
    where = (f"the newest checkpoint, {last.name}, holds finite weights" if last is not None
             else "no checkpoint was written")
    return DivergedError(step, f"{reason}; {where}; lower --lr{'' if clipped else ' or set --max-grad-norm'}")
