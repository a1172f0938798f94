"""``trainer plot``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from trainer.commands import common


def register(app: typer.Typer) -> None:
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
