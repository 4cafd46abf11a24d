"""One stream from a Triton server running the arl2rt Python-backend model, written to a file as it arrives.

Per block, one gRPC request on the stream's sequence ID: the first with ``sequence_start`` and the stream's seed and
text (:mod:`arl2rt.serve.protocol`), the last with ``sequence_end`` (the server then frees the stream). The model's
settings, read from the server's model config, give the block length, the text's shape and whether blocks come as
video. The same seed and text as ``arl2rt generate`` on the same model and backend give the same frames, bit for bit.
A client stopped early (Ctrl-C, killed) leaves its stream to the server's idle timeout.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.model.config import ModelConfig
from arl2rt.runtime.generate import GenerateOptions, target_blocks
from arl2rt.runtime.text import load_context
from arl2rt.runtime.video import check_new_output, check_video_output, open_writer, output_format
from arl2rt.serve import protocol as p
from arl2rt.serve.served import ServeSettings

MAX_SEQUENCE_ID = 2**63 - 1  # Triton's correlation IDs are uint64; 0 means "no sequence"


def _grpc() -> Any:
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as exc:
        raise Arl2rtError(
            f"a Triton client needs tritonclient with gRPC ({exc}); pip install 'arl2rt[serve]'"
        ) from None
    return grpcclient


def connect(url: str) -> Any:
    """A gRPC client of the server at ``url`` (``host:port``)."""
    return _grpc().InferenceServerClient(url)


def server_error(url: str, model: str, exc: Exception) -> Arl2rtError:
    text = exc.message() if hasattr(exc, "message") else str(exc)
    return Arl2rtError(f"server {url}, model {model}: {text}")


def model_settings(client: Any, url: str, model: str) -> ServeSettings:
    """The serving settings of ``model`` on the server (its config's ``arl2rt`` parameter)."""
    from tritonclient.utils import InferenceServerException

    try:
        config = client.get_model_config(model).config
    except InferenceServerException as exc:
        raise server_error(url, model, exc) from None
    if p.SETTINGS_PARAMETER not in config.parameters:
        raise Arl2rtError(f"server {url}, model {model}: not an arl2rt model (its config has no arl2rt settings)")
    return ServeSettings.from_json(config.parameters[p.SETTINGS_PARAMETER].string_value)


@dataclass
class RemoteOptions:
    """What ``arl2rt generate --server`` was asked."""

    server: str
    output: Path
    model_name: str = "arl2rt"
    prompt: str | None = None
    context: Path | None = None
    frames: int | None = None
    blocks: int | None = None
    seed: int | None = None
    fps: int = 16
    overwrite: bool = False
    sequence_id: int | None = None  # None: a random one


@dataclass
class RemoteResult:
    output: str
    format: str
    server: str
    model_name: str
    sequence_id: int
    blocks: int
    frames: int
    seconds: float
    blocks_per_s: float
    frames_per_s: float
    state_bytes: int  # the stream's state on the server after its last block
    latencies: list[float] = field(default_factory=list)  # seconds of each block's request
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RemoteProgress:
    block: int
    total_blocks: int
    seconds: float
    state_bytes: int


def block_inputs(
    block: int, *, seed: int | None = None, prompt: str | None = None, context: torch.Tensor | None = None
) -> list[Any]:
    """The inputs of the request for ``block``; seed and text go with block 0 only."""
    g = _grpc()

    def tensor(name: str, array: np.ndarray) -> Any:
        kind = {np.int64: "INT64", np.object_: "BYTES"}.get(array.dtype.type, "FP32")
        t = g.InferInput(name, list(array.shape), kind)
        t.set_data_from_numpy(array)
        return t

    inputs = [tensor(p.BLOCK, np.array([[block]], dtype=np.int64))]
    if seed is not None:
        inputs.append(tensor(p.SEED, np.array([[seed]], dtype=np.int64)))
    if prompt is not None:
        inputs.append(tensor(p.PROMPT, np.array([[prompt.encode("utf-8")]], dtype=np.object_)))
    if context is not None:
        inputs.append(tensor(p.CONTEXT, context.float().numpy()))
    return inputs


def stream_remote(opts: RemoteOptions, progress: Callable[[RemoteProgress], None] | None = None) -> RemoteResult:
    """Stream one video from the server as ``opts`` say, writing each block as it arrives."""
    from tritonclient.utils import InferenceServerException

    g = _grpc()
    client = connect(opts.server)
    settings = model_settings(client, opts.server, opts.model_name)
    cfg = ModelConfig.from_dict(settings.config, f"server {opts.server} model {opts.model_name}")
    notes: list[str] = []
    blocks = target_blocks(GenerateOptions(frames=opts.frames, blocks=opts.blocks), cfg, None, notes)
    if opts.prompt is not None and opts.context is not None:
        raise Arl2rtError("--prompt and --context exclude each other")
    output = Path(opts.output)
    fmt = output_format(output)
    check_video_output(fmt, cfg.out_channels, cfg.name, decodes=settings.vae)
    check_new_output(output, opts.overwrite)
    context = load_context(Path(opts.context), cfg) if opts.context is not None else None
    if context is not None and context.shape[0] != 1:
        raise Arl2rtError(f"--context {opts.context}: a served stream takes batch 1, found {context.shape[0]}")
    sequence_id = opts.sequence_id if opts.sequence_id is not None else random.randint(1, MAX_SEQUENCE_ID)
    if not 1 <= sequence_id <= MAX_SEQUENCE_ID:
        raise Arl2rtError(f"--sequence-id {sequence_id}: expected 1..{MAX_SEQUENCE_ID}")
    notes.append(f"stream {sequence_id} on server {opts.server}, model {opts.model_name}")
    wanted = p.FRAMES if fmt != "npz" and settings.vae else p.LATENTS
    outputs = [g.InferRequestedOutput(name) for name in (wanted, p.STATE_BYTES)]
    latencies: list[float] = []
    written, state, interrupted = 0, 0, False
    t0 = time.perf_counter()
    with open_writer(output, fps=opts.fps, overwrite=opts.overwrite) as writer:
        try:
            for b in range(blocks):
                first = b == 0
                inputs = block_inputs(
                    b,
                    seed=(0 if opts.seed is None else opts.seed) if first else None,
                    prompt=opts.prompt if first else None,
                    context=context if first else None,
                )
                t = time.perf_counter()
                try:
                    r = client.infer(
                        opts.model_name,
                        inputs,
                        outputs=outputs,
                        sequence_id=sequence_id,
                        sequence_start=first,
                        sequence_end=b == blocks - 1,
                    )
                except InferenceServerException as exc:
                    raise server_error(opts.server, opts.model_name, exc) from None
                latencies.append(time.perf_counter() - t)
                frames = torch.from_numpy(r.as_numpy(wanted).copy())  # the response's buffer is read-only
                writer.write(frames)
                written += frames.shape[2]
                state = int(r.as_numpy(p.STATE_BYTES).reshape(-1)[0])
                if progress is not None:
                    progress(RemoteProgress(b + 1, blocks, time.perf_counter() - t0, state))
        except KeyboardInterrupt:
            interrupted = True
            notes.append(f"stopped: the server frees stream {sequence_id} after {settings.idle_timeout:g} s idle")
    seconds = time.perf_counter() - t0
    made = len(latencies)
    return RemoteResult(
        output=str(output),
        format=fmt,
        server=opts.server,
        model_name=opts.model_name,
        sequence_id=sequence_id,
        blocks=made,
        frames=written,
        seconds=seconds,
        blocks_per_s=made / seconds if seconds > 0 else 0.0,
        frames_per_s=written / seconds if seconds > 0 else 0.0,
        state_bytes=state,
        latencies=latencies,
        interrupted=interrupted,
        notes=notes,
    )
