"""GdnToLinearAttentionPass: one standard LinearAttention node that onnxruntime and onnx's evaluator both run."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from export_helpers import gdn_graph, gdn_inputs, gdn_reference, op_types, rel_err, run_ort, to_proto
from onnx.reference import ReferenceEvaluator

from arl2rt.export.passes.gdn_to_linear_attention import GdnToLinearAttentionPass
from arl2rt.export.passes.raise_opset import RaiseOpsetPass


def _rewritten(t: int, act: ir.DataType = ir.DataType.FLOAT) -> ir.Model:
    model = gdn_graph(t, 2, 16, 8, act)
    RaiseOpsetPass(27)(model)
    assert GdnToLinearAttentionPass()(model).count == 1
    return model


def test_node_layout():
    model = _rewritten(70)
    assert op_types(model) == ["Constant", "Reshape", "Constant", "Reshape", "LinearAttention"]
    (node,) = [n for n in model.graph if n.op_type == "LinearAttention"]
    attrs = {k: a.value for k, a in node.attributes.items()}
    assert attrs == {"q_num_heads": 2, "kv_num_heads": 2, "update_rule": "gated_delta", "chunk_size": 64}
    assert node.outputs[1] is model.graph.outputs[0] and not node.outputs[0].uses()
    onnx.checker.check_model(to_proto(model), full_check=True)


@pytest.mark.parametrize("t", [1, 70, 200], ids=lambda t: f"T{t}")
def test_onnxruntime_and_reference_evaluator_match_float64(t):
    model = _rewritten(t)
    inputs = gdn_inputs(2, t, 2, 16, 8, seed=t)
    want = gdn_reference(inputs)
    (ort_state,) = run_ort(model, inputs)
    (ref_state,) = ReferenceEvaluator(to_proto(model)).run(None, inputs)
    assert rel_err(ort_state, want) < 1e-6
    assert rel_err(ref_state, want) < 1e-6


def test_half_precision_keys_are_cast_to_float32():
    model = _rewritten(50, act=ir.DataType.FLOAT16)
    assert op_types(model).count("Cast") == 2
    inputs = gdn_inputs(1, 50, 2, 16, 8, seed=2)
    inputs["k"], inputs["v"] = inputs["k"].astype(np.float16), inputs["v"].astype(np.float16)
    (state,) = run_ort(model, inputs)
    assert rel_err(state, gdn_reference(inputs)) < 1e-6


def test_requires_opset_27():
    with pytest.raises(ir.passes.PreconditionError, match="opset >= 27"):
        GdnToLinearAttentionPass()(gdn_graph(8, 2, 16, 8))
