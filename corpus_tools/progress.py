"""Console output shared by the CLI commands: one rich console, progress bars, clean errors."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

console = Console(stderr=True, highlight=False, soft_wrap=True)
# Tables are wide (Table 14 has 11 columns): never squeeze them below 160 columns when
# the output is a file or pipe (rich would otherwise assume 80 and wrap the headers).
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print a one-line error and return the Exit to raise (no traceback for user errors)."""
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def progress_bar(disable: bool | None = None) -> Progress:
    """A progress bar with counts, elapsed/remaining time and a free text field (e.g. RTF)."""
    if disable is None:
        disable = not sys.stderr.isatty()
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=console, disable=disable, transient=False,
    )


@contextmanager
def counting(description: str, unit: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A running count without a known total (items done, elapsed time) on stderr; yields ``advance(n)``."""
    with Progress(TextColumn("[bold]{task.description}"), TextColumn("{task.completed:,.0f} " + unit),
                  TimeElapsedColumn(), console=console, disable=not enabled, transient=False) as bar:
        task = bar.add_task(description, total=None)
        yield lambda n=1: bar.advance(task, n)


@contextmanager
def user_errors():
    """Turn the library's expected errors into one-line CLI errors."""
    from corpus_tools.audio import AudioError
    from corpus_tools.manifests import ManifestError

    try:
        yield
    except (ManifestError, AudioError, FileNotFoundError, ValueError, PermissionError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError)):
            import errno

            if exc.errno == errno.ENOSPC:
                raise fail(f"no space left on device while writing ({exc.filename or 'output'}); "
                           "free space and rerun: finished work is kept and resumed") from None
            raise fail(f"{exc}") from None
        raise fail(str(exc)) from None
