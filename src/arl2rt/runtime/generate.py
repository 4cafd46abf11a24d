"""Library side of ``arl2rt generate``: plan a run from the options (and a resumed session), stream blocks on a
backend, write every block's frames as it is made, snapshot the stream and resume it.

Model and text: see :mod:`arl2rt.runtime.sources` (``--model``, ``--config``, ``--checkpoint``, the embedded model)
and :mod:`arl2rt.runtime.text` (``--prompt``, ``--context``); backends and their defaults:
:mod:`arl2rt.runtime.backends`.

Length: ``--blocks N`` or ``--frames N`` (latent frames, rounded up to whole blocks), the *total* length of the stream:
on ``--resume`` the stream continues up to it (default: the length the session was started with).

Output and sessions: see :mod:`arl2rt.runtime.video` (formats, appending) and :mod:`arl2rt.runtime.session`
(snapshots). A resumed stream appends to the output the session recorded (cut back to the snapshot first, so frames a
killed run made after its last snapshot are made again, identically); given another ``-o``, the frames from the
snapshot on go to that new file instead, and the result says so. Long streams re-base RoPE positions exactly
(:mod:`arl2rt.runtime.rope_rebase`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.model.config import ModelConfig
from arl2rt.model.fp8 import FP8_DTYPE_NAMES, check_fp8_device
from arl2rt.runtime import session as sessions
from arl2rt.runtime.backends import (
    DEFAULT_BACKEND,
    backend_entry,
    check_device,
    check_runs,
    check_target,
    make_backend,
    package_backend,
    resolve_device,
)
from arl2rt.runtime.sources import LoadedModel, load_model
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.text import resolve_context
from arl2rt.runtime.threads import check_threads, cpu_threads, default_threads
from arl2rt.runtime.trt.flavour import DEFAULT_FLAVOUR
from arl2rt.runtime.trt.profiles import stream_max_frames
from arl2rt.runtime.video import check_new_output, check_video_output, open_writer, output_format
from arl2rt.runtime.video.background import BackgroundWriter, background_wanted

DEFAULT_FRAMES = 48  # 3 s at 16 fps
DEFAULT_SAVE_EVERY = 10


# -- options and results -------------------------------------------------------------------------------------------
@dataclass
class GenerateOptions:
    """What ``arl2rt generate`` was asked; ``None`` means "the default" (or, on ``--resume``, what the session says)."""

    output: Path | None = None
    model: Path | None = None
    config: str | None = None
    checkpoint: Path | None = None
    backend: str | None = None
    flavour: str | None = None  # TensorRT library of the tensorrt backend
    prompt: str | None = None
    context: Path | None = None
    frames: int | None = None
    blocks: int | None = None
    seed: int | None = None
    dtype: str | None = None
    device: str | None = None
    threads: int | None = None  # CPU threads; None: runtime.threads.default_threads
    vae: Path | None = None  # Wan2.1 VAE or TAEHV weights: decode a PyTorch model's latents into video
    text_encoder: Path | None = None  # umT5 encoder folder: --prompt for a model that takes text embeddings
    fp8: bool = False  # torch backend: the DiT blocks' GEMMs in E4M3 (arl2rt.model.fp8)
    fps: int = 16
    save_session: Path | None = None
    save_every: int = DEFAULT_SAVE_EVERY
    resume: Path | None = None
    overwrite: bool = False


@dataclass
class Progress:
    """Handed to the progress callback after every block."""

    block: int  # blocks of the stream made so far (including those before a resume)
    total_blocks: int
    frames: int
    seconds: float  # of this run
    blocks_per_s: float
    frames_per_s: float
    state_bytes: int  # everything the StateStore holds now: GDN states, K/V caches, text K/V


@dataclass
class GenerateResult:
    output: str
    format: str
    backend: str
    model: str
    blocks: int  # made by this run
    frames: int  # written by this run
    total_blocks: int  # of the stream, including blocks before a resume
    total_frames: int
    seconds: float
    blocks_per_s: float
    frames_per_s: float
    state_bytes: dict[str, int]
    peak_state_bytes: int
    peak_rss_bytes: int | None
    peak_cuda_bytes: int | None
    resumed_from_block: int | None = None
    session: str | None = None
    session_block: int | None = None  # block of the last snapshot saved
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the run -------------------------------------------------------------------------------------------------------
def target_blocks(opts: GenerateOptions, cfg: ModelConfig, recorded: int | None, notes: list[str]) -> int:
    """The stream's length in blocks from ``--blocks`` or ``--frames`` (rounded up: a note says so), else the
    ``recorded`` length of a resumed session, else the default; also used by the serving client."""
    if opts.frames is not None and opts.blocks is not None:
        raise Arl2rtError("--frames and --blocks exclude each other")
    fpb = cfg.frames_per_block
    if opts.blocks is not None:
        if opts.blocks < 1:
            raise Arl2rtError(f"--blocks must be >= 1, got {opts.blocks}")
        return opts.blocks
    if opts.frames is None and recorded is not None:
        return recorded
    frames = DEFAULT_FRAMES if opts.frames is None else opts.frames
    if frames < 1:
        raise Arl2rtError(f"--frames must be >= 1, got {frames}")
    blocks = math.ceil(frames / fpb)
    if blocks * fpb != frames:
        notes.append(f"{frames} frames rounded up to {blocks} blocks = {blocks * fpb} frames ({fpb} per block)")
    return blocks


def _peak_rss() -> int | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@dataclass
class Plan:
    """Everything :func:`run_generate` resolved from the options (and a resumed session) before it starts."""

    loaded: LoadedModel
    backend: str
    dtype: str
    device: str
    threads: int
    seed: int
    output: Path
    format: str
    append: dict[str, Any] | None  # the recorded writer state to append after, or None for a new output
    target_blocks: int
    batch: int
    text: str
    context: torch.Tensor | None  # for a new stream
    snapshot: sessions.Snapshot | None  # for a resumed one
    save_dir: Path | None
    notes: list[str]
    backend_options: dict[str, Any]  # make_backend's options


def plan_generate(opts: GenerateOptions) -> Plan:
    """Check the options against each other, the model and a resumed session; load the model and the text."""
    notes: list[str] = []
    snapshot = sessions.load_snapshot(Path(opts.resume)) if opts.resume is not None else None
    record = sessions.SessionRecord.from_meta(snapshot.meta, snapshot.path / sessions.META) if snapshot else None

    def recorded(name: str) -> Any:
        """What the resumed session recorded as ``name``; None for a new stream."""
        return getattr(record, name) if record is not None else None

    if snapshot and (opts.prompt is not None or opts.context is not None):
        raise Arl2rtError(f"--resume {opts.resume}: the session holds its text; --prompt/--context cannot change it")
    if record and opts.seed is not None and opts.seed != record.seed:
        raise Arl2rtError(f"--resume {opts.resume}: the session continues seed {record.seed}, --seed {opts.seed}")
    if opts.save_every < 1:
        raise Arl2rtError(f"--save-every must be >= 1, got {opts.save_every}")

    if opts.threads is not None:
        check_threads(opts.threads)
    named_backend = opts.backend if opts.backend is not None else recorded("backend")
    if named_backend is not None:
        backend_entry(named_backend, "--backend")
    # checked before the model is loaded: a bad device must not wait for a large package to be hashed
    device = opts.device if opts.device is not None else recorded("device")
    if device is not None and device != "auto":
        check_device(device)

    loaded = load_model(
        package=opts.model, config=opts.config, checkpoint=opts.checkpoint, vae=opts.vae, recorded=recorded("source")
    )
    cfg = loaded.cfg
    package = loaded.package
    # a package's default backend is the one of its target, so a tensorrt package is not handed to onnxruntime
    backend = named_backend or (package_backend(package.target) if package is not None else DEFAULT_BACKEND["model"])
    if check_runs(backend, model=loaded.model, package=package).runs == "package":
        check_target(backend, package.target, f"--backend {backend}: package {loaded.source['path']} has target")
    flavours = backend_entry(backend).flavours
    if opts.flavour is not None and opts.flavour not in flavours:
        takes = f"one of {list(flavours)}" if flavours else "none (a flavour is a TensorRT library: --backend tensorrt)"
        raise Arl2rtError(f"--flavour {opts.flavour}: backend {backend} takes {takes}")
    dtype = opts.dtype or recorded("dtype") or (loaded.package.spec.dtype if loaded.package is not None else "float32")
    if opts.fp8:
        if backend != "torch":
            raise Arl2rtError(
                f"--fp8: backend {backend} runs the package's own precision; FP8 layers are the torch backend's"
            )
        if dtype not in FP8_DTYPE_NAMES:
            raise Arl2rtError(f"--fp8: needs --dtype bfloat16 or float16 (scaled_mm's outputs); found {dtype}")
    if loaded.package is not None and dtype != loaded.package.spec.dtype:
        raise Arl2rtError(
            f"--dtype {dtype}: package {loaded.source['path']} was exported at {loaded.package.spec.dtype}"
        )
    if snapshot:
        sessions.check_compatible(
            snapshot, identity=loaded.identity, source=loaded.description, config=cfg.to_dict(), dtype=dtype
        )
    source = "--device"  # a backend's default device (tensorrt: cuda) is checked too, before a session dir is made
    if device is None:
        source = f"backend {backend} runs on"
        if package is not None and named_backend is None:
            source = f"package {loaded.source['path']} has target {package.target}: backend {backend} runs it on"
    device = resolve_device(backend, device)
    check_device(device, source)
    if opts.fp8:
        check_fp8_device(torch.device(device))  # sm_89+: refused before a session dir is made
    threads = opts.threads if opts.threads is not None else default_threads(cfg)
    seed = record.seed if record else (0 if opts.seed is None else opts.seed)

    # output: a resumed stream appends to the output the session recorded, unless -o names another
    written = recorded("output")
    output = Path(opts.output) if opts.output is not None else (Path(written["path"]) if written else None)
    if output is None:
        raise Arl2rtError("expected an output: -o out.mp4 | out.gif | out.npz | DIR/ (PNG frames)")
    fmt = output_format(output)
    decodes = loaded.vae is not None or (loaded.package is not None and loaded.package.spec.vae is not None)
    check_video_output(fmt, cfg.out_channels, cfg.name, decodes=decodes)
    append = written if written is not None and Path(written["path"]) == output.resolve() else None
    if append is None:
        check_new_output(output, opts.overwrite)
    if snapshot and append is None:
        notes.append(f"frames from {snapshot.position.frame} on go to the new output {output} (not appended)")

    target = target_blocks(opts, cfg, recorded("target_blocks"), notes)
    if snapshot and target <= snapshot.position.block:
        raise Arl2rtError(
            f"--resume {opts.resume}: the stream is already {snapshot.position.block} blocks long, target {target}; "
            "pass a larger --blocks/--frames to extend it"
        )
    context = None
    if record is None:
        context, text = resolve_context(
            loaded, seed, prompt=opts.prompt, context=opts.context, text_encoder=opts.text_encoder
        )
        if fmt != "npz" and context.shape[0] != 1:
            raise Arl2rtError(f"output {output}: video formats take one stream; --context has batch {context.shape[0]}")
        batch = context.shape[0]
    else:
        text, batch = record.text, record.batch
        if record.backend != backend:
            notes.append(f"resumed on {backend}, the session ran on {record.backend}: not bit-identical")

    backend_options: dict[str, Any] = {"fp8": True} if opts.fp8 else {}
    if backend == "tensorrt":  # engines for exactly this stream: found in the cache, else built before block 1
        max_frames = stream_max_frames(cfg, target)
        backend_options = {"flavour": opts.flavour or DEFAULT_FLAVOUR, "max_frames": max_frames, "max_batch": batch}
    save_dir = Path(opts.save_session) if opts.save_session is not None else (Path(opts.resume) if snapshot else None)
    if save_dir is not None:
        sessions.prepare_session_dir(save_dir, resuming_from=Path(opts.resume) if snapshot else None)
    if loaded.source["kind"] == "random":
        notes.append(f"config {cfg.name} with random weights: the frames are not meaningful")
    return Plan(
        loaded,
        backend,
        dtype,
        device,
        threads,
        seed,
        output,
        fmt,
        append,
        target,
        batch,
        text,
        context,
        snapshot,
        save_dir,
        notes,
        backend_options,
    )


def run_generate(opts: GenerateOptions, progress: Callable[[Progress], None] | None = None) -> GenerateResult:
    """Generate (or continue) a stream as ``opts`` say; Ctrl-C stops after closing the output (``interrupted``)."""
    plan = plan_generate(opts)
    with cpu_threads(plan.threads):
        return _run(plan, opts, progress)


def _run(plan: Plan, opts: GenerateOptions, progress: Callable[[Progress], None] | None) -> GenerateResult:
    cfg, fpb = plan.loaded.cfg, plan.loaded.cfg.frames_per_block
    backend = make_backend(
        plan.backend,
        model=plan.loaded.model,
        package=plan.loaded.package,
        dtype=plan.dtype,
        device=plan.device,
        options=plan.backend_options,
        vae=plan.loaded.vae,
    )
    if plan.save_dir is not None:
        _ = plan.loaded.identity  # hashed (once) before the clock starts
    start = plan.snapshot.position.block if plan.snapshot else 0
    peak_state, saved, interrupted, written = 0, start if plan.snapshot else None, False, 0
    video = plan.format != "npz"  # a model with a VAE writes decoded frames to video, its latents to .npz
    t0 = time.perf_counter()
    with backend:
        # a global K/V cache starts at most this long and grows geometrically (a huge --blocks must not preallocate)
        capacity = min(plan.target_blocks * fpb, 256)
        streamer = Streamer(backend, seed=plan.seed, batch=plan.batch, max_frames=capacity)
        if plan.snapshot is None:
            streamer.start(plan.context)
        else:
            plan.snapshot.restore(streamer)
        # opened last: a run that cannot start leaves an existing output untouched
        writer = open_writer(plan.output, fps=opts.fps, resume=plan.append, overwrite=opts.overwrite, first_block=start)
        if background_wanted():  # encode and write a block while the next one is made
            writer = BackgroundWriter(writer)

        def save() -> None:
            record = sessions.SessionRecord(
                identity=plan.loaded.identity, source=plan.loaded.source, description=plan.loaded.description,
                config=cfg.to_dict(), backend=plan.backend, dtype=plan.dtype, device=str(plan.device),
                batch=plan.batch, seed=plan.seed, text=plan.text, target_blocks=plan.target_blocks,
                output=writer.state(),
            )  # fmt: skip
            sessions.save_snapshot(plan.save_dir, streamer, record.to_meta())

        with writer:
            try:
                while streamer.position.block < plan.target_blocks:
                    latents = streamer.next_block()
                    block = streamer.last_frames if video and streamer.last_frames is not None else latents
                    writer.write(block)
                    written += block.shape[2]
                    pos, state = streamer.position, sum(streamer.store.nbytes().values())
                    peak_state = max(peak_state, state)
                    if plan.save_dir is not None and (
                        pos.block % opts.save_every == 0 or pos.block == plan.target_blocks
                    ):
                        save()
                        saved = pos.block
                    if progress is not None:
                        done, dt = pos.block - start, time.perf_counter() - t0
                        progress(
                            Progress(pos.block, plan.target_blocks, pos.frame, dt, done / dt, done * fpb / dt, state)
                        )
            except KeyboardInterrupt:
                interrupted = True
        seconds = time.perf_counter() - t0
        made, end_state, pos = streamer.position.block - start, streamer.store.nbytes(), streamer.position
    cuda_peak = None
    if torch.device(plan.device).type == "cuda" and torch.cuda.is_available():
        cuda_peak = torch.cuda.max_memory_allocated(torch.device(plan.device))
    return GenerateResult(
        output=str(plan.output),
        format=plan.format,
        backend=getattr(backend, "label", plan.backend),
        model=plan.loaded.description,
        blocks=made,
        frames=written,
        total_blocks=pos.block,
        total_frames=pos.frame,
        seconds=seconds,
        blocks_per_s=made / seconds if seconds > 0 else 0.0,
        frames_per_s=written / seconds if seconds > 0 else 0.0,
        state_bytes=end_state,
        peak_state_bytes=peak_state,
        peak_rss_bytes=_peak_rss(),
        peak_cuda_bytes=cuda_peak,
        resumed_from_block=start if plan.snapshot else None,
        session=str(plan.save_dir) if plan.save_dir is not None else None,
        session_block=saved,
        interrupted=interrupted,
        notes=plan.notes,
    )
