"""The model one Triton model instance serves: settings written into the repository, the model they load, its backend,
and the answer to one request.

:func:`plan_settings` resolves a model source and backend as ``arl2rt generate`` does (the same defaults: a package
runs on the backend its target needs, a PyTorch model on torch, small models on one CPU thread) and checks them where
the repository is written, so a bad option fails there and not inside the server. :class:`ServedModel` loads the
recorded source again inside the server and answers requests (:class:`Request`) through a :class:`StreamTable`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from arl2rt.errors import Arl2rtError, setting
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
from arl2rt.runtime.text import resolve_context
from arl2rt.runtime.threads import check_threads, default_threads
from arl2rt.serve.streams import Block, StreamTable

DEFAULT_IDLE_TIMEOUT = 60.0  # seconds a stream may go without a request before it is freed
SERVED_BACKENDS = ("torch", "onnxruntime")  # tensorrt engines are built for a stream length a server does not know


@dataclass
class ServeSettings:
    """What a served model instance loads and how it runs, as recorded in the repository's model config."""

    source: dict[str, Any]  # a runtime.sources record: package, checkpoint, random config or the embedded model
    config: dict[str, Any]  # the model's ModelConfig, for clients (block length, text shape)
    backend: str
    dtype: str
    device: str
    threads: int
    idle_timeout: float
    text_encoder: str | None = None
    vae: bool = False  # whether blocks are decoded to video (FRAMES)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        return cls(**json.loads(text))


def plan_settings(
    *,
    model: Path | None = None,
    config: str | None = None,
    checkpoint: Path | None = None,
    vae: Path | None = None,
    text_encoder: Path | None = None,
    backend: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    threads: int | None = None,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
) -> tuple[ServeSettings, LoadedModel]:
    """Resolve and check a served model's settings (loading the model once); the settings and the loaded model."""
    if idle_timeout <= 0:
        raise Arl2rtError(f"{setting('--idle-timeout', 'idle_timeout')} must be > 0 s, got {idle_timeout}")
    if threads is not None:
        check_threads(threads)
    if backend is not None:
        backend_entry(backend, "--backend")
        if backend not in SERVED_BACKENDS:
            raise Arl2rtError(
                f"--backend {backend}: serving runs {' or '.join(SERVED_BACKENDS)}; TensorRT engines are built for a "
                "longest stream, which a server does not know"
            )
    if text_encoder is not None and not Path(text_encoder).is_dir():
        raise Arl2rtError(f"--text-encoder {text_encoder}: expected a local umT5 encoder folder, found none")
    loaded = load_model(package=model, config=config, checkpoint=checkpoint, vae=vae)
    package = loaded.package
    name = backend or (package_backend(package.target) if package is not None else DEFAULT_BACKEND["model"])
    if name not in SERVED_BACKENDS:
        raise Arl2rtError(
            f"package {loaded.source['path']} has target {package.target}, which runs on {name}; serving runs "
            f"{' or '.join(SERVED_BACKENDS)} (export the package for the onnxruntime or portable target)"
        )
    if check_runs(name, model=loaded.model, package=package).runs == "package":
        check_target(name, package.target, f"--backend {name}: package {loaded.source['path']} has target")
    precision = dtype or (package.spec.dtype if package is not None else "float32")
    if package is not None and precision != package.spec.dtype:
        raise Arl2rtError(f"--dtype {precision}: package {loaded.source['path']} was exported at {package.spec.dtype}")
    device = resolve_device(name, device)
    check_device(device)
    decodes = loaded.vae is not None or (package is not None and package.spec.vae is not None)
    settings = ServeSettings(
        source=loaded.source,
        config=json.loads(json.dumps(loaded.cfg.to_dict())),  # as the JSON in the repository reads back
        backend=name,
        dtype=precision,
        device=device,
        threads=threads if threads is not None else default_threads(loaded.cfg),
        idle_timeout=float(idle_timeout),
        text_encoder=str(Path(text_encoder).resolve()) if text_encoder is not None else None,
        vae=decodes,
    )
    return settings, loaded


@dataclass
class Request:
    """One request: block ``block`` of sequence ``corrid``; ``start`` and ``end`` as the sequence batcher flags them;
    the text and seed only on the sequence's first request."""

    corrid: int
    block: int
    start: bool = False
    end: bool = False
    seed: int | None = None
    prompt: str | None = None
    context: torch.Tensor | None = None  # [1, text_len, text_dim]


class ServedModel:
    """The model of one Triton model instance: loaded from its settings, its backend active until :meth:`close`."""

    def __init__(self, settings: ServeSettings, loaded: LoadedModel | None = None) -> None:
        self.settings = settings
        self.loaded = loaded if loaded is not None else load_model(recorded=settings.source)
        self.backend = make_backend(
            settings.backend,
            model=self.loaded.model,
            package=self.loaded.package,
            dtype=settings.dtype,
            device=settings.device,
            vae=self.loaded.vae,
        )
        self.backend.activate()
        self.table = StreamTable(self.backend, idle_timeout=settings.idle_timeout)

    def close(self) -> None:
        self.backend.deactivate()

    def text(self, request: Request) -> torch.Tensor:
        """The stream's text context, as ``arl2rt generate`` resolves it for the same prompt, embeddings and seed."""
        seed = 0 if request.seed is None else request.seed
        if request.context is None:
            encoder = Path(self.settings.text_encoder) if self.settings.text_encoder is not None else None
            context, _ = resolve_context(self.loaded, seed, prompt=request.prompt, text_encoder=encoder)
            return context
        if request.prompt is not None:
            raise Arl2rtError(f"sequence {request.corrid}: PROMPT and CONTEXT exclude each other")
        context = request.context
        spec = self.backend.spec.context()
        if not context.is_floating_point():
            raise Arl2rtError(f"sequence {request.corrid}: CONTEXT: expected float32, found {context.dtype}")
        context = context.float()
        spec.check(context.to(spec.torch_dtype), batch=1)
        if not bool(torch.isfinite(context).all()):
            raise Arl2rtError(f"sequence {request.corrid}: CONTEXT: expected finite values, found NaN or infinity")
        return context

    def answer(self, request: Request) -> Block:
        """The block ``request`` asks for (callers hold ``table.lock``)."""
        if request.start:
            if request.block != 0:
                raise Arl2rtError(
                    f"sequence {request.corrid}: the request that starts a stream asks for block 0, not {request.block}"
                )
            self.table.start(request.corrid, self.text(request), 0 if request.seed is None else request.seed)
        elif request.seed is not None or request.prompt is not None or request.context is not None:
            raise Arl2rtError(
                f"sequence {request.corrid}: SEED, PROMPT and CONTEXT go with the request that starts the stream"
            )
        try:
            return self.table.next_block(request.corrid, request.block)
        finally:
            if request.end:
                self.table.end(request.corrid)
