"""Targets: which passes turn the one export (opset 18, ``arl2::gdn_state_update`` nodes) into a target's graph.

| target        | the GDN write becomes                                          | opset: default, allowed |
|---------------|----------------------------------------------------------------|-------------------------|
| `onnxruntime` | standard ``LinearAttention`` (``update_rule="gated_delta"``)   | 27, 27..28              |
| `tensorrt`    | our plugin's node (``arl2::gdn_state_update`` + its attributes) | 18, 18..21              |
| `portable`    | standard ops only (chunked, no loop)                           | 18, 18..21              |

Every pipeline starts by conforming graph I/O to the StateSpec and ends with type legalisation (16-bit types an op
does not take at the opset), cleanup and a check of the ops the target's runtime parses. :func:`apply_target`
returns how often each pass fired; the manifest records it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, RemoveUnusedOpsetsPass

from arl2rt.errors import Arl2rtError
from arl2rt.export.onnx_export import EXPORT_OPSET
from arl2rt.export.passes.check_ops import CheckOpsPass
from arl2rt.export.passes.gdn_decompose import GdnDecomposePass
from arl2rt.export.passes.gdn_to_linear_attention import LINEAR_ATTENTION_OPSET, GdnToLinearAttentionPass
from arl2rt.export.passes.gdn_to_plugin import GdnToPluginPass
from arl2rt.export.passes.legalize_types import LegalizeTypesPass
from arl2rt.export.passes.raise_opset import RaiseOpsetPass
from arl2rt.export.passes.state_io import StateIOPass
from arl2rt.export.state_spec import StateSpec
from arl2rt.plugins.gdn.plugin_spec import GDN_PLUGIN

# Opset-23+ ops TensorRT cannot build as we need them (shared/research/export-notes.md §3).
TENSORRT_FORBIDDEN = ("Attention", "RMSNormalization")
MAX_ONNX_OPSET = 28  # the newest default-domain opset onnx 1.23 knows


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    default_opset: int
    max_opset: int
    min_opset: int
    rewrite: Callable[[], list[ir.passes.PassBase]]
    check: Callable[[int], CheckOpsPass]

    def resolve_opset(self, opset: int | None) -> int:
        if opset is None:
            return self.default_opset
        if not self.min_opset <= opset <= self.max_opset:
            raise Arl2rtError(
                f"target {self.name}: opset {opset} not supported; expected {self.min_opset}..{self.max_opset}"
            )
        return opset

    def passes(self, spec: StateSpec, graph: str, opset: int) -> list[ir.passes.PassBase]:
        return [
            StateIOPass(spec, graph),
            RaiseOpsetPass(opset),
            *self.rewrite(),
            LegalizeTypesPass(),
            RemoveUnusedNodesPass(),
            RemoveUnusedOpsetsPass(),
            self.check(opset),
        ]


TARGETS: dict[str, Target] = {
    "onnxruntime": Target(
        "onnxruntime",
        "GDN write as the standard LinearAttention op (opset 27); runs on onnxruntime >= 1.31",
        LINEAR_ATTENTION_OPSET,
        MAX_ONNX_OPSET,
        LINEAR_ATTENTION_OPSET,
        lambda: [GdnToLinearAttentionPass()],
        lambda opset: CheckOpsPass("onnxruntime", max_opset=opset),
    ),
    "tensorrt": Target(
        "tensorrt",
        f"GDN write as the TensorRT plugin node {GDN_PLUGIN.qualified_name} v{GDN_PLUGIN.version}; opset <= 21",
        EXPORT_OPSET,
        21,
        EXPORT_OPSET,
        lambda: [GdnToPluginPass()],
        lambda opset: CheckOpsPass("tensorrt", max_opset=21, forbidden_ops=TENSORRT_FORBIDDEN, plugins=[GDN_PLUGIN]),
    ),
    "portable": Target(
        "portable",
        "GDN write decomposed into standard ops; any runtime, TensorRT-RTX (no plugins)",
        EXPORT_OPSET,
        21,
        EXPORT_OPSET,
        lambda: [GdnDecomposePass()],
        lambda opset: CheckOpsPass("portable", max_opset=21, forbidden_ops=TENSORRT_FORBIDDEN),
    ),
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise Arl2rtError(f"unknown target {name!r}; expected one of {sorted(TARGETS)}") from None


def apply_target(model: ir.Model, spec: StateSpec, graph: str, target: str, opset: int | None = None) -> dict[str, int]:
    """Run ``target``'s passes on ``model`` (in place); returns pass name -> times it fired."""
    tgt = get_target(target)
    counts: dict[str, int] = {}
    for p in tgt.passes(spec, graph, tgt.resolve_opset(opset)):
        result = p(model)
        counts[type(p).__name__] = getattr(result, "count", int(result.modified))
    return counts
