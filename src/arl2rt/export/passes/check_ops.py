"""A check, not a rewrite: the graph uses only what its target's runtime can parse.

Cases: a default-domain opset above the target's maximum; a forbidden op (TensorRT: the opset-23 ``Attention`` and
``RMSNormalization``); a node in a domain the target does not run, or a custom node that is neither exactly our
plugin's node nor one of the runtime's own ops the target allows (onnxruntime's contrib ``LinearAttention``).
Raises an Arl2rtError listing every problem; fires 0 times when the graph is fine.
"""

from __future__ import annotations

from collections.abc import Collection

import onnx_ir as ir

from arl2rt.errors import Arl2rtError
from arl2rt.export.passes.base import CountedResult, default_opset
from arl2rt.plugins.gdn.plugin_spec import PluginSpec


class CheckOpsPass(ir.passes.InPlacePass):
    def __init__(
        self,
        target: str,
        *,
        max_opset: int | None = None,
        forbidden_ops: Collection[str] = (),
        plugins: Collection[PluginSpec] = (),
        runtime_ops: Collection[tuple[str, str]] = (),
    ) -> None:
        super().__init__()
        self.target, self.max_opset = target, max_opset
        self.forbidden_ops = set(forbidden_ops)
        self.runtime_ops = set(runtime_ops)  # (domain, op type) the target's runtime implements itself
        self.plugins = {(p.namespace, p.name): p for p in plugins}

    def call(self, model: ir.Model) -> CountedResult:
        graph = model.graph
        problems = []
        opset = default_opset(model)
        if self.max_opset is not None and opset > self.max_opset:
            problems.append(f"default opset {opset} above {self.max_opset}")
        for node in graph.all_nodes():
            domain = "" if node.domain == "ai.onnx" else node.domain
            if domain == "" and node.op_type in self.forbidden_ops:
                problems.append(f"node {node.name}: op {node.op_type} is not allowed")
            elif domain != "" and (domain, node.op_type) not in self.runtime_ops:
                plugin = self.plugins.get((domain, node.op_type))
                if plugin is None:
                    problems.append(f"node {node.name}: custom op {domain}::{node.op_type} is not allowed")
                else:
                    problems += plugin.node_problems(ir.serde.serialize_node(node))
        if problems:
            raise Arl2rtError(f"graph {graph.name} is not a valid {self.target} graph: " + "; ".join(problems))
        return CountedResult(model, False, 0)
