"""``arl2rt inspect PACKAGE``: the state contract (names, shapes, dtypes, bytes per stream) and each graph's ops."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from arl2rt.cli._common import out, print_json, result, user_errors
from arl2rt.export.package import ModelPackage

app = typer.Typer()


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@app.command()
@user_errors
def inspect(
    package: Annotated[Path, typer.Argument(help="Package directory written by `arl2rt export`.")],
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Check file hashes and graph I/O against the manifest.")
    ] = True,
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of tables.")] = False,
) -> None:
    """Show a package's state contract with bytes per stream (batch 1) and the op histogram of each graph."""
    info = ModelPackage.load(package, verify=verify).describe()
    if json_:
        print_json(info)
        return
    result(
        f"{info['package']}: {info['config']} for {info['target']}, {info['dtype']}, opset {info['opset']}, "
        f"{info['tokens_per_block']} tokens per block, {_bytes(info['bytes'])} in {len(info['files'])} files"
    )
    contract = Table("graphs", "io", "name", "shape", "dtype", "bytes (batch 1)", title="state contract")
    contract.columns[2].no_wrap = True
    for t in info["tensors"]:
        size = _bytes(t["bytes"]) + (" per past frame" if t["per_past_frame"] else "")
        graphs = "+".join(g.removesuffix("_step").removesuffix("_context") for g in t["graphs"])  # encode, decode_first
        shape = "[" + ", ".join(map(str, t["shape"])) + "]"
        contract.add_row(graphs, t["io"], t["name"], shape, t["dtype"], size)
    out.print(contract)
    mem = info["stream_bytes"]
    result(
        f"per stream: GDN states {_bytes(mem['gdn_states'])} (constant), text K/V {_bytes(mem['context_kv'])}, "
        f"softmax K/V cache +{_bytes(mem['kv_cache_per_latent_frame'])} per latent frame"
        + (f", VAE caches {_bytes(mem['vae_caches'])} (constant)" if mem.get("vae_caches") else "")
    )
    graphs = list(info["ops"])
    ops = sorted(
        {op for g in graphs for op in info["ops"][g]}, key=lambda op: -sum(info["ops"][g].get(op, 0) for g in graphs)
    )
    histogram = Table("op", *graphs, title="ops per graph")
    for op in ops:
        histogram.add_row(op, *(str(info["ops"][g].get(op, "")) for g in graphs))
    out.print(histogram)
