"""``arl2rt build``: TensorRT engines for an exported package, through the engine cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from arl2rt.cli._common import deprecated, err, out, print_json, result, step, user_errors
from arl2rt.errors import Arl2rtError
from arl2rt.runtime.backends import BACKENDS
from arl2rt.runtime.trt.build import build_engines, default_cache_dir

app = typer.Typer()

TENSORRT = BACKENDS["tensorrt"]


def _flavour(flavour: str | None, backend: str | None) -> str:
    """--flavour, or its old name --backend (accepted in 0.1 with one warning line, removed after), or the default."""
    if backend is None:
        return flavour or TENSORRT.default_flavour
    if flavour is not None and flavour != backend:
        raise Arl2rtError(f"--flavour {flavour} and --backend {backend}: expected one (--backend is its old name)")
    deprecated("`arl2rt build --backend`", f"--flavour {backend}")
    return backend


@app.command()
@user_errors
def build(
    package: Annotated[Path, typer.Argument(help="Package directory written by `arl2rt export`.")],
    flavour: Annotated[
        str | None,
        typer.Option(
            help=f"TensorRT library: {' | '.join(TENSORRT.flavours)} (default: {TENSORRT.default_flavour}). "
            "tensorrt needs the GPU and runs plugins; tensorrt-rtx builds the portable target without a GPU."
        ),
    ] = None,
    backend: Annotated[str | None, typer.Option(hidden=True, help="Deprecated name of --flavour.")] = None,
    max_frames: Annotated[
        int | None, typer.Option(min=1, help="Longest stream in latent frames: sets the past-length profile (21).")
    ] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Largest batch the engines accept.")] = 1,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Engine cache (default $ARL2RT_CACHE_DIR or ~/.cache/arl2rt/engines).")
    ] = None,
    compute_capability: Annotated[
        list[str] | None, typer.Option(help="GPU for tensorrt-rtx, e.g. SM86 (repeatable; default: RTX's own list).")
    ] = None,
    optimization_level: Annotated[
        int | None, typer.Option(min=0, max=5, help="TensorRT builder optimization level (default: TensorRT's).")
    ] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Build even when the cache has the engines.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Build (or find in the cache) the engines of a package's step graphs (the DiT's three, and a decoder's two)."""
    flavour = _flavour(flavour, backend)
    with err.status("building engines", spinner="dots") as status:

        def progress(message: str) -> None:
            if err.is_terminal:
                status.update(message)
            else:
                step(message)

        built = build_engines(
            package,
            flavour=flavour,
            max_frames=max_frames,
            max_batch=max_batch,
            cache_dir=cache_dir or default_cache_dir(),
            compute_capabilities=tuple(compute_capability or ()),
            optimization_level=optimization_level,
            rebuild=rebuild,
            progress=progress,
        )
    files = built.entry.record["engines"]
    summary = {
        "status": built.status,
        "reason": built.reason,
        "entry": str(built.entry.path),
        "flavour": flavour,
        "key": built.entry.key,
        "engines": {g: {"bytes": f["bytes"], "seconds": built.seconds.get(g)} for g, f in files.items()},
    }
    if json_:
        print_json(summary)
        return
    table = Table("graph", "engine bytes", "build s", title=f"{flavour} engines: {built.status}")
    for graph, info in summary["engines"].items():
        table.add_row(graph, str(info["bytes"]), "-" if info["seconds"] is None else f"{info['seconds']:.1f}")
    out.print(table)
    result(f"entry: {built.entry.path}")
