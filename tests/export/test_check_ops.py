"""CheckOpsPass: a target's graph uses only what the target's runtime parses."""

from __future__ import annotations

import onnx_ir as ir
import pytest
from export_helpers import gdn_graph

from arl2rt.errors import Arl2rtError
from arl2rt.export.passes.check_ops import CheckOpsPass


def _graph(op_type: str, opset: int) -> ir.Model:
    q, k, v = (ir.val(n, ir.DataType.FLOAT, ir.Shape([1, 2, 4, 8])) for n in "qkv")
    node = ir.Node("", op_type, [q, k, v], num_outputs=1, name="attn")
    return ir.Model(ir.Graph([q, k, v], node.outputs, nodes=[node], opset_imports={"": opset}, name="g"), ir_version=10)


def test_a_clean_graph_passes_unchanged():
    result = CheckOpsPass("portable", max_opset=21, forbidden_ops=["Attention"])(_graph("Sum", 18))
    assert (result.count, result.modified) == (0, False)


def test_forbidden_op_and_opset_are_named():
    with pytest.raises(Arl2rtError, match=r"default opset 23 above 21; node attn: op Attention is not allowed"):
        CheckOpsPass("tensorrt", max_opset=21, forbidden_ops=["Attention"])(_graph("Attention", 23))


def test_a_custom_node_without_a_plugin_is_named():
    with pytest.raises(Arl2rtError, match="custom op arl2::gdn_state_update is not allowed"):
        CheckOpsPass("onnxruntime")(gdn_graph(4, 1, 8, 8))
