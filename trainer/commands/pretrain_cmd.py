"""``trainer pretrain``, ``trainer plot`` and ``trainer export-hf``.

Heavy imports (torch, transformers) happen inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from trainer.commands import common

PRETRAIN_HELP = """wav2vec 2.0 self-supervised pre-training on WebDataset shards.

Single process by default; for DDP launch with torchrun, e.g.

  torchrun --nproc-per-node 8 -m trainer.cli pretrain --shards shards/ --config base --out runs/base

Hyper-parameters default to the config's `train:` section (trainer/configs/NAME.yaml); every
option below overrides it. Global batch = GPUs × --accumulation × --batch-seconds.
Logs go to RUN_DIR/log.jsonl, checkpoints to RUN_DIR/checkpoints/ (step_N.pt + best.pt).

A long run survives bad data and bad luck: damaged utterances and shards are skipped, named on
stderr and counted in log.jsonl (--max-bad-fraction stops a run on a wrong folder); a step whose
loss or gradient norm is not finite is not applied, and too many stop the run with "diverged at
step S" (exit 3) before any checkpoint could hold NaN weights; --resume continues from the newest
checkpoint that loads (damaged ones are renamed *.damaged); a full disk ends the run with the
previous checkpoint intact. Checkpoints are read without running code from them (--trust-checkpoint
to opt out).
"""


def register(app: typer.Typer) -> None:
    @app.command("pretrain", help=PRETRAIN_HELP, no_args_is_help=True)
    def pretrain_command(
        shards: str = typer.Option(..., "--shards", help="Training shards: a folder, a glob or a file of *.tar."),
        out: Path = typer.Option(..., "--out", "-o", help="Run directory (log.jsonl, checkpoints/)."),
        config: str = typer.Option("base", "--config", "-c",
                                   help="Named config (tiny, base, large, slim, slim-30/50/70/200, small) or a YAML path."),
        steps: Optional[int] = typer.Option(None, help="Total optimizer steps (fixes the schedule length)."),
        batch_seconds: Optional[float] = typer.Option(None, help="Seconds of audio per GPU batch, padding included."),
        accumulation: Optional[int] = typer.Option(None, help="Gradient-accumulation micro-batches per step."),
        lr: Optional[str] = typer.Option(None, help="Peak learning rate, or 'auto' = --lr-rule on the global batch."),
        lr_rule: str = typer.Option("sqrt", help="Rule for --lr auto: sqrt (5e-4·√(s/6000)), linear or const."),
        schedule: Optional[str] = typer.Option(None, help="cyclic | tri_stage | two_stage | constant."),
        cycle_steps: int = typer.Option(25_000, help="Half-cycle length of the cyclic schedule."),
        weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay."),
        max_grad_norm: float = common.MAX_GRAD_NORM,
        precision: str = common.PRECISION,
        compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
        log_every: Optional[int] = common.LOG_EVERY,
        val_every: Optional[int] = typer.Option(None, help="Validate every N steps (needs --val-shards)."),
        ckpt_every: Optional[int] = common.CKPT_EVERY,
        keep_checkpoints: int = common.KEEP_CHECKPOINTS,
        val_shards: Optional[str] = typer.Option(None, help="Validation shards (folder, glob or list)."),
        val_batches: int = typer.Option(50, help="Validation batches per GPU."),
        seed: int = typer.Option(0, help="Seed of data order, masking, negatives and init."),
        resume: bool = common.RESUME,
        stop_after: Optional[int] = common.STOP_AFTER,
        num_workers: Optional[int] = common.NUM_WORKERS,
        max_utterance_seconds: float = typer.Option(30.0, help="Longer utterances are randomly cropped."),
        simulate: Optional[str] = typer.Option(None, help="Online data-quality condition (see `corpus simulate --help`)."),
        noise: Optional[str] = typer.Option(None, help="Noise clip manifest for --simulate."),
        music: Optional[str] = typer.Option(None, help="Music clip manifest for --simulate."),
        stems: Optional[str] = typer.Option(None, help="`corpus stem` folder for --simulate."),
        simulate_source: Optional[str] = typer.Option(
            None, help="Speech pool (shards or a segments manifest) for the partners of --simulate 1spk-concat, "
                       "2spk-concat and 2spk-mix-X; default: the training shards themselves. Dev/test "
                       "utterances are never partners."),
        init: Optional[str] = typer.Option(None, help="Initialise from our checkpoint, an HF folder or a fairseq .pt."),
        tensorboard: bool = common.TENSORBOARD,
        set_: list[str] = common.MODEL_OVERRIDES,
        quiet: bool = common.QUIET,
        max_bad_fraction: float = common.MAX_BAD_FRACTION,
        max_bad_steps: int = common.MAX_BAD_STEPS,
        trust_checkpoint: bool = common.TRUST_CHECKPOINT,
    ) -> None:
        from trainer.model import load_config_file
        from trainer.schedules import SCHEDULES

        try:
            load_config_file(config)
        except (FileNotFoundError, ValueError) as e:
            raise typer.BadParameter(str(e), param_hint="--config")
        if lr is not None and lr != "auto":
            try:
                float(lr)
            except ValueError:
                raise typer.BadParameter(f"{lr!r} is neither a number nor 'auto'", param_hint="--lr")
        if schedule is not None and schedule not in SCHEDULES:
            raise typer.BadParameter(f"use one of {', '.join(SCHEDULES)}", param_hint="--schedule")
        if precision not in ("auto", "bf16", "fp32"):
            raise typer.BadParameter("use auto, bf16 or fp32", param_hint="--precision")
        if lr_rule not in ("sqrt", "linear", "const"):
            raise typer.BadParameter("use sqrt, linear or const", param_hint="--lr-rule")
        for value, hint in ((shards, "--shards"), (val_shards, "--val-shards")):
            if value is not None:
                common.check_shards(value, hint)
        if init and not Path(init).exists():
            raise typer.BadParameter(f"{init} does not exist", param_hint="--init")
        common.check_limits(max_bad_fraction, max_bad_steps)
        if simulate:
            try:
                from corpus_tools.simulate import parse_condition
            except ImportError as e:
                common.fail(f"--simulate needs corpus_tools.simulate, which could not be imported ({e})")
            try:
                parse_condition(simulate)
            except ValueError as e:
                raise typer.BadParameter(str(e), param_hint="--simulate")
        from trainer.pretrain import PretrainArgs, pretrain

        args = PretrainArgs(
            shards=shards, out=str(out), config=config, steps=steps, batch_seconds=batch_seconds,
            accumulation=accumulation, lr=lr, lr_rule=lr_rule, schedule=schedule, cycle_steps=cycle_steps,
            weight_decay=weight_decay, max_grad_norm=max_grad_norm, precision=precision, compile=compile,
            log_every=log_every, val_every=val_every, ckpt_every=ckpt_every, keep_checkpoints=keep_checkpoints,
            val_shards=val_shards, val_batches=val_batches, seed=seed, resume=resume, stop_after=stop_after,
            num_workers=num_workers, max_utterance_seconds=max_utterance_seconds, simulate=simulate, noise=noise,
            music=music, stems=stems, simulate_source=simulate_source, init=init, tensorboard=tensorboard,
            model_overrides=common.parse_overrides(set_), quiet=quiet, max_bad_fraction=max_bad_fraction,
            max_bad_steps=max_bad_steps, trust_checkpoint=trust_checkpoint,
        )
        with common.run_errors():  # bad data, divergence, a full disk or bad config found once training starts
            result = pretrain(args)
        if not quiet:
            typer.echo(f"done: step {result['step']}, {result['hours_seen']:.3f} h of audio seen, run in {out}")

    @app.command("plot", no_args_is_help=True)
    def plot_command(
        run_dir: Path = typer.Argument(..., help="A `trainer pretrain --out` folder with log.jsonl."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write the PNGs (default RUN_DIR/plots)."),
    ) -> None:
        """Draw the training curves of RUN_DIR/log.jsonl to PNG files."""
        from trainer.plot import plot_run

        try:
            paths = plot_run(run_dir, out)
        except FileNotFoundError as e:
            common.fail(str(e))
        for p in paths:
            typer.echo(str(p))

    @app.command("export-hf", no_args_is_help=True)
    def export_hf_command(
        ckpt: Path = typer.Argument(..., help="A checkpoint (step_N.pt, best.pt) or a run directory."),
        out_dir: Path = typer.Argument(..., help="Output folder for the Hugging Face model."),
        model_only: bool = typer.Option(False, "--model-only",
                                        help="Write Wav2Vec2Model (no quantizer) instead of Wav2Vec2ForPreTraining."),
        trust_checkpoint: bool = common.TRUST_CHECKPOINT,
    ) -> None:
        """Export a checkpoint to a Hugging Face transformers Wav2Vec2ForPreTraining / Wav2Vec2Model folder."""
        if not ckpt.exists():
            raise typer.BadParameter(f"{ckpt} does not exist", param_hint="CKPT")
        from trainer.hf import export_hf

        try:
            path = export_hf(ckpt, out_dir, pretraining=not model_only, trust=trust_checkpoint)
        except (FileNotFoundError, ValueError) as e:
            common.fail(str(e))
        typer.echo(f"wrote {path}")
