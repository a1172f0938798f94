"""CTC fine-tuning of a pre-trained wav2vec 2.0 model (thesis §5.2.4, §6.2.1).

Recipe (defaults, all from the thesis / nanow2v2's ``ft_asr`` config):

* ``Wav2Vec2ForCTC`` (``trainer/ctc.py``): a Linear CTC head on the last transformer layer over
  the 29-symbol letter vocabulary (``trainer/text.py``); transcripts normalised by
  ``normalize_text`` (English and Dutch).
* Adam (β 0.9/0.98, ε 1e-8), **no weight decay**; tri-stage LR 5e-7 → 5e-5 → 2.5e-6 over
  10/40/50 % of the steps (``trainer.schedules.Schedule("tri_stage", 5e-5, steps)``: peak/100 →
  peak → peak/20).
* CNN frozen always; the rest of the backbone frozen for the first ``freeze_transformer_steps``
  (5 k) steps: only the head trains.
* Mask p = 0.05 (span 10), dropout 0.1, batches of 200 s of audio.
* Label budgets as presets (``trainer/configs/finetune_{10m,1h,10h,100h,960h}.yaml``): 12 k / 13 k /
  20 k / 80 k / 320 k steps; the preset's ``label_hours`` draws a subset of the training data by
  duration (``corpus_tools.subset``) when the data holds more than 5 % over that; a standard split
  within 5 % of the budget (train-clean-100: 100.6 h) is used whole.

Freezing under DDP. DDP registers only the parameters that require a gradient when it is
constructed, so parameters unfrozen later would never be all-reduced. We freeze with
``requires_grad=False`` (no autograd graph through the frozen backbone: forward cost only), and
at the step where the transformer unfreezes every rank re-wraps the model in a *new* DDP, which
registers all trainable parameters (and broadcasts rank 0's weights, which are identical anyway).
This keeps every step free of ``find_unused_parameters``' graph traversal. The optimizer holds
all non-CNN parameters from the start; Adam skips parameters without a gradient, so their moments
start at the unfreeze step. A resumed run re-applies the freeze state of its step.

Checkpoints and resume work as in pre-training: ``RUN/checkpoints/step_N.pt`` (model, optimizer,
step, RNG per rank, data position), ``best.pt`` by validation WER, ``--resume`` (from the newest
checkpoint that loads). So do the guards of a long run: bad utterances skipped and counted
(``--max-bad-fraction``), non-finite steps not applied and divergence stopped
(``--max-bad-steps``), checkpoints read without running their code (``--trust-checkpoint``),
all from ``trainer.runtime``. Presets are ``trainer.presets``, CTC targets ``trainer.labels``.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from corpus_tools.audio import SAMPLE_RATE
from corpus_tools.bad_data import DEFAULT_MAX_BAD_FRACTION
from corpus_tools.subset import prepare_training_data
from trainer import checkpoint as ckpt_lib
from trainer import runtime as rt
from trainer.ctc import Wav2Vec2ForCTC, ctc_loss, init_ctc_model
from trainer.decode import error_rates, greedy_decode
from trainer.guard import DEFAULT_MAX_BAD_STEPS, StepGuard, step_verdict, weights_finite
from trainer.labels import check_transcripts, targets_for
from trainer.model import Wav2Vec2Config
from trainer.presets import DEFAULT_MODEL, DEFAULT_TRAIN, load_preset
from trainer.runlog import RunLog
from trainer.schedules import Schedule
from trainer.text import ids_to_text


@dataclass
class FinetuneArgs:
    """Everything ``trainer finetune`` accepts; ``None`` = take it from the preset (or the defaults)."""

    train: str                                # shards (folder, glob, list) or a segments manifest
    out: str
    init: str | None = None                   # our pre-training / CTC checkpoint or run dir, HF folder, fairseq .pt
    val: str | None = None                    # validation shards
    preset: str | None = None                 # 10m | 1h | 10h | 100h | 960h, or a YAML path
    config: str | None = None                 # random backbone of this model config when init is None (tests)
    steps: int | None = None
    batch_seconds: float | None = None
    accumulation: int | None = None
    lr: float | None = None                   # peak of the tri-stage schedule
    freeze_transformer_steps: int | None = None
    label_hours: float | None = None          # draw this many hours of labels (by duration) from --train
    mask_prob: float | None = None
    dropout: float | None = None              # hidden + attention dropout of the transformer
    final_dropout: float | None = None        # dropout before the CTC head
    language: str | None = None               # normalisation language; default: each shard's `language`, else en
    digits: str = "spell"
    seed: int = 0
    max_grad_norm: float = 0.0
    precision: str = "auto"                   # auto | bf16 | fp32
    log_every: int | None = None
    val_every: int | None = None
    ckpt_every: int | None = None
    val_batches: int | None = None            # None = the whole validation set
    keep_checkpoints: int = 2
    resume: bool = False
    stop_after: int | None = None
    num_workers: int | None = None
    shuffle_buffer: int = 250
    bucket_buffer: int = 50
    max_span_seconds: float | None = 10.0
    model_overrides: dict[str, Any] = field(default_factory=dict)
    transform: Any = None                     # a ShardBatchStream transform (tests, simulation)
    tensorboard: bool = False
    quiet: bool = False
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION  # stop when more of the data read is bad
    max_bad_steps: int = DEFAULT_MAX_BAD_STEPS  # stop as diverged after this many non-finite steps in a row
    trust_checkpoint: bool = False            # load --init / resume checkpoints with weights_only=False

# what a fine-tuning checkpoint must hold to be resumed from
FINETUNE_KEYS = ckpt_lib.TRAINING_KEYS + ("vocab", "final_dropout", "best_wer", "hours_seen")


# ---------------------------------------------------------------------------------------------
# settings


def resolve_settings(args: FinetuneArgs) -> tuple[dict[str, Any], dict[str, Any]]:
    """(train settings, model-config overrides): defaults ← preset ← command line."""
    preset = load_preset(args.preset)
    train = dict(DEFAULT_TRAIN, **preset["train"])
    for key in train:
        value = getattr(args, key, None)
        if value is not None:
            train[key] = value
    model = dict(DEFAULT_MODEL, **preset["model"])
    if args.mask_prob is not None:
        model["mask_prob"] = args.mask_prob
    if args.dropout is not None:
        model["dropout"] = model["attention_dropout"] = args.dropout
    model.update(args.model_overrides)
    if int(train["steps"]) <= 0:
        raise ValueError("steps must be positive")
    return train, model


def make_stream(shards: str, batch_seconds: float, args: FinetuneArgs, dist, *, train: bool, start_batch: int = 0):
    """Training: infinite shuffled stream; validation: one pass in file order. Never crops
    (an utterance longer than the batch is left out of the loss, see ``targets_for``)."""
    return rt.shard_loader(shards, batch_seconds, args, dist, train=train, start_batch=start_batch,
                           max_utterance_seconds=batch_seconds,
                           max_span_seconds=args.max_span_seconds if train else None,
                           transform=args.transform if train else None)


# ---------------------------------------------------------------------------------------------
# validation


@torch.no_grad()
def validate(model: Wav2Vec2ForCTC, shards: str, batch_seconds: float, args: FinetuneArgs, dist, autocast,
             data=None) -> dict:
    """Validation CTC loss (per letter, mean over utterances) and greedy WER/CER over all ranks; bad
    utterances are skipped (named once through the ``BadDataTally`` ``data``)."""
    was_training = model.training
    model.eval()
    loss_sum, n, refs, hyps = 0.0, 0, [], []
    for i, batch in enumerate(make_stream(shards, batch_seconds, args, dist, train=False)):
        if args.val_batches is not None and i >= args.val_batches:
            break
        if data is not None:
            data.count(len(batch), batch.skipped)
        if len(batch) == 0:  # every utterance of it was bad data
            continue
        targets, weights = targets_for(batch, args.language, args.digits)
        batch = batch.to(dist.device)
        with autocast:
            out = model(batch.audio, batch.lengths)
        used = float(weights.sum())
        if used:
            loss_sum += float(ctc_loss(out["logits"], out["frame_lengths"], targets, weights)) * used
            n += int(used)
        for text, ids, w in zip(greedy_decode(out["logits"].float(), out["frame_lengths"]), targets, weights):
            if w:
                refs.append(ids_to_text(ids))
                hyps.append(text)
    model.train(was_training)
    if dist.ddp:
        gathered = [None] * dist.world
        torch.distributed.all_gather_object(gathered, (loss_sum, n, refs, hyps))
        loss_sum, n = sum(g[0] for g in gathered), sum(g[1] for g in gathered)
        refs = [r for g in gathered for r in g[2]]
        hyps = [h for g in gathered for h in g[3]]
    rates = error_rates(refs, hyps)
    return {"loss": loss_sum / max(n, 1), "wer": rates.wer, "cer": rates.cer, "utterances": n,
            "blank_fraction": sum(1 for h in hyps if not h) / max(len(hyps), 1)}


# ---------------------------------------------------------------------------------------------
# the loop


def _ctc_model(args: FinetuneArgs, ckpt: dict | None, model_overrides: dict, train: dict) -> Wav2Vec2ForCTC:
    """The model to fine-tune: resumed from ``ckpt``, or initialised from ``--init`` (or a random backbone)."""
    if ckpt is not None:
        model = Wav2Vec2ForCTC(Wav2Vec2Config.from_dict(ckpt["config"]), ckpt["vocab"], ckpt["final_dropout"])
        model.load_state_dict(ckpt["model"])
        return model
    return init_ctc_model(args.init, config=args.config, overrides=model_overrides,
                          final_dropout=float(train["final_dropout"]), trust=args.trust_checkpoint)


def finetune(args: FinetuneArgs) -> dict[str, Any]:
    """Fine-tune; returns step, labelled hours seen, best validation WER, last train record and the model.

    Stops like ``trainer.pretrain.pretrain``: ``DivergedError``, ``BadDataError`` or
    ``CheckpointSaveError`` on every rank alike, after logging what happened.
    """
    if args.digits not in ("spell", "drop"):
        raise ValueError("digits must be 'spell' or 'drop'")
    dist = rt.start_run(args.seed)
    train, model_overrides = resolve_settings(args)
    run_dir = Path(args.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    say = rt.sayer(dist, args.quiet, "[finetune]")

    # The model first: a checkpoint that cannot be used fails before any data is written.
    resume_from, ckpt = rt.load_resume_checkpoint(run_dir, args.resume, dist, trust=args.trust_checkpoint,
                                                  required=FINETUNE_KEYS)
    model = _ctc_model(args, ckpt, model_overrides, train)

    # Data: rank 0 writes a label subset (if any) while the others wait.
    label_hours = None if train["label_hours"] is None else float(train["label_hours"])
    if dist.main:
        shards, data_info = prepare_training_data(args.train, label_hours, args.seed, run_dir, say)
    if dist.ddp:
        box = [(shards, data_info) if dist.main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        shards, data_info = box[0]
    check_transcripts(shards)

    accum, per_gpu, steps = int(train["accumulation"]), float(train["batch_seconds"]), int(train["steps"])
    freeze_steps = int(train["freeze_transformer_steps"])
    peak_lr = float(train["lr"])
    schedule = Schedule("tri_stage", peak_lr, steps)

    model.to(dist.device).train()
    model.set_trainable(transformer=False)
    optimizer = torch.optim.Adam(model.finetunable_parameters(), lr=peak_lr, betas=(0.9, 0.98), eps=1e-8,
                                 weight_decay=0.0, fused=dist.device.type == "cuda")
    state = {"step": 0, "hours_seen": 0.0, "best_wer": math.inf}
    data, guard = rt.bad_data_tally(args, "[finetune]"), StepGuard(args.max_bad_steps)
    if ckpt is not None:
        rt.resume_state(ckpt, state, optimizer, data, guard)
        say(f"resumed from {resume_from} at step {state['step']}")

    autocast, use_bf16 = rt.autocast_for(args.precision, dist)
    batches = iter(make_stream(shards, per_gpu, args, dist, train=True, start_batch=state["step"] * accum))
    if ckpt is not None:
        rt.restore_rng(ckpt, dist, say)
    log = RunLog(run_dir, dist.main, args.tensorboard, start_step=state["step"])
    last_step = min(steps, args.stop_after) if args.stop_after else steps
    plan = rt.StepPlan(run_dir, last_step, int(train["log_every"]), int(train["ckpt_every"]),
                       clipped=bool(args.max_grad_norm))
    n_params = sum(p.numel() for p in model.parameters())
    say(f"{model.cfg.name}: {n_params / 1e6:.1f} M parameters on {dist.device} ({'bf16' if use_bf16 else 'fp32'}); "
        f"batch = {dist.world} GPU(s) × {accum} × {per_gpu:g} s; tri-stage LR {peak_lr / 100:.3g} → {peak_lr:.3g} → "
        f"{peak_lr / 20:.3g}; transformer frozen for {freeze_steps} steps; mask p {model.cfg.mask_prob}, "
        f"dropout {model.cfg.dropout}; steps {state['step']} → {last_step}")

    def train_record(step: int, lr: float, **extra) -> None:
        """The interval's log record ``rec`` (reduced over ranks) and the progress line."""
        nonlocal sums, count, used_utts, seconds, grad_norms, t_log, counts, rec
        total_loss, total_count, total_used, total_seconds = rt.all_reduce_sum(
            [float(sums), count, used_utts, seconds], dist)
        elapsed = time.time() - t_log
        state["hours_seen"] += total_seconds / 3600
        rec = {"split": "train", "step": step, "lr": lr, "frozen": bool(frozen), "utterances": total_used,
               "hours_seen": state["hours_seen"], "audio_seconds_per_second": total_seconds / max(elapsed, 1e-9),
               **counts.fields(data, guard), **extra}
        if total_count:
            rec["loss"] = total_loss / total_count
        if grad_norms:
            rec["grad_norm"] = sum(grad_norms) / len(grad_norms)
        log.write(rec)
        if "loss" in rec:
            line = (f"step {step}: ctc {rec['loss']:.4g} lr {lr:.3g} grad {rec.get('grad_norm', math.nan):.3g} "
                    f"{'(transformer frozen) ' if frozen else ''}{rec['audio_seconds_per_second']:.0f} s/s "
                    f"{state['hours_seen']:.3f} h seen")
        else:
            line = f"step {step}: no update applied since the last log record"
        say(line + counts.summary())
        sums, count, used_utts, seconds, grad_norms, t_log, counts = 0.0, 0, 0.0, 0.0, [], time.time(), rt.StepCounts()

    frozen = None
    ddp_model = model
    sums, count, used_utts, seconds, grad_norms, t_log, rec = 0.0, 0, 0.0, 0.0, [], time.time(), {}
    counts = rt.StepCounts()
    with rt.closing(dist, log):
        while state["step"] < last_step:
            step = state["step"]
            want_frozen = step < freeze_steps
            if want_frozen != frozen:
                model.set_trainable(transformer=not want_frozen)
                if dist.ddp:  # drop the old wrapper (and its reducer's gradient hooks) before building the new one
                    ddp_model = model
                    gc.collect()
                ddp_model = rt.ddp_wrap(model, dist)
                if frozen is not None or step > 0:
                    say(f"step {step}: transformer {'frozen' if want_frozen else 'unfrozen'}")
                frozen = want_frozen
            lr = schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss, step_count, step_used, step_seconds, rows, found = 0.0, 0, 0.0, 0.0, 0, (0, 0, 0)
            for micro in range(accum):
                batch = next(batches)
                found = tuple(a + b for a, b in zip(found, data.count(len(batch), batch.skipped)))
                targets, weights = targets_for(batch, args.language, args.digits)
                sec = float(batch.lengths.sum()) / SAMPLE_RATE

                def loss_of(out, _batch, targets=targets, weights=weights):
                    return ctc_loss(out["logits"], out["frame_lengths"], targets, weights)

                out = rt.forward_backward(ddp_model, batch, accum, micro == accum - 1, dist, autocast, loss_of)
                if out is not None:
                    step_loss = step_loss + out["loss"].detach()
                    step_count += 1
                    step_used += float(weights.sum())
                    step_seconds += sec
                    rows += len(batch)
            trainable = [p for p in model.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, args.max_grad_norm or math.inf)
            verdict = step_verdict(step_loss, grad_norm, rows, found, dist)
            if verdict.apply:  # a non-finite step changes no weight and no optimizer state
                optimizer.step()
                sums, count = sums + step_loss, count + step_count
                used_utts, seconds = used_utts + step_used, seconds + step_seconds
                grad_norms.append(verdict.grad_norm)
            optimizer.zero_grad(set_to_none=True)
            state["step"] = step = step + 1
            checkpoint_now = plan.after(step, verdict, data, guard, counts, lambda **why: train_record(step, lr, **why))

            if args.val and (step % int(train["val_every"]) == 0 or step == last_step):
                with rt.keep_rng(dist):
                    v = validate(model, args.val, per_gpu, args, dist, autocast, data)
                v = {"split": "val", "step": step, **v, "hours_seen": state["hours_seen"]}
                log.write(v)
                say(f"validation at step {step}: ctc {v['loss']:.4g} WER {100 * v['wer']:.2f} % "
                    f"CER {100 * v['cer']:.2f} % ({v['utterances']} utterances)")
                if not math.isnan(v["wer"]) and v["wer"] < state["best_wer"] and weights_finite(model):
                    state["best_wer"] = v["wer"]
                    rt.save_best(run_dir, dist, lambda: {**model.checkpoint_dict(), "step": step, "val": v,
                                                         "hours_seen": state["hours_seen"]})
                t_log = time.time()

            if checkpoint_now:
                plan.check_weights(model, log, step)
                rt.save_training_checkpoint(run_dir, step, dist, args.keep_checkpoints, lambda rng: {
                    **model.checkpoint_dict(), "optimizer": optimizer.state_dict(), "step": state["step"],
                    "hours_seen": state["hours_seen"], "best_wer": state["best_wer"], "schedule": schedule.to_dict(),
                    "args": ckpt_lib.plain_args(args), "train": train,
                    "data": {**data_info, "batches_per_rank": state["step"] * int(train["accumulation"]),
                             "seed": args.seed}, "rng": rng, "world_size": dist.world, **rt.robust_state(data, guard)})
    return {"step": state["step"], "hours_seen": state["hours_seen"], "best_wer": state["best_wer"],
            "run_dir": str(run_dir), "last_train": rec, "model": model, "train": train, "data": data_info,
            "skipped_steps": guard.skipped, "bad_utterances": data.bad, "bad_shards": data.bad_shards}
