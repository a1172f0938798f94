"""Command help that reflows to the terminal width.

Typer (≥ 0.16) keeps every line break of a command's docstring, so help written at 96
columns wraps twice in an 80-column terminal (one word alone on every other line). Each
paragraph's hard-wrapped lines are joined here once, for every command of an app; indented
lines (examples) and list items keep their own lines.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Sequence

import typer

_OWN_LINE = re.compile(r"^(\s|[-*$•]\s|\d+[.)]\s)")


def reflow(text: str) -> str:
    lines: list[str] = []
    for line in inspect.cleandoc(text).split("\n"):
        prev = lines[-1] if lines else ""
        if prev.strip() and line.strip() and not _OWN_LINE.match(line) and not _OWN_LINE.match(prev):
            lines[-1] = f"{prev} {line.strip()}"
        else:
            lines.append(line)
    return "\n".join(lines)


def reflow_help(app: typer.Typer) -> None:
    """Reflow the help of every command and sub-app registered on ``app`` (in place)."""
    for info in app.registered_commands:
        doc = info.help if info.help is not None else inspect.getdoc(info.callback)
        if doc:
            info.help = reflow(doc)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            reflow_help(group.typer_instance)


def register_commands(app: typer.Typer, package: str, modules: Sequence[str]) -> None:
    """Register every command module of ``package`` on ``app`` (each exposes ``register(app)``),
    then reflow their help."""
    for name in modules:
        importlib.import_module(f"{package}.{name}").register(app)
    reflow_help(app)
