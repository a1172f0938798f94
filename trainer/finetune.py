"""CTC fine-tuning of a pre-trained wav2vec 2.0 model (thesis §5.2.4, §6.2.1; SPEC §6).

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
  duration (``draw_subset``) when the data holds more than 5 % over that (``WHOLE_SET_TOLERANCE``);
  a standard split within 5 % of the budget (train-clean-100: 100.6 h) is used whole.

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
(``--max-bad-steps``), checkpoints read without running their code (``--trust-checkpoint``).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corpus_tools.bad_data import DEFAULT_MAX_BAD_FRACTION
from trainer import checkpoint as ckpt_lib
from trainer.ctc import Wav2Vec2ForCTC, ctc_loss, init_ctc_model
from trainer.guard import DEFAULT_MAX_BAD_STEPS, StepGuard, step_verdict, weights_finite
from trainer.decode import error_rates, greedy_decode
from trainer.text import encode, ids_to_text, normalize_text

CONFIG_DIR = Path(__file__).parent / "configs"
PRESETS = ("10m", "1h", "10h", "100h", "960h")
MANIFEST_SUFFIXES = (".parquet", ".csv", ".tsv")
SAMPLE_RATE = 16_000
# A label budget uses the whole training set when the set holds at most this fraction more
# (train-clean-100: 100.6 h for the 100 h preset).
WHOLE_SET_TOLERANCE = 0.05

# Defaults without a preset; a preset's `train:`/`model:` sections and then the command line override them.
DEFAULT_TRAIN: dict[str, Any] = dict(
    steps=20_000, batch_seconds=200.0, accumulation=1, lr=5e-5, freeze_transformer_steps=5_000,
    label_hours=None, log_every=100, val_every=1_000, ckpt_every=1_000, final_dropout=0.0,
)
DEFAULT_MODEL: dict[str, Any] = dict(dropout=0.1, attention_dropout=0.1, mask_prob=0.05, mask_length=10)


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


def preset_path(preset: str) -> Path:
    """``10m`` → ``trainer/configs/finetune_10m.yaml``; a path is taken as is."""
    p = Path(preset)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise FileNotFoundError(f"preset file not found: {p}")
        return p
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)} or a YAML file")
    return CONFIG_DIR / f"finetune_{preset}.yaml"


def load_preset(preset: str | None) -> dict[str, dict[str, Any]]:
    """``{"model": {...}, "train": {...}}`` of a preset (empty sections without one)."""
    import yaml

    if preset is None:
        return {"model": {}, "train": {}}
    path = preset_path(preset)
    data = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(data) - {"model", "train", "description"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {unknown}")
    bad = sorted(set(data.get("train") or {}) - set(DEFAULT_TRAIN))
    if bad:
        raise ValueError(f"{path}: unknown train keys {bad}; known: {sorted(DEFAULT_TRAIN)}")
    return {"model": dict(data.get("model") or {}), "train": dict(data.get("train") or {})}


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


# ---------------------------------------------------------------------------------------------
# label subsets


def draw_subset(durations: list[float], hours: float, seed: int) -> list[int]:
    """Indices of a random subset holding ``hours`` of audio (sorted).

    The items are visited in a random order (``seed``) and taken while the total stays below the
    budget, so the subset holds ≥ ``hours`` minus less than one utterance, and the same seed and
    list give the same subset. Smaller budgets of one seed are nested in bigger ones.
    """
    if hours <= 0:
        raise ValueError("hours must be positive")
    budget = hours * 3600.0
    order = np.random.default_rng(seed).permutation(len(durations))
    taken, total = [], 0.0
    for i in order:
        if total >= budget:
            break
        taken.append(int(i))
        total += float(durations[i])
    return sorted(taken)


def subset_manifest(df, hours: float, seed: int):
    """Rows of a segments manifest (polars) holding ``hours`` of audio, drawn by ``draw_subset``."""
    import polars as pl

    df = df.sort("segment_id")
    durations = df.select(pl.coalesce(pl.col("duration"), pl.col("end") - pl.col("start"))).to_series().to_list()
    return df[draw_subset(durations, hours, seed)]


def shard_index(src) -> list[dict]:
    """``{key, shard, offset, size, data, meta, seconds}`` per utterance of a shard set (headers + json only)."""
    from corpus_tools.reader import list_shards, read_shard_records

    out = []
    for path in list_shards(src):
        for rec in read_shard_records(path):
            out.append({"key": rec.key, "shard": path, "offset": rec.offset, "size": rec.size, "data": rec.data,
                        "meta": rec.meta, "seconds": rec.num_frames / SAMPLE_RATE})
    return out


def _audio_bytes(item: dict) -> bytes:
    if item["data"] is not None:
        return item["data"]
    with open(item["shard"], "rb") as f:
        f.seek(item["offset"])
        return f.read(item["size"])


def subset_shards(src, out_dir: str | Path, hours: float, seed: int, *, samples_per_shard: int = 5000,
                  items: list[dict] | None = None) -> dict:
    """Copy a ``hours`` subset of a shard set (audio bytes as they are) into new shards in ``out_dir``.

    Utterances are ordered by length before cutting shards (length-sorted bins, as
    ``corpus shard``). A ``subset.json`` records the choice; a rerun with the same source,
    hours and seed reuses the folder.
    """
    from corpus_tools.shards import write_one_shard

    items = sorted(shard_index(src) if items is None else items, key=lambda it: it["key"])
    if not items:
        raise FileNotFoundError(f"no utterances in {src}")
    chosen = [items[i] for i in draw_subset([it["seconds"] for it in items], hours, seed)]
    digest = hashlib.sha256("\n".join(f"{it['shard']}:{it['key']}" for it in chosen).encode()).hexdigest()
    out = Path(out_dir)
    marker = out / "subset.json"
    info = {"source": [str(s) for s in ([src] if isinstance(src, (str, Path)) else src)], "hours": hours,
            "seed": seed, "utterances": len(chosen), "selected_hours": sum(it["seconds"] for it in chosen) / 3600,
            "available_hours": sum(it["seconds"] for it in items) / 3600, "digest": digest}
    if marker.exists() and json.loads(marker.read_text()).get("digest") == digest:
        return info
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.tar"):
        old.unlink()
    chosen.sort(key=lambda it: (it["seconds"], it["key"]))
    groups = [chosen[i:i + samples_per_shard] for i in range(0, len(chosen), samples_per_shard)]
    for g, group in enumerate(groups):
        partial = g == len(groups) - 1 and len(group) < samples_per_shard
        name = f"subset.{g:06d}.partial.tar" if partial else f"subset.{g:06d}.tar"
        # Keys may repeat across source shard sets: prefix with the position when they do.
        keys = [it["key"] for it in group]
        clash = len(set(keys)) < len(keys)
        write_one_shard(out / name, [((f"{i:07d}_{it['key']}" if clash else it["key"]), _audio_bytes(it), it["meta"])
                                     for i, it in enumerate(group)])
    marker.write_text(json.dumps(info, indent=2))
    return info


def is_manifest(src: str) -> bool:
    return isinstance(src, (str, Path)) and Path(src).suffix in MANIFEST_SUFFIXES and Path(src).is_file()


def uses_whole_set(available_hours: float, label_hours: float) -> bool:
    """Whether a label budget takes all the data: it holds at most ``WHOLE_SET_TOLERANCE`` more.

    Standard splits are a little over their nominal size (train-clean-100 is 100.6 h); a
    random trim of the last fraction would make the 100 h preset train on an arbitrary
    99.4 % of the split the literature reports on.
    """
    return available_hours <= (1.0 + WHOLE_SET_TOLERANCE) * label_hours


def _whole_set_message(what: str, available: float, label_hours: float) -> str:
    over = "≤" if available <= label_hours else f"within {100 * WHOLE_SET_TOLERANCE:g} % of"
    return f"{what} {available:.3f} h, {over} the {label_hours:g} h label budget: using them all"


def prepare_training_data(src: str, label_hours: float | None, seed: int, run_dir: Path,
                          log=print) -> tuple[str, dict]:
    """The shard set to train on: ``src`` itself, a label subset of it, or shards written from a manifest.

    A label budget draws a subset only from data holding more than ``1 + WHOLE_SET_TOLERANCE``
    times the budget (``uses_whole_set``); otherwise all the data is used.
    """
    info: dict[str, Any] = {"source": str(src)}
    if is_manifest(src):
        import polars as pl

        from corpus_tools.manifests import read_segments
        from corpus_tools.shards import write_shards

        from corpus_tools.splits import select_segments

        # Labels come from training rows only: a manifest that also holds dev/test rows must not
        # train on them, and the label budget is drawn from what is trained on.
        df, left_out = select_segments(read_segments(src), "train")
        if left_out:
            log(f"{src}: {left_out.message().split(';')[0]}")
        if df.height == 0:
            raise ValueError(f"{src} holds no training rows (its split column marks every row dev or "
                             "test); fine-tune on a manifest with train rows")
        if label_hours is not None:
            seconds = df.select(pl.coalesce(pl.col("duration"), pl.col("end") - pl.col("start")).sum()).item()
            available = float(seconds or 0.0) / 3600
            if uses_whole_set(available, label_hours):
                log(_whole_set_message("the training manifest holds", available, label_hours))
                info.update(available_hours=available, selected_hours=available)
            else:
                df = subset_manifest(df, label_hours, seed)
                info.update(hours=label_hours, seed=seed)
        folder = run_dir / "data" / "train"
        log(f"writing {df.height} labelled segments to shards in {folder}")
        write_shards(df, folder, progress=True, overwrite=True, seed=seed)
        info.update(shards=str(folder), utterances=df.height)
        return str(folder), info
    if label_hours is None:
        return src, info
    items = shard_index(src)
    available = sum(it["seconds"] for it in items) / 3600
    if uses_whole_set(available, label_hours):
        log(_whole_set_message("the training shards hold", available, label_hours))
        info.update(available_hours=available, selected_hours=available, utterances=len(items))
        return src, info
    folder = run_dir / "data" / f"train-{label_hours:g}h-seed{seed}"
    sub = subset_shards(src, folder, label_hours, seed, items=items)
    log(f"label subset: {sub['utterances']} utterances, {sub['selected_hours']:.3f} h of "
        f"{sub['available_hours']:.3f} h (seed {seed}) in {folder}")
    info.update(sub, shards=str(folder))
    return str(folder), info


def check_transcripts(src: str, limit: int = 200) -> None:
    """Fail early (on every rank alike) when the first utterances of a shard set carry no transcript."""
    from corpus_tools.reader import list_shards, read_shard_records

    seen = 0
    for path in list_shards(src):
        for rec in read_shard_records(path, on_bad=lambda event: None):  # the training stream names damage
            if (rec.meta.get("transcript") or rec.meta.get("transcription") or "").strip():
                return
            seen += 1
            if seen >= limit:
                break
        if seen >= limit:
            break
    raise ValueError(f"{src}: the first {seen} utterances have no transcript; fine-tuning needs labelled shards "
                     "(the shard json's `transcript`)")


# ---------------------------------------------------------------------------------------------
# batches → targets


def targets_for(batch, language: str | None, digits: str) -> tuple[list[list[int]], torch.Tensor]:
    """Token ids per utterance and a 0/1 weight: 0 for an empty transcript or a cropped utterance."""
    targets, weights = [], []
    for meta, n in zip(batch.meta, batch.lengths.tolist()):
        raw = meta.get("transcript") or meta.get("transcription") or ""
        lang = language or meta.get("language") or meta.get("language_tag") or "en"
        ids = encode(normalize_text(raw, lang, digits=digits))
        cropped = int(meta.get("num_frames") or n) > n
        targets.append(ids)
        weights.append(0.0 if (not ids or cropped) else 1.0)
    return targets, torch.tensor(weights)


def make_stream(shards: str, batch_seconds: float, args: FinetuneArgs, dist, *, train: bool, start_batch: int = 0):
    """Training: infinite shuffled stream; validation: one pass in file order. Never crops
    (an utterance longer than the batch is left out of the loss, see ``targets_for``)."""
    from corpus_tools.reader import ShardBatchStream, make_loader

    stream = ShardBatchStream(shards, batch_seconds, seed=args.seed, rank=dist.rank, world_size=dist.world,
                              infinite=train, shuffle=train, shuffle_buffer=args.shuffle_buffer,
                              bucket_buffer=args.bucket_buffer, max_utterance_seconds=batch_seconds,
                              max_span_seconds=args.max_span_seconds if train else None,
                              transform=args.transform if train else None, start_batch=start_batch)
    workers = args.num_workers if args.num_workers is not None else (4 if dist.device.type == "cuda" else 0)
    return make_loader(stream, workers if train else min(workers, 1), pin_memory=dist.device.type == "cuda")


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


def _wrap(model: Wav2Vec2ForCTC, dist):
    """A DDP wrapper registering the parameters that are trainable *now* (see the module docstring)."""
    if not dist.ddp:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None, broadcast_buffers=False)


def _save(run_dir: Path, model: Wav2Vec2ForCTC, optimizer, state: dict, schedule, args: FinetuneArgs,
          train: dict, data_info: dict, dist, extra: dict) -> None:
    from trainer.pretrain import on_main, save_checkpoint_file

    rng = [ckpt_lib.rng_state()]
    if dist.ddp:
        rng = [None] * dist.world
        torch.distributed.all_gather_object(rng, ckpt_lib.rng_state())

    def save() -> None:
        save_checkpoint_file({
            **model.checkpoint_dict(), "optimizer": optimizer.state_dict(), "step": state["step"],
            "hours_seen": state["hours_seen"], "best_wer": state["best_wer"], "schedule": schedule.to_dict(),
            "args": ckpt_lib.plain_args(args), "train": train, "data": {**data_info, "batches_per_rank": state["step"] * int(
                train["accumulation"]), "seed": args.seed}, "rng": rng, "world_size": dist.world, **extra,
        }, ckpt_lib.step_checkpoint_path(run_dir, state["step"]), run_dir)
        ckpt_lib.prune_checkpoints(run_dir, args.keep_checkpoints)

    on_main(dist, save)


def _ctc_model(args: FinetuneArgs, ckpt: dict | None, model_overrides: dict, train: dict) -> Wav2Vec2ForCTC:
    """The model to fine-tune: resumed from ``ckpt``, or initialised from ``--init`` (or a random backbone)."""
    if ckpt is not None:
        from trainer.model import Wav2Vec2Config

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
    from trainer.pretrain import (RUN_STOPS, Dist, RunLog, StepCounts, all_reduce_sum, bad_data_tally, divergence,
                                  forward_backward, load_resume_checkpoint, on_main, robust_state,
                                  save_checkpoint_file, setup_distributed)
    from trainer.schedules import Schedule

    if args.digits not in ("spell", "drop"):
        raise ValueError("digits must be 'spell' or 'drop'")
    dist: Dist = setup_distributed()
    torch.manual_seed(args.seed + dist.rank)
    np.random.seed(args.seed + dist.rank)
    random.seed(args.seed + dist.rank)
    if dist.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    train, model_overrides = resolve_settings(args)
    run_dir = Path(args.out)
    run_dir.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        if dist.main and not args.quiet:
            print(f"[finetune] {msg}", flush=True)

    # The model first: a checkpoint that cannot be used fails before any data is written.
    resume_from, ckpt = load_resume_checkpoint(run_dir, args.resume, dist, trust=args.trust_checkpoint,
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
    data, guard = bad_data_tally(args, dist, "[finetune]"), StepGuard(args.max_bad_steps)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        state.update(step=ckpt["step"], hours_seen=ckpt["hours_seen"], best_wer=ckpt["best_wer"])
        data.load_state(ckpt.get("bad_data"))
        guard.load_state(ckpt.get("guard"))
        say(f"resumed from {resume_from} at step {state['step']}")

    use_bf16 = args.precision == "bf16" or (args.precision == "auto" and dist.device.type == "cuda")
    autocast = (torch.autocast(device_type=dist.device.type, dtype=torch.bfloat16) if use_bf16
                else contextlib.nullcontext())
    batches = iter(make_stream(shards, per_gpu, args, dist, train=True, start_batch=state["step"] * accum))
    if ckpt is not None:
        rng = ckpt["rng"]
        if ckpt.get("world_size") == dist.world and len(rng) == dist.world:
            ckpt_lib.set_rng_state(rng[dist.rank])
        else:
            say(f"world size changed ({ckpt.get('world_size')} → {dist.world}): RNG re-seeded")
    log = RunLog(run_dir, dist.main, args.tensorboard, start_step=state["step"])
    last_step = min(steps, args.stop_after) if args.stop_after else steps
    n_params = sum(p.numel() for p in model.parameters())
    say(f"{model.cfg.name}: {n_params / 1e6:.1f} M parameters on {dist.device} ({'bf16' if use_bf16 else 'fp32'}); "
        f"batch = {dist.world} GPU(s) × {accum} × {per_gpu:g} s; tri-stage LR {peak_lr / 100:.3g} → {peak_lr:.3g} → "
        f"{peak_lr / 20:.3g}; transformer frozen for {freeze_steps} steps; mask p {model.cfg.mask_prob}, "
        f"dropout {model.cfg.dropout}; steps {state['step']} → {last_step}")

    def train_record(step: int, lr: float, **extra) -> dict:
        """The interval's log record (reduced over ranks) and the progress line."""
        nonlocal sums, count, used_utts, seconds, grad_norms, t_log, counts
        total_loss, total_count, total_used, total_seconds = all_reduce_sum(
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
        sums, count, used_utts, seconds, grad_norms, t_log, counts = 0.0, 0, 0.0, 0.0, [], time.time(), StepCounts()
        return rec

    frozen = None
    ddp_model = model
    sums, count, used_utts, seconds, grad_norms, t_log, rec = 0.0, 0, 0.0, 0.0, [], time.time(), {}
    counts = StepCounts()
    try:
        while state["step"] < last_step:
            step = state["step"]
            want_frozen = step < freeze_steps
            if want_frozen != frozen:
                model.set_trainable(transformer=not want_frozen)
                if dist.ddp:  # drop the old wrapper (and its reducer's gradient hooks) before building the new one
                    ddp_model = model
                    gc.collect()
                ddp_model = _wrap(model, dist)
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

                out = forward_backward(ddp_model, batch, accum, micro == accum - 1, dist, autocast, loss_of)
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
            if step % int(train["log_every"]) == 0 or checkpoint_now:
                rec = train_record(step, lr)

            if args.val and (step % int(train["val_every"]) == 0 or step == last_step):
                with torch.random.fork_rng(devices=[dist.device] if dist.device.type == "cuda" else []):
                    v = validate(model, args.val, per_gpu, args, dist, autocast, data)
                v = {"split": "val", "step": step, **v, "hours_seen": state["hours_seen"]}
                log.write(v)
                say(f"validation at step {step}: ctc {v['loss']:.4g} WER {100 * v['wer']:.2f} % "
                    f"CER {100 * v['cer']:.2f} % ({v['utterances']} utterances)")
                if not math.isnan(v["wer"]) and v["wer"] < state["best_wer"] and weights_finite(model):
                    state["best_wer"] = v["wer"]
                    on_main(dist, lambda: save_checkpoint_file(
                        {**model.checkpoint_dict(), "step": step, "val": v, "hours_seen": state["hours_seen"]},
                        run_dir / ckpt_lib.CHECKPOINT_DIR / "best.pt", run_dir))
                t_log = time.time()

            if checkpoint_now:
                if not weights_finite(model):  # never on disk: stop as diverged instead
                    reason = "the weights are no longer finite (not saved)"
                    log.write({"split": "train", "step": step, "diverged": True, "reason": reason})
                    raise divergence(run_dir, step, reason, bool(args.max_grad_norm))
                _save(run_dir, model, optimizer, state, schedule, args, train, data_info, dist,
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
    return {"step": state["step"], "hours_seen": state["hours_seen"], "best_wer": state["best_wer"],
            "run_dir": str(run_dir), "last_train": rec, "model": model, "train": train, "data": data_info,
            "skipped_steps": guard.skipped, "bad_utterances": data.bad, "bad_shards": data.bad_shards}
