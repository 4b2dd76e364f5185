"""What every command group shares: the consoles, and how bad input ends (one line each, exit code 2)."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

# Markup off: whatever is printed is text, so that a file name, dataset key or class name like `[/b]` can
# neither break a command nor change what it says. The few styled words pass `markup=True` and escape the
# user text beside them with `shown`.
out = Console(highlight=False, markup=False)
if not out.is_terminal:
    out.width = 120  # logs and CI: room for the results table
err = Console(stderr=True, highlight=False, markup=False)

# What storage and dataset code raise for bad input: DatasetError is a ValueError; ImportError means a URI
# scheme whose filesystem is not installed.
DATA_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, ImportError)


def shown(text: object) -> str:
    """User text (a path, a dataset key, a class name, an exception's message) escaped for a print with
    markup (`markup=True`, a progress bar's description): `[/b]` in a file name stays text."""
    return escape(str(text))


def fail(lines: list[str], code: int = 2) -> NoReturn:
    """End the command: each line (plain text, never markup) after "error:", then exit with `code`."""
    for line in lines:
        err.print(f"[red]error:[/red] {shown(line)}", markup=True, soft_wrap=True)
    raise typer.Exit(code)
