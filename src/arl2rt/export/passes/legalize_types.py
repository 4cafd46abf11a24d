"""Make every node's element types legal at the graph's opset by computing it in fp32 where they are not.

Cases: a default-domain node whose input of a 16-bit float type is not allowed by the op's schema at this opset while
float32 is: ``Einsum`` has no bfloat16 at any opset, ``Conv``/``Sin``/``Cos``/``Softplus`` none below opset 22. The
inputs of every offending type parameter are cast to float32 and the outputs bound to it cast back, so the graph keeps
its types and stays valid ONNX (the op then rounds once, at its output). Nodes with legal types are untouched.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnx import defs

from arl2rt.export.passes.base import CountedResult, default_opset

logger = logging.getLogger(__name__)

_FALLBACK = ir.DataType.FLOAT
_TYPE_STR = {
    ir.DataType.FLOAT: "tensor(float)",
    ir.DataType.FLOAT16: "tensor(float16)",
    ir.DataType.BFLOAT16: "tensor(bfloat16)",
    ir.DataType.DOUBLE: "tensor(double)",
}


def _param_types(schema: defs.OpSchema, params: list, count: int) -> list[str]:
    """The type string (a type parameter like ``T`` or a literal ``tensor(float)``) of each of ``count`` values."""
    out = []
    for i in range(count):
        param = params[min(i, len(params) - 1)] if params else None
        out.append(param.type_str if param is not None else "")
    return out


def _illegal_params(node: ir.Node, opset: int) -> set[str]:
    """Type parameters of ``node`` bound to a float type its schema forbids but that float32 could take."""
    try:
        schema = defs.get_schema(node.op_type, opset, node.domain)
    except defs.SchemaError:
        return set()
    allowed = {t.type_param_str: set(t.allowed_type_strs) for t in schema.type_constraints}
    illegal = set()
    for value, param in zip(node.inputs, _param_types(schema, list(schema.inputs), len(node.inputs))):
        if value is None or value.dtype not in _TYPE_STR or param not in allowed:
            continue
        if _TYPE_STR[value.dtype] not in allowed[param] and _TYPE_STR[_FALLBACK] in allowed[param]:
            illegal.add(param)
    return illegal


def _cast(value: ir.Value, to: ir.DataType) -> ir.Node:
    return ir.Node("", "Cast", [value], attributes=ir.convenience.convert_attributes({"to": to}))


def _legalize(node: ir.Node, opset: int, illegal: set[str]) -> tuple[list[ir.Node], list[ir.Value]]:
    schema = defs.get_schema(node.op_type, opset, node.domain)
    in_params = _param_types(schema, list(schema.inputs), len(node.inputs))
    out_params = _param_types(schema, list(schema.outputs), len(node.outputs))
    nodes = []
    inputs = []
    for value, param in zip(node.inputs, in_params):
        if value is not None and param in illegal:
            nodes.append(_cast(value, _FALLBACK))
            value = nodes[-1].outputs[0]
        inputs.append(value)
    attrs = list(node.attributes.values())
    new = ir.Node(node.domain, node.op_type, inputs, attributes=attrs, num_outputs=len(node.outputs), name=node.name)
    nodes.append(new)
    outputs = []
    for old, fresh, param in zip(node.outputs, new.outputs, out_params):
        if param in illegal:
            nodes.append(_cast(fresh, old.dtype))
            fresh = nodes[-1].outputs[0]
        outputs.append(fresh)
    return nodes, outputs


class LegalizeTypesPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> CountedResult:
        graph, opset = model.graph, default_opset(model)
        fired = 0
        for node in list(graph):
            if node.domain not in ("", "ai.onnx"):
                continue
            illegal = _illegal_params(node, opset)
            if not illegal:
                continue
            new_nodes, outputs = _legalize(node, opset, illegal)
            ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, node.outputs, outputs)
            fired += 1
        if fired:
            logger.info("computed %d nodes in float32 (types illegal at opset %d)", fired, opset)
        return CountedResult(model, bool(fired), fired)
