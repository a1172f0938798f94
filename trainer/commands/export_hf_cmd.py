"""``trainer export-hf``."""

from __future__ import annotations

from pathlib import Path

import typer

from trainer.commands import common


def register(app: typer.Typer) -> None:
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
