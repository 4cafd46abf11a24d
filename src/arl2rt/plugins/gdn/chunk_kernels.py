"""Triton kernels of the chunked gated delta rule (docs/arl2.md §3; ONNX ``LinearAttention`` with ``gated_delta``).

Layout as in :mod:`arl2rt.plugins.gdn.naive`: q, k ``[B,T,H,K]``, v ``[B,T,H,V]`` (bf16, fp16 or fp32, one dtype),
g (log decay, ≤ 0) and beta ``[B,T,H]`` fp32, states ``[B,H,K,V]`` fp32. Chunk C = ``CHUNK_SIZE`` (64); any T (the
last chunk is masked). K and V are each one of 16, 32, 64, 128. Grids, constexprs and the workspace come from
:func:`arl2rt.plugins.gdn.chunk_plan.plan_chunk`; the launches from :mod:`arl2rt.plugins.gdn.chunk_launch`.

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

import triton
import triton.language as tl

from arl2rt.plugins.gdn.constants import CHUNK_SIZE

# the chunk size as a compile-time constant of the kernels; the prep's block doubling takes log2(C) levels
_C = tl.constexpr(CHUNK_SIZE)
_LEVELS = tl.constexpr(CHUNK_SIZE.bit_length() - 1)
if CHUNK_SIZE != 1 << (CHUNK_SIZE.bit_length() - 1):
    raise ValueError(f"CHUNK_SIZE must be a power of two for the block-doubling inverse; got {CHUNK_SIZE}")


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
    C: tl.constexpr = _C
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
    for lvl in tl.static_range(1, _LEVELS):
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
    C: tl.constexpr = _C
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
    C: tl.constexpr = _C
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
