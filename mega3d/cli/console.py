"""What every command group shares: the consoles, and how bad input ends (one line each, exit code 2)."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

out = Console(highlight=False)
if not out.is_terminal:
    out.width = 120  # logs and CI: room for the results table
err = Console(stderr=True, highlight=False)

# What storage and dataset code raise for bad input: DatasetError is a ValueError; ImportError means a URI
# scheme whose filesystem is not installed.
DATA_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, ImportError)


def fail(lines: list[str], code: int = 2) -> NoReturn:
    for line in lines:
        err.print(f"[red]error:[/red] {line}", soft_wrap=True)
    raise typer.Exit(code)
