"""``arl2rt serve``: a Triton Inference Server model repository for a model (``serve triton``), and the tritonserver
that nvidia-pytriton ships, started on it (``serve start``)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from arl2rt.cli._common import message, print_json, result, step, user_errors
from arl2rt.serve import repository as repo
from arl2rt.serve import server as srv
from arl2rt.serve.served import DEFAULT_IDLE_TIMEOUT, SERVED_BACKENDS, plan_settings

app = typer.Typer(name="serve", help="Serve many streams at once on Triton Inference Server.", no_args_is_help=True)


@app.command("triton")
@user_errors
def triton(
    output: Annotated[Path, typer.Option("--output", "-o", help="Model repository directory to write into.")],
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
        typer.Option(help="Wan2.1 VAE or TAEHV (taew2_1) weights for --config/--checkpoint: blocks come as video."),
    ] = None,
    text_encoder: Annotated[
        Path | None, typer.Option(help="Local umT5 encoder folder the server encodes prompts with.")
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(help=f"{' | '.join(SERVED_BACKENDS)}. Default: as arl2rt generate picks it for the model."),
    ] = None,
    dtype: Annotated[str | None, typer.Option(help="torch precision (a package runs at its own).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N (cuda: one model instance per GPU).")] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads of each model instance.  [default: as arl2rt generate]")
    ] = None,
    name: Annotated[str, typer.Option(help="Model name in the repository.")] = repo.DEFAULT_NAME,
    max_streams: Annotated[
        int, typer.Option(min=1, help="Streams one model instance holds at once (later ones wait).")
    ] = repo.DEFAULT_MAX_STREAMS,
    instances: Annotated[int, typer.Option(min=1, help="Model instances (processes), each with its streams.")] = 1,
    idle_timeout: Annotated[
        float, typer.Option(help="Seconds without a request after which a stream is freed.")
    ] = DEFAULT_IDLE_TIMEOUT,
    overwrite: Annotated[bool, typer.Option("--overwrite", "-y", help="Replace a model of the same name.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Write a Triton model repository that serves the model, one stream per sequence (docs/serving.md)."""
    settings, loaded = plan_settings(
        model=model, config=config, checkpoint=checkpoint, vae=vae, text_encoder=text_encoder, backend=backend,
        dtype=dtype, device=device, threads=threads, idle_timeout=idle_timeout,
    )  # fmt: skip
    written = repo.write_repository(
        output, settings, loaded, name=name, max_streams=max_streams, instances=instances, overwrite=overwrite
    )
    for note in written.notes:
        message("note", note)
    if json_:
        print_json({"repository": written.repository, "models": written.models, "notes": written.notes})
        return
    for model_name, what in written.models.items():
        result(f"{written.repository}/{model_name}: {what}")
    result(f"start it: arl2rt serve start {written.repository}")


@app.command("start")
@user_errors
def start(
    repository: Annotated[Path, typer.Argument(help="Model repository written by `arl2rt serve triton`.")],
    grpc_port: Annotated[int, typer.Option(min=1, max=65535, help="gRPC port on 127.0.0.1.")] = 8001,
    tritonserver: Annotated[
        Path | None,
        typer.Option(
            help=f"Where nvidia-pytriton's wheel is unpacked (default ${srv.HOME_VARIABLE}).", show_default=False
        ),
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="Backend directory and tritonserver.log.  [default: REPOSITORY/../triton-work]")
    ] = None,
) -> None:
    """Run the tritonserver that nvidia-pytriton ships on REPOSITORY (loopback gRPC) until Ctrl-C or SIGTERM."""
    install = srv.find_install(tritonserver)
    work = workdir or Path(repository).resolve().parent / "triton-work"
    server = srv.TritonServer(repository, work, install=install, grpc_port=grpc_port)
    step(f"starting {install.binary} on {repository} (log {server.log_path})")
    stopped = threading.Event()
    # SIGTERM (a service manager, kill) stops the server too: Python's default would leave it running, orphaned
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with server:
        result(f"serving {repository} on {server.url} (gRPC); Ctrl-C stops it")
        try:
            while server.process.poll() is None and not stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            stopped.set()
        if stopped.is_set():
            step("stopping tritonserver")
            return
    message("error", f"tritonserver exited with status {server.process.returncode}; its log ends:\n{server.log_tail()}")
    raise typer.Exit(1)
