"""The GDN state update as TensorRT AOT plugin nodes: one kernel per node, its argument contract and launch arithmetic.

TensorRT's ``aot_impl`` returns (kernel name, PTX, launch parameters, extra int arguments) and the engine later launches
that PTX itself with the arguments **inputs → extra ints → outputs**. The chunked update is two or three kernels
(:mod:`.chunk_kernels`: prep, scan over segments, combine); as AOT plugin nodes they are the stages ``gdn_prep``,
``gdn_scan`` and ``gdn_combine`` (:func:`gdn_stages`), with W, U, the gate prefix sums and the segment results as
ordinary tensors between them, allocated by TensorRT (:func:`stage_tensor_shapes`). The AOT configuration pipelines
the scan in one stage (less shared memory). AOT extra arguments are ints only, so float scalars are constexprs
(``SCALE``, precisions...); a pointer argument the stage does not use is bound to a constexpr ``None`` when compiled
(:mod:`.aot_compile`), so that it leaves the entry.

Stages are planned by :func:`~arl2rt.plugins.gdn.chunk_plan.plan_chunk` and import neither Triton nor TensorRT: the
exporter writes the stage nodes from them where Triton is absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.plugins.common import KernelLaunch
from arl2rt.plugins.gdn.chunk_plan import ChunkConfig, plan_chunk
from arl2rt.plugins.gdn.constants import CHUNK_SIZE


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
    plan = plan_chunk(1, seq_len or CHUNK_SIZE, heads, head_k, head_v, dtype, config=config)
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
    planned = gdn_stages(heads, head_k, head_v, dtype, seq_len=segments * CHUNK_SIZE, config=config)
    stages = {s.plugin: s for s in planned}
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
    nt = cdiv(seq_len, CHUNK_SIZE)
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
    rows = cdiv(seq_len, CHUNK_SIZE) * CHUNK_SIZE
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
