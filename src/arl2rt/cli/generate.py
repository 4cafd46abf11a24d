"""``arl2rt generate``: stream a video block by block on a backend."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from arl2rt.cli._common import err, out, print_json, user_errors
from arl2rt.model.config import load_config
from arl2rt.runtime.generate import generate_latents, random_context, random_model

app = typer.Typer()


@app.command()
@user_errors
def generate(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the result (.npz latents).")],
    config: Annotated[str, typer.Option(help="Preset name (tiny, wan2.1-t2v-1.3b) or a JSON config file.")] = "tiny",
    backend: Annotated[str, typer.Option(help="Backend that runs the steps.")] = "torch",
    blocks: Annotated[int, typer.Option(min=1, help="Number of AR blocks to generate.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the noise and of the text context.")] = 0,
    dtype: Annotated[str, typer.Option(help="Activation precision: float32, float16, bfloat16, float64.")] = "float32",
    device: Annotated[str, typer.Option(help="torch device for the torch backend.")] = "cpu",
    json_: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Generate a stream with random weights of a config and write its latents."""
    cfg = load_config(config)
    model = random_model(cfg)
    with Progress(console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(f"{blocks} blocks", total=blocks)
        result = generate_latents(
            model,
            random_context(cfg, seed),
            blocks=blocks,
            seed=seed,
            output=output,
            backend=backend,
            dtype=dtype,
            device=device,
            progress=lambda: bar.advance(task),
        )
    summary = {
        "output": str(result.output),
        "backend": result.backend,
        "blocks": result.blocks,
        "latent_frames": result.latent_frames,
        "seconds": round(result.seconds, 3),
        "state_bytes": result.state_bytes,
    }
    if json_:
        print_json(summary)
    else:
        out.print(
            f"wrote {result.output}: {result.blocks} blocks, {result.latent_frames} latent frames in "
            f"{result.seconds:.2f} s on {result.backend}; GDN state {result.state_bytes['gdn_states']} B, "
            f"KV cache {result.state_bytes['kv_cache']} B"
        )
