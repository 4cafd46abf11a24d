"""``arl2rt convert``: a Causal Forcing / ARL2 / Wan checkpoint -> one arl2rt safetensors file with its config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from arl2rt.cli._common import message, out, print_json, user_errors
from arl2rt.errors import Arl2rtError
from arl2rt.model.checkpoint import convert_checkpoint, model_from_state_dict, save_checkpoint
from arl2rt.model.config import load_config

app = typer.Typer()

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@app.command()
@user_errors
def convert(
    checkpoint: Annotated[
        Path, typer.Argument(help="A .pt/.pth (Causal Forcing / ARL2), .safetensors, shard index, or a folder.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the arl2rt .safetensors file.")],
    config: Annotated[
        str | None, typer.Option(help="Preset name or JSON config; optional when CHECKPOINT is arl2rt safetensors.")
    ] = None,
    delta: Annotated[
        Path | None, typer.Option(help="ARL2 weights laid over CHECKPOINT, e.g. an ARL2 .pt over Wan safetensors.")
    ] = None,
    use_ema: Annotated[bool, typer.Option("--use-ema", help="Read 'generator_ema' instead of 'generator'.")] = False,
    allow_random_arl2: Annotated[
        bool,
        typer.Option(
            "--allow-random-arl2",
            help="Give hybrid layers without ARL2 parameters a random init (does not reproduce ARL2 quality).",
        ),
    ] = False,
    dtype: Annotated[str, typer.Option(help=f"Stored precision: {', '.join(DTYPES)}.")] = "float32",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUTPUT file.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Convert a checkpoint to arl2rt safetensors: FFN LoRA merged, keys checked, config stored in the file."""
    if dtype not in DTYPES:
        raise Arl2rtError(f"--dtype: expected one of {', '.join(DTYPES)}, found {dtype!r}")
    sources = [p.resolve() for p in (checkpoint, delta) if p is not None]
    if output.resolve() in sources:
        raise Arl2rtError(f"--output {output}: is an input of the conversion; expected a new path")
    # checked before the (long) conversion; the file itself is replaced atomically, so a failure keeps the old one
    if output.is_dir():
        raise Arl2rtError(f"--output {output}: is a directory; expected a .safetensors file path")
    if output.exists() and not overwrite:
        raise Arl2rtError(f"--output {output}: already exists; pass --overwrite to replace it, or choose another path")
    parent = next(p for p in output.absolute().parents if p.exists())
    if not parent.is_dir():
        raise Arl2rtError(f"--output {output}: {parent} is a file; expected a directory to write into")
    cfg = load_config(config) if config is not None else None
    converted = convert_checkpoint(checkpoint, cfg, delta=delta, use_ema=use_ema, allow_random_arl2=allow_random_arl2)
    model = model_from_state_dict(converted.config, converted.state_dict, DTYPES[dtype])
    try:
        path = save_checkpoint(model, output)
    except OSError as exc:
        raise Arl2rtError(
            f"--output {output}: cannot write ({exc.strerror or exc}); nothing at that path was changed"
        ) from None
    summary = {
        "output": str(path),
        "source": converted.source,
        "config": converted.config.name,
        "dtype": dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
        "merged_lora": len(converted.merged),
        "random_arl2_layers": list(converted.random_arl2_layers),
        "bytes": path.stat().st_size,
    }
    if converted.random_arl2_layers:
        message("warning", f"hybrid layers {list(converted.random_arl2_layers)} have RANDOM ARL2 parameters")
    if json_:
        print_json(summary)
    else:
        out.print(
            f"wrote {path}: {converted.config.name}, {summary['parameters']:,} parameters ({dtype}), "
            f"{summary['merged_lora']} LoRA pairs merged, from {converted.source}",
            highlight=False,
        )
