"""``onnxruntime`` targets: the GDN write becomes ``LinearAttention`` with the gated delta rule: the standard ONNX op
(opset 27; target ``onnxruntime``) or onnxruntime's contrib op ``com.microsoft::LinearAttention`` (any opset; target
``onnxruntime-contrib``), which has the same inputs, attributes and state layout and is the form onnxruntime's CUDA EP
registers a kernel for (docs/targets.md §2).

Cases: every ``arl2::gdn_state_update`` node. ``LinearAttention`` takes packed ``[B, T, H*D]`` query/key/value and
one element type for them and for decay/beta; our decay and beta are fp32 (docs/arl2.md §5), so 16-bit key/value are
cast to the state's fp32 first. The op also computes per-token outputs, which ARL2 does not use: the key stands in
for the query and the output is left unconsumed. The standard op requires a default-domain opset >= 27 (run
RaiseOpsetPass first).
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from arl2rt.export.passes.base import CountedResult, default_opset, gdn_nodes, static_dims

logger = logging.getLogger(__name__)

LINEAR_ATTENTION_OPSET = 27
CONTRIB_DOMAIN = "com.microsoft"  # onnxruntime's contrib ops, version 1


class GdnToLinearAttentionPass(ir.passes.InPlacePass):
    def __init__(self, chunk_size: int = 64, domain: str = "") -> None:
        super().__init__()
        self.chunk_size, self.domain = chunk_size, domain

    def requires(self, model: ir.Model) -> None:
        if self.domain == "" and default_opset(model) < LINEAR_ATTENTION_OPSET:
            raise ir.passes.PreconditionError(
                f"LinearAttention needs opset >= {LINEAR_ATTENTION_OPSET}; the model imports {default_opset(model)}"
            )

    def call(self, model: ir.Model) -> CountedResult:
        graph = model.graph
        nodes = gdn_nodes(graph)
        for node in nodes:
            new_nodes, present = _linear_attention(node, self.chunk_size, self.domain)
            ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, node.outputs, [present])
        if nodes and self.domain:
            model.opset_imports[self.domain] = 1
        if nodes:
            logger.info("GDN -> LinearAttention: %d nodes", len(nodes))
        return CountedResult(model, bool(nodes), len(nodes))


def _packed(tape: ir.tape.Tape, x: ir.Value, dtype: ir.DataType) -> ir.Value:
    """[B, T, H, D] -> [B, T, H*D] in ``dtype``."""
    heads, dim = static_dims(x, 2, 3)
    if x.dtype != dtype:
        x = tape.op("Cast", [x], {"to": dtype})
    shape = tape.op("Constant", [], {"value": ir.tensor([0, 0, heads * dim], dtype=ir.DataType.INT64)})
    return tape.op("Reshape", [x, shape])


def _linear_attention(node: ir.Node, chunk_size: int, domain: str) -> tuple[list[ir.Node], ir.Value]:
    key, value, decay, beta, state = node.inputs
    heads = static_dims(key, 2)[0]
    tape = ir.tape.Tape()
    k, v = _packed(tape, key, state.dtype), _packed(tape, value, state.dtype)
    attrs = {"q_num_heads": heads, "kv_num_heads": heads, "update_rule": "gated_delta", "chunk_size": chunk_size}
    _, present = tape.op_multi_out(
        "LinearAttention", [k, k, v, state, decay, beta], attrs, domain=domain, num_outputs=2
    )
    return list(tape.nodes), present
