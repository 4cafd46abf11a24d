"""Library side of ``arl2rt generate``: pick the model and its text, stream blocks on a backend, write every block's
frames as it is made, snapshot the stream and resume it.

Model (one source):

* ``--model PACKAGE``: an exported package (:class:`arl2rt.export.package.ModelPackage`), run by ``onnxruntime``
  (default) or ``tensorrt``;
* ``--config NAME|FILE.json`` with ``--checkpoint PATH``: a PyTorch model
  (:func:`arl2rt.model.checkpoint.load_checkpoint`); ``--config`` alone gives seeded random weights (smoke tests,
  benchmarks: the frames are not meaningful);
* neither: the embedded model (:mod:`arl2rt.model.embedded`), a pixel-space model with a word vocabulary.

Text:

* ``--prompt "two red balls and one blue ball"``: words of the embedded model's vocabulary (also for a package exported
  from it);
* ``--context FILE.safetensors``: precomputed text embeddings under the key ``context``, float ``[B, text_len,
  text_dim]``. For Wan2.1 these are umT5-XXL encoder outputs, ``[1, 512, 4096]``: the last hidden state of the prompt's
  real tokens, zero-padded to 512 rows, as Wan's own pipeline (and diffusers' ``WanPipeline``) make them::

      from transformers import AutoTokenizer, UMT5EncoderModel
      from safetensors.torch import save_file
      repo = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
      tok = AutoTokenizer.from_pretrained(repo, subfolder="tokenizer")
      enc = UMT5EncoderModel.from_pretrained(repo, subfolder="text_encoder").eval()
      t = tok([prompt], padding="max_length", max_length=512, truncation=True, add_special_tokens=True,
              return_attention_mask=True, return_tensors="pt")
      h = enc(t.input_ids, t.attention_mask).last_hidden_state   # [1, 512, 4096]
      h = h * t.attention_mask[..., None]                        # rows past the prompt are zeros
      save_file({"context": h.float().contiguous()}, "prompt.safetensors")

* neither: the embedded model's default prompt, or random embeddings (seeded by ``--seed``) for random weights.

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
from safetensors import SafetensorError
from safetensors.torch import load_file

from arl2rt.errors import Arl2rtError
from arl2rt.files import sha256_file
from arl2rt.model.config import ModelConfig, load_config
from arl2rt.model.dit import CausalDiT
from arl2rt.runtime import session as sessions
from arl2rt.runtime.backends import BACKENDS, make_backend
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.video import check_new_output, check_video_output, open_writer, output_format

CONTEXT_KEY = "context"
DEFAULT_FRAMES = 48  # 3 s at 16 fps
DEFAULT_SAVE_EVERY = 10


def random_model(cfg: ModelConfig, seed: int = 0) -> CausalDiT:
    """A model with reproducible random weights (for configs without a checkpoint)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return CausalDiT(cfg)


def random_context(cfg: ModelConfig, seed: int, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, cfg.text_len, cfg.text_dim, generator=torch.Generator().manual_seed(seed))


# -- options and results -------------------------------------------------------------------------------------------
@dataclass
class GenerateOptions:
    """What ``arl2rt generate`` was asked; ``None`` means "the default" (or, on ``--resume``, what the session says)."""

    output: Path | None = None
    model: Path | None = None
    config: str | None = None
    checkpoint: Path | None = None
    backend: str | None = None
    prompt: str | None = None
    context: Path | None = None
    frames: int | None = None
    blocks: int | None = None
    seed: int | None = None
    dtype: str | None = None
    device: str | None = None
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


# -- model and text ------------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    cfg: ModelConfig
    source: dict[str, Any]  # what a session records to load it again
    model: CausalDiT | None = None
    package: Any | None = None  # ModelPackage
    embedded: Any | None = None  # EmbeddedModel
    _identity: str | None = None

    @property
    def description(self) -> str:
        s = self.source
        if s["kind"] == "package":
            return f"package {s['path']}"
        if s["kind"] == "checkpoint":
            return f"checkpoint {s['path']} (config {s['config']})"
        if s["kind"] == "random":
            return f"random weights of config {s['config']}"
        return f"embedded model {s['name']}"

    @property
    def identity(self) -> str:
        """sha256 of the package manifest, or of a PyTorch model's config and weights (computed once, on demand)."""
        if self._identity is None:
            if self.package is not None:
                from arl2rt.export.package import MANIFEST_NAME

                self._identity = sha256_file(Path(self.package.root) / MANIFEST_NAME)
            else:
                self._identity = sessions.module_identity(self.model)
        return self._identity


def _load_embedded():
    """The embedded default model (imported lazily: its weights are package data)."""
    try:
        from arl2rt.model.embedded import load_embedded
    except ImportError as exc:
        raise Arl2rtError(
            f"the embedded default model is not part of this build ({exc}); pass --model PACKAGE or --config"
        ) from None
    return load_embedded()


def load_model(opts: GenerateOptions, recorded: dict[str, Any] | None = None) -> LoadedModel:
    """The model the options name; with none named, the one a resumed session recorded, else the embedded model."""
    if opts.model is not None and (opts.config is not None or opts.checkpoint is not None):
        raise Arl2rtError("--model (an exported package) and --config/--checkpoint (PyTorch) exclude each other")
    if opts.checkpoint is not None and opts.config is None:
        raise Arl2rtError(f"--checkpoint {opts.checkpoint}: expected --config too (a preset name or a JSON file)")
    if opts.model is not None:
        source = {"kind": "package", "path": str(Path(opts.model).resolve())}
    elif opts.config is not None:
        config = str(Path(opts.config).resolve()) if Path(opts.config).is_file() else opts.config
        if opts.checkpoint is not None:
            source = {"kind": "checkpoint", "path": str(Path(opts.checkpoint).resolve()), "config": config}
        else:
            source = {"kind": "random", "config": config}
    elif recorded is not None:
        source = recorded
    else:
        source = {"kind": "embedded"}
    return _load_source(source)


def _load_source(source: dict[str, Any]) -> LoadedModel:
    kind = source.get("kind")
    if kind == "package":
        from arl2rt.export.package import ModelPackage

        package = ModelPackage.load(Path(source["path"]))
        return LoadedModel(package.config, source, package=package)
    if kind == "checkpoint":
        cfg = load_config(source["config"])
        try:
            from arl2rt.model.checkpoint import load_checkpoint
        except ImportError as exc:
            raise Arl2rtError(f"--checkpoint: checkpoint loading is not part of this build ({exc})") from None
        model = load_checkpoint(Path(source["path"]), cfg)
        return LoadedModel(model.cfg, source, model=model)
    if kind == "random":
        cfg = load_config(source["config"])
        return LoadedModel(cfg, source, model=random_model(cfg))
    if kind == "embedded":
        em = _load_embedded()
        source = {"kind": "embedded", "name": em.model.cfg.name}
        return LoadedModel(em.model.cfg, source, model=em.model, embedded=em)
    raise Arl2rtError(f"session: unknown model source {source!r}; expected a package, checkpoint, config or embedded")


def load_context(path: Path, cfg: ModelConfig) -> torch.Tensor:
    """Text embeddings ``[B, text_len, text_dim]`` from a safetensors file (key ``context``)."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise Arl2rtError(f"--context {path}: cannot read safetensors ({exc})") from None
    if CONTEXT_KEY not in tensors:
        raise Arl2rtError(f"--context {path}: expected a tensor named {CONTEXT_KEY!r}, found {sorted(tensors)}")
    ctx = tensors[CONTEXT_KEY]
    want = ["B", cfg.text_len, cfg.text_dim]
    if ctx.dim() != 3 or list(ctx.shape[1:]) != want[1:] or ctx.shape[0] < 1 or not ctx.is_floating_point():
        raise Arl2rtError(
            f"--context {path}: tensor {CONTEXT_KEY!r}: expected float {want} (model {cfg.name}), "
            f"found {str(ctx.dtype).removeprefix('torch.')} {list(ctx.shape)}"
        )
    return ctx.float()


def _vocab_encoder(cfg: ModelConfig):
    """The embedded model's prompt encoder for a model made from it (same vocabulary), else None."""
    try:
        candidate = _load_embedded()
    except Arl2rtError:
        return None
    return candidate if tuple(candidate.vocab) == tuple(cfg.vocab) else None


def resolve_context(opts: GenerateOptions, loaded: LoadedModel, seed: int) -> tuple[torch.Tensor, str]:
    """Text context of a new stream and a description of where it came from."""
    if opts.prompt is not None and opts.context is not None:
        raise Arl2rtError("--prompt and --context exclude each other")
    if opts.context is not None:
        return load_context(Path(opts.context), loaded.cfg), f"context {opts.context}"
    embedded = loaded.embedded
    if embedded is None and loaded.cfg.vocab and (opts.prompt is not None or loaded.source["kind"] != "random"):
        embedded = _vocab_encoder(loaded.cfg)
    if opts.prompt is not None:
        if embedded is None:
            raise Arl2rtError(
                f"--prompt: model {loaded.cfg.name} has no word vocabulary (it takes text embeddings); "
                "pass --context FILE.safetensors"
            )
        return embedded.encode_prompt(opts.prompt), f"prompt {opts.prompt!r}"
    if embedded is not None:
        return embedded.encode_prompt(embedded.default_prompt), f"prompt {embedded.default_prompt!r}"
    if loaded.source["kind"] == "random":
        return random_context(loaded.cfg, seed), f"random text embeddings (seed {seed})"
    raise Arl2rtError(f"model {loaded.description} needs text: pass --context FILE.safetensors (or --prompt)")


# -- the run -------------------------------------------------------------------------------------------------------
def _target_blocks(opts: GenerateOptions, cfg: ModelConfig, recorded: int | None, notes: list[str]) -> int:
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


def plan_generate(opts: GenerateOptions) -> Plan:
    """Check the options against each other, the model and a resumed session; load the model and the text."""
    notes: list[str] = []
    snapshot = sessions.load_snapshot(Path(opts.resume)) if opts.resume is not None else None
    meta = snapshot.meta if snapshot else {}
    if snapshot and (opts.prompt is not None or opts.context is not None):
        raise Arl2rtError(f"--resume {opts.resume}: the session holds its text; --prompt/--context cannot change it")
    if snapshot and opts.seed is not None and opts.seed != meta["seed"]:
        raise Arl2rtError(f"--resume {opts.resume}: the session continues seed {meta['seed']}, --seed {opts.seed}")
    if opts.save_every < 1:
        raise Arl2rtError(f"--save-every must be >= 1, got {opts.save_every}")

    loaded = load_model(opts, meta.get("model", {}).get("source"))
    cfg = loaded.cfg
    backend = opts.backend or meta.get("backend") or ("onnxruntime" if loaded.package is not None else "torch")
    if backend not in BACKENDS:
        raise Arl2rtError(f"--backend {backend!r}: expected one of {sorted(BACKENDS)}")
    dtype = opts.dtype or meta.get("dtype") or (loaded.package.spec.dtype if loaded.package is not None else "float32")
    if loaded.package is not None and dtype != loaded.package.spec.dtype:
        raise Arl2rtError(
            f"--dtype {dtype}: package {loaded.source['path']} was exported at {loaded.package.spec.dtype}"
        )
    if snapshot:
        sessions.check_compatible(
            snapshot, identity=loaded.identity, source=loaded.description, config=cfg.to_dict(), dtype=dtype
        )
    device = opts.device or meta.get("device") or ("cuda" if backend == "tensorrt" else "cpu")
    seed = meta["seed"] if snapshot else (0 if opts.seed is None else opts.seed)

    # output: a resumed stream appends to the output the session recorded, unless -o names another
    recorded = meta.get("output")
    output = Path(opts.output) if opts.output is not None else (Path(recorded["path"]) if recorded else None)
    if output is None:
        raise Arl2rtError("expected an output: -o out.mp4 | out.gif | out.npz | DIR/ (PNG frames)")
    fmt = output_format(output)
    check_video_output(fmt, cfg.out_channels, cfg.name)
    append = recorded if recorded is not None and Path(recorded["path"]) == output.resolve() else None
    if append is None:
        check_new_output(output, opts.overwrite)
    if snapshot and append is None:
        notes.append(f"frames from {snapshot.position.frame} on go to the new output {output} (not appended)")

    target = _target_blocks(opts, cfg, meta.get("target_blocks"), notes)
    if snapshot and target <= snapshot.position.block:
        raise Arl2rtError(
            f"--resume {opts.resume}: the stream is already {snapshot.position.block} blocks long, target {target}; "
            "pass a larger --blocks/--frames to extend it"
        )
    context = None
    if snapshot is None:
        context, text = resolve_context(opts, loaded, seed)
        if fmt != "npz" and context.shape[0] != 1:
            raise Arl2rtError(f"output {output}: video formats take one stream; --context has batch {context.shape[0]}")
        batch = context.shape[0]
    else:
        text, batch = meta.get("text", ""), meta["batch"]
        if meta.get("backend") != backend:
            notes.append(f"resumed on {backend}, the session ran on {meta.get('backend')}: not bit-identical")

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
    )


def run_generate(opts: GenerateOptions, progress: Callable[[Progress], None] | None = None) -> GenerateResult:
    """Generate (or continue) a stream as ``opts`` say; Ctrl-C stops after closing the output (``interrupted``)."""
    plan = plan_generate(opts)
    cfg, fpb = plan.loaded.cfg, plan.loaded.cfg.frames_per_block
    backend = make_backend(
        plan.backend, model=plan.loaded.model, package=plan.loaded.package, dtype=plan.dtype, device=plan.device
    )
    identity = plan.loaded.identity if plan.save_dir is not None else None
    start = plan.snapshot.position.block if plan.snapshot else 0
    peak_state, saved, interrupted = 0, start if plan.snapshot else None, False
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
        writer = open_writer(plan.output, fps=opts.fps, resume=plan.append, overwrite=opts.overwrite)

        def save() -> None:
            record = {
                "model": {
                    "identity": identity,
                    "source": plan.loaded.source,
                    "description": plan.loaded.description,
                    "config": cfg.to_dict(),
                },
                "backend": plan.backend,
                "dtype": plan.dtype,
                "device": str(plan.device),
                "batch": plan.batch,
                "seed": plan.seed,
                "text": plan.text,
                "target_blocks": plan.target_blocks,
                "output": writer.state(),
            }
            sessions.save_snapshot(plan.save_dir, streamer, record)

        with writer:
            try:
                while streamer.position.block < plan.target_blocks:
                    writer.write(streamer.next_block())
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
        frames=made * fpb,
        total_blocks=pos.block,
        total_frames=pos.frame,
        seconds=seconds,
        blocks_per_s=made / seconds if seconds > 0 else 0.0,
        frames_per_s=made * fpb / seconds if seconds > 0 else 0.0,
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
