"""``trainer finetune``.

The trainer (torch) is imported inside the command so that ``--help`` stays fast.
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


def register(app: typer.Typer) -> None:
    @app.command("finetune", help=FINETUNE_HELP, no_args_is_help=True)
    @common.with_run_options
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
        run: dict = None,
    ) -> None:
        from corpus_tools.subset import MANIFEST_SUFFIXES
        from trainer.finetune import FinetuneArgs, finetune
        from trainer.presets import load_preset

        common.check_value(load_preset, preset, "--preset")
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
        common.check_limits(run["max_bad_fraction"], run["max_bad_steps"])
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
            stop_after=stop_after, num_workers=num_workers, model_overrides=common.parse_overrides(run.pop("set_")),
            **run,
        )
        with common.run_errors(RuntimeError):  # also: a backbone that does not fit the checkpoint
            result = finetune(args)
        if not args.quiet:
            best = result["best_wer"]
            typer.echo(f"done: step {result['step']}, {result['hours_seen']:.3f} h of labelled audio seen"
                       + (f", best validation WER {100 * best:.2f} %" if best != float("inf") else "")
                       + f", run in {out}")
