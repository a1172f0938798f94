"""The ``trainer`` command line: pretrain, plot, export-hf, finetune, evaluate, export-hf-ctc, subset.

Each sub-command lives in ``trainer/commands/<name>_cmd.py`` and exposes ``register(app)``.
"""

from __future__ import annotations

import typer

from corpus_tools.clihelp import register_commands

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

COMMAND_MODULES = ("pretrain_cmd", "plot_cmd", "export_hf_cmd", "finetune_cmd", "evaluate_cmd", "export_hf_ctc_cmd",
                   "subset_cmd")


@app.callback()
def _root() -> None:
    """wav2vec 2.0 pre-training and CTC fine-tuning."""


register_commands(app, "trainer.commands", COMMAND_MODULES)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
