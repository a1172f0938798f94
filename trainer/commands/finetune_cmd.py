"""``trainer finetune``, ``trainer evaluate``, ``trainer export-hf-ctc`` and ``trainer subset``.

Heavy imports (torch, transformers, torchaudio) happen inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from trainer.commands import common

FINETUNE_HELP = """CTC fine-tuning of a pre-trained wav2vec 2.0 model on labelled shards.

Letter vocabulary (index order): <blank> | ' a-z. Transcripts (the shards' `transcript`) are
normalised for English/Dutch: lower case, accents folded to ASCII, apostrophes kept inside words
and in leading clitics ('s, 't, 'n; manifests/clitics/), quotation marks, other punctuation and
hyphens to spaces, numbers spelled out (--digits drop removes them).

Recipe: Adam without weight decay, tri-stage LR 5e-7 → 5e-5 → 2.5e-6 (10/40/50 %), CNN frozen,
transformer frozen for the first 5 k steps, mask p 0.05, dropout 0.1, 200 s batches. Label-budget
presets: --preset 10m | 1h | 10h | 100h | 960h (12k / 13k / 20k / 80k / 320k steps); a preset's
label hours are drawn from --train (by duration, --seed) when it holds more than 5 % over them;
within 5 % (train-clean-100 is 100.6 h) the whole set is used.

  trainer finetune --init runs/base --train ls-train/ --val ls-dev-clean/ --preset 10h --out runs/ft10h
  torchrun --nproc-per-node 4 -m trainer.cli finetune --init hf-model/ --train mls-nl/ --val mls-nl-dev/ --preset 100h --out runs/nl

--train takes shards (folder, glob) or a segments manifest (.parquet/.csv), which is written to
shards in RUN_DIR/data/ first. Logs: RUN_DIR/log.jsonl; checkpoints: RUN_DIR/checkpoints/
(step_N.pt, best.pt by validation WER); --resume continues from the newest that loads.

As in pre-training: bad utterances are skipped and counted (--max-bad-fraction), non-finite steps
are not applied and divergence stops the run with exit 3 (--max-bad-steps), and checkpoints are
read without running code from them (--trust-checkpoint to opt out).
"""

EVALUATE_HELP = """Decode shard sets with a fine-tuned model and report WER/CER (jiwer).

Greedy letter decoding always; with --lm, also lexicon + n-gram LM beam search (torchaudio's
flashlight CTC decoder; beam 50, LM weight 2, word insertion 0 by default). Without --lexicon the
lexicon is built from the LM's unigrams (ARPA only). One summary row per --shards (named by its
folder, or NAME=PATH). Writes OUT/hypotheses.jsonl and OUT/summary.{md,csv,json}. Bad utterances
(audio that does not decode, empty, NaN samples, broken json) and truncated shards are skipped,
named on stderr and counted in the summary (bad_utterances, bad_shards); more than
--max-bad-fraction of them stops the evaluation.

  trainer evaluate --ckpt runs/ft10h --shards ls/test-clean --shards ls/test-other --lm 4-gram.arpa
"""


def register(app: typer.Typer) -> None:
    @app.command("finetune", help=FINETUNE_HELP, no_args_is_help=True)
    def finetune_command(
        train: str = typer.Option(..., "--train", help="Labelled training shards (folder/glob) or a segments manifest."),
        out: Path = typer.Option(..., "--out", "-o", help="Run directory (log.jsonl, checkpoints/, data/)."),
        init: Optional[str] = typer.Option(None, "--init",
                                           help="Pre-trained model: our checkpoint or run dir, a Hugging Face "
                                                "Wav2Vec2 folder, a fairseq .pt, or a CTC checkpoint to continue."),
        val: Optional[str] = typer.Option(None, "--val", help="Validation shards (loss, greedy WER/CER, best.pt)."),
        preset: Optional[str] = typer.Option(None, "--preset",
                                             help="Label budget: 10m, 1h, 10h, 100h, 960h (or a YAML file)."),
        config: Optional[str] = typer.Option(None, "--config",
                                             help="Without --init: a randomly initialised backbone of this model "
                                                  "config (tests, ablations)."),
        steps: Optional[int] = typer.Option(None, help="Optimizer steps (the preset's by default)."),
        batch_seconds: Optional[float] = typer.Option(None, help="Seconds of audio per GPU batch (200)."),
        accumulation: Optional[int] = typer.Option(None, help="Gradient-accumulation micro-batches per step."),
        lr: Optional[float] = typer.Option(None, help="Peak LR of the tri-stage schedule (5e-5)."),
        freeze_transformer_steps: Optional[int] = typer.Option(None, help="Train only the head for N steps (5000)."),
        label_hours: Optional[float] = typer.Option(None, help="Draw this many hours of labels from --train."),
        seed: int = typer.Option(0, help="Seed of the label subset, data order, masking and dropout."),
        mask_prob: Optional[float] = typer.Option(None, help="Time-mask probability (0.05)."),
        dropout: Optional[float] = typer.Option(None, help="Transformer and attention dropout (0.1)."),
        final_dropout: Optional[float] = typer.Option(None, help="Dropout before the CTC head (0)."),
        language: Optional[str] = typer.Option(None, help="Normalise transcripts as en or nl (default: each "
                                                          "utterance's language field, else en)."),
        digits: str = typer.Option("spell", help="Numbers in transcripts: spell (out in words) or drop."),
        max_grad_norm: float = common.MAX_GRAD_NORM,
        precision: str = common.PRECISION,
        log_every: Optional[int] = common.LOG_EVERY,
        val_every: Optional[int] = typer.Option(None, help="Validate every N steps."),
        ckpt_every: Optional[int] = common.CKPT_EVERY,
        val_batches: Optional[int] = typer.Option(None, help="Validation batches per GPU (default all)."),
        keep_checkpoints: int = common.KEEP_CHECKPOINTS,
        resume: bool = common.RESUME,
        stop_after: Optional[int] = common.STOP_AFTER,
        num_workers: Optional[int] = common.NUM_WORKERS,
        tensorboard: bool = common.TENSORBOARD,
        set_: list[str] = common.MODEL_OVERRIDES,
        quiet: bool = common.QUIET,
        max_bad_fraction: float = common.MAX_BAD_FRACTION,
        max_bad_steps: int = common.MAX_BAD_STEPS,
        trust_checkpoint: bool = common.TRUST_CHECKPOINT,
    ) -> None:
        from trainer.finetune import MANIFEST_SUFFIXES, FinetuneArgs, finetune, load_preset

        try:
            load_preset(preset)
        except (FileNotFoundError, ValueError) as e:
            raise typer.BadParameter(str(e), param_hint="--preset")
        if Path(train).suffix in MANIFEST_SUFFIXES:
            if not Path(train).is_file():
                raise typer.BadParameter(f"manifest {train} does not exist", param_hint="--train")
        else:
            common.check_shards(train, "--train")
        if val is not None:
            common.check_shards(val, "--val")
        if init is None and config is None:
            raise typer.BadParameter("give the pre-trained model to fine-tune (or --config for a random one)",
                                     param_hint="--init")
        if init is not None and not Path(init).exists():
            raise typer.BadParameter(f"{init} does not exist", param_hint="--init")
        common.check_limits(max_bad_fraction, max_bad_steps)
        if digits not in ("spell", "drop"):
            raise typer.BadParameter("use spell or drop", param_hint="--digits")
        if precision not in ("auto", "bf16", "fp32"):
            raise typer.BadParameter("use auto, bf16 or fp32", param_hint="--precision")
        if language is not None and language.split("-")[0].lower() not in ("en", "nl"):
            typer.secho(f"warning: normalisation is designed for en and nl; {language} is treated like en",
                        err=True, fg="yellow")
        args = FinetuneArgs(
            train=train, out=str(out), init=init, val=val, preset=preset, config=config, steps=steps,
            batch_seconds=batch_seconds, accumulation=accumulation, lr=lr,
            freeze_transformer_steps=freeze_transformer_steps, label_hours=label_hours, mask_prob=mask_prob,
            dropout=dropout, final_dropout=final_dropout, language=language, digits=digits, seed=seed,
            max_grad_norm=max_grad_norm, precision=precision, log_every=log_every, val_every=val_every,
            ckpt_every=ckpt_every, val_batches=val_batches, keep_checkpoints=keep_checkpoints, resume=resume,
            stop_after=stop_after, num_workers=num_workers, model_overrides=common.parse_overrides(set_),
            tensorboard=tensorboard, quiet=quiet, max_bad_fraction=max_bad_fraction, max_bad_steps=max_bad_steps,
            trust_checkpoint=trust_checkpoint,
        )
        with common.run_errors(RuntimeError):  # also: a backbone that does not fit the checkpoint
            result = finetune(args)
        if not quiet:
            best = result["best_wer"]
            typer.echo(f"done: step {result['step']}, {result['hours_seen']:.3f} h of labelled audio seen"
                       + (f", best validation WER {100 * best:.2f} %" if best != float("inf") else "")
                       + f", run in {out}")

    @app.command("evaluate", help=EVALUATE_HELP, no_args_is_help=True)
    def evaluate_command(
        ckpt: Path = typer.Option(..., "--ckpt", help="A fine-tuning checkpoint, or a run dir (its best.pt)."),
        shards: list[str] = typer.Option(..., "--shards", help="A shard set to score (repeatable; NAME=PATH to name it)."),
        lm: Optional[Path] = typer.Option(None, "--lm", help="n-gram LM (ARPA or KenLM binary) for word decoding."),
        lexicon: Optional[Path] = typer.Option(None, "--lexicon",
                                               help="Lexicon file (word<TAB>w o r d |); default: the ARPA unigrams."),
        out: Optional[Path] = typer.Option(None, "--out", "-o",
                                           help="Output folder (default: eval/ next to the checkpoint's run)."),
        beam_size: int = typer.Option(50, help="Beam size of the LM decoder."),
        lm_weight: float = typer.Option(2.0, help="LM weight."),
        word_score: float = typer.Option(0.0, help="Word insertion score."),
        batch_seconds: float = typer.Option(100.0, help="Seconds of audio per batch."),
        language: Optional[str] = typer.Option(None, help="Normalise references as en or nl (default: shard field)."),
        digits: str = typer.Option("spell", help="Numbers in references: spell or drop (as in training)."),
        device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 … (default cuda if available)."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
        max_bad_fraction: float = common.MAX_BAD_FRACTION,
        trust_checkpoint: bool = common.TRUST_CHECKPOINT,
    ) -> None:
        if not ckpt.exists():
            raise typer.BadParameter(f"{ckpt} does not exist", param_hint="--ckpt")
        for s in shards:
            path = s.split("=", 1)[1] if ("=" in s and not Path(s).exists()) else s
            common.check_shards(path, "--shards")
        if lm is not None and not lm.exists():
            raise typer.BadParameter(f"{lm} does not exist", param_hint="--lm")
        if lexicon is not None and not lexicon.exists():
            raise typer.BadParameter(f"{lexicon} does not exist", param_hint="--lexicon")
        if lexicon is not None and lm is None:
            raise typer.BadParameter("a lexicon is only used with --lm", param_hint="--lexicon")
        common.check_limits(max_bad_fraction)
        if digits not in ("spell", "drop"):
            raise typer.BadParameter("use spell or drop", param_hint="--digits")
        from trainer.ctc import resolve_ctc_checkpoint
        from trainer.decode import evaluate, summary_markdown

        try:
            path = resolve_ctc_checkpoint(ckpt)
        except FileNotFoundError as e:
            raise typer.BadParameter(str(e), param_hint="--ckpt")
        if out is None:
            run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
            out = run / "eval" / path.stem
        with common.run_errors():
            rows = evaluate(path, shards, lm=lm, lexicon=lexicon, out_dir=out, batch_seconds=batch_seconds,
                            beam_size=beam_size, lm_weight=lm_weight, word_score=word_score, language=language,
                            digits=digits, device=device, progress=not quiet, max_bad_fraction=max_bad_fraction,
                            trust=trust_checkpoint)
        typer.echo(summary_markdown(rows), nl=False)
        typer.echo(f"hypotheses: {out / 'hypotheses.jsonl'}; summary: {out / 'summary.md'}")

    @app.command("export-hf-ctc", no_args_is_help=True)
    def export_hf_ctc_command(
        ckpt: Path = typer.Argument(..., help="A fine-tuning checkpoint, or a run dir (its best.pt)."),
        out_dir: Path = typer.Argument(..., help="Output folder for the Hugging Face model + processor."),
        trust_checkpoint: bool = common.TRUST_CHECKPOINT,
    ) -> None:
        """Export a fine-tuned checkpoint to Hugging Face Wav2Vec2ForCTC + Wav2Vec2Processor (vocab.json)."""
        if not ckpt.exists():
            raise typer.BadParameter(f"{ckpt} does not exist", param_hint="CKPT")
        from trainer.ctc import export_hf_ctc

        try:
            path = export_hf_ctc(ckpt, out_dir, trust=trust_checkpoint)
        except (FileNotFoundError, ValueError) as e:
            common.fail(str(e))
        typer.echo(f"wrote {path}")

    @app.command("subset", no_args_is_help=True)
    def subset_command(
        src: str = typer.Argument(..., help="A segments manifest (.parquet/.csv) or a shard set (folder/glob)."),
        hours: float = typer.Option(..., "--hours", help="Hours of audio to draw (e.g. 0.1667 for 10 min)."),
        out: Path = typer.Option(..., "--out", "-o",
                                 help="Output: a manifest file for a manifest, a shard folder for shards."),
        seed: int = typer.Option(0, help="Seed of the random draw (same seed: nested subsets)."),
    ) -> None:
        """Draw a label subset by duration: random utterances until HOURS of audio are reached."""
        if hours <= 0:
            raise typer.BadParameter("must be positive", param_hint="--hours")
        from trainer.finetune import MANIFEST_SUFFIXES, subset_manifest, subset_shards

        if Path(src).suffix in MANIFEST_SUFFIXES:
            from corpus_tools.manifests import ManifestError, read_segments, write_parquet_atomic

            try:
                df = read_segments(src)
            except ManifestError as e:
                raise typer.BadParameter(str(e), param_hint="SRC")
            sub = subset_manifest(df, hours, seed)
            if out.suffix == ".csv":
                out.parent.mkdir(parents=True, exist_ok=True)
                sub.write_csv(out)
            else:
                write_parquet_atomic(sub, out)
            total = float(sub["duration"].fill_null(0).sum()) / 3600
            typer.echo(f"wrote {out}: {sub.height} of {df.height} segments, {total:.3f} h")
            return
        common.check_shards(src, "SRC")
        info = subset_shards(src, out, hours, seed)
        typer.echo(f"wrote {out}: {info['utterances']} utterances, {info['selected_hours']:.3f} h of "
                   f"{info['available_hours']:.3f} h")
