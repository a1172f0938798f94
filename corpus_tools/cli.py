"""The ``corpus`` command line.

Each sub-command lives in ``corpus_tools/commands/<name>.py`` and exposes
``register(app)``; heavy libraries (torch, whisper, pyannote) are imported inside the
command bodies so that ``corpus --help`` stays instant.
"""

from __future__ import annotations

import typer

from corpus_tools.clihelp import register_commands

app = typer.Typer(
    name="corpus",
    help=(
        "Turn broadcast archives into clean speech corpora.\n\n"
        "Typical flow: corpus ingest ARCHIVE -o work/ → corpus segment work/ --method wx-diar-3s "
        "→ corpus stats work/ → corpus shard work/ --method wx-diar-3s -o shards/."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMAND_MODULES = (
    "ingest",
    "segment",
    "stats",
    "score",
    "shard",
    "importers",
    "export",
    "holdout",
    "simulate",
    "stem",
    "models",
    "verify",
    "report",
    "merge",
    "subset",
)


@app.callback()
def _root(
    verbose: bool = typer.Option(
        False, "--verbose",
        help="Also show the libraries' own output (WhisperX and Lightning info lines, "
             "deprecation warnings), hidden by default. Same as CORPUS_LOG=debug."),
) -> None:
    """Turn broadcast archives into clean speech corpora."""
    from corpus_tools import logs

    logs.configure(True if verbose else None)


register_commands(app, "corpus_tools.commands", COMMAND_MODULES)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
