"""LegalizeTypesPass: bfloat16 nodes an op does not take at the opset run in float32, and the graph becomes valid."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from export_helpers import op_types, run_ort, to_proto
from onnx.reference import ReferenceEvaluator

from arl2rt.export.passes.legalize_types import LegalizeTypesPass


def _einsum(dtype: ir.DataType, opset: int = 18) -> ir.Model:
    a = ir.val("a", dtype, ir.Shape([3, 4]))
    b = ir.val("b", dtype, ir.Shape([4, 5]))
    node = ir.Node("", "Einsum", [a, b], attributes=[ir.AttrString("equation", "ij,jk->ik")], num_outputs=1)
    out = node.outputs[0]
    out.name, out.dtype, out.shape = "c", dtype, ir.Shape([3, 5])
    return ir.Model(ir.Graph([a, b], [out], nodes=[node], opset_imports={"": opset}, name="g"), ir_version=10)


def test_bfloat16_einsum_is_computed_in_float32():
    model = _einsum(ir.DataType.BFLOAT16)
    with pytest.raises(onnx.shape_inference.InferenceError, match="bfloat16"):
        onnx.checker.check_model(to_proto(model), full_check=True)
    assert LegalizeTypesPass()(model).count == 1
    assert op_types(model) == ["Cast", "Cast", "Einsum", "Cast"]
    assert model.graph.outputs[0].dtype == ir.DataType.BFLOAT16 and model.graph.outputs[0].name == "c"
    onnx.checker.check_model(to_proto(model), full_check=True)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((4, 5)).astype(np.float32)
    legal = _einsum(ir.DataType.FLOAT)
    (want,) = run_ort(legal, {"a": a, "b": b})
    (got,) = ReferenceEvaluator(to_proto(model)).run(None, {"a": a.astype("bfloat16"), "b": b.astype("bfloat16")})
    assert np.allclose(got.astype(np.float32), want, rtol=2e-2, atol=2e-2)


def test_legal_types_are_untouched():
    for dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
        model = _einsum(dtype)
        assert LegalizeTypesPass()(model).count == 0
        assert op_types(model) == ["Einsum"]
