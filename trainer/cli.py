"""The ``trainer`` command line: pretrain, finetune, evaluate, plot, export-hf."""

from __future__ import annotations

import importlib

import typer

from corpus_tools.clihelp import reflow_help

app = typer.Typer(
    name="trainer",
    help=(
        "wav2vec 2.0 pre-training and CTC fine-tuning on WebDataset shards written by "
        "`corpus shard`. Run under torchrun for DDP; single process otherwise."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMAND_MODULES = ("pretrain_cmd", "finetune_cmd")



@app.callback()
def _root() -> None:
    """wav2vec 2.0 pre-training and CTC fine-tuning."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"trainer.commands.{_name}").register(app)
reflow_help(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
