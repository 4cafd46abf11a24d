"""``arl2rt generate``: stream a video block by block, writing frames as they are made; save and resume sessions; or
stream it from a Triton server (``--server``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from arl2rt.cli._common import message, print_json, progress, result, user_errors
from arl2rt.errors import Arl2rtError
from arl2rt.runtime import generate as lib
from arl2rt.runtime.backends import BACKENDS, DEFAULT_BACKEND, DEVICES
from arl2rt.runtime.threads import SMALL_MODEL_DIM
from arl2rt.serve.client import RemoteOptions, RemoteProgress, stream_remote

app = typer.Typer()

INTERRUPTED_EXIT = 130  # the shell's code for a process stopped by Ctrl-C
_BACKEND_HELP = (
    f"{' | '.join(BACKENDS)}. Default: {DEFAULT_BACKEND['model']} for a PyTorch model; for a package, "
    f"{DEFAULT_BACKEND['package']} or the backend its target needs."
)
_DEVICE_HELP = "{}.  [default: {}]".format(
    DEVICES, ", ".join(f"{name} {b.default_device}" for name, b in BACKENDS.items())
)
_THREADS_HELP = (
    "CPU threads. More barely speed up a small model and slow it down badly when another process takes a core.  "
    f"[default: 1 for a model narrower than {SMALL_MODEL_DIM} (the embedded model, tiny); else one per core]"
)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _summary(r: lib.GenerateResult) -> str:
    head = "stopped (Ctrl-C)" if r.interrupted else "wrote"
    resumed = f" (resumed at block {r.resumed_from_block})" if r.resumed_from_block is not None else ""
    lines = [
        f"{head} {r.output} [{r.format}]: {r.frames} frames in {r.blocks} blocks{resumed}, stream now "
        f"{r.total_frames} frames; {r.seconds:.2f} s on {r.backend}: {r.blocks_per_s:.2f} blocks/s, "
        f"{r.frames_per_s:.2f} frames/s",
        f"model: {r.model}",
        f"memory: state {human_bytes(sum(r.state_bytes.values()))} (GDN {human_bytes(r.state_bytes['gdn_states'])}, "
        f"K/V cache {human_bytes(r.state_bytes['kv_cache'])}, text {human_bytes(r.state_bytes['context'])}), "
        f"peak state {human_bytes(r.peak_state_bytes)}, peak RSS {human_bytes(r.peak_rss_bytes)}"
        + (f", peak CUDA {human_bytes(r.peak_cuda_bytes)}" if r.peak_cuda_bytes is not None else ""),
    ]
    if r.session is not None:
        lines.append(
            f"session: {r.session}, last snapshot at block {r.session_block}; continue with --resume {r.session}"
        )
    return "\n".join(lines)


@app.command()
@user_errors
def generate(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="out.mp4, out.gif, out.npz (latents) or DIR/ (PNG frames). On --resume: "
            "default the session's output, which is appended to.",
        ),
    ] = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="An exported model package directory (arl2rt export).")
    ] = None,
    config: Annotated[
        str | None, typer.Option(help="PyTorch model: preset name (tiny, wan2.1-t2v-1.3b) or a JSON config file.")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint for --config; without one the weights are random.")
    ] = None,
    vae: Annotated[
        Path | None,
        typer.Option(
            help="VAE decoder for --config/--checkpoint, told by its keys: Wan2.1_VAE.pth (or diffusers' "
            "AutoencoderKLWan) or TAEHV's taew2_1.pth: "
            "each block is decoded to video as it is made (a package carries its own decoder)."
        ),
    ] = None,
    text_encoder: Annotated[
        Path | None,
        typer.Option(
            help="Local umT5 encoder + tokenizer folder (transformers' UMT5EncoderModel) that encodes --prompt for "
            "a model taking text embeddings (Wan); embeddings are cached per prompt."
        ),
    ] = None,
    backend: Annotated[str | None, typer.Option(help=_BACKEND_HELP)] = None,
    flavour: Annotated[
        str | None,
        typer.Option(
            help=f"tensorrt backend: the TensorRT library, {' | '.join(BACKENDS['tensorrt'].flavours)} (default: "
            f"{BACKENDS['tensorrt'].default_flavour}); engines as `arl2rt build --flavour` made them."
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            help="Prompt: in the embedded model's words (e.g. 'two red balls and one blue ball'), or any text with "
            "--text-encoder."
        ),
    ] = None,
    context: Annotated[
        Path | None,
        typer.Option(
            help="Precomputed text embeddings: safetensors with 'context' [B, text_len, text_dim] (Wan: umT5)."
        ),
    ] = None,
    frames: Annotated[
        int | None,
        typer.Option(help=f"Length in latent frames, rounded up to whole blocks.  [default: {lib.DEFAULT_FRAMES}]"),
    ] = None,
    blocks: Annotated[int | None, typer.Option(help="Length in AR blocks (instead of --frames).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the noise and of random text.  [default: 0]")] = None,
    dtype: Annotated[
        str | None, typer.Option(help="float32, float16, bfloat16, float64 (torch); a package runs at its own.")
    ] = None,
    device: Annotated[str | None, typer.Option(help=_DEVICE_HELP)] = None,
    threads: Annotated[int | None, typer.Option(help=_THREADS_HELP)] = None,
    fp8: Annotated[
        bool,
        typer.Option(
            "--fp8",
            help="torch backend, bfloat16/float16 on an sm_89+ GPU: the DiT blocks' GEMMs in FP8 (E4M3, row scales); "
            "halves their weights' memory, not yet faster (benchmarks/results/generate_speed.md).",
        ),
    ] = False,
    fps: Annotated[int, typer.Option(min=1, help="Frame rate of video outputs.")] = 16,
    save_session: Annotated[
        Path | None, typer.Option(help="Snapshot the stream into this directory every --save-every blocks.")
    ] = None,
    save_every: Annotated[int, typer.Option(min=1, help="Blocks between snapshots.")] = lib.DEFAULT_SAVE_EVERY,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the stream saved in this session directory (model, text, output).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", "-y", help="Replace an existing output.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    server: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT of a Triton server (gRPC) running a model of `arl2rt serve triton`: the stream is made "
            "there, block by block, and written here as it arrives."
        ),
    ] = None,
    model_name: Annotated[str, typer.Option(help="--server: the model's name in the repository.")] = "arl2rt",
    sequence_id: Annotated[
        int | None, typer.Option(help="--server: the stream's sequence (correlation) ID.  [default: a random one]")
    ] = None,
) -> None:
    """Generate a video stream block by block; every block's frames reach the output as soon as it is made."""
    if server is not None:
        local = {
            "--model": model, "--config": config, "--checkpoint": checkpoint, "--vae": vae,
            "--text-encoder": text_encoder, "--backend": backend, "--flavour": flavour, "--dtype": dtype,
            "--device": device, "--threads": threads, "--save-session": save_session, "--resume": resume,
            "--fp8": fp8 or None,
        }  # fmt: skip
        _remote(
            RemoteOptions(
                server=server, output=output, model_name=model_name, prompt=prompt, context=context, frames=frames,
                blocks=blocks, seed=seed, fps=fps, overwrite=overwrite, sequence_id=sequence_id,
            ),
            [flag for flag, value in local.items() if value is not None],
            json_,
        )  # fmt: skip
        return
    opts = lib.GenerateOptions(
        output=output, model=model, config=config, checkpoint=checkpoint, backend=backend, flavour=flavour,
        prompt=prompt, context=context, frames=frames, blocks=blocks, seed=seed, dtype=dtype, device=device,
        threads=threads, fps=fps, vae=vae, text_encoder=text_encoder, fp8=fp8,
        save_session=save_session, save_every=save_every, resume=resume, overwrite=overwrite,
    )  # fmt: skip
    with progress("blocks") as update:

        def show(p: lib.Progress) -> None:
            rates = f"{p.blocks_per_s:.2f} blocks/s  {p.frames_per_s:.1f} frames/s  state {human_bytes(p.state_bytes)}"
            update(p.block, p.total_blocks, rates)

        run = lib.run_generate(opts, progress=show)
    for note in run.notes:
        message("note", note)
    if json_:
        print_json(run.to_dict())
    else:
        result(_summary(run))
    if run.interrupted:
        raise typer.Exit(INTERRUPTED_EXIT)


def _remote(opts: RemoteOptions, local: list[str], json_: bool) -> None:
    """``generate --server``: the stream comes from the server, whose model config holds what runs it."""
    if local:
        raise Arl2rtError(f"--server {opts.server}: the server's model decides {', '.join(local)}; drop them")
    if opts.output is None:
        raise Arl2rtError("expected an output: -o out.mp4 | out.gif | out.npz | DIR/ (PNG frames)")
    with progress("blocks") as update:

        def show(p: RemoteProgress) -> None:
            update(p.block, p.total_blocks, f"{p.block / p.seconds:.2f} blocks/s  state {human_bytes(p.state_bytes)}")

        run = stream_remote(opts, progress=show)
    for note in run.notes:
        message("note", note)
    if json_:
        print_json(run.to_dict())
    else:
        head = "stopped (Ctrl-C)" if run.interrupted else "wrote"
        result(
            f"{head} {run.output} [{run.format}]: {run.frames} frames in {run.blocks} blocks from {run.server} "
            f"(model {run.model_name}, stream {run.sequence_id}); {run.seconds:.2f} s: {run.blocks_per_s:.2f} "
            f"blocks/s; server state {human_bytes(run.state_bytes)}"
        )
    if run.interrupted:
        raise typer.Exit(INTERRUPTED_EXIT)
