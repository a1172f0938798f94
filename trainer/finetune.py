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
step, RNG per rank, data position), ``best.pt`` by validation WER, ``--resume``.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from trainer import checkpoint as ckpt_lib
from trainer.ctc import Wav2Vec2ForCTC, ctc_loss, init_ctc_model
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
        for rec in read_shard_records(path):
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
def validate(model: Wav2Vec2ForCTC, shards: str, batch_seconds: float, args: FinetuneArgs, dist, autocast) -> dict:
    """Validation CTC loss (per letter, mean over utterances) and greedy WER/CER over all ranks."""
    was_training = model.training
    model.eval()
    loss_sum, n, refs, hyps = 0.0, 0, [], []
    for i, batch in enumerate(make_stream(shards, batch_seconds, args, dist, train=False)):
        if args.val_batches is not None and i >= args.val_batches:
            break
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
          train: dict, data_info: dict, dist) -> None:
    rng = [ckpt_lib.rng_state()]
    if dist.ddp:
        rng = [None] * dist.world
        torch.distributed.all_gather_object(rng, ckpt_lib.rng_state())
    if dist.main:
        args_dict = {k: v for k, v in dataclasses.asdict(args).items() if k != "transform"}
        ckpt_lib.atomic_save({
            **model.checkpoint_dict(), "optimizer": optimizer.state_dict(), "step": state["step"],
            "hours_seen": state["hours_seen"], "best_wer": state["best_wer"], "schedule": schedule.to_dict(),
            "args": args_dict, "train": train, "data": {**data_info, "batches_per_rank": state["step"] * int(
                train["accumulation"]), "seed": args.seed}, "rng": rng, "world_size": dist.world,
        }, ckpt_lib.step_checkpoint_path(run_dir, state["step"]))
        ckpt_lib.prune_checkpoints(run_dir, args.keep_checkpoints)


def finetune(args: FinetuneArgs) -> dict[str, Any]:
    """Fine-tune; returns step, labelled hours seen, best validation WER, last train record and the model."""
    from trainer.pretrain import Dist, RunLog, all_reduce_sum, setup_distributed
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

    resume_from = ckpt_lib.resume_point(run_dir, args.resume)
    ckpt = ckpt_lib.load_checkpoint(resume_from) if resume_from is not None else None
    if ckpt is not None:
        from trainer.model import Wav2Vec2Config

        model = Wav2Vec2ForCTC(Wav2Vec2Config.from_dict(ckpt["config"]), ckpt["vocab"], ckpt["final_dropout"])
        model.load_state_dict(ckpt["model"])
    else:
        model = init_ctc_model(args.init, config=args.config, overrides=model_overrides,
                               final_dropout=float(train["final_dropout"]))
    model.to(dist.device).train()
    model.set_trainable(transformer=False)
    optimizer = torch.optim.Adam(model.finetunable_parameters(), lr=peak_lr, betas=(0.9, 0.98), eps=1e-8,
                                 weight_decay=0.0, fused=dist.device.type == "cuda")
    state = {"step": 0, "hours_seen": 0.0, "best_wer": math.inf}
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        state.update(step=ckpt["step"], hours_seen=ckpt["hours_seen"], best_wer=ckpt["best_wer"])
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

    frozen = None
    ddp_model = model
    sums, count, used_utts, seconds, grad_norms, t_log, rec = 0.0, 0, 0.0, 0.0, [], time.time(), {}
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
        for micro in range(accum):
            batch = next(batches)
            targets, weights = targets_for(batch, args.language, args.digits)
            sec = float(batch.lengths.sum()) / SAMPLE_RATE
            batch = batch.to(dist.device, non_blocking=True)
            sync = contextlib.nullcontext() if (not dist.ddp or micro == accum - 1) else ddp_model.no_sync()
            with sync:
                with autocast:
                    out = ddp_model(batch.audio, batch.lengths)
                loss = ctc_loss(out["logits"], out["frame_lengths"], targets, weights)
                (loss / accum).backward()
            sums += loss.detach()
            count += 1
            used_utts += float(weights.sum())
            seconds += sec
        trainable = [p for p in model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, args.max_grad_norm or math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        grad_norms.append(grad_norm.detach())
        state["step"] = step = step + 1

        checkpoint_now = step % int(train["ckpt_every"]) == 0 or step == last_step
        if step % int(train["log_every"]) == 0 or checkpoint_now:
            total_loss, total_count, total_used, total_seconds = all_reduce_sum(
                [float(sums), count, used_utts, seconds], dist)
            elapsed = time.time() - t_log
            state["hours_seen"] += total_seconds / 3600
            rec = {"split": "train", "step": step, "loss": total_loss / max(total_count, 1), "lr": lr,
                   "grad_norm": float(torch.stack(grad_norms).mean()), "frozen": bool(frozen),
                   "utterances": total_used, "hours_seen": state["hours_seen"],
                   "audio_seconds_per_second": total_seconds / max(elapsed, 1e-9)}
            log.write(rec)
            say(f"step {step}: ctc {rec['loss']:.4g} lr {lr:.3g} grad {rec['grad_norm']:.3g} "
                f"{'(transformer frozen) ' if frozen else ''}{rec['audio_seconds_per_second']:.0f} s/s "
                f"{state['hours_seen']:.3f} h seen")
            sums, count, used_utts, seconds, grad_norms, t_log = 0.0, 0, 0.0, 0.0, [], time.time()

        if args.val and (step % int(train["val_every"]) == 0 or step == last_step):
            with torch.random.fork_rng(devices=[dist.device] if dist.device.type == "cuda" else []):
                v = validate(model, args.val, per_gpu, args, dist, autocast)
            v = {"split": "val", "step": step, **v, "hours_seen": state["hours_seen"]}
            log.write(v)
            say(f"validation at step {step}: ctc {v['loss']:.4g} WER {100 * v['wer']:.2f} % "
                f"CER {100 * v['cer']:.2f} % ({v['utterances']} utterances)")
            if not math.isnan(v["wer"]) and v["wer"] < state["best_wer"]:
                state["best_wer"] = v["wer"]
                if dist.main:
                    ckpt_lib.atomic_save({**model.checkpoint_dict(), "step": step, "val": v,
                                          "hours_seen": state["hours_seen"]},
                                         run_dir / ckpt_lib.CHECKPOINT_DIR / "best.pt")
            t_log = time.time()

        if checkpoint_now:
            _save(run_dir, model, optimizer, state, schedule, args, train, data_info, dist)

    log.close()
    if dist.ddp:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return {"step": state["step"], "hours_seen": state["hours_seen"], "best_wer": state["best_wer"],
            "run_dir": str(run_dir), "last_train": rec, "model": model, "train": train, "data": data_info}
