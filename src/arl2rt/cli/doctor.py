"""``arl2rt doctor``: versions, GPU, and which backends can run here (and why not)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from arl2rt.cli._common import out, print_json, result, user_errors
from arl2rt.runtime.environment import probe

app = typer.Typer()


@app.command()
@user_errors
def doctor(
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of tables.")] = False,
) -> None:
    """Report package versions, the GPU and which backends can run on this machine."""
    env = probe()
    if json_:
        print_json(env.to_dict())
        return
    versions = Table("package", "version", title="packages")
    for name, ver in env.versions.items():
        versions.add_row(name, ver or Text("not installed", style="dim"))
    out.print(versions)
    gpu = f"{env.gpu} (compute capability {env.compute_capability})" if env.gpu else "none"
    result(f"GPU: {gpu}")
    if env.onnxruntime is not None and env.onnxruntime.module:
        result(f"onnxruntime providers: {', '.join(env.onnxruntime.providers)} (from {env.onnxruntime.module})")
    backends = Table("backend", "status", title="backends")
    for name, reason in env.backends.items():
        status = Text("available", style="green") if reason is None else Text(f"unavailable: {reason}", style="yellow")
        backends.add_row(name, status)
    out.print(backends)
