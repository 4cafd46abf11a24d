"""The onnxruntime backend: runs a model package's step graphs with IO binding, on the CUDA EP or the CPU EP.

Every input is bound by pointer to the torch tensor the Streamer holds, and every output to a torch tensor this backend
allocates or to the buffer the caller passes in ``out`` (the StateStore's spare state: ping-pong). So ``present_state``
of one commit is written straight into the buffer that becomes ``past_state`` of the next step, and no state is copied
on its way through onnxruntime. The only copies: a feed that is not contiguous (past K/V views of a batch > 1 cache).
A package with a VAE decoder adds its two decode graphs: the past VAE caches are bound by pointer like the states,
and each present cache is written into a fresh torch tensor that the StateStore keeps as the next past (no copy).

The CUDA EP runs when the device is CUDA (``onnxruntime-gpu`` installed and a GPU present; ``device="auto"`` picks it
then), binding torch CUDA pointers and ordering work on torch's current stream; otherwise the CPU EP. With
``ARL2RT_ORT_GRAPHS=1`` the two repeating steps run as onnxruntime CUDA graphs where their launches repeat
(:mod:`arl2rt.runtime.ort_graphs`), on a stream of the backend's own (a graph cannot be captured on the legacy default
stream torch uses), ordered after and before torch's work by stream waits.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import TensorSpec
from arl2rt.runtime.backend import Backend
from arl2rt.runtime.ort_graphs import GRAPH_STEPS, NO_GRAPH, OrtGraphs, ort_graphs_wanted
from arl2rt.runtime.ort_placement import off_device, placement, record_assignment

if TYPE_CHECKING:
    from arl2rt.export.package import ModelPackage

# torch dtype -> the ONNX element type IO binding takes (an int: numpy has no bfloat16) and onnxruntime's type name.
_ONNX_TYPES: dict[torch.dtype, tuple[int, str]] = {
    torch.float64: (11, "tensor(double)"),
    torch.float32: (1, "tensor(float)"),
    torch.float16: (10, "tensor(float16)"),
    torch.bfloat16: (16, "tensor(bfloat16)"),
    torch.int64: (7, "tensor(int64)"),
}
CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"
RELEASED_OPSET = 26  # the newest default-domain opset onnxruntime 1.31 loads without ALLOW_RELEASED_ONNX_OPSET_ONLY=0
NO_CPU_FALLBACK = "session.disable_cpu_ep_fallback"  # a node without a CUDA kernel fails the load, named


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise Arl2rtError(f"the onnxruntime backend needs onnxruntime (pip install onnxruntime): {exc}") from None
    return onnxruntime


def _ort_errors() -> tuple[type[BaseException], ...]:
    """onnxruntime's own exception types (load and run failures), which do not share a base class beyond Exception."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(c for c in vars(state).values() if isinstance(c, type) and issubclass(c, Exception))


def cuda_available() -> bool:
    """onnxruntime has the CUDA EP (onnxruntime-gpu) and torch sees a GPU."""
    return CUDA_EP in _ort().get_available_providers() and torch.cuda.is_available()


def resolve_device(device: torch.device | str) -> torch.device:
    """``"auto"``: CUDA when the CUDA EP can run, else the CPU. A CUDA device without the CUDA EP is an error."""
    if str(device) == "auto":
        return torch.device("cuda") if cuda_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and CUDA_EP not in _ort().get_available_providers():
        raise Arl2rtError(
            f"device {device}: onnxruntime has no {CUDA_EP} (found {_ort().get_available_providers()}); "
            "install onnxruntime-gpu or use device cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise Arl2rtError(f"device {device}: the onnxruntime backend runs on 'cpu' or 'cuda'")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # tensors report cuda:N: compare like with like
    return device


class OnnxRuntimeBackend(Backend):
    """Runs ``encode_context``, ``denoise_step``, ``commit_step`` (and ``decode_first``, ``decode_step`` of a package
    with a VAE decoder) of a :class:`ModelPackage` with onnxruntime.

    Args:
        package: a loaded model package (its StateSpec is this backend's contract).
        device: ``"cpu"``, ``"cuda"``/``"cuda:N"`` (needs onnxruntime-gpu) or ``"auto"``.
        providers: execution providers in priority order; default: the CUDA EP alone (CPU fallback off, so every
            node runs on the device or the load fails naming the node) on a CUDA device, else the CPU EP.
        session_options: an ``onnxruntime.SessionOptions``; default: all graph optimisations, warnings only, as many
            intra-op threads as torch uses (:mod:`arl2rt.runtime.threads`).
    """

    name = "onnxruntime"

    def __init__(
        self,
        package: ModelPackage,
        device: torch.device | str = "cpu",
        providers: Sequence[str | tuple[str, dict]] | None = None,
        *,
        session_options: Any | None = None,
    ) -> None:
        super().__init__(package.spec, resolve_device(device))
        self.package = package
        self.cuda_graphs = providers is None and ort_graphs_wanted(self.device)
        self._stream = torch.cuda.Stream(self.device) if self.cuda_graphs else None
        self.graphs: OrtGraphs | None = None
        self.providers = list(providers) if providers is not None else self._default_providers()
        self.session_options = session_options
        self.sessions: dict[str, Any] = {}
        self.label = f"onnxruntime {package.target} {package.spec.dtype} ({self.device.type})"

    def _default_providers(self) -> list[str | tuple[str, dict]]:
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            # onnxruntime enqueues on torch's stream: no synchronisation between torch's work and a step
            stream = (self._stream or torch.cuda.current_stream(torch.device("cuda", index))).cuda_stream
            options = {"device_id": index, "has_user_compute_stream": "1", "user_compute_stream": str(stream)}
            # fp32 packages compute in fp32: the CUDA EP would otherwise run fp32 GEMMs and convs as TF32
            options["use_tf32"] = "0"
            # the CUDA EP alone: onnxruntime would hand shape arithmetic (Slice, Concat, Gather) to a CPU EP listed
            # beside it; without one (and with CPU fallback off) every node runs on the device
            return [(CUDA_EP, options)]
        return [CPU_EP]

    def _shares_torch_stream(self) -> bool:
        return any(isinstance(p, tuple) and p[0] == CUDA_EP and "user_compute_stream" in p[1] for p in self.providers)

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        ort = _ort()
        if self.package.opset > RELEASED_OPSET:
            # onnxruntime 1.31 refuses an opset ONNX has not released yet (LinearAttention is opset 27) unless told
            os.environ.setdefault("ALLOW_RELEASED_ONNX_OPSET_ONLY", "0")
        options = self.session_options
        if options is None:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.intra_op_num_threads = torch.get_num_threads()  # the CPU EP follows torch's count (--threads)
        if self.device.type == "cuda":
            record_assignment(options)
            if not any(p == CPU_EP or (isinstance(p, tuple) and p[0] == CPU_EP) for p in self.providers):
                options.add_session_config_entry(NO_CPU_FALLBACK, "1")
        errors = (*_ort_errors(), OSError)
        sessions = {}
        for graph in self.spec.graphs:
            path = Path(self.package.graph_path(graph))
            if not path.is_file():
                raise Arl2rtError(f"{path}: graph file of {graph} not found in package {self.package.root}")
            try:
                sessions[graph] = ort.InferenceSession(str(path), options, providers=self._providers_of(graph))
            except errors as exc:
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                if type(exc).__name__ == "NotImplemented":
                    raise Arl2rtError(
                        f"{path}: onnxruntime {ort.__version__} with {self.providers} has no kernel for a node of "
                        f"this {self.spec.dtype} {graph} graph: {first}"
                    ) from None
                raise Arl2rtError(
                    f"{path}: onnxruntime cannot load the {graph} graph (expected a valid ONNX model; a truncated "
                    f"file or missing external data also fails here): {first}"
                ) from None
            _check_session_io(sessions[graph], path, self.spec.inputs(graph), self.spec.outputs(graph))
            if self.device.type == "cuda":
                _check_on_device(sessions[graph], path, graph)
        self.sessions = sessions
        self.graphs = OrtGraphs(self.spec) if self.cuda_graphs else None

    def _providers_of(self, graph: str) -> list[str | tuple[str, dict]]:
        """The providers of one graph's session: a repeating step's CUDA EP captures graphs when they are on."""
        if not self.cuda_graphs or graph not in GRAPH_STEPS:
            return self.providers
        return [(p[0], {**p[1], "enable_cuda_graph": "1"}) if isinstance(p, tuple) else p for p in self.providers]

    def deactivate_impl(self) -> None:
        self.sessions, self.graphs = {}, None

    # -- running -------------------------------------------------------------------------------------------------
    def run_impl(self, graph, feeds, out):
        session = self.sessions[graph]
        binding = session.io_binding()
        keep = []  # what is bound must outlive the run (contiguous copies, empty placeholders)
        batch = feeds[self.spec.inputs(graph)[0].name].shape[0]
        for spec in self.spec.inputs(graph):
            tensor = feeds[spec.name]
            if tensor.device != self.device:
                raise Arl2rtError(f"{graph}: input {spec.name} is on {tensor.device}; expected {self.device}")
        given = {s.name: out[s.name] for s in self.spec.outputs(graph) if s.name in out}
        fits = {n: t for n, t in given.items() if self.output_buffer(self.spec.tensor(n), t.shape, t) is t}
        slot = self.graphs.slot(graph, feeds, fits, batch) if self.graphs is not None else None
        for spec in self.spec.inputs(graph):
            tensor = feeds[spec.name]
            if slot is not None and spec.name in slot.staged:
                tensor = slot.staged[spec.name].copy_(tensor)  # a graph reads its per-pass inputs where it was captured
            keep.append(_bind(binding.bind_input, spec.name, tensor.contiguous()))
        outputs = {}
        for spec in self.spec.outputs(graph):
            fixed = slot.outputs.get(spec.name) if slot is not None else None
            shape = spec.resolve(batch=batch)
            outputs[spec.name] = fixed if fixed is not None else self.output_buffer(spec, shape, out.get(spec.name))
            _bind(binding.bind_output, spec.name, outputs[spec.name])
        self._run(session, binding, graph, slot.graph_id if slot is not None else None)
        return outputs

    def _run(self, session, binding, graph: str, graph_id: int | None) -> None:
        current = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        if self._stream is not None:
            self._stream.wait_stream(current)  # the backend's stream reads what torch wrote
        elif current is not None and not self._shares_torch_stream():
            current.synchronize()  # inputs written by torch must be ready
        options = None
        if current is not None:
            options = _ort().RunOptions()
            # the run's outputs are ordered on the stream; no host wait at its end (torch's next reads wait on device)
            options.add_run_config_entry("disable_synchronize_execution_providers", "1")
            if self.graphs is not None and graph in GRAPH_STEPS:
                options.add_run_config_entry("gpu_graph_id", str(NO_GRAPH if graph_id is None else graph_id))
        try:
            session.run_with_iobinding(binding, options)
        except _ort_errors() as exc:
            path = self.package.graph_path(graph)
            raise Arl2rtError(f"{path}: onnxruntime failed to run {graph}: {str(exc).strip()[:500]}") from None
        if self._stream is not None:
            current.wait_stream(self._stream)  # torch's next reads of the outputs come after the run


def _bind(bind, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Bind ``tensor``'s memory by pointer; returns the tensor bound, which must stay alive until the run ends."""
    if tensor.numel() == 0:
        # an empty past (first block) may have no memory to point at: bind a valid pointer with the empty shape
        tensor = torch.empty(1, dtype=tensor.dtype, device=tensor.device).as_strided(tensor.shape, tensor.stride())
    device_id = (tensor.device.index or 0) if tensor.device.type == "cuda" else 0
    bind(name, tensor.device.type, device_id, _ONNX_TYPES[tensor.dtype][0], list(tensor.shape), tensor.data_ptr())
    return tensor


def _check_on_device(session, path: Path, graph: str) -> None:
    """Every node of a step on the CUDA EP, no host<->device copy inside it; else an error before the first block."""
    found = placement(session)
    if found is None:
        return  # this onnxruntime cannot report the assignment: nothing to check against
    problems = off_device(found, CUDA_EP)
    if problems:
        lines = "\n".join(f"  {line}" for line in problems)
        raise Arl2rtError(
            f"{path}: the {graph} graph does not run wholly on {CUDA_EP}; every step would copy between host and "
            f"device:\n{lines}\nexpected every node on {CUDA_EP} (export the package for the CUDA EP, or run on cpu)"
        )


def _check_session_io(session, path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """The graph's inputs and outputs must be the StateSpec's: same names, element types, ranks and static dims."""
    for which, specs, args in (("input", inputs, session.get_inputs()), ("output", outputs, session.get_outputs())):
        found = {a.name: a for a in args}
        missing = [s.name for s in specs if s.name not in found]
        extra = sorted(set(found) - {s.name for s in specs})
        if missing or extra:
            raise Arl2rtError(
                f"{path}: graph {which}s do not match the package's state contract: missing {missing}, "
                f"unexpected {extra}"
            )
        for spec in specs:
            arg = found[spec.name]
            want_type = _ONNX_TYPES[spec.torch_dtype][1]
            if arg.type != want_type:
                raise Arl2rtError(f"{path}: {which} {spec.name} has type {arg.type}; expected {want_type}")
            shape = list(arg.shape)
            if len(shape) != len(spec.shape) or any(
                isinstance(want, int) and isinstance(got, int) and want != got for want, got in zip(spec.shape, shape)
            ):
                raise Arl2rtError(f"{path}: {which} {spec.name} has shape {shape}; expected {list(spec.shape)}")
