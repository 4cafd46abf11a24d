"""The TensorRT backend: runs a package's step engines on a CUDA GPU through the same Streamer as every backend.

The engines are those of ``spec.graphs``: the DiT's three steps, and the VAE decoder's ``decode_first`` /
``decode_step`` when the package has one (the Streamer runs them after each block's commit, as on every backend).

Activation finds the engines (an explicit ``engine_dir`` written by ``arl2rt build``, verified against this machine, or
the engine cache, building on a miss), deserializes them and makes one execution context per graph. Engines whose
profiles are wider than asked for serve too, so a stream runs on what ``arl2rt build`` made for a longer one; one
that needs more gets engines built for it before its first block (``arl2rt generate`` asks for its own length).

A step binds every tensor by address (``set_tensor_address``): inputs are the Streamer's tensors, outputs are written
into the buffers the caller passes in ``out`` (the StateStore's spare states: ping-pong, no copies; or, for an engine
whose plugin updates the state in place, the input's own buffer) or into new tensors; the block's K/V come back as
outputs that the StateStore writes into its cache. ``denoise_step`` runs four times per block with the same shapes
and state addresses, so it is captured as a CUDA graph on its second call and replayed (the per-pass latents,
timestep and frame offset are copied into the graph's static inputs first).

Errors name what to do: TensorRT missing (how to install), no or unsupported GPU, a plugin creator missing at
deserialization (import the plugin module for JIT plugins, or rebuild with AOT plugins), engines built for another
TensorRT or GPU (rebuild).

This module is written to TensorRT's documented Python API (10.9+ / 11.x) and has never run: TensorRT cannot be
installed on this project's machines (tests/runtime/test_tensorrt_backend.py skips there, saying so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import PER_PASS, StateSpec
from arl2rt.plugins.gdn.trt_register import REGISTRATION_MODULE, register_trt_plugins
from arl2rt.runtime.backend import Backend
from arl2rt.runtime.trt.build import build_engines, default_cache_dir, engine_key
from arl2rt.runtime.trt.cache import read_entry
from arl2rt.runtime.trt.flavour import DEFAULT_FLAVOUR, cuda_capability, load_flavour
from arl2rt.runtime.trt.loaders import DTYPE_NAMES, make_logger

if TYPE_CHECKING:
    from arl2rt.export.package import ModelPackage

# compute capabilities TensorRT-RTX's runtime refuses (data-center Hopper and Blackwell)
_RTX_UNSUPPORTED = ("9.0", "10.0")


def deserialize_error(path: Path, messages: list[str], target: str, flavour: str, version: str) -> str:
    """The user-facing reason a serialized engine did not load, from TensorRT's log messages."""
    text = " ".join(messages)
    low = text.lower()
    if "plugin" in low and ("creator" in low or "not found" in low or "could not find" in low):
        fix = (
            f"import {REGISTRATION_MODULE} before loading (its JIT plugins need Python and Triton at run time), or "
            "rebuild with AOT plugins only (arl2::gdn_prep / gdn_scan / gdn_combine), whose kernels live in the engine"
            if target == "tensorrt"
            else "rebuild the engines for this package"
        )
        return f"{path}: a plugin the engine uses is not registered ({text[:300]}); {fix}"
    if any(w in low for w in ("compute capability", "device", " sm ", "sm_", "architecture")):
        return f"{path}: built for another GPU ({text[:300]}); rebuild with `arl2rt build` on this machine"
    if any(w in low for w in ("version", "magic", "serializ", "incompatible")):
        return f"{path}: built by another TensorRT than {flavour} {version} ({text[:300]}); rebuild with `arl2rt build`"
    return f"{path}: {flavour} {version} could not deserialize the engine ({text[:300] or 'no message'})"


def engine_io(engine: Any, trt: Any) -> dict[str, dict]:
    """name -> {"mode", "shape" (-1 dynamic), "dtype"} of every I/O tensor of an engine."""
    found = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        dtype = engine.get_tensor_dtype(name).name
        found[name] = {
            "mode": mode,
            "shape": list(engine.get_tensor_shape(name)),
            "dtype": DTYPE_NAMES.get(dtype, dtype),
        }
    return found


def check_engine_io(found: dict[str, dict], spec: StateSpec, graph: str, path: Path) -> None:
    """Raise unless the engine's tensors are exactly the StateSpec's (names, modes, dtypes, ranks, static dims)."""
    want = {s.name: ("input", s) for s in spec.inputs(graph)} | {s.name: ("output", s) for s in spec.outputs(graph)}
    missing, extra = sorted(set(want) - set(found)), sorted(set(found) - set(want))
    if missing or extra:
        raise Arl2rtError(f"{path}: engine tensors of {graph}: missing {missing}, unexpected {extra}")
    for name, (mode, s) in want.items():
        f = found[name]
        static = [d if isinstance(d, int) else -1 for d in s.shape]
        if f["mode"] != mode or f["dtype"] != s.dtype or f["shape"] != static:
            raise Arl2rtError(
                f"{path}: tensor {name}: expected {mode} {static} {s.dtype}, found {f['mode']} {f['shape']} "
                f"{f['dtype']} (-1 = dynamic)"
            )


@dataclass
class _Graph:
    """A captured CUDA graph of one step and the static buffers it reads and writes."""

    key: tuple
    graph: Any = None
    staged: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


class TensorRTBackend(Backend):
    """Runs ``encode_context``, ``denoise_step`` and ``commit_step`` of a :class:`ModelPackage` with TensorRT, and
    ``decode_first`` / ``decode_step`` when the package has a VAE decoder.

    Args:
        package: a loaded model package, target ``tensorrt`` or ``portable``.
        engine_dir: an engine entry written by ``arl2rt build`` (checked against this machine and package);
            None: the engine cache (``cache_dir``), building the engines on a miss.
        device: a CUDA device.
        flavour: ``"tensorrt"`` or ``"tensorrt-rtx"`` (RTX GPUs; not compute capability 9.0/10.0).
        max_frames, max_batch: the longest stream and largest batch to run (as ``arl2rt build``): engines whose
            profiles contain them are used, else engines for exactly these are built.
        cuda_graphs: capture ``denoise_step`` as a CUDA graph while its shapes and state addresses stay the same.
    """

    name = "tensorrt"

    def __init__(
        self,
        package: ModelPackage,
        engine_dir: Path | None = None,
        device: torch.device | str = "cuda",
        *,
        flavour: str = DEFAULT_FLAVOUR,
        max_frames: int | None = None,
        max_batch: int = 1,
        cache_dir: Path | None = None,
        cuda_graphs: bool = True,
    ) -> None:
        device = torch.device(device)
        if device.type != "cuda":
            raise Arl2rtError(f"device {device}: the tensorrt backend runs on CUDA devices ('cuda' or 'cuda:N')")
        super().__init__(package.spec, device)
        self.package, self.engine_dir, self.flavour_name = package, engine_dir, flavour
        self.max_frames, self.max_batch, self.cache_dir = max_frames, max_batch, cache_dir
        self.cuda_graphs = cuda_graphs
        self.label = f"{flavour} {package.target} {package.spec.dtype}"
        self.engines: dict[str, Any] = {}
        self.contexts: dict[str, Any] = {}
        self._captured: dict[str, _Graph] = {}

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        flavour = load_flavour(self.flavour_name)
        gpu = cuda_capability()
        if gpu is None:
            raise Arl2rtError(f"backend tensorrt ({flavour.name}): expected a CUDA GPU, found none")
        if flavour.name == "tensorrt-rtx" and gpu[1] in _RTX_UNSUPPORTED:
            raise Arl2rtError(
                f"flavour tensorrt-rtx: {gpu[0]} has compute capability {gpu[1]}, which TensorRT-RTX does not run on; "
                "use the tensorrt flavour"
            )
        torch.cuda.set_device(self.device)
        if self.package.plugin_mode == "jit":
            register_trt_plugins()  # JIT plugin creators must exist before deserialization (AOT engines embed theirs)
        if self.engine_dir is not None:
            key, _ = engine_key(self.package, flavour, max_frames=self.max_frames, max_batch=self.max_batch)
            entry = read_entry(Path(self.engine_dir), expected_key=key, exact=False)
        else:
            entry = build_engines(
                self.package,
                flavour=flavour,
                max_frames=self.max_frames,
                max_batch=self.max_batch,
                cache_dir=self.cache_dir or default_cache_dir(),
                reuse_wider=True,
            ).entry
        trt = flavour.module
        logger = make_logger(flavour)
        self._runtime = trt.Runtime(logger)
        for graph in self.spec.graphs:
            path = entry.engines[graph]
            engine = self._runtime.deserialize_cuda_engine(entry.engine_bytes(graph))
            if engine is None:
                raise Arl2rtError(
                    deserialize_error(path, logger.errors(), self.package.target, flavour.name, flavour.version)
                )
            check_engine_io(engine_io(engine, trt), self.spec, graph, path)
            self.engines[graph] = engine
            self.contexts[graph] = engine.create_execution_context()
        self._stream = torch.cuda.Stream(self.device)

    def deactivate_impl(self) -> None:
        self._captured.clear()
        self.contexts.clear()
        self.engines.clear()

    # -- running -------------------------------------------------------------------------------------------------
    def run_impl(self, graph, feeds, out):
        if self.cuda_graphs and graph == "denoise_step" and self._capturable(graph, feeds):
            return self._run_graphed(graph, feeds)
        keep: list[torch.Tensor] = []
        outputs = self._bind(graph, feeds, out, keep)
        self._execute(graph)
        return outputs

    def _bind(self, graph: str, feeds: dict, out: dict, keep: list) -> dict[str, torch.Tensor]:
        """Set every input shape and address, then allocate (or take from ``out``) and bind every output."""
        engine, ctx = self.engines[graph], self.contexts[graph]
        for s in self.spec.inputs(graph):
            tensor = feeds[s.name]
            if tensor.device != self.device:
                raise Arl2rtError(f"{graph}: input {s.name} is on {tensor.device}; expected {self.device}")
            if engine.is_shape_inference_io(s.name):
                tensor = tensor.cpu()  # a shape tensor: TensorRT reads it on the host
            else:
                tensor = tensor.contiguous()
            keep.append(tensor)
            if not ctx.set_input_shape(s.name, tuple(tensor.shape)):
                raise Arl2rtError(
                    f"{graph}: input {s.name} shape {list(tensor.shape)} is outside the engine's profile; "
                    "give the backend the stream's length and batch (max_frames, max_batch; `arl2rt generate` does) "
                    "or build for them: arl2rt build --max-frames / --max-batch"
                )
            ctx.set_tensor_address(s.name, tensor.data_ptr() if tensor.numel() else _nonnull(self.device, keep))
        outputs = {}
        for s in self.spec.outputs(graph):
            # an output aliased to an input (in-place plugin state, TensorRT >= 10.15) is that input's buffer
            alias = engine.get_aliased_input_tensor(s.name) if hasattr(engine, "get_aliased_input_tensor") else None
            given = feeds[alias] if alias else out.get(s.name)
            outputs[s.name] = self.output_buffer(s, tuple(ctx.get_tensor_shape(s.name)), given)
            ctx.set_tensor_address(s.name, outputs[s.name].data_ptr())
        return outputs

    def _execute(self, graph: str) -> None:
        """Enqueue on our stream, after the work that made the inputs and before whatever reads the outputs."""
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        if not self.contexts[graph].execute_async_v3(self._stream.cuda_stream):
            raise Arl2rtError(f"{self.package.graph_path(graph)}: TensorRT failed to enqueue {graph}")
        current.wait_stream(self._stream)

    def _capturable(self, graph: str, feeds: dict) -> bool:
        """A replay reads fixed addresses: every un-staged input must be bound as is (contiguous, non-empty), and no
        input may be a host shape tensor (its value would be baked into the graph)."""
        engine = self.engines[graph]
        return not any(
            engine.is_shape_inference_io(s.name)
            or (s.kind not in PER_PASS and (feeds[s.name].numel() == 0 or not feeds[s.name].is_contiguous()))
            for s in self.spec.inputs(graph)
        )

    def _run_graphed(self, graph: str, feeds: dict) -> dict[str, torch.Tensor]:
        """Replay a captured graph when shapes and the addresses of the un-staged inputs are those it was made with."""
        key = tuple(
            (s.name, tuple(feeds[s.name].shape), 0 if s.kind in PER_PASS else feeds[s.name].data_ptr())
            for s in self.spec.inputs(graph)
        )
        cap = self._captured.get(graph)
        if cap is None or cap.key != key:
            # first call with these shapes: run plainly (TensorRT sets itself up) and keep static buffers for capture
            # the per-pass inputs change buffers between calls: the graph reads static copies of them
            staged = {s.name: feeds[s.name].clone() for s in self.spec.inputs(graph) if s.kind in PER_PASS}
            cap = _Graph(key, staged=staged)
            self._captured[graph] = cap
            keep: list[torch.Tensor] = []
            cap.outputs = self._bind(graph, {**feeds, **cap.staged}, {}, keep)
            self._execute(graph)
            return {n: t.clone() for n, t in cap.outputs.items()}
        for name, buf in cap.staged.items():
            buf.copy_(feeds[name])
        if cap.graph is None:
            cap.graph = self._capture(graph, {**feeds, **cap.staged}, cap.outputs)
        if cap.graph is False:  # capture failed once: plain runs for these shapes
            self._execute(graph)
        else:
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._stream):
                cap.graph.replay()
            torch.cuda.current_stream(self.device).wait_stream(self._stream)
        return {n: t.clone() for n, t in cap.outputs.items()}  # the static outputs are overwritten by the next replay

    def _capture(self, graph: str, feeds: dict, outputs: dict) -> Any:
        keep: list[torch.Tensor] = []
        self._bind(graph, feeds, outputs, keep)
        cuda_graph = torch.cuda.CUDAGraph()
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.graph(cuda_graph, stream=self._stream):
                self.contexts[graph].execute_async_v3(self._stream.cuda_stream)
        except RuntimeError:
            return False  # e.g. a plugin that synchronizes: not capturable, run plainly
        torch.cuda.current_stream(self.device).wait_stream(self._stream)
        return cuda_graph


def _nonnull(device: torch.device, keep: list) -> int:
    """A valid device address for an empty tensor (the first block's empty past): TensorRT rejects null pointers."""
    placeholder = torch.empty(16, dtype=torch.uint8, device=device)
    keep.append(placeholder)
    return placeholder.data_ptr()
