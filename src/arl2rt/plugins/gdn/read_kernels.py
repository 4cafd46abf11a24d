"""Triton kernel of ARL2's block-level read ``o = scale · q S``, optionally ``out += γ ⊙ (scale · q S)``.

Its launch (grid, constexprs, signature) is planned by :func:`arl2rt.plugins.gdn.read.plan_block_read`; the contract
and numerics are in that module's docstring.
"""

from __future__ import annotations

import triton
import triton.language as tl


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
