"""`corpus merge` (not yet implemented)."""

import typer


def register(app: typer.Typer) -> None:  # filled in by its issue
    pass
