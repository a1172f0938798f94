"""``trainer export-hf-ctc``."""

from __future__ import annotations

from pathlib import Path

import typer

from trainer.commands import common


def register(app: typer.Typer) -> None:
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
