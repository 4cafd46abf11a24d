"""Chunked gated delta rule forward in Triton (ARL2-SPEC.md §3; ONNX ``LinearAttention`` with ``gated_delta``).

Layout as in :mod:`arl2rt.model.gated_delta`: q, k ``[B,T,H,K]``, v ``[B,T,H,V]`` (bf16, fp16 or fp32, one dtype),
g (log decay, ≤ 0) and beta ``[B,T,H]`` fp32, states ``[B,H,K,V]`` fp32. Chunk C = 64; any T (the last chunk is
masked). K and V are each one of 16, 32, 64, 128.

Kernels, in launch order (each takes inputs → int sizes → outputs; none needs atomics or zeroed memory):

1. ``_prep_kernel``, grid (chunks, B·H), every chunk at once: gate prefix sums G, N = strict_lower(β KKᵀ ⊙ Γ),
   T = (I + N)⁻¹, W = T diag(β e^G) K and U = T diag(β) V. The inverse is built by block doubling (1×1 → 64×64
   blocks, X_2s = X_s − X_s N_s X_s): ten 64³ products on the tensor cores (level 0, I − N₁, needs none), no
   sequential substitution, and bounded intermediates (the nilpotent product (I − N)(I + N²)… overflows fp32 for
   correlated keys).
2. ``_scan_kernel``, the only sequential part: per chunk ``S ← e^{G_n} S + Kᵀ diag(e^{G_n − G}) (U − W S)`` (in
   state-only mode the prep stores W and U with that row decay folded in, taking it off the critical path). Columns of
   S are independent, so each program owns ``block_v`` columns. To shorten the chain, T is cut into ``segments``;
   segment s > 0 runs from a zero state (giving D_s) and also carries the K×K transition M_s (the same recurrence on
   identity columns with U = 0), so that ``S_out = M_s S_in + D_s``. Every (segment, column block, head) is one program.
3. ``_combine_kernel`` (only when segments > 1): ``S = D_0;  S ← M_s S + D_s`` for s = 1…P−1.
4. ``_output_kernel`` (only when q is given): per chunk, ``O = scale (e^G ⊙ Q S_c + (Q Kᵀ ⊙ Γ)(U − W S_c))`` from the
   chunk-start states S_c, which the scan then stores (it runs with one segment).

State-only mode (ARL2's clean pass) materialises W, U, G and the P segment transitions, never per-token outputs nor
per-chunk states. The intermediates live in one workspace, cut as ``plan_chunk(...).buffers`` says.

Precision (the contract, checked against float64 in tests/plugins): products of input tensors (K Kᵀ, Q Kᵀ) use the
input dtype with fp32 accumulation; T, W and U are computed from fp32 operands with ``precision`` (``"tf32x3"`` for
fp32 inputs, ``"tf32"`` for half inputs). fp32 inputs use tf32x3 everywhere: on the H200 the final state is within
2.5e-7 relative RMS of float64. For bf16/fp16 inputs W and U are stored in the input dtype and, with ``half_dots``
(the default), the scan's W·S and Kᵀ·V_new take operands rounded to it with fp32 accumulation, as
flash-linear-attention does; the state itself stays fp32 (bf16: 2.5e-3 relative RMS at the ARL2 shapes, fla 0.6.0:
2.9e-3).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from arl2rt.plugins.common import (
    DevicePtr,
    KernelLaunch,
    as_kernel_arg,
    check_kernel_sizes,
    is_interpreted,
    pointer_type,
    run_launch,
    sub_buffer,
)

CHUNK = 64
_ALIGN = 256


@triton.jit
def _prep_kernel(
    k,
    v,
    g,
    beta,
    T,
    H,
    w,
    u,
    gc,
    K: tl.constexpr,
    V: tl.constexpr,
    PREC: tl.constexpr,
    ROW_SCALED: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One chunk of one head: cumulative gates G, T = (I + N)⁻¹, W = T diag(β e^G) K, U = T diag(β) V.

    With ``ROW_SCALED`` (state-only mode) row r of W and U is stored times e^{G_n − G_r}, the decay to the chunk end
    that the scan would otherwise apply on its critical path.
    """
    C: tl.constexpr = 64
    # K and V are handled in ≤ 64-column slices so that no operand tile exceeds 64×64 fp32 (16 KB of shared memory)
    BK: tl.constexpr = min(K, 64)
    BV: tl.constexpr = min(V, 64)
    i_c = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    r = tl.arange(0, C)
    t = i_c * C + r
    valid = t < T
    tok = (i_b.to(tl.int64) * T + t) * H + i_h
    ck = tl.arange(0, BK)
    cv = tl.arange(0, BV)
    # every load is issued up front so that one memory latency is exposed, not one per product
    gv = tl.load(g + tok, mask=valid, other=0.0)
    bv = tl.load(beta + tok, mask=valid, other=0.0)
    kptr = k + tok[:, None] * K + ck[None, :]
    vptr = v + tok[:, None] * V + cv[None, :]
    k0 = tl.load(kptr, mask=valid[:, None], other=0.0)
    v0 = tl.load(vptr, mask=valid[:, None], other=0.0)
    if K > 64:
        k1 = tl.load(kptr + BK, mask=valid[:, None], other=0.0)
    if V > 64:
        v1 = tl.load(vptr + BV, mask=valid[:, None], other=0.0)
    G = tl.cumsum(gv, axis=0)

    if UPCAST:
        kk = tl.dot(k0.to(tl.float32), tl.trans(k0.to(tl.float32)), input_precision=PREC)
        if K > 64:
            kk = tl.dot(k1.to(tl.float32), tl.trans(k1.to(tl.float32)), acc=kk, input_precision=PREC)
    else:
        kk = tl.dot(k0, tl.trans(k0), input_precision=PREC)
        if K > 64:
            kk = tl.dot(k1, tl.trans(k1), acc=kk, input_precision=PREC)
    rc = r[:, None]
    cc = r[None, :]
    # exp of a non-positive number only: the masked upper triangle would overflow
    decay = tl.exp(tl.minimum(G[:, None] - G[None, :], 0.0))
    A = tl.where(rc > cc, bv[:, None] * kk * decay, 0.0)

    # (I + A)⁻¹ by block doubling on tensor cores: X holds the inverses of the diagonal blocks of size s; merging
    # pairs of blocks gives X_2s = X_s − X_s A_s X_s, where A_s keeps the lower-left s×s block of every 2s×2s block.
    # Every X_s is a true inverse of a sub-block, so its entries stay bounded. (The nilpotent product
    # (I − A)(I + A²)(I + A⁴)… is exact on paper but its powers of A overflow fp32 when keys are correlated, as
    # neighbouring video tokens are.)
    # level 0 needs no product: X_1 = I, so X_2 = I − A_1
    Tm = tl.where(rc == cc, 1.0, 0.0) - tl.where(((rc & 1) == 1) & (cc == rc - 1), A, 0.0)
    for lvl in tl.static_range(1, 6):
        lower_left = ((rc >> lvl) & 1 == 1) & ((cc >> lvl) == (rc >> lvl) - 1)
        XA = tl.dot(Tm, tl.where(lower_left, A, 0.0), input_precision=PREC)
        Tm = Tm - tl.dot(XA, Tm, input_precision=PREC)

    if ROW_SCALED:
        g_end = tl.sum(tl.where(r == C - 1, G, 0.0), axis=0)
        Tm = Tm * tl.exp(g_end - G)[:, None]
    kscale = (bv * tl.exp(G))[:, None]
    vscale = bv[:, None]
    row0 = i_bh.to(tl.int64) * tl.num_programs(0) * C + i_c * C + r
    wptr = w + row0[:, None] * K + ck[None, :]
    uptr = u + row0[:, None] * V + cv[None, :]
    tl.store(wptr, tl.dot(Tm, k0.to(tl.float32) * kscale, input_precision=PREC).to(w.dtype.element_ty))
    if K > 64:
        tl.store(wptr + BK, tl.dot(Tm, k1.to(tl.float32) * kscale, input_precision=PREC).to(w.dtype.element_ty))
    tl.store(uptr, tl.dot(Tm, v0.to(tl.float32) * vscale, input_precision=PREC).to(u.dtype.element_ty))
    if V > 64:
        tl.store(uptr + BV, tl.dot(Tm, v1.to(tl.float32) * vscale, input_precision=PREC).to(u.dtype.element_ty))
    tl.store(gc + row0, G)


@triton.jit
def _scan_kernel(
    k,
    w,
    u,
    gc,
    s0,
    T,
    H,
    NT,
    CPS,
    NSEG,
    dst,
    hs,
    K: tl.constexpr,
    V: tl.constexpr,
    BV: tl.constexpr,
    SINGLE: tl.constexpr,
    HAS_S0: tl.constexpr,
    STORE_STATES: tl.constexpr,
    ROW_SCALED: tl.constexpr,
    HALF_DOTS: tl.constexpr,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Recurrence over the chunks of one segment for ``BV`` columns of the state (or of the transition M_s).

    Program ids: axis 0 enumerates segment 0's V-column blocks, then (V + K)/BV column blocks for each later segment
    (the first V/BV of them for D_s, the rest for M_s); axis 1 is b·H + h. ``dst`` is the final state [B,H,K,V] when
    ``SINGLE`` (one segment), else the transitions [B,H,NSEG,K,V+K] (D_s in columns < V, M_s after).
    """
    C: tl.constexpr = 64
    NDV: tl.constexpr = V // BV
    NCOL: tl.constexpr = NDV + K // BV
    pid = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    first = pid < NDV
    p = tl.maximum(pid - NDV, 0)
    seg = tl.where(first, 0, 1 + p // NCOL)
    col = tl.where(first, pid, p % NCOL)
    is_d = col < NDV
    c0 = tl.where(is_d, col, col - NDV) * BV

    rk = tl.arange(0, K)
    cb = tl.arange(0, BV)
    r = tl.arange(0, C)
    # scalar flags enter masks as integer bounds (row < 0 masks everything)
    if HAS_S0:
        X = tl.load(
            s0 + i_bh.to(tl.int64) * K * V + rk[:, None] * V + (c0 + cb)[None, :],
            mask=rk[:, None] < tl.where(is_d & (seg == 0), K, 0),
            other=0.0,
        )
    else:
        X = tl.zeros((K, BV), dtype=tl.float32)
    X = tl.where(rk[:, None] == (c0 + cb)[None, :] + tl.where(is_d, K, 0), 1.0, X)
    u_rows = tl.where(is_d, C, 0)

    row_base = i_bh.to(tl.int64) * NT * C
    lo = seg * CPS
    hi = tl.minimum(lo + CPS, NT)
    # the small per-chunk loads are prefetched one chunk ahead by hand (the pipeliner only stages dot operands)
    ut_n = tl.load(u + (row_base + lo * C + r)[:, None] * V + (c0 + cb)[None, :], mask=r[:, None] < u_rows, other=0.0)
    gn_n = tl.load(gc + row_base + lo * C + C - 1)
    if not ROW_SCALED:
        gt_n = tl.load(gc + row_base + lo * C + r)
    for c in range(lo, hi):
        ut = ut_n
        gn = gn_n
        nxt = row_base + tl.minimum(c + 1, hi - 1) * C
        ut_n = tl.load(u + (nxt + r)[:, None] * V + (c0 + cb)[None, :], mask=r[:, None] < u_rows, other=0.0)
        gn_n = tl.load(gc + nxt + C - 1)
        if not ROW_SCALED:
            gt = gt_n
            gt_n = tl.load(gc + nxt + r)
        if STORE_STATES:
            tl.store(hs + ((i_bh.to(tl.int64) * NT + c) * K + rk[:, None]) * V + (c0 + cb)[None, :], X)
        rows = row_base + c * C + r
        t = c * C + r
        wt = tl.load(w + rows[:, None] * K + rk[None, :])
        kt = tl.load(
            k + ((i_b.to(tl.int64) * T + t) * H + i_h)[:, None] * K + rk[None, :], mask=(t < T)[:, None], other=0.0
        )
        if HALF_DOTS and not UPCAST:
            ws = tl.dot(wt, X.to(wt.dtype))
        elif HALF_DOTS:
            ws = tl.dot(wt.to(tl.float32), X.to(wt.dtype).to(tl.float32))
        else:
            ws = tl.dot(wt.to(tl.float32), X, input_precision=PREC)
        vn = ut.to(tl.float32) - ws
        if not ROW_SCALED:
            vn = vn * tl.exp(gn - gt)[:, None]
        if HALF_DOTS and not UPCAST:
            X = tl.dot(tl.trans(kt), vn.to(kt.dtype), acc=X * tl.exp(gn))
        elif HALF_DOTS:
            X = tl.dot(tl.trans(kt.to(tl.float32)), vn.to(kt.dtype).to(tl.float32), acc=X * tl.exp(gn))
        else:
            X = tl.dot(tl.trans(kt.to(tl.float32)), vn, acc=X * tl.exp(gn), input_precision=PREC)

    if SINGLE:
        tl.store(dst + i_bh.to(tl.int64) * K * V + rk[:, None] * V + (c0 + cb)[None, :], X)
    else:
        cols = tl.where(is_d, c0, V + c0) + cb
        tl.store(dst + ((i_bh.to(tl.int64) * NSEG + seg) * K + rk[:, None]) * (V + K) + cols[None, :], X)


@triton.jit
def _combine_kernel(
    seg,
    NSEG,
    out,
    K: tl.constexpr,
    V: tl.constexpr,
    BV: tl.constexpr,
    PREC: tl.constexpr,
):
    """Final state from the segment transitions: ``S = D_0;  S ← M_s S + D_s``. Grid (V/BV, B·H).

    For K = 128 the state is carried as two 64-row halves and M_s is read as four 64×64 quarters, each right before
    its product, so one quarter is staged at a time (shared memory stays within 48 KB for an ahead-of-time launch;
    prefetching the next segment's tiles measured no faster on the H200).
    """
    KH: tl.constexpr = K // 2 if K > 64 else K
    LD: tl.constexpr = V + K
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    rh = tl.arange(0, KH)
    cv = i_v * BV + tl.arange(0, BV)
    base = seg + i_bh.to(tl.int64) * NSEG * K * LD + rh[:, None] * LD
    S0 = tl.load(base + cv[None, :])
    if K > 64:
        S1 = tl.load(base + KH * LD + cv[None, :])
    for s in range(1, NSEG):
        ms = base + s * K * LD + V + rh[None, :]  # top-left quarter of M_s
        ds = base + s * K * LD + cv[None, :]  # top half of D_s
        if K > 64:
            top = tl.dot(tl.load(ms), S0, acc=tl.load(ds), input_precision=PREC)
            top = tl.dot(tl.load(ms + KH), S1, acc=top, input_precision=PREC)
            bot = tl.dot(tl.load(ms + KH * LD), S0, acc=tl.load(ds + KH * LD), input_precision=PREC)
            S1 = tl.dot(tl.load(ms + KH * LD + KH), S1, acc=bot, input_precision=PREC)
            S0 = top
        else:
            S0 = tl.dot(tl.load(ms), S0, acc=tl.load(ds), input_precision=PREC)
    dst = out + i_bh.to(tl.int64) * K * V + rh[:, None] * V + cv[None, :]
    tl.store(dst, S0)
    if K > 64:
        tl.store(dst + KH * V, S1)


@triton.jit
def _output_kernel(
    q,
    k,
    w,
    u,
    gc,
    hs,
    T,
    H,
    NT,
    o,
    K: tl.constexpr,
    V: tl.constexpr,
    BV: tl.constexpr,
    SCALE: tl.constexpr,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Per-token outputs of one chunk from its start state S_c. Grid (chunks, B·H, V/BV)."""
    C: tl.constexpr = 64
    i_c = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_v = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    r = tl.arange(0, C)
    t = i_c * C + r
    valid = t < T
    tok = (i_b.to(tl.int64) * T + t) * H + i_h
    rk = tl.arange(0, K)
    cv = i_v * BV + tl.arange(0, BV)
    rows = i_bh.to(tl.int64) * NT * C + i_c * C + r
    qt = tl.load(q + tok[:, None] * K + rk[None, :], mask=valid[:, None], other=0.0)
    kt = tl.load(k + tok[:, None] * K + rk[None, :], mask=valid[:, None], other=0.0)
    wt = tl.load(w + rows[:, None] * K + rk[None, :])
    ut = tl.load(u + rows[:, None] * V + cv[None, :])
    G = tl.load(gc + rows)
    S = tl.load(hs + ((i_bh.to(tl.int64) * NT + i_c) * K + rk[:, None]) * V + cv[None, :])

    vn = ut.to(tl.float32) - tl.dot(wt.to(tl.float32), S, input_precision=PREC)
    if UPCAST:
        qk = tl.dot(qt.to(tl.float32), tl.trans(kt.to(tl.float32)), input_precision=PREC)
    else:
        qk = tl.dot(qt, tl.trans(kt), input_precision=PREC)
    Aqk = tl.where(r[:, None] >= r[None, :], qk * tl.exp(tl.minimum(G[:, None] - G[None, :], 0.0)), 0.0)
    acc = tl.dot(qt.to(tl.float32), S, input_precision=PREC) * tl.exp(G)[:, None]
    acc = tl.dot(Aqk, vn, acc=acc, input_precision=PREC)
    tl.store(o + tok[:, None] * V + cv[None, :], (acc * SCALE).to(o.dtype.element_ty), mask=valid[:, None])


@dataclass(frozen=True)
class ChunkConfig:
    """Tuning knobs; the defaults are the H200 choices recorded in benchmarks/results/gdn_kernels.md.

    ``segments``: how many pieces T is cut into for the scan (None: enough for about ``target_programs`` programs).
    ``block_v``: state columns per scan program (None: 64 for half inputs, 32 for fp32, whose split tf32x3 operands
    need more registers). ``scan_stages``: software-pipelining depth of the scan (1 keeps every half-input kernel within
    48 KB of shared memory, for ahead-of-time launches). ``half_dots``: see the module docstring. ``precision``:
    Triton ``input_precision`` of fp32 products (None: "tf32x3" for fp32 inputs, "tf32" for half inputs).
    ``store_dtype``: dtype of W and U in the workspace (None: the input dtype; fp32 is more accurate and slower).
    ``prep_precision``: ``input_precision`` of the prep's products for fp32 inputs (None: as ``precision``); "ieee"
    (CUDA-core fp32) needs 32 KB of shared memory where tf32x3 stages both halves of both operands (64 KB), over the
    48 KB an ahead-of-time launch may use.
    """

    segments: int | None = None
    target_programs: int = 264
    block_v: int | None = None
    scan_warps: int = 4
    scan_stages: int = 2
    prep_warps: int = 4
    combine_block_v: int = 32
    combine_warps: int = 4
    output_warps: int = 8
    half_dots: bool = True
    precision: str | None = None
    store_dtype: torch.dtype | None = None
    prep_precision: str | None = None


@dataclass(frozen=True)
class ChunkPlan:
    """The launches of one call and how its workspace is cut: ``buffers[name] = (byte offset, dtype, numel)``."""

    launches: tuple[KernelLaunch, ...]
    buffers: dict[str, tuple[int, torch.dtype, int]]
    workspace_bytes: int
    segments: int
    chunks_per_segment: int


def _segments(cfg: ChunkConfig, bh: int, nt: int, ndv: int, ncol: int) -> int:
    if cfg.segments is not None:
        want = cfg.segments
    else:
        # programs = bh * (ndv + (P - 1) * ncol); more segments shorten the chain but add K×K transition work
        want = 1 + max(0, round((cfg.target_programs / bh - ndv) / ncol))
    want = max(1, min(want, nt))
    cps = math.ceil(nt / want)
    return math.ceil(nt / cps)


@functools.lru_cache(maxsize=256)
def plan_chunk(
    batch: int,
    seq_len: int,
    num_heads: int,
    head_k: int,
    head_v: int,
    dtype: torch.dtype,
    *,
    with_output: bool = False,
    scale: float | None = None,
    has_initial_state: bool = True,
    config: ChunkConfig | None = None,
) -> ChunkPlan:
    """Launch parameters (grids, warps, stages, constexprs, signatures) and workspace layout for given sizes.

    This is what an ahead-of-time (TensorRT ``aot_impl``) path reuses: each :class:`KernelLaunch` carries the
    kernel, its Triton signature and constexprs, its grid and ``num_warps``/``num_stages``. Shared memory per kernel
    is known once compiled (``triton.compile(...).metadata.shared``); the H200 values are logged by
    ``benchmarks/gdn_kernels.py``.
    """
    check_kernel_sizes(batch, seq_len, num_heads, head_k, head_v, dtype, "q/k/v")
    cfg = config or ChunkConfig()
    K, V, bh = head_k, head_v, batch * num_heads
    nt = math.ceil(seq_len / CHUNK)
    bv = min(cfg.block_v or (32 if dtype == torch.float32 else 64), K, V)
    ndv, ncol = V // bv, V // bv + K // bv
    nseg = 1 if with_output else _segments(cfg, bh, nt, ndv, ncol)
    cps = math.ceil(nt / nseg)
    prec = cfg.precision or ("tf32x3" if dtype == torch.float32 else "tf32")
    half_dots = cfg.half_dots and dtype != torch.float32
    # Triton's CPU interpreter multiplies bf16 operands as raw integers; there, half products run on exact fp32 copies
    upcast = is_interpreted(_prep_kernel) and dtype == torch.bfloat16

    buffers: dict[str, tuple[int, torch.dtype, int]] = {}
    offset = 0

    def add(name: str, dt: torch.dtype, numel: int) -> None:
        nonlocal offset
        buffers[name] = (offset, dt, numel)
        offset += -(-numel * torch.empty((), dtype=dt).element_size() // _ALIGN) * _ALIGN

    sdt = cfg.store_dtype or dtype
    add("w", sdt, bh * nt * CHUNK * K)
    add("u", sdt, bh * nt * CHUNK * V)
    add("gc", torch.float32, bh * nt * CHUNK)
    if nseg > 1:
        add("seg", torch.float32, bh * nseg * K * (V + K))
    if with_output:
        add("hs", torch.float32, bh * nt * K * V)

    ptr = pointer_type(dtype)
    sptr = pointer_type(sdt)
    f32 = pointer_type(torch.float32)
    launches = [
        KernelLaunch(
            _prep_kernel,
            (nt, bh, 1),
            cfg.prep_warps,
            1,
            ("k", "v", "g", "beta", "T", "H", "w", "u", "gc"),
            {"k": ptr, "v": ptr, "g": f32, "beta": f32, "T": "i32", "H": "i32", "w": sptr, "u": sptr, "gc": f32},
            {
                "K": K,
                "V": V,
                "PREC": (dtype == torch.float32 and cfg.prep_precision) or prec,
                "ROW_SCALED": not with_output,
                "UPCAST": upcast,
            },
        ),
        KernelLaunch(
            _scan_kernel,
            (ndv + (nseg - 1) * ncol, bh, 1),
            cfg.scan_warps,
            cfg.scan_stages,
            ("k", "w", "u", "gc", "s0", "T", "H", "NT", "CPS", "NSEG", "dst", "hs"),
            {
                "k": ptr,
                "w": sptr,
                "u": sptr,
                "gc": f32,
                "s0": f32,
                "T": "i32",
                "H": "i32",
                "NT": "i32",
                "CPS": "i32",
                "NSEG": "i32",
                "dst": f32,
                "hs": f32,
            },
            {
                "K": K,
                "V": V,
                "BV": bv,
                "SINGLE": nseg == 1,
                "HAS_S0": has_initial_state,
                "STORE_STATES": with_output,
                "ROW_SCALED": not with_output,
                "HALF_DOTS": half_dots,
                "PREC": prec,
                "UPCAST": upcast,
            },
        ),
    ]
    if nseg > 1:
        launches.append(
            KernelLaunch(
                _combine_kernel,
                (V // min(cfg.combine_block_v, V), bh, 1),
                cfg.combine_warps,
                1,
                ("seg", "NSEG", "out"),
                {"seg": f32, "NSEG": "i32", "out": f32},
                {"K": K, "V": V, "BV": min(cfg.combine_block_v, V), "PREC": prec},
            )
        )
    if with_output:
        launches.append(
            KernelLaunch(
                _output_kernel,
                (nt, bh, V // bv),
                cfg.output_warps,
                1,
                ("q", "k", "w", "u", "gc", "hs", "T", "H", "NT", "o"),
                {
                    "q": ptr,
                    "k": ptr,
                    "w": sptr,
                    "u": sptr,
                    "gc": f32,
                    "hs": f32,
                    "T": "i32",
                    "H": "i32",
                    "NT": "i32",
                    "o": ptr,
                },
                {
                    "K": K,
                    "V": V,
                    "BV": bv,
                    "SCALE": K**-0.5 if scale is None else float(scale),
                    "PREC": prec,
                    "UPCAST": upcast,
                },
            )
        )
    for launch in launches:
        launch.signature.update(dict.fromkeys(launch.constexprs, "constexpr"))
    return ChunkPlan(tuple(launches), buffers, offset, nseg, cps)


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
    nt = math.ceil(seq_len / CHUNK)
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


def _check_inputs(q, k, v, g, beta, initial_state) -> None:
    if k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"k and v must be [B, T, H, D]; got k {tuple(k.shape)}, v {tuple(v.shape)}")
    b, t, h, dk = k.shape
    if v.shape[:3] != (b, t, h):
        raise ValueError(f"v must be [B={b}, T={t}, H={h}, V]; got {tuple(v.shape)}")
    if q is not None and tuple(q.shape) != tuple(k.shape):
        raise ValueError(f"q must be shaped like k {tuple(k.shape)}; got {tuple(q.shape)}")
    for name, x in (("g", g), ("beta", beta)):
        if tuple(x.shape) != (b, t, h):
            raise ValueError(f"{name} must be [B={b}, T={t}, H={h}]; got {tuple(x.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (b, h, dk, v.shape[-1]):
        raise ValueError(
            f"initial state must be [B={b}, H={h}, K={dk}, V={v.shape[-1]}]; got {tuple(initial_state.shape)}"
        )
    if v.dtype != k.dtype or (q is not None and q.dtype != k.dtype):
        raise ValueError(
            f"q, k, v must share one dtype; got k {k.dtype}, v {v.dtype}, q {None if q is None else q.dtype}"
        )


def chunk_gated_delta_rule(
    q: torch.Tensor | None,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    config: ChunkConfig | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Chunked gated delta rule (Triton), same contract as :func:`arl2rt.model.gated_delta.chunk_gated_delta_rule`.

    q (optional), k ``[B,T,H,K]``, v ``[B,T,H,V]`` in bf16/fp16/fp32; g (log decay ≤ 0), beta ``[B,T,H]`` (cast to
    fp32); initial_state ``[B,H,K,V]`` (cast to fp32; None = zeros); scale defaults to K^-0.5. Returns
    ``(o [B,T,H,V] in v's dtype or None when q is None, final_state [B,H,K,V] fp32)``. With q None nothing per-token
    or per-chunk is stored: the state-only path.
    """
    _check_inputs(q, k, v, g, beta, initial_state)
    b, t, h, dk = k.shape
    dv = v.shape[-1]
    dtype = k.dtype
    s0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
    if t == 0:
        state = s0.clone() if s0 is not None else k.new_zeros(b, h, dk, dv, dtype=torch.float32)
        return (v.new_empty(b, 0, h, dv) if q is not None else None), state
    check_kernel_sizes(b, t, h, dk, dv, dtype, "q/k/v")
    args = (k.contiguous(), v.contiguous(), g.to(torch.float32).contiguous(), beta.to(torch.float32).contiguous(), s0)
    state = torch.empty(b, h, dk, dv, dtype=torch.float32, device=k.device)
    if q is None:
        plan = plan_chunk(b, t, h, dk, dv, dtype, has_initial_state=s0 is not None, config=config)
        ws = torch.empty(plan.workspace_bytes, dtype=torch.uint8, device=k.device)
        launch_gdn_state_update(*args, state, ws, b, t, h, dk, dv, dtype, config=config)
        return None, state
    plan = plan_chunk(
        b, t, h, dk, dv, dtype, with_output=True, scale=scale, has_initial_state=s0 is not None, config=config
    )
    ws = torch.empty(plan.workspace_bytes, dtype=torch.uint8, device=k.device)
    o = torch.empty_like(v)
    launch_gdn_forward(q.contiguous(), *args, o, state, ws, b, t, h, dk, dv, dtype, scale=scale, config=config)
    return o, state


def chunk_gated_delta_rule_state(
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    config: ChunkConfig | None = None,
) -> torch.Tensor:
    """State-only update (ARL2's clean-pass write): the final state ``[B,H,K,V]`` fp32 and nothing else."""
    return chunk_gated_delta_rule(None, k, v, g, beta, initial_state=initial_state, config=config)[1]


__all__ = [
    "CHUNK",
    "ChunkConfig",
    "ChunkPlan",
    "DevicePtr",
    "chunk_gated_delta_rule",
    "chunk_gated_delta_rule_state",
    "launch_gdn_forward",
    "launch_gdn_state_update",
    "plan_chunk",
]
