"""The TensorRT plugin's kernels without TensorRT: AOT compilation, PTX entry handling and launch arithmetic.

TensorRT's ``aot_impl`` returns (kernel name, PTX, launch parameters, extra int arguments) and the engine later launches
that PTX itself with the arguments **inputs → extra ints → outputs** and nothing else. Everything here imports no
``tensorrt``, so CI and ``tools/check_trt_plugin_aot.py`` (H200) run exactly what ``trt_plugin.py``'s ``aot_impl``
and ``impl`` run:

* :func:`compile_aot` — ``triton.compile(ASTSource(kernel, signature, constexprs))`` as ``aot_impl`` does. AOT extra
  arguments are ints only, so float scalars must already be constexprs (``SCALE``, precisions...); a pointer argument
  the stage does not use is bound to a constexpr ``None`` so that it leaves the entry.
* **Scratch parameters.** Triton ≥ 3.3 appends two pointer parameters (global and profile scratch) to the PTX
  ``.entry`` that TensorRT never passes. We require both scratch sizes to be 0, check that the body never reads them,
  and delete them from the entry, so its parameter count is exactly inputs + ints + outputs.
* **Shared memory.** A plain launch may use at most 48 KB of dynamic shared memory; more needs the kernel's
  ``MAX_DYNAMIC_SHARED_SIZE_BYTES`` raised first, and whether TensorRT's AOT launcher does that is not known here.
  So :func:`compile_aot` refuses a kernel above 48 KB unless ``allow_opt_in`` is given, and :func:`compile_stage`
  (what ``aot_impl`` calls) first halves the stage's column tile until it fits. How much a kernel takes depends on
  the Triton build (benchmarks/results/trt_plugin_aot.md), so the check runs where the engine is built.
* **One kernel per plugin node.** The chunked state update is two or three kernels (:mod:`.chunk`: prep, scan over
  segments, combine); as AOT plugin nodes they are the stages ``gdn_prep``, ``gdn_scan`` and ``gdn_combine``
  (:func:`gdn_stages`), with W, U, the gate prefix sums and the segment results as ordinary tensors between them,
  allocated by TensorRT. The AOT configuration pipelines the scan in one stage (less shared memory).
* :func:`enqueue_state_update` — the JIT ``impl`` body: raw device pointers, TensorRT's stream, workspace from
  torch's caching allocator on that stream.

Not covered: AOT PTX is compiled without Triton's 16-byte pointer-alignment specialisation (correct for any pointer,
possibly slower than the JIT path), and the PTX ``.version`` is whatever the installed Triton emits (the driver that
runs the engine must accept it: build on the deployment machine).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.plugins.common import DevicePtr, KernelLaunch, is_interpreted, run_launch
from arl2rt.plugins.gdn.chunk import CHUNK, ChunkConfig, launch_gdn_state_update, plan_chunk

# 48 KB: the dynamic shared memory a launch may use without cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES).
AOT_SHARED_LIMIT = 48 * 1024
# Triton >= 3.3: trailing (global_scratch, profile_scratch) pointers in every entry.
TRITON_SCRATCH_PARAMS = 2


# -- PTX ---------------------------------------------------------------------------------------------------------
def _entry_span(ptx: str, name: str) -> tuple[int, int]:
    """(start, end) of the parameter list between the parentheses of ``.entry name(...)``."""
    m = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\(", ptx)
    if m is None:
        raise Arl2rtError(f"PTX of {name}: expected an `.entry {name}(` declaration, found none")
    end = ptx.index(")", m.end())
    return m.end(), end


def ptx_entry_params(ptx: str, name: str) -> list[str]:
    """The parameter declarations of kernel ``name``'s ``.entry``, in order (``.param .u64 ... name_param_0``...)."""
    start, end = _entry_span(ptx, name)
    return [p.strip() for p in ptx[start:end].split(",") if p.strip()]


def ptx_header(ptx: str) -> dict[str, str]:
    """``.version`` and ``.target`` of a PTX module (the driver must accept the version)."""
    found = {}
    for field in ("version", "target"):
        m = re.search(r"^\s*\." + field + r"\s+(\S+)", ptx, re.M)
        found[field] = m.group(1) if m else "?"
    return found


def strip_trailing_params(ptx: str, name: str, count: int) -> str:
    """``ptx`` with the last ``count`` parameters of ``.entry name`` removed; refuses if the body reads any of them."""
    params = ptx_entry_params(ptx, name)
    if count > len(params):
        raise Arl2rtError(f"PTX of {name}: cannot drop {count} of {len(params)} entry parameters")
    keep = len(params) - count
    start, end = _entry_span(ptx, name)
    body = ptx[end:]
    for i in range(keep, len(params)):
        if re.search(rf"\b{re.escape(name)}_param_{i}\b", body):
            raise Arl2rtError(f"PTX of {name}: expected parameter {i} (Triton scratch) unused, found it read")
    inner = ",\n".join(f"\t{p}" for p in params[:keep])
    return ptx[:start] + "\n" + inner + "\n" + ptx[end:]


# -- stages: one kernel per plugin node --------------------------------------------------------------------------
@dataclass(frozen=True)
class AotStage:
    """One kernel as one plugin node: which kernel arguments are node inputs, extra ints and node outputs.

    ``tensors`` names the graph tensor behind each pointer argument (the scan's ``dst`` is the segment buffer the
    combine stage reads, or the new state when there is one segment). ``segments``/``chunks_per_segment`` are fixed
    when the stage is made: TensorRT extra arguments are resolved from shapes, not from a planner.
    """

    plugin: str
    launch: KernelLaunch
    inputs: tuple[str, ...]
    ints: tuple[str, ...]
    outputs: tuple[str, ...]
    unused: tuple[str, ...]
    tensors: dict[str, str]
    segments: int
    chunks_per_segment: int | None
    config: ChunkConfig
    sizes: tuple  # (heads, head_k, head_v, dtype, seq_len) the stage was planned for

    @property
    def kernel_args(self) -> tuple[str, ...]:
        """The runtime arguments after unused pointers are bound to None: exactly TensorRT's order."""
        return self.inputs + self.ints + self.outputs


# kernel -> (plugin name, inputs, extra ints, outputs, unused pointers), as kernel argument names, for the state-only
# update; ``hs`` (per-chunk states) is written only when per-token outputs are wanted
_STAGE_ARGS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "_prep_kernel": ("gdn_prep", ("k", "v", "g", "beta"), ("T", "H"), ("w", "u", "gc"), ()),
    "_scan_kernel": ("gdn_scan", ("k", "w", "u", "gc", "s0"), ("T", "H", "NT", "CPS", "NSEG"), ("dst",), ("hs",)),
    "_combine_kernel": ("gdn_combine", ("seg",), ("NSEG",), ("out",), ()),
}


def aot_chunk_config(segments: int | None = None) -> ChunkConfig:
    """The AOT kernel configuration: the planner's defaults with a one-stage scan pipeline and, for fp32 inputs, a
    CUDA-core prep (both keep every kernel within 48 KB of shared memory; measured in trt_plugin_aot.md)."""
    return ChunkConfig(segments=segments, scan_stages=1, prep_precision="ieee")


def gdn_stages(
    heads: int,
    head_k: int,
    head_v: int,
    dtype: torch.dtype,
    seq_len: int | None = None,
    config: ChunkConfig | None = None,
) -> tuple[AotStage, ...]:
    """The AOT stages of the state update (``gdn_prep``, ``gdn_scan``, and ``gdn_combine`` with several segments).

    With a known ``seq_len`` the scan is cut into the segments the kernel planner picks for batch 1 (the streaming
    case); without one (a dynamic token count) the scan runs as one segment, whose extra ints follow any length.
    """
    config = config or aot_chunk_config(segments=None if seq_len is not None else 1)
    plan = plan_chunk(1, seq_len or CHUNK, heads, head_k, head_v, dtype, config=config)
    if seq_len is None and plan.segments != 1:
        raise Arl2rtError(f"AOT stages for a dynamic token count need one scan segment; config {config} gives more")
    stages = []
    for launch in plan.launches:
        if launch.name not in _STAGE_ARGS:
            raise Arl2rtError(f"AOT: kernel {launch.name} has no stage (expected one of {sorted(_STAGE_ARGS)})")
        plugin, inputs, ints, outputs, unused = _STAGE_ARGS[launch.name]
        tensors = {n: n for n in inputs + outputs}
        if launch.name == "_scan_kernel":
            tensors["dst"] = "out" if plan.segments == 1 else "seg"
        cps = plan.chunks_per_segment if plan.segments > 1 else None
        sizes = (heads, head_k, head_v, dtype, seq_len)
        stage = AotStage(plugin, launch, inputs, ints, outputs, unused, tensors, plan.segments, cps, config, sizes)
        if tuple(a for a in launch.args if a not in unused) != stage.kernel_args:
            raise Arl2rtError(
                f"AOT stage {plugin}: expected kernel arguments ordered inputs → ints → outputs "
                f"{list(stage.kernel_args)}, found {list(launch.args)}"
            )
        stages.append(stage)
    return tuple(stages)


def combine_stage(heads: int, segments: int, head_k: int, head_v: int, dtype: torch.dtype) -> AotStage:
    """The ``gdn_combine`` stage for ``segments`` segments; ``dtype`` is the key/value dtype of the update (it sets the
    precision of the combine's fp32 products), which the combine node itself does not see."""
    config = aot_chunk_config(segments=segments)
    stages = {s.plugin: s for s in gdn_stages(heads, head_k, head_v, dtype, seq_len=segments * CHUNK, config=config)}
    if "gdn_combine" not in stages:
        raise Arl2rtError(f"AOT: expected a combine stage for {segments} segments, found none")
    return stages["gdn_combine"]


def _cdiv(a: Any, b: int) -> Any:
    return -(-a // b)


def stage_launch(
    stage: AotStage, batch: Any, seq_len: Any, cdiv: Callable[[Any, int], Any] = _cdiv
) -> tuple[tuple[Any, Any, Any], dict[str, Any]]:
    """Grid and extra-int values of ``stage`` for ``batch`` x ``seq_len`` tokens.

    ``batch`` and ``seq_len`` may be ints or TensorRT shape expressions (``trtp.ShapeExpr``, with ``cdiv=trtp.cdiv``):
    the same arithmetic serves ``aot_impl`` (symbolic) and the checks (ints); tests pin it to :func:`plan_chunk`.
    """
    c = stage.launch.constexprs
    heads = stage.launch.grid[1]  # stages are planned for batch 1: the grid's y is the head count
    nt = cdiv(seq_len, CHUNK)
    cps = nt if stage.segments == 1 else stage.chunks_per_segment
    if stage.plugin == "gdn_prep":
        return (nt, batch * heads, 1), {"T": seq_len, "H": heads}
    if stage.plugin == "gdn_scan":
        ndv = c["V"] // c["BV"]
        grid = (ndv + (stage.segments - 1) * (ndv + c["K"] // c["BV"]), batch * heads, 1)
        return grid, {"T": seq_len, "H": heads, "NT": nt, "CPS": cps, "NSEG": stage.segments}
    if stage.plugin == "gdn_combine":
        return (c["V"] // c["BV"], batch * heads, 1), {"NSEG": stage.segments}
    raise Arl2rtError(f"AOT: no launch arithmetic for stage {stage.plugin!r}")


def stage_tensor_shapes(
    batch: Any,
    seq_len: Any,
    heads: Any,
    head_k: Any,
    head_v: Any,
    segments: int = 1,
    cdiv: Callable[[Any, int], Any] = _cdiv,
) -> dict[str, tuple]:
    """Shape of every tensor the stages pass (ints or shape expressions, as :func:`stage_launch`).

    W, U and the gate prefix sums are padded to whole chunks; ``seg`` holds each segment's state contribution and
    transition ``[B, H, segments, K, V + K]``. TensorRT allocates all of them as plugin outputs.
    """
    rows = cdiv(seq_len, CHUNK) * CHUNK
    return {
        "k": (batch, seq_len, heads, head_k),
        "v": (batch, seq_len, heads, head_v),
        "g": (batch, seq_len, heads),
        "beta": (batch, seq_len, heads),
        "w": (batch, heads, rows, head_k),
        "u": (batch, heads, rows, head_v),
        "gc": (batch, heads, rows),
        "s0": (batch, heads, head_k, head_v),
        "seg": (batch, heads, segments, head_k, head_v + head_k),
        "out": (batch, heads, head_k, head_v),
    }


def stage_dtype(stage: AotStage, arg: str) -> torch.dtype:
    """The element type of a stage's pointer argument, from the kernel's Triton signature (``*bf16`` ...)."""
    return {"*fp32": torch.float32, "*bf16": torch.bfloat16, "*fp16": torch.float16}[stage.launch.signature[arg]]


# -- compilation -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AotKernel:
    """A compiled stage, ready for ``aot_impl``: its PTX entry takes exactly ``stage.kernel_args``."""

    stage: AotStage
    name: str
    ptx: str
    num_warps: int
    shared: int
    params: int
    removed_params: int
    header: dict[str, str]

    @property
    def block(self) -> tuple[int, int, int]:
        return (self.num_warps * 32, 1, 1)


def _jit_function(kernel: Any) -> Any:
    """The kernel as a compilable JITFunction, also when its module was imported under ``TRITON_INTERPRET=1``."""
    if is_interpreted(kernel):
        from triton.runtime.jit import JITFunction

        return JITFunction(kernel.fn)
    return kernel


def compile_aot(
    stage: AotStage,
    *,
    target: Any = None,
    shared_limit: int = AOT_SHARED_LIMIT,
    allow_opt_in: bool = False,
) -> AotKernel:
    """Compile ``stage`` with Triton as ``aot_impl`` does and make its PTX entry match TensorRT's calling convention.

    ``target``: a ``triton.backends.compiler.GPUTarget`` (None: the current GPU, as in ``aot_impl``; pass one to
    compile without a GPU). Raises Arl2rtError for float runtime scalars, scratch memory, an entry whose parameter
    count is not declared (+ Triton's scratch pointers), or shared memory above ``shared_limit`` without opt-in.
    """
    import triton
    from triton.compiler import ASTSource

    launch = stage.launch
    floats = [a for a in stage.kernel_args if launch.signature[a] in ("fp16", "bf16", "fp32", "fp64")]
    if floats:
        raise Arl2rtError(f"AOT stage {stage.plugin}: float runtime arguments {floats}; expected them as constexprs")
    signature = dict(launch.signature)
    constexprs = dict(launch.constexprs)
    for name in stage.unused:
        signature[name], constexprs[name] = "constexpr", None
    source = ASTSource(fn=_jit_function(launch.kernel), signature=signature, constexprs=constexprs)
    options = {"num_warps": launch.num_warps, "num_stages": launch.num_stages}
    if getattr(launch, "maxnreg", None) is not None:
        options["maxnreg"] = launch.maxnreg  # a register cap travels inside the PTX (.maxnreg)
    compiled = triton.compile(source, target=target, options=options)
    meta = compiled.metadata
    for field in ("global_scratch_size", "profile_scratch_size"):
        if getattr(meta, field, 0):
            raise Arl2rtError(f"AOT stage {stage.plugin}: expected {field} 0, found {getattr(meta, field)}")
    ptx, declared = compiled.asm["ptx"], len(stage.kernel_args)
    found = len(ptx_entry_params(ptx, meta.name))
    if found not in (declared, declared + TRITON_SCRATCH_PARAMS):
        raise Arl2rtError(
            f"AOT stage {stage.plugin}: PTX entry {meta.name} has {found} parameters; expected {declared} "
            f"(inputs + ints + outputs) or {declared + TRITON_SCRATCH_PARAMS} with Triton's scratch pointers"
        )
    if found > declared:
        ptx = strip_trailing_params(ptx, meta.name, found - declared)
    if meta.shared > shared_limit and not allow_opt_in:
        raise Arl2rtError(
            f"AOT stage {stage.plugin}: kernel {meta.name} needs {meta.shared} bytes of shared memory; expected at "
            f"most {shared_limit} (more needs an opt-in TensorRT's AOT launcher is not known to make)"
        )
    return AotKernel(
        stage,
        meta.name,
        ptx,
        meta.num_warps,
        meta.shared,
        len(ptx_entry_params(ptx, meta.name)),
        found - declared,
        ptx_header(ptx),
    )


# the column-tile knob of each stage: shrinking it changes only that stage's grid, never a tensor between stages
_TILE_KNOBS = {"gdn_scan": "block_v", "gdn_combine": "combine_block_v"}


def compile_stage(
    stage: AotStage, *, target: Any = None, shared_limit: int = AOT_SHARED_LIMIT, allow_opt_in: bool = False
) -> AotKernel:
    """:func:`compile_aot`, retrying with half the stage's column tile (down to 16) while it needs more shared memory
    than ``shared_limit`` (how much a kernel takes depends on the Triton build: the H200 image's Triton 3.6 gave the
    bf16 combine 88 KB where PyPI's 3.6.0 gives 40 KB). The segment count, and so every tensor shape, stays fixed."""
    tried = []
    while True:
        kernel = compile_aot(stage, target=target, allow_opt_in=True)
        tried.append((stage.launch.constexprs.get("BV"), kernel.shared))
        knob, bv = _TILE_KNOBS.get(stage.plugin), stage.launch.constexprs.get("BV", 0)
        if kernel.shared <= shared_limit or allow_opt_in or knob is None or bv // 2 < 16:
            break
        config = dataclasses.replace(stage.config, segments=stage.segments, **{knob: bv // 2})
        heads, head_k, head_v, dtype, seq_len = stage.sizes
        stage = {s.plugin: s for s in gdn_stages(heads, head_k, head_v, dtype, seq_len, config)}[stage.plugin]
    if kernel.shared > shared_limit and not allow_opt_in:
        raise Arl2rtError(
            f"AOT stage {stage.plugin}: kernel {kernel.name} needs more than {shared_limit} bytes of shared memory at "
            f"every tile tried (BV, bytes) {tried}; more needs an opt-in TensorRT's AOT launcher is not known to make"
        )
    return kernel


# -- JIT impl body -----------------------------------------------------------------------------------------------
# tactic -> kernel configuration the JIT impl may run (TensorRT times each and keeps the fastest)
JIT_TACTICS: dict[int, ChunkConfig] = {1: ChunkConfig(), 2: ChunkConfig(block_v=32)}


def enqueue_state_update(
    ptrs: dict[str, int],
    batch: int,
    seq_len: int,
    heads: int,
    head_k: int,
    head_v: int,
    dtype: torch.dtype,
    stream: int,
    tactic: int = 1,
) -> None:
    """The JIT ``impl`` body: the whole state update from raw pointers (``key``, ``value``, ``decay``, ``beta``,
    ``past_state``, ``present_state``) on the raw CUDA stream ``stream``; the workspace comes from torch's caching
    allocator on that stream, so it is reused safely across enqueues."""
    config = JIT_TACTICS[tactic]
    plan = plan_chunk(batch, seq_len, heads, head_k, head_v, dtype, config=config)
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        workspace = torch.empty(plan.workspace_bytes, dtype=torch.uint8, device="cuda")
        launch_gdn_state_update(
            ptrs["key"],
            ptrs["value"],
            ptrs["decay"],
            ptrs["beta"],
            ptrs["past_state"],
            ptrs["present_state"],
            workspace.data_ptr(),
            batch,
            seq_len,
            heads,
            head_k,
            head_v,
            dtype,
            stream=stream,
            config=config,
        )


def run_stage_jit(stage: AotStage, tensors: dict[str, Any], batch: int, seq_len: int, stream: Any = None) -> None:
    """The JIT ``impl`` of one stage: the very launch the AOT path embeds (same grid, ints and argument order), run
    through Triton's launcher. ``tensors`` maps graph tensor names (``stage.tensors``) to tensors or raw device
    pointers; ``stream`` as in :func:`arl2rt.plugins.common.run_launch`."""
    grid, ints = stage_launch(stage, batch, seq_len)
    values: dict[str, Any] = dict(ints)
    for arg in stage.inputs + stage.outputs:
        x = tensors[stage.tensors[arg]]
        values[arg] = x if isinstance(x, torch.Tensor) else DevicePtr(int(x), stage_dtype(stage, arg))
    launch = dataclasses.replace(stage.launch, grid=grid)
    run_launch(launch, [values.get(a) for a in launch.args], stream)  # unused pointers go as None (constexpr)
