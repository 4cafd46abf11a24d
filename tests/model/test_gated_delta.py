"""Gated delta rule references: recurrence == chunked == state-only, and == ONNX LinearAttention (external oracles)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from arl2rt.plugins.gdn.naive import (
    naive_block_read,
    naive_chunk_gated_delta_rule,
    naive_chunk_gated_delta_rule_state,
    naive_recurrent_gated_delta_rule,
)

CASES = [(1, 1, 2, 8, 8), (2, 63, 3, 16, 24), (1, 64, 2, 32, 16), (2, 65, 1, 16, 8), (1, 200, 2, 24, 32)]


def gdn_inputs(b, t, h, dk, dv, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, dk, generator=g, dtype=dtype)
    k = torch.nn.functional.normalize(torch.randn(b, t, h, dk, generator=g, dtype=dtype), dim=-1)
    v = torch.randn(b, t, h, dv, generator=g, dtype=dtype)
    decay = torch.nn.functional.logsigmoid(torch.randn(b, t, h, generator=g, dtype=dtype)) * 0.3
    beta = 2 * torch.rand(b, t, h, generator=g, dtype=dtype)
    state = torch.randn(b, h, dk, dv, generator=g, dtype=dtype)
    return q, k, v, decay, beta, state


def case_id(case):
    b, t, h, dk, dv = case
    return f"B{b}-T{t}-H{h}-K{dk}-V{dv}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_chunked_equals_recurrent_float64(case):
    q, k, v, g, beta, s0 = gdn_inputs(*case, seed=sum(case))
    o_ref, s_ref = naive_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=s0)
    o, s = naive_chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0)
    s_only = naive_chunk_gated_delta_rule_state(k, v, g, beta, s0)
    assert (o - o_ref).abs().max() <= 1e-10
    assert (s - s_ref).abs().max() <= 1e-10
    assert (s_only - s_ref).abs().max() <= 1e-10
    # the initial state matters: dropping it changes the outputs
    assert (naive_chunk_gated_delta_rule(q, k, v, g, beta, initial_state=None)[0] - o_ref).abs().max() > 1e-2


def test_small_chunk_sizes_agree():
    q, k, v, g, beta, s0 = gdn_inputs(1, 50, 2, 8, 8, seed=7)
    ref = naive_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=s0)[1]
    for c in (1, 7, 16):
        assert (naive_chunk_gated_delta_rule_state(k, v, g, beta, s0, chunk_size=c) - ref).abs().max() <= 1e-10


def test_bad_shapes_are_named():
    q, k, v, g, beta, s0 = gdn_inputs(1, 5, 2, 8, 8, seed=1)
    with pytest.raises(ValueError, match="beta"):
        naive_chunk_gated_delta_rule(q, k, v, g, beta[:, :4], initial_state=s0)
    with pytest.raises(ValueError, match="initial state"):
        naive_chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0[:, :1])


def test_block_read_uses_one_state_for_all_tokens():
    q, _, _, _, _, s0 = gdn_inputs(2, 9, 3, 8, 8, seed=2)
    o = naive_block_read(q, s0)
    for t in (0, 4, 8):
        for h in range(3):
            assert torch.allclose(o[1, t, h], 8**-0.5 * q[1, t, h] @ s0[1, h], atol=1e-12)


def rel_err(got: np.ndarray, want: torch.Tensor) -> float:
    """Relative RMS error of ``got`` against the float64 reference ``want``."""
    want = want.numpy()
    return float(np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want))


def linear_attention_model(b, t, h, dk, dv) -> onnx.ModelProto:
    """One ONNX LinearAttention node (opset 27, gated_delta) with packed [B, T, H*D] inputs.

    The op is declared for float16/bfloat16/float32 only, and onnx's reference evaluator accumulates in float32:
    both oracles are checked at float32 accuracy.
    """
    f = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("query", f, [b, t, h * dk]),
        helper.make_tensor_value_info("key", f, [b, t, h * dk]),
        helper.make_tensor_value_info("value", f, [b, t, h * dv]),
        helper.make_tensor_value_info("past_state", f, [b, h, dk, dv]),
        helper.make_tensor_value_info("decay", f, [b, t, h]),
        helper.make_tensor_value_info("beta", f, [b, t, h]),
    ]
    outputs = [
        helper.make_tensor_value_info("output", f, [b, t, h * dv]),
        helper.make_tensor_value_info("present_state", f, [b, h, dk, dv]),
    ]
    node = helper.make_node(
        "LinearAttention",
        [i.name for i in inputs],
        ["output", "present_state"],
        q_num_heads=h,
        kv_num_heads=h,
        update_rule="gated_delta",
        scale=dk**-0.5,
    )
    graph = helper.make_graph([node], "gdn", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 27)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _onnx_feeds(q, k, v, g, beta, s0):
    b, t, h, _ = q.shape
    return {
        "query": q.reshape(b, t, -1).numpy(),
        "key": k.reshape(b, t, -1).numpy(),
        "value": v.reshape(b, t, -1).numpy(),
        "past_state": s0.numpy(),
        "decay": g.numpy(),
        "beta": beta.numpy(),
    }


@pytest.mark.parametrize("case", [(1, 1, 2, 8, 8), (2, 65, 2, 16, 24), (1, 130, 3, 8, 16)], ids=case_id)
def test_reference_equals_onnx_reference_evaluator(case):
    from onnx.reference import ReferenceEvaluator

    q, k, v, g, beta, s0 = gdn_inputs(*case, seed=11 + sum(case))
    out, present = ReferenceEvaluator(linear_attention_model(*case)).run(None, _onnx_feeds(q, k, v, g, beta, s0))
    o, s = naive_chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0)
    assert rel_err(present, s) <= 1e-5
    assert rel_err(out, o.reshape(o.shape[0], o.shape[1], -1)) <= 1e-5


def test_reference_equals_onnxruntime_fp32():
    ort = pytest.importorskip("onnxruntime")
    case = (2, 100, 2, 16, 16)
    q, k, v, g, beta, s0 = gdn_inputs(*case, seed=5)
    model = linear_attention_model(*case)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {n: a.astype(np.float32) for n, a in _onnx_feeds(q, k, v, g, beta, s0).items()}
    out, present = sess.run(None, feeds)
    o, s = naive_chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0)
    assert rel_err(present, s) <= 1e-5
    assert rel_err(out, o.reshape(2, 100, -1)) <= 1e-5
