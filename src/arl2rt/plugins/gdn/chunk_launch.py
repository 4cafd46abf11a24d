"""The chunked GDN update from raw device pointers (ints) or tensors, as a TensorRT plugin ``enqueue`` launches it.

No allocation and no Triton import here: the caller passes the workspace that :func:`~arl2rt.plugins.gdn.chunk_plan.
plan_chunk` sizes, and the kernels' module is imported on the first launch.
"""

from __future__ import annotations

import math

import torch

from arl2rt.plugins.common import as_kernel_arg, run_launch, sub_buffer
from arl2rt.plugins.gdn.chunk_plan import ChunkConfig, ChunkPlan, plan_chunk
from arl2rt.plugins.gdn.constants import CHUNK_SIZE


def _run_plan(plan: ChunkPlan, ptrs: dict, sizes: dict, workspace, stream, results: list | None) -> None:
    for name, (off, dt, numel) in plan.buffers.items():
        ptrs[name] = sub_buffer(workspace, off, dt, numel)
    ptrs["dst"] = ptrs["seg"] if plan.segments > 1 else ptrs["out"]
    values = {**ptrs, **sizes}
    for launch in plan.launches:
        compiled = run_launch(launch, [values[a] for a in launch.args], stream)
        if results is not None:
            results.append(compiled)


def _update_args(k, v, g, beta, initial_state, final_state, dtype: torch.dtype) -> dict:
    """Kernel arguments of the update's tensors; a missing initial state reads the (unread) final state's address."""
    f32 = torch.float32
    out = as_kernel_arg(final_state, f32, "final_state")
    return {
        "k": as_kernel_arg(k, dtype, "k"),
        "v": as_kernel_arg(v, dtype, "v"),
        "g": as_kernel_arg(g, f32, "g"),
        "beta": as_kernel_arg(beta, f32, "beta"),
        "s0": out if initial_state is None else as_kernel_arg(initial_state, f32, "initial_state"),
        "out": out,
    }


def _sizes(plan: ChunkPlan, seq_len: int, num_heads: int) -> dict[str, int]:
    nt = math.ceil(seq_len / CHUNK_SIZE)
    return {"T": seq_len, "H": num_heads, "NT": nt, "CPS": plan.chunks_per_segment, "NSEG": plan.segments}


def launch_gdn_state_update(
    k,
    v,
    g,
    beta,
    initial_state,
    final_state,
    workspace,
    batch: int,
    seq_len: int,
    num_heads: int,
    head_k: int,
    head_v: int,
    dtype: torch.dtype,
    stream=None,
    config: ChunkConfig | None = None,
    compiled: list | None = None,
) -> None:
    """State-only update from raw device pointers (ints) or tensors, as a TensorRT plugin ``enqueue`` calls it.

    k ``[B,T,H,K]`` and v ``[B,T,H,V]`` of ``dtype``; g, beta ``[B,T,H]`` fp32; initial_state (or None for zeros) and
    final_state ``[B,H,K,V]`` fp32, all contiguous; workspace of ``plan_chunk(...).workspace_bytes`` bytes (no
    initialisation needed). final_state may alias initial_state. ``stream``: a ``cudaStream_t`` as int, a torch stream,
    or None for the current one. Under ``TRITON_INTERPRET=1`` pass CPU tensors. ``compiled`` collects Triton's
    compiled kernels (for resource logging).
    """
    plan = plan_chunk(
        batch, seq_len, num_heads, head_k, head_v, dtype, has_initial_state=initial_state is not None, config=config
    )
    ptrs = _update_args(k, v, g, beta, initial_state, final_state, dtype)
    _run_plan(plan, {**ptrs, "hs": ptrs["out"]}, _sizes(plan, seq_len, num_heads), workspace, stream, compiled)


def launch_gdn_forward(
    q,
    k,
    v,
    g,
    beta,
    initial_state,
    o,
    final_state,
    workspace,
    batch: int,
    seq_len: int,
    num_heads: int,
    head_k: int,
    head_v: int,
    dtype: torch.dtype,
    scale: float | None = None,
    stream=None,
    config: ChunkConfig | None = None,
    compiled: list | None = None,
) -> None:
    """Per-token outputs o ``[B,T,H,V]`` (``dtype``) and the final state; otherwise as :func:`launch_gdn_state_update`.

    The workspace is ``plan_chunk(..., with_output=True).workspace_bytes``; the scan then runs as one segment and
    stores every chunk-start state there.
    """
    plan = plan_chunk(
        batch,
        seq_len,
        num_heads,
        head_k,
        head_v,
        dtype,
        with_output=True,
        scale=scale,
        has_initial_state=initial_state is not None,
        config=config,
    )
    ptrs = _update_args(k, v, g, beta, initial_state, final_state, dtype)
    ptrs.update(q=as_kernel_arg(q, dtype, "q"), o=as_kernel_arg(o, dtype, "o"))
    _run_plan(plan, ptrs, _sizes(plan, seq_len, num_heads), workspace, stream, compiled)


__all__ = ["launch_gdn_forward", "launch_gdn_state_update"]
