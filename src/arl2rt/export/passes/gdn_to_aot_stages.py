"""``tensorrt`` target, AOT mode: the GDN write becomes one plugin node per Triton kernel, so that the engine embeds
every kernel's PTX and runs without Python (TensorRT's ``aot_impl`` launches exactly one kernel per node).

Cases: every ``arl2::gdn_state_update`` node becomes

* one segment (short blocks, or a dynamic token count): ``arl2::gdn_prep`` → ``arl2::gdn_scan``, the scan writing
  the new state;
* several segments: ``arl2::gdn_prep`` → ``arl2::gdn_scan`` → ``arl2::gdn_combine`` (``input_dtype`` = the key dtype).

The segment count is the one the plugin's ``aot_impl`` derives from the same sizes
(:func:`arl2rt.plugins.gdn.aot_stages.gdn_stages`: heads, key/value dims, key dtype, tokens per block), so the tensors
between the nodes have the shapes the plugins declare (:func:`~arl2rt.plugins.gdn.aot_stages.stage_tensor_shapes`):
batch stays the graph's (symbolic) batch, W/U/prefix sums are padded to whole chunks. Node inputs/outputs follow each
kernel's argument order minus the extra ints; attributes are exactly the stage's
:class:`~arl2rt.plugins.gdn.plugin_spec.PluginSpec`. The stage plan is the kernels' plan, made without Triton; heads and
head dims must be static.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.passes.base import CountedResult, gdn_nodes, static_dims
from arl2rt.plugins.gdn import aot_stages
from arl2rt.plugins.gdn.plugin_spec import AOT_STAGE_PLUGINS, PluginSpec

logger = logging.getLogger(__name__)

_SPECS: dict[str, PluginSpec] = {s.name: s for s in AOT_STAGE_PLUGINS}
_TORCH_DTYPES = {
    ir.DataType.FLOAT: torch.float32,
    ir.DataType.FLOAT16: torch.float16,
    ir.DataType.BFLOAT16: torch.bfloat16,
}
# which GDN-node input each stage's input tensor is (the rest are made by an earlier stage)
_GDN_INPUTS = {"k": 0, "v": 1, "g": 2, "beta": 3, "s0": 4}


class GdnToAotStagesPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> CountedResult:
        graph = model.graph
        nodes = gdn_nodes(graph)
        for node in nodes:
            new_nodes, present = _stage_nodes(node)
            ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, node.outputs, [present])
        if nodes:
            graph.opset_imports[AOT_STAGE_PLUGINS[0].namespace] = int(AOT_STAGE_PLUGINS[0].version)
            logger.info("GDN -> AOT plugin stages: %d nodes", len(nodes))
        return CountedResult(model, bool(nodes), len(nodes))


def _torch_dtype(value: ir.Value) -> torch.dtype:
    if value.dtype not in _TORCH_DTYPES:
        raise Arl2rtError(f"tensor {value.name}: expected key dtype float32, float16 or bfloat16, found {value.dtype}")
    return _TORCH_DTYPES[value.dtype]


def _stage_nodes(node: ir.Node) -> tuple[list[ir.Node], ir.Value]:
    key, value = node.inputs[0], node.inputs[1]
    heads, head_k = static_dims(key, 2, 3)
    (head_v,) = static_dims(value, 3)
    batch, tokens = key.shape[0], key.shape[1]
    seq_len = tokens if isinstance(tokens, int) else None  # a dynamic token count: one segment, rows unknown
    dtype = _torch_dtype(key)
    try:
        stages = aot_stages.gdn_stages(heads, head_k, head_v, dtype, seq_len=seq_len)
    except ValueError as exc:  # sizes the kernels do not take
        raise Arl2rtError(f"GDN node {node.name}, key {key.name} {key.shape}: no AOT plugin stages: {exc}") from None
    shapes = aot_stages.stage_tensor_shapes(batch, seq_len or 1, heads, head_k, head_v, stages[1].segments)
    if seq_len is None:
        shapes.update({n: shapes[n][:2] + (None,) + shapes[n][3:] for n in ("w", "u", "gc")})

    base = node.outputs[0].name or node.name or "gdn"
    tensors: dict[str, ir.Value] = {name: node.inputs[i] for name, i in _GDN_INPUTS.items()}
    new_nodes = []
    for stage in stages:
        spec = _SPECS[stage.plugin]
        fields = {"input_dtype": str(dtype).removeprefix("torch.")} if stage.plugin == "gdn_combine" else {}
        stage_node = ir.Node(
            spec.namespace,
            spec.name,
            [tensors[stage.tensors[a]] for a in stage.inputs],
            ir.convenience.convert_attributes(spec.node_attributes(**fields)),
            num_outputs=len(stage.outputs),
            name=f"{node.name or base}_{spec.name}",
        )
        for arg, out in zip(stage.outputs, stage_node.outputs):
            tensor = stage.tensors[arg]
            out.name = f"{base}_{tensor}"
            # W and U are stored in the key dtype, everything else in fp32 (the kernels' signatures say which)
            out.dtype = key.dtype if aot_stages.stage_dtype(stage, arg) == dtype else ir.DataType.FLOAT
            out.shape = ir.Shape(shapes[tensor])
            tensors[tensor] = out
        new_nodes.append(stage_node)
    return new_nodes, tensors["out"]
