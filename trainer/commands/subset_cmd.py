"""``trainer subset``: the same command as ``corpus subset`` (``corpus_tools.commands.subset``)."""

from __future__ import annotations

import typer

from corpus_tools.commands.subset import register as register_subset


def register(app: typer.Typer) -> None:
    register_subset(app)
