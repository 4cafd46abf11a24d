"""What every command shares: the error boundary and where things are printed.

Results go to stdout, messages and progress to stderr. A message is plain text, one line per fact, never wrapped and
never read as markup: paths, prompts and hints hold brackets (``pip install 'arl2rt[triton]'``), and a script or a log
must get them whole. Tables use rich, without markup and, off a terminal, without a width limit, so a pipe gets whole
rows, not rows cut at 80 columns.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, ConsoleDimensions
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from arl2rt.errors import Arl2rtError

UNLIMITED_WIDTH = 1 << 16  # columns of a console off a terminal: longer than any line it prints


class _Console(Console):
    """A rich console that prints text as it is (no markup, no highlighting) and, off a terminal, never wraps."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, highlight=False, emoji=False, **kwargs)

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)  # type: ignore[attr-defined]
        return size if self.is_terminal else ConsoleDimensions(UNLIMITED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


out = _Console()  # tables on stdout
err = _Console(stderr=True)  # live progress on stderr (a terminal only)


def result(text: str) -> None:
    """A line of a command's result, on stdout."""
    print(text, flush=True)


def message(kind: str, text: str) -> None:
    """``kind: text`` on stderr (kind: error, warning, note), as it is."""
    step(f"{kind}: {text}")


def step(text: str) -> None:
    """A line of progress on stderr, as it is."""
    print(text, file=sys.stderr, flush=True)


def _show_warning(msg: Warning | str, category: type[Warning], filename: str, lineno: int, *args: Any) -> None:
    """arl2rt's own warnings are messages (``warning: ...``); other libraries' keep Python's format and location."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parents[1]):
        message("warning", str(msg))
    else:
        sys.stderr.write(warnings.formatwarning(msg, category, filename, lineno))


def user_errors(fn: Callable) -> Callable:
    """A command's boundary: an Arl2rtError becomes one message and exit status 1 (no traceback); warnings raised on
    the way are messages too."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                return fn(*args, **kwargs)
            except Arl2rtError as exc:
                message("error", exc.cli_message())
                raise typer.Exit(1) from None

    return wrapper


def deprecated(old: str, new: str) -> None:
    """One warning line for a spelling accepted in 0.1 only."""
    message("warning", f"{old} is deprecated and goes after 0.1; use {new}")


def print_json(data: Any) -> None:
    """A command's --json result: the only thing on stdout."""
    typer.echo(json.dumps(data, indent=2, default=str))


@contextmanager
def progress(label: str) -> Iterator[Callable[[int, int | None, str], None]]:
    """Progress of a long step, on stderr; yields ``update(done, total, text)``.

    On a terminal a live bar (gone when the step ends); elsewhere, a pipe or a log, one plain line per update, so a
    long run shows that it is alive and how far it is.
    """
    if not err.is_terminal:

        def line(done: int, total: int | None, text: str) -> None:
            step(f"{label} {done}/{'?' if total is None else total}: {text}")

        yield line
        return
    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[text]}", markup=False),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None, text="")
        yield lambda done, total, text: bar.update(task, completed=done, total=total, text=text)


class _DropMessage(logging.Filter):
    def __init__(self, msg: str) -> None:
        super().__init__()
        self.msg = msg

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != self.msg


# torch.onnx's exporter logs this once per torchvision op at every export (12 lines a package), though no arl2rt graph
# uses torchvision: drop exactly this message, nothing else of that logger.
TORCHVISION_LOGGER = "torch.onnx._internal.exporter._registration"
TORCHVISION_MESSAGE = "torchvision is not installed. Skipping %s"
logging.getLogger(TORCHVISION_LOGGER).addFilter(_DropMessage(TORCHVISION_MESSAGE))
