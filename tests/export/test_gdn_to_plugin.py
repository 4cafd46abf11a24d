"""GdnToPluginPass and the plugin description: the node carries exactly the attributes the plugin declares."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest
from export_helpers import gdn_graph, op_types, to_proto

from arl2rt.errors import Arl2rtError
from arl2rt.export.passes.check_ops import CheckOpsPass
from arl2rt.export.passes.gdn_to_plugin import GdnToPluginPass
from arl2rt.plugins.gdn.plugin_spec import GDN_PLUGIN


def _plugin_node(model: ir.Model) -> onnx.NodeProto:
    (node,) = to_proto(model).graph.node
    return node


def test_node_carries_exactly_the_plugin_attributes():
    model = gdn_graph(20, 2, 16, 8)
    model.graph.node(0).attributes["stale"] = ir.AttrInt64("stale", 1)
    assert GdnToPluginPass()(model).count == 1
    node = _plugin_node(model)
    assert (node.domain, node.op_type) == ("arl2", "gdn_state_update")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"plugin_namespace": b"arl2", "plugin_version": b"1", "chunk_size": 64}
    assert {a.name: a.type for a in node.attribute} == GDN_PLUGIN.attribute_types()
    assert GDN_PLUGIN.node_problems(node) == []
    onnx.checker.check_model(to_proto(model), full_check=True)
    assert op_types(model) == ["arl2::gdn_state_update"]
    CheckOpsPass("tensorrt", max_opset=21, plugins=[GDN_PLUGIN])(model)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda n: n.attributes.pop("chunk_size"), "expected attributes"),
        (lambda n: n.attributes.__setitem__("extra", ir.AttrFloat32("extra", 1.0)), "expected attributes"),
        (lambda n: n.attributes.__setitem__("chunk_size", ir.AttrFloat32("chunk_size", 64.0)), "expected type INT"),
        (lambda n: n.attributes.__setitem__("plugin_version", ir.AttrString("plugin_version", "2")), "'1'"),
    ],
    ids=["missing-field", "extra-attribute", "float-field", "wrong-version"],
)
def test_a_node_that_differs_from_the_plugin_is_rejected(edit, problem):
    model = gdn_graph(20, 2, 16, 8)
    GdnToPluginPass()(model)
    edit(model.graph.node(0))
    assert any(problem in p for p in GDN_PLUGIN.node_problems(_plugin_node(model)))
    with pytest.raises(Arl2rtError, match="not a valid tensorrt graph"):
        CheckOpsPass("tensorrt", plugins=[GDN_PLUGIN])(model)


def test_plugin_fields_are_typed():
    assert GDN_PLUGIN.qualified_name == "arl2::gdn_state_update"
    assert GDN_PLUGIN.node_attributes(chunk_size=32)["chunk_size"] == 32
    with pytest.raises(ValueError, match="expected int"):
        GDN_PLUGIN.node_attributes(chunk_size=32.0)
    with pytest.raises(ValueError, match="unknown fields"):
        GDN_PLUGIN.node_attributes(block=1)
    assert all(f.type in (int, float, str) for f in GDN_PLUGIN.fields)  # what TensorRT's parser passes through
