"""RaiseOpsetPass: raises the opset only when no op of the graph changed meaning in between."""

from __future__ import annotations

import onnx_ir as ir
import pytest

from arl2rt.errors import Arl2rtError
from arl2rt.export.passes.raise_opset import RaiseOpsetPass, schema_change


def _graph(op_type: str, *inputs: ir.Value, **attrs) -> ir.Model:
    node = ir.Node("", op_type, list(inputs), attributes=ir.convenience.convert_attributes(attrs), num_outputs=1)
    return ir.Model(ir.Graph(list(inputs), node.outputs, nodes=[node], opset_imports={"": 18}, name="g"), ir_version=10)


def test_the_exported_graphs_ops_only_gained_types():
    for op in ("Reshape", "Transpose", "Cast", "Conv", "Softplus", "Pad", "MatMul", "Softmax", "LayerNormalization"):
        assert schema_change(op, 18, 27) is None, op


def test_raises_the_import(micro_graphs):
    model = micro_graphs["commit_step"]
    assert RaiseOpsetPass(27)(model).count == 1
    assert model.graph.opset_imports[""] == 27
    assert RaiseOpsetPass(27)(model).count == 0  # already there


def test_an_op_with_a_new_attribute_blocks_the_raise_and_leaves_the_model_alone():
    start, limit, delta = (ir.val(n, ir.DataType.FLOAT16, ir.Shape([])) for n in ("start", "limit", "delta"))
    model = _graph("Range", start, limit, delta)
    with pytest.raises(Arl2rtError, match=r"Range: attributes changed \[\] or added \['stash_type'\]"):
        RaiseOpsetPass(27)(model)
    assert model.graph.opset_imports[""] == 18
