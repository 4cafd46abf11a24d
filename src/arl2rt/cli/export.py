"""``arl2rt export``: a model package (three step graphs, weights, manifest) for one target and precision; with
``--vae FILE`` also the VAE decoder's two decode graphs (Wan2.1's or TAEHV's)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from arl2rt.cli._common import deprecated, out, print_json, progress, result, user_errors
from arl2rt.errors import Arl2rtError
from arl2rt.export.package import export_package
from arl2rt.model.vae.kinds import load_vae
from arl2rt.runtime.backends import DEFAULT_TARGET
from arl2rt.runtime.sources import load_model

app = typer.Typer()


def _output(output: Path | None, extra: list[str]) -> Path:
    """-o/--output, or the positional OUTPUT that 0.1 still accepts (with one warning line; not in --help)."""
    if not extra:
        if output is None:
            raise Arl2rtError("expected an output: -o PKG, the package directory to write")
        return output
    if output is not None or len(extra) > 1:
        given = ([f"-o {output}"] if output is not None else []) + extra
        raise Arl2rtError(f"output given {len(given)} times: {', '.join(given)}; expected -o only")
    deprecated("`arl2rt export OUTPUT` (positional)", f"-o {extra[0]}")
    return Path(extra[0])


@app.command(context_settings={"allow_extra_args": True})
@user_errors
def export(
    ctx: typer.Context,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Package directory to write (must not exist, be empty, or be a package: --overwrite).",
        ),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(help="Preset (tiny, wan2.1-t2v-1.3b) or JSON config; alone: random weights. Default: embedded."),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Weights for --config (any kind `arl2rt convert` reads).")
    ] = None,
    target: Annotated[
        str,
        typer.Option(
            help="onnxruntime (standard LinearAttention op), onnxruntime-contrib (com.microsoft::LinearAttention, "
            "runs on the CUDA EP), tensorrt (plugin node) or portable (standard ops)."
        ),
    ] = DEFAULT_TARGET,
    dtype: Annotated[
        str, typer.Option(help="Activations: float32, float16 or bfloat16 (GDN states, gates and norms stay fp32).")
    ] = "float32",
    opset: Annotated[
        int | None, typer.Option(help="Default-domain opset (default: 27 for onnxruntime, 18 for tensorrt/portable).")
    ] = None,
    trt_plugin: Annotated[
        str | None,
        typer.Option(
            help="tensorrt target: aot (default; one kernel per plugin node, engines run without Python) or jit "
            "(one gdn_state_update node; its kernels run through Python)."
        ),
    ] = None,
    vae: Annotated[
        Path | None,
        typer.Option(
            help="VAE decoder weights, told apart by their keys: Wan2.1_VAE.pth (or diffusers' AutoencoderKLWan "
            "weights or vae/ folder), or TAEHV's taew2_1.pth / .safetensors: the "
            "package also holds its decode_first and decode_step graphs."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a package already at OUTPUT.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Export a model's encode_context, denoise_step and commit_step graphs (with --vae also decode_first and
    decode_step) with every state as named I/O."""
    output = _output(output, ctx.args)
    loaded = load_model(config=config, checkpoint=checkpoint)
    with_vae = {"vae": load_vae(vae)} if vae is not None else {}
    start = time.perf_counter()
    with progress("export") as update:
        package = export_package(
            loaded.model,
            output,
            target=target,
            dtype=dtype,
            opset=opset,
            trt_plugin=trt_plugin,
            progress=update,
            overwrite=overwrite,
            source=loaded.description,
            **with_vae,
        )
    seconds = time.perf_counter() - start
    files = package.manifest["files"]
    summary = {
        "package": str(package.root),
        "model": loaded.description,
        "target": package.target,
        "dtype": package.spec.dtype,
        "opset": package.opset,
        "trt_plugin": package.plugin_mode,
        "seconds": round(seconds, 1),
        "bytes": package.nbytes,
        "files": {name: entry["bytes"] for name, entry in files.items()},
        "passes": {g: entry["passes"] for g, entry in package.manifest["graphs"].items()},
    }
    if json_:
        print_json(summary)
        return
    # the heading is a line of its own: as a table title it would be wrapped to the width of the table
    result(f"{package.root} ({package.target}, {package.spec.dtype}, opset {package.opset}):")
    table = Table("file", "bytes")
    for name, size in summary["files"].items():
        table.add_row(name, f"{size:,}")
    table.add_row(Text("total", style="bold"), Text(f"{package.nbytes:,}", style="bold"))
    out.print(table)
    result(f"exported {loaded.description} in {seconds:.1f} s")
