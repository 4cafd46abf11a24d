"""GdnDecomposePass: standard ops only, no loop, and the float64 recurrence's state to fp32 accuracy."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from export_helpers import gdn_graph, gdn_inputs, gdn_reference, op_types, rel_err, run_ort, to_proto

from arl2rt.export.passes.gdn_decompose import GdnDecomposePass, _doubling_masks

# (tokens, chunk): ragged last chunk, odd and even chunk counts, fewer tokens than one chunk, an exact multiple.
CASES = [(200, 64), (300, 64), (40, 64), (128, 64), (75, 16)]


@pytest.mark.parametrize(("t", "chunk"), CASES, ids=[f"T{t}-C{c}" for t, c in CASES])
def test_matches_float64_recurrence(t, chunk):
    model = gdn_graph(t, 2, 16, 8)
    result = GdnDecomposePass(chunk)(model)
    assert result.count == 1
    ops = op_types(model)
    assert all("::" not in op for op in ops), ops
    assert not {"Loop", "Scan", "If"} & set(ops)
    assert {"CumSum", "Trilu", "MatMul", "Exp"} <= set(ops)
    onnx.checker.check_model(to_proto(model), full_check=True)
    inputs = gdn_inputs(2, t, 2, 16, 8, seed=t)
    (state,) = run_ort(model, inputs)
    assert state.dtype == np.float32 and state.shape == (2, 2, 16, 8)
    assert rel_err(state, gdn_reference(inputs)) < 2e-6


def test_half_precision_keys_are_cast_to_the_state_dtype():
    model = gdn_graph(100, 2, 16, 16, act=ir.DataType.FLOAT16)
    GdnDecomposePass()(model)
    casts = [n for n in model.graph if n.op_type == "Cast"]
    assert len(casts) == 2 and all(n.attributes["to"].value == ir.DataType.FLOAT for n in casts)
    inputs = gdn_inputs(1, 100, 2, 16, 16, seed=4)
    inputs["k"], inputs["v"] = inputs["k"].astype(np.float16), inputs["v"].astype(np.float16)
    (state,) = run_ort(model, inputs)
    assert rel_err(state, gdn_reference(inputs)) < 2e-6  # the reference sees the same fp16-rounded k, v


def test_graph_grows_with_log_of_the_block_length():
    small, large = gdn_graph(128, 2, 16, 8), gdn_graph(128 * 64, 2, 16, 8)
    GdnDecomposePass()(small)
    GdnDecomposePass()(large)
    # 2 chunks -> 64 chunks: 5 more composition levels of about a dozen nodes each, not 62 more chunk steps
    assert len(large.graph) - len(small.graph) <= 5 * 14


def test_doubling_inverse_is_accurate_where_the_nilpotent_product_is_not():
    """Why the pass does not use docs/arl2.md §3.3's (I-N)(I+N^2)(I+N^4)...: with correlated keys the powers of N
    grow to ~1e12 in fp32 while (I+N)^-1 itself stays O(1)."""
    c = 64
    x = gdn_inputs(1, c, 1, 16, 8, seed=1)
    k, g, beta = x["k"][0, :, 0].astype(np.float64), x["g"][0, :, 0], x["beta"][0, :, 0]
    cum = np.cumsum(g)
    nil = np.tril(beta[:, None] * (k @ k.T) * np.exp(np.tril(cum[:, None] - cum[None, :])), -1)
    exact = np.linalg.inv(np.eye(c) + nil)
    n32 = nil.astype(np.float32)
    product, power = np.eye(c, dtype=np.float32) - n32, n32
    for _ in range(5):
        power = power @ power
        product = product @ (np.eye(c, dtype=np.float32) + power)
    doubling = np.eye(c, dtype=np.float32)
    for mask in _doubling_masks(c):
        doubling = doubling - doubling @ (n32 * mask.astype(np.float32)) @ doubling
    assert np.abs(exact).max() < 10
    assert rel_err(doubling, exact) < 1e-5
    assert not rel_err(product, exact) < 1e-2


def test_rejects_a_chunk_size_that_is_not_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        GdnDecomposePass(48)
