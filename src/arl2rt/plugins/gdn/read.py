"""ARL2's block-level read in Triton: ``o = scale · q S``, optionally ``out += γ ⊙ (scale · q S)`` (docs/arl2.md §2).

q ``[B,T,H,K]`` (bf16, fp16 or fp32), S ``[B,H,K,V]`` fp32 (the state before this block), γ ``[B,T,H]`` (a head-wise
gate, any float dtype), out ``[B,T,H,V]`` in q's dtype. Every token of the block reads the same state.

Numerics (docs/arl2.md §5): for half q the state is cast to q's dtype, as the reference does, and the product
accumulates in fp32; scale, gate and the add are applied in fp32 and rounded once at the store. For fp32 q the
product runs with ``input_precision="tf32x3"`` (fp32 accuracy). One kernel, inputs → int sizes → outputs, no
workspace; each program keeps its slice of S on chip and streams ``tiles`` row tiles of q through it, so S is read
once per program. The kernel is :mod:`arl2rt.plugins.gdn.read_kernels`, imported on the first launch: this module
imports no Triton.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from arl2rt.plugins.common import (
    KernelLaunch,
    KernelRef,
    as_kernel_arg,
    check_kernel_sizes,
    interpreter_enabled,
    pointer_type,
    run_launch,
)


@dataclass(frozen=True)
class ReadConfig:
    """Tuning knobs; defaults are the H200 choices in benchmarks/results/gdn_kernels.md.

    ``block_t`` rows per tile, ``block_v`` state columns per program, ``target_programs`` how many programs to aim for
    (each then takes ⌈tiles / programs⌉ tiles, re-using its slice of S). ``num_warps`` None: 4, or 8 when a gate or an
    add is fused (their prefetched tiles would spill registers at 4).
    """

    block_t: int = 64
    block_v: int = 64
    target_programs: int = 264
    num_warps: int | None = None
    num_stages: int = 4


@functools.lru_cache(maxsize=256)
def plan_block_read(
    batch: int,
    seq_len: int,
    num_heads: int,
    head_k: int,
    head_v: int,
    dtype: torch.dtype,
    *,
    gate_dtype: torch.dtype | None = None,
    accumulate: bool = False,
    scale: float | None = None,
    config: ReadConfig | None = None,
) -> tuple[KernelLaunch, int]:
    """The launch (grid, warps, stages, constexprs, signature) and its ``TILES`` int argument for given sizes."""
    check_kernel_sizes(batch, seq_len, num_heads, head_k, head_v, dtype, "q")
    cfg = config or ReadConfig()
    bv = min(cfg.block_v, head_v)
    bh = batch * num_heads
    tiles = math.ceil(seq_len / cfg.block_t)
    per_t = max(1, round(cfg.target_programs / (bh * (head_v // bv))))
    tiles_per_program = math.ceil(tiles / min(per_t, tiles))
    ptr = pointer_type(dtype)
    launch = KernelLaunch(
        KernelRef("arl2rt.plugins.gdn.read_kernels", "_block_read_kernel"),
        (math.ceil(tiles / tiles_per_program), bh, head_v // bv),
        cfg.num_warps or (8 if gate_dtype is not None or accumulate else 4),
        cfg.num_stages,
        ("q", "state", "gate", "T", "H", "TILES", "o"),
        {
            "q": ptr,
            "state": pointer_type(torch.float32),
            "gate": pointer_type(gate_dtype or dtype),
            "T": "i32",
            "H": "i32",
            "TILES": "i32",
            "o": ptr,
        },
        {
            "K": head_k,
            "V": head_v,
            "BT": cfg.block_t,
            "BV": bv,
            "SCALE": head_k**-0.5 if scale is None else float(scale),
            "HAS_GATE": gate_dtype is not None,
            "ACCUMULATE": accumulate,
            "PREC": "tf32x3" if dtype == torch.float32 else "tf32",
            "UPCAST": interpreter_enabled() and dtype == torch.bfloat16,
        },
    )
    launch.signature.update(dict.fromkeys(launch.constexprs, "constexpr"))
    return launch, tiles_per_program


def launch_block_read(
    q,
    state,
    gate,
    o,
    batch: int,
    seq_len: int,
    num_heads: int,
    head_k: int,
    head_v: int,
    dtype: torch.dtype,
    gate_dtype: torch.dtype | None = None,
    accumulate: bool = False,
    scale: float | None = None,
    stream=None,
    config: ReadConfig | None = None,
):
    """Block read from raw device pointers (ints) or tensors, as a TensorRT plugin ``enqueue`` calls it.

    q ``[B,T,H,K]`` and o ``[B,T,H,V]`` of ``dtype``; state ``[B,H,K,V]`` fp32; gate ``[B,T,H]`` of ``gate_dtype``
    (None: no gate; pass any pointer); all contiguous. ``accumulate``: add into o instead of overwriting it. Returns
    Triton's compiled kernel (None under the interpreter).
    """
    launch, tiles = plan_block_read(
        batch,
        seq_len,
        num_heads,
        head_k,
        head_v,
        dtype,
        gate_dtype=gate_dtype,
        accumulate=accumulate,
        scale=scale,
        config=config,
    )
    out = as_kernel_arg(o, dtype, "o")
    gate_arg = out if gate_dtype is None else as_kernel_arg(gate, gate_dtype, "gate")
    args = (as_kernel_arg(q, dtype, "q"), as_kernel_arg(state, torch.float32, "state"), gate_arg)
    return run_launch(launch, (*args, seq_len, num_heads, tiles, out), stream)


def block_read(
    q: torch.Tensor,
    state: torch.Tensor,
    scale: float | None = None,
    gate: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    config: ReadConfig | None = None,
) -> torch.Tensor:
    """``scale · q S`` per token and head, gated by ``gate`` and added into ``out`` when given (returned).

    q ``[B,T,H,K]``, state ``[B,H,K,V]`` (cast to fp32), gate ``[B,T,H]`` or None, out ``[B,T,H,V]`` in q's dtype
    (contiguous; updated in place) or None for a new tensor. scale defaults to K^-0.5. Matches
    :func:`~arl2rt.plugins.gdn.naive.naive_block_read` (plus the fused ``out + γ ⊙ o``).
    """
    if q.dim() != 4 or state.dim() != 4:
        raise ValueError(f"q must be [B,T,H,K] and state [B,H,K,V]; got q {tuple(q.shape)}, state {tuple(state.shape)}")
    b, t, h, dk = q.shape
    if tuple(state.shape[:3]) != (b, h, dk):
        raise ValueError(f"state must be [B={b}, H={h}, K={dk}, V]; got {tuple(state.shape)}")
    dv = state.shape[-1]
    if gate is not None and tuple(gate.shape) != (b, t, h):
        raise ValueError(f"gate must be [B={b}, T={t}, H={h}]; got {tuple(gate.shape)}")
    if out is not None and (tuple(out.shape) != (b, t, h, dv) or out.dtype != q.dtype or not out.is_contiguous()):
        raise ValueError(
            f"out must be a contiguous [B={b}, T={t}, H={h}, V={dv}] {q.dtype} tensor; "
            f"got {tuple(out.shape)} {out.dtype}"
        )
    o = out if out is not None else torch.empty(b, t, h, dv, dtype=q.dtype, device=q.device)
    if t == 0:
        return o
    launch_block_read(
        q.contiguous(),
        state.to(torch.float32).contiguous(),
        None if gate is None else gate.contiguous(),
        o,
        b,
        t,
        h,
        dk,
        dv,
        q.dtype,
        gate_dtype=None if gate is None else gate.dtype,
        accumulate=out is not None,
        scale=scale,
        config=config,
    )
    return o


__all__ = ["ReadConfig", "block_read", "launch_block_read", "plan_block_read"]
