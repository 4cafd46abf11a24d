"""Targets: which passes turn the one export (opset 18, ``arl2::gdn_state_update`` nodes) into a target's graph.

| target        | the GDN write becomes                                          | opset: default, allowed |
|---------------|----------------------------------------------------------------|-------------------------|
| `onnxruntime` | standard ``LinearAttention`` (``update_rule="gated_delta"``)   | 27, 27..28              |
| `onnxruntime-contrib` | onnxruntime's ``com.microsoft::LinearAttention`` (same op)  | 23, 18..28        |

Both onnxruntime targets turn softmax attention into the standard ``Attention`` op and each RMSNorm into the standard
``RMSNormalization`` op at opset >= 23 (:mod:`.passes.sdpa_to_attention`, :mod:`.passes.rms_to_rmsnormalization`).
| `tensorrt`    | our plugins' nodes: AOT stages (default) or the JIT node       | 18, 18..21              |
| `portable`    | standard ops only (chunked, no loop)                           | 18, 18..21              |

Every pipeline starts by conforming graph I/O to the StateSpec and ends with type legalisation (16-bit types an op
does not take at the opset), cleanup and a check of the ops the target's runtime parses. :func:`apply_target`
returns how often each pass fired; the manifest records it. Only ``tensorrt`` has plugin modes (``trt_plugin``):
``aot``, ``arl2::gdn_prep`` → ``gdn_scan`` [→ ``gdn_combine``] (one kernel per node; the engine embeds the PTX and
runs without Python), or ``jit``, one ``arl2::gdn_state_update`` node (its Triton kernels run through Python when the
engine runs).
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
from arl2rt.export.passes.gdn_to_aot_stages import GdnToAotStagesPass
from arl2rt.export.passes.gdn_to_linear_attention import (
    CONTRIB_DOMAIN,
    LINEAR_ATTENTION_OPSET,
    GdnToLinearAttentionPass,
)
from arl2rt.export.passes.gdn_to_plugin import GdnToPluginPass
from arl2rt.export.passes.legalize_types import LegalizeTypesPass
from arl2rt.export.passes.raise_opset import RaiseOpsetPass
from arl2rt.export.passes.rms_to_rmsnormalization import RmsToRmsNormalizationPass
from arl2rt.export.passes.sdpa_to_attention import ATTENTION_OPSET, SdpaToAttentionPass
from arl2rt.export.passes.state_io import StateIOPass
from arl2rt.export.state_spec import StateSpec
from arl2rt.plugins.gdn.plugin_spec import AOT_STAGE_PLUGINS, GDN_PLUGIN, PluginSpec

# Opset-23+ ops TensorRT cannot build as we need them (docs/targets.md §1).
TENSORRT_FORBIDDEN = ("Attention", "RMSNormalization")
MAX_ONNX_OPSET = 28  # the newest default-domain opset onnx 1.23 knows
# onnxruntime's own ops (domain, op type) the onnxruntime-contrib target's graphs carry
ORT_CONTRIB_OPS = ((CONTRIB_DOMAIN, "LinearAttention"),)
# tensorrt plugin mode -> the plugins its graphs use
TRT_PLUGIN_MODES: dict[str, tuple[PluginSpec, ...]] = {"aot": AOT_STAGE_PLUGINS, "jit": (GDN_PLUGIN,)}


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    default_opset: int
    max_opset: int
    min_opset: int
    rewrite: Callable[[str | None], list[ir.passes.PassBase]]  # plugin mode -> passes
    check: Callable[[int, str | None], CheckOpsPass]  # (opset, plugin mode) -> check
    plugin_modes: tuple[str, ...] = ()  # the first is the default
    runtime_ops: tuple[tuple[str, str], ...] = ()  # custom-domain ops its runtime implements (not our plugins)

    def resolve_plugin_mode(self, mode: str | None) -> str | None:
        if mode is None:
            return self.plugin_modes[0] if self.plugin_modes else None
        if mode not in self.plugin_modes:
            expected = list(self.plugin_modes) or "none (only the tensorrt target has plugin modes)"
            raise Arl2rtError(f"target {self.name}: plugin mode {mode!r} not supported; expected {expected}")
        return mode

    def plugins(self, mode: str | None) -> tuple[PluginSpec, ...]:
        """The plugins whose nodes this target's graphs carry in plugin ``mode``."""
        return TRT_PLUGIN_MODES[mode] if mode is not None else ()

    def resolve_opset(self, opset: int | None) -> int:
        if opset is None:
            return self.default_opset
        if not self.min_opset <= opset <= self.max_opset:
            raise Arl2rtError(
                f"target {self.name}: opset {opset} not supported; expected {self.min_opset}..{self.max_opset}"
            )
        return opset

    def passes(
        self, spec: StateSpec, graph: str, opset: int, plugin_mode: str | None = None
    ) -> list[ir.passes.PassBase]:
        return [
            StateIOPass(spec, graph),
            RaiseOpsetPass(opset),
            *self.rewrite(plugin_mode),
            LegalizeTypesPass(),
            RemoveUnusedNodesPass(),
            RemoveUnusedOpsetsPass(),
            self.check(opset, plugin_mode),
        ]


TARGETS: dict[str, Target] = {
    "onnxruntime": Target(
        "onnxruntime",
        "GDN write as the standard LinearAttention op (opset 27); runs on onnxruntime >= 1.31",
        LINEAR_ATTENTION_OPSET,
        MAX_ONNX_OPSET,
        LINEAR_ATTENTION_OPSET,
        lambda mode: [GdnToLinearAttentionPass(), SdpaToAttentionPass(), RmsToRmsNormalizationPass()],
        lambda opset, mode: CheckOpsPass("onnxruntime", max_opset=opset),
    ),
    "onnxruntime-contrib": Target(
        "onnxruntime-contrib",
        "GDN write as onnxruntime's contrib LinearAttention (com.microsoft), softmax attention as Attention (opset "
        "23); onnxruntime's CPU and CUDA EPs",
        ATTENTION_OPSET,
        MAX_ONNX_OPSET,
        EXPORT_OPSET,
        lambda mode: [
            GdnToLinearAttentionPass(domain=CONTRIB_DOMAIN),
            SdpaToAttentionPass(),
            RmsToRmsNormalizationPass(),
        ],
        lambda opset, mode: CheckOpsPass("onnxruntime-contrib", max_opset=opset, runtime_ops=ORT_CONTRIB_OPS),
        runtime_ops=ORT_CONTRIB_OPS,
    ),
    "tensorrt": Target(
        "tensorrt",
        "GDN write as TensorRT plugin nodes: AOT stages "
        f"{' -> '.join(p.qualified_name for p in AOT_STAGE_PLUGINS)} (default) or JIT {GDN_PLUGIN.qualified_name}",
        EXPORT_OPSET,
        21,
        EXPORT_OPSET,
        lambda mode: [GdnToAotStagesPass() if mode == "aot" else GdnToPluginPass()],
        lambda opset, mode: CheckOpsPass(
            "tensorrt", max_opset=21, forbidden_ops=TENSORRT_FORBIDDEN, plugins=TRT_PLUGIN_MODES[mode]
        ),
        tuple(TRT_PLUGIN_MODES),
    ),
    "portable": Target(
        "portable",
        "GDN write decomposed into standard ops; any runtime, TensorRT-RTX (no plugins)",
        EXPORT_OPSET,
        21,
        EXPORT_OPSET,
        lambda mode: [GdnDecomposePass()],
        lambda opset, mode: CheckOpsPass("portable", max_opset=21, forbidden_ops=TENSORRT_FORBIDDEN),
    ),
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise Arl2rtError(f"unknown target {name!r}; expected one of {sorted(TARGETS)}") from None


def apply_target(
    model: ir.Model,
    spec: StateSpec,
    graph: str,
    target: str,
    opset: int | None = None,
    plugin_mode: str | None = None,
) -> dict[str, int]:
    """Run ``target``'s passes on ``model`` (in place); returns pass name -> times it fired. ``plugin_mode``: see
    :data:`TRT_PLUGIN_MODES` (None: the target's default)."""
    tgt = get_target(target)
    counts: dict[str, int] = {}
    for p in tgt.passes(spec, graph, tgt.resolve_opset(opset), tgt.resolve_plugin_mode(plugin_mode)):
        result = p(model)
        counts[type(p).__name__] = getattr(result, "count", int(result.modified))
    return counts
