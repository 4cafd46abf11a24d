"""ARL2's block-level read in Triton: ``o = scale · q S``, optionally ``out += γ ⊙ (scale · q S)`` (ARL2-SPEC.md §2).

q ``[B,T,H,K]`` (bf16, fp16 or fp32), S ``[B,H,K,V]`` fp32 (the state before this block), γ ``[B,T,H]`` (a head-wise
gate, any float dtype), out ``[B,T,H,V]`` in q's dtype. Every token of the block reads the same state.

Numerics (spec §5): for half q the state is cast to q's dtype, as the reference does, and the product accumulates in
fp32; scale, gate and the add are applied in fp32 and rounded once at the store. For fp32 q the product runs with
``input_precision="tf32x3"`` (fp32 accuracy). One kernel, inputs → int sizes → outputs, no workspace; each program
keeps its slice of S on chip and streams ``tiles`` row tiles of q through it, so S is read once per program.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from arl2rt.plugins.common import (
    KernelLaunch,
    as_kernel_arg,
    check_kernel_sizes,
    is_interpreted,
    pointer_type,
    run_launch,
)


@triton.jit
def _block_read_kernel(
    q,
    state,
    gate,
    T,
    H,
    TILES,
    o,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    SCALE: tl.constexpr,
    HAS_GATE: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Grid (⌈T / (BT·TILES)⌉, B·H, V/BV): TILES consecutive BT-row tiles of one head against one BV slice of S."""
    i_t = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_v = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    rk = tl.arange(0, K)
    cv = i_v * BV + tl.arange(0, BV)
    S = tl.load(state + i_bh.to(tl.int64) * K * V + rk[:, None] * V + cv[None, :])
    if q.dtype.element_ty != tl.float32:
        S = S.to(q.dtype.element_ty)
        if UPCAST:  # Triton's CPU interpreter multiplies bf16 operands as raw integers
            S = S.to(tl.float32)
    rt = tl.arange(0, BT)
    t0 = i_t * TILES * BT
    # the gate and the output being added to are prefetched one tile ahead by hand (the pipeliner stages only q)
    if HAS_GATE:
        gate_n = tl.load(gate + (i_b.to(tl.int64) * T + t0 + rt) * H + i_h, mask=t0 + rt < T, other=0.0)
    if ACCUMULATE:
        tok0 = (i_b.to(tl.int64) * T + t0 + rt) * H + i_h
        add_n = tl.load(o + tok0[:, None] * V + cv[None, :], mask=(t0 + rt < T)[:, None], other=0.0)
    for it in range(TILES):
        t = t0 + it * BT + rt
        valid = t < T
        tok = (i_b.to(tl.int64) * T + t) * H + i_h
        tn = t + BT
        tok_n = (i_b.to(tl.int64) * T + tn) * H + i_h
        valid_n = tn < tl.where(it + 1 < TILES, T, 0)  # a scalar flag enters the mask as a bound
        if HAS_GATE:
            gt = gate_n
            gate_n = tl.load(gate + tok_n, mask=valid_n, other=0.0)
        if ACCUMULATE:
            add = add_n
            add_n = tl.load(o + tok_n[:, None] * V + cv[None, :], mask=valid_n[:, None], other=0.0)
        qt = tl.load(q + tok[:, None] * K + rk[None, :], mask=valid[:, None], other=0.0)
        if UPCAST:
            qt = qt.to(tl.float32)
        acc = tl.dot(qt, S, input_precision=PREC) * SCALE
        if HAS_GATE:
            acc = acc * gt.to(tl.float32)[:, None]
        if ACCUMULATE:
            acc += add.to(tl.float32)
        tl.store(o + tok[:, None] * V + cv[None, :], acc.to(o.dtype.element_ty), mask=valid[:, None])


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
        _block_read_kernel,
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
            "UPCAST": is_interpreted(_block_read_kernel) and dtype == torch.bfloat16,
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
    :func:`arl2rt.model.gated_delta.block_read` (plus the fused ``out + γ ⊙ o``).
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
