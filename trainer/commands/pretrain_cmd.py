"""``trainer pretrain``.

The trainer (torch) is imported inside the command so that ``--help`` stays fast.
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
    @common.with_run_options
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
        run: dict = None,
    ) -> None:
        from trainer.model import load_config_file
        from trainer.schedules import SCHEDULES

        common.check_value(load_config_file, config, "--config")
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
        common.check_limits(run["max_bad_fraction"], run["max_bad_steps"])
        if simulate:
            from corpus_tools.simulate.conditions import parse_condition

            common.check_value(parse_condition, simulate, "--simulate")
        from trainer.pretrain import PretrainArgs, pretrain

        args = PretrainArgs(
            shards=shards, out=str(out), config=config, steps=steps, batch_seconds=batch_seconds,
            accumulation=accumulation, lr=lr, lr_rule=lr_rule, schedule=schedule, cycle_steps=cycle_steps,
            weight_decay=weight_decay, max_grad_norm=max_grad_norm, precision=precision, compile=compile,
            log_every=log_every, val_every=val_every, ckpt_every=ckpt_every, keep_checkpoints=keep_checkpoints,
            val_shards=val_shards, val_batches=val_batches, seed=seed, resume=resume, stop_after=stop_after,
            num_workers=num_workers, max_utterance_seconds=max_utterance_seconds, simulate=simulate, noise=noise,
            music=music, stems=stems, simulate_source=simulate_source, init=init,
            model_overrides=common.parse_overrides(run.pop("set_")), **run,
        )
        with common.run_errors():  # bad data, divergence, a full disk or bad config found once training starts
            result = pretrain(args)
        if not args.quiet:
            typer.echo(f"done: step {result['step']}, {result['hours_seen']:.3f} h of audio seen, run in {out}")
