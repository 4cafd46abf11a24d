"""The ``arl2rt`` command: one module per command, assembled here."""

from __future__ import annotations

from typing import Annotated

import typer

from arl2rt import __version__
from arl2rt.cli import build, convert, doctor, export, generate, inspect, parity, serve

app = typer.Typer(
    name="arl2rt",
    help="Deploy ARL2 hybrid-attention video diffusion models through ONNX and TensorRT.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    # help as plain text: rich markup would eat every [bracketed] word of it ([default: 48], ball[s], [B, T, D])
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"arl2rt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """arl2rt: export, build and stream ARL2 models."""


app.add_typer(doctor.app)
app.add_typer(generate.app)
app.add_typer(parity.app)
app.add_typer(build.app)
app.add_typer(convert.app)
app.add_typer(export.app)
app.add_typer(inspect.app)
app.add_typer(serve.app)


def main() -> None:
    app()
