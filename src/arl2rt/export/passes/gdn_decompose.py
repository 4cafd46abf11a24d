"""``portable`` target: the GDN write decomposed into standard ONNX ops only, with no loop.

Cases: every ``arl2::gdn_state_update`` node (static T, H, K, V; any batch). The chunked form of docs/arl2.md §3.2 with
chunk C (a power of two): tokens are zero-padded to a multiple of C (decay 0, beta 0: a padded token leaves the state
unchanged) and all chunks are solved at once. ``T = (I + N)^-1`` is built by doubling the diagonal blocks it has
inverted, ``X_2s = X_s - X_s (N * L_s) X_s`` with ``L_s`` the lower-left s x s block of every 2s x 2s diagonal block
(``log2 C`` levels). The nilpotent product ``(I - N)(I + N^2)(I + N^4)...`` of docs/arl2.md §3.3 is exact in exact
arithmetic but not in fp32: with correlated keys the powers of N reach 1e12 while T stays near 1 (measured; see the
test), so it is not used. A chunk then acts on the state as ``S' = M S + b`` with ``M = gamma_n I - K~^T W`` and
``b = K~^T U``; the chunks' maps are composed pairwise in ``ceil(log2 n)`` levels, so the graph grows with the log of
the block length, not the length. Everything runs in the state's dtype (fp32); 16-bit key/value are cast first.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx_ir as ir

from arl2rt.export.passes.base import CountedResult, gdn_nodes, static_dims
from arl2rt.plugins.gdn.constants import CHUNK_SIZE

logger = logging.getLogger(__name__)


class _Builder:
    """A tape plus the few composite ops the decomposition repeats."""

    def __init__(self, dtype: ir.DataType) -> None:
        self.tape, self.dtype = ir.tape.Tape(), dtype
        self._constants: dict[tuple, ir.Value] = {}

    def op(self, op_type: str, *inputs: ir.Value, **attrs) -> ir.Value:
        return self.tape.op(op_type, list(inputs), attrs or None)

    def const(self, array: np.ndarray) -> ir.Value:
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.op("Constant", value=ir.tensor(array))
        return self._constants[key]

    def ints(self, *values: int) -> ir.Value:
        return self.const(np.array(values, dtype=np.int64))

    def scalar(self, value: int) -> ir.Value:
        return self.const(np.array(value, dtype=np.int64))

    def floats(self, array: np.ndarray) -> ir.Value:
        return self.const(array.astype(self.dtype.numpy()))

    def cast(self, x: ir.Value) -> ir.Value:
        return x if x.dtype == self.dtype else self.op("Cast", x, to=self.dtype)

    def swap_last(self, x: ir.Value, rank: int) -> ir.Value:
        perm = list(range(rank - 2)) + [rank - 1, rank - 2]
        return self.op("Transpose", x, perm=perm)

    def take(self, x: ir.Value, start: int, end: int, axis: int, step: int = 1) -> ir.Value:
        return self.op("Slice", x, self.ints(start), self.ints(end), self.ints(axis), self.ints(step))


def _doubling_masks(chunk: int) -> list[np.ndarray]:
    """For s = 1, 2, 4, ... < C: 1 where row r is in the second and column i in the first half of one 2s-block."""
    r, i = np.arange(chunk)[:, None], np.arange(chunk)[None, :]
    masks, s = [], 1
    while s < chunk:
        masks.append(((r // (2 * s) == i // (2 * s)) & (r // s % 2 == 1) & (i // s % 2 == 0)).astype(np.float64))
        s *= 2
    return masks


def _decompose(node: ir.Node, chunk: int) -> tuple[list[ir.Node], ir.Value]:
    key, value, decay, beta, state = node.inputs
    t, heads, dk = static_dims(key, 1, 2, 3)
    dv = static_dims(value, 3)[0]
    n = max(1, math.ceil(t / chunk))
    pad = n * chunk - t
    b = _Builder(state.dtype)
    masks = [b.floats(m) for m in _doubling_masks(chunk)]

    def chunked(x: ir.Value, perm: list[int], tail: list[int]) -> ir.Value:
        """[B, T, H, *tail] -> [B, H, n, C, *tail], zero-padded along T."""
        x = b.op("Transpose", b.cast(x), perm=perm)
        rank = len(perm)
        if pad:
            x = b.op("Pad", x, b.ints(*([0] * (rank + 2)), pad, *([0] * (rank - 3))))
        return b.op("Reshape", x, b.ints(0, 0, n, chunk, *tail))

    k = chunked(key, [0, 2, 1, 3], [dk])  # [B,H,n,C,K]
    v = chunked(value, [0, 2, 1, 3], [dv])  # [B,H,n,C,V]
    g = chunked(decay, [0, 2, 1], [])  # [B,H,n,C]
    beta_c = chunked(beta, [0, 2, 1], [])
    beta_col = b.op("Unsqueeze", beta_c, b.ints(4))

    G = b.op("CumSum", g, b.scalar(3))  # cumulative log decay within the chunk
    diff = b.op("Sub", b.op("Unsqueeze", G, b.ints(4)), b.op("Unsqueeze", G, b.ints(3)))  # G_r - G_i
    strict = np.tril(np.ones((chunk, chunk)), -1)
    # Γ_ri = exp(G_r - G_i) for i < r: zero the rest before exp (no overflow), then mask.
    gamma = b.op("Mul", b.op("Exp", b.op("Trilu", diff, b.scalar(-1), upper=0)), b.floats(strict))
    kk = b.op("MatMul", k, b.swap_last(k, 5))
    nil = b.op("Mul", beta_col, b.op("Mul", kk, gamma))  # N, strictly lower triangular

    inverse = b.floats(np.eye(chunk))  # inverse of every 1 x 1 diagonal block of I + N
    for lower_left in masks:
        inverse = b.op("Sub", inverse, b.op("MatMul", b.op("MatMul", inverse, b.op("Mul", nil, lower_left)), inverse))

    u = b.op("MatMul", inverse, b.op("Mul", beta_col, v))
    beta_gamma = b.op("Unsqueeze", b.op("Mul", beta_c, b.op("Exp", G)), b.ints(4))
    w = b.op("MatMul", inverse, b.op("Mul", beta_gamma, k))
    g_last = b.take(G, chunk - 1, chunk, axis=3)  # [B,H,n,1]
    k_end = b.op("Mul", b.op("Unsqueeze", b.op("Exp", b.op("Sub", g_last, G)), b.ints(4)), k)  # exp(G_n - G_r) k_r
    k_end_t = b.swap_last(k_end, 5)  # [B,H,n,K,C]
    gamma_n = b.op("Unsqueeze", b.op("Exp", g_last), b.ints(4))  # [B,H,n,1,1]
    m = b.op("Sub", b.op("Mul", gamma_n, b.floats(np.eye(dk))), b.op("MatMul", k_end_t, w))  # [B,H,n,K,K]
    bias = b.op("MatMul", k_end_t, u)  # [B,H,n,K,V]

    count = n
    while count > 1:  # compose chunk maps pairwise: (M1, b1) after (M0, b0) = (M1 M0, M1 b0 + b1)
        half = count // 2
        m_even, m_odd = b.take(m, 0, 2 * half, 2, 2), b.take(m, 1, 2 * half, 2, 2)
        b_even, b_odd = b.take(bias, 0, 2 * half, 2, 2), b.take(bias, 1, 2 * half, 2, 2)
        m_next = b.op("MatMul", m_odd, m_even)
        b_next = b.op("Add", b.op("MatMul", m_odd, b_even), b_odd)
        if count % 2:  # the last chunk waits for the next level
            m_next = b.op("Concat", m_next, b.take(m, count - 1, count, 2), axis=2)
            b_next = b.op("Concat", b_next, b.take(bias, count - 1, count, 2), axis=2)
        m, bias, count = m_next, b_next, half + count % 2
    axis = b.ints(2)
    new_state = b.op("Add", b.op("MatMul", b.op("Squeeze", m, axis), state), b.op("Squeeze", bias, axis))
    return list(b.tape.nodes), new_state


class GdnDecomposePass(ir.passes.InPlacePass):
    def __init__(self, chunk_size: int = CHUNK_SIZE) -> None:
        super().__init__()
        if chunk_size < 2 or chunk_size & (chunk_size - 1):
            raise ValueError(f"chunk_size must be a power of two >= 2, got {chunk_size}")
        self.chunk_size = chunk_size

    def call(self, model: ir.Model) -> CountedResult:
        graph = model.graph
        nodes = gdn_nodes(graph)
        for node in nodes:
            new_nodes, new_state = _decompose(node, self.chunk_size)
            ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, node.outputs, [new_state])
        if nodes:
            logger.info("GDN decomposed (chunk %d): %d nodes", self.chunk_size, len(nodes))
        return CountedResult(model, bool(nodes), len(nodes))
