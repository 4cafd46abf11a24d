"""What every command shares: the error boundary and the consoles (results to stdout, messages to stderr)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from arl2rt.errors import Arl2rtError

out = Console()
err = Console(stderr=True)


def user_errors(fn: Callable) -> Callable:
    """Turn an Arl2rtError into a one-line message on stderr and exit status 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Arl2rtError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
            raise typer.Exit(1) from None

    return wrapper


def deprecated(old: str, new: str) -> None:
    """One warning line on stderr for a spelling accepted in 0.1 only."""
    err.print(f"[yellow]warning:[/] {old} is deprecated and goes after 0.1; use {new}", highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))
