"""onnxruntime targets: softmax attention as the standard ``Attention`` op (opset 23) instead of its decomposition.

The exporter writes ``scaled_dot_product_attention`` out as MatMul, Softmax, MatMul and the Reshape/Concat/Slice
shape arithmetic around them. onnxruntime runs the decomposition node by node; its ``Attention`` kernel (CPU: fp32
and fp16; CUDA: fp32, fp16 and bf16, flash/memory-efficient kernels) does the same in one node, and the shape nodes
around it go away. (onnxruntime's ``com.microsoft::MultiHeadAttention`` has no bf16 CUDA kernel; the standard op has.)

Cases: onnxscript's SDPA pattern rules find each decomposed attention and replace it with an intermediate
``ai.onnxruntime._fusion::SDPA`` node (query, key, value[, mask]; ``key_format`` ``BHSd`` or ``BHdS`` for a key
already transposed; ``scale`` unless it is the default 1/sqrt(head_size)); every such node then becomes
``Attention(q, k, v[, attn_mask])`` on 4-D ``[B, H, S, D]`` tensors, the key transposed back where it came
transposed. Below opset 23 the pass does nothing.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa

from arl2rt.export.passes.base import CountedResult, default_opset

logger = logging.getLogger(__name__)

ATTENTION_OPSET = 23
_FUSED = ("ai.onnxruntime._fusion", "SDPA")


class SdpaToAttentionPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> CountedResult:
        if default_opset(model) < ATTENTION_OPSET:
            return CountedResult(model, False, 0)
        fuse_sdpa(model, apply_shape_inference=True)
        graph = model.graph
        nodes = [n for n in graph if (n.domain, n.op_type) == _FUSED]
        for node in nodes:
            new_nodes = _attention(node)
            ir.convenience.replace_nodes_and_values(
                graph, node, [node], new_nodes, node.outputs, [new_nodes[-1].outputs[0]]
            )
        model.opset_imports.pop(_FUSED[0], None)
        if nodes:
            logger.info("SDPA -> Attention: %d nodes", len(nodes))
        return CountedResult(model, bool(nodes), len(nodes))


def _attention(node: ir.Node) -> list[ir.Node]:
    query, key, value, *mask = node.inputs
    tape = ir.tape.Tape()
    if node.attributes.get_string("key_format", "BHSd") == "BHdS":
        key = tape.op("Transpose", [key], {"perm": [0, 1, 3, 2]})
    scale = node.attributes.get_float("scale", None)
    attrs = {} if scale is None else {"scale": scale}
    tape.op("Attention", [query, key, value, *mask], attrs)
    return list(tape.nodes)
