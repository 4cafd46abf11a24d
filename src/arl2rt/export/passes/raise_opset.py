"""Raise the default-domain opset import when no op in the graph changed meaning in between.

onnx's version converter works on ModelProto (2 GB limit, so not for a 1.3B model) and onnxscript's on onnx_ir stops
at opset 25; the ``onnxruntime`` target needs 27 for ``LinearAttention``. Between the export opset and the target,
the ops of these graphs only gained element types. This pass proves that per op: the newer schema keeps every input,
output and attribute (type and default) and allows every type the older one allowed; new attributes are accepted only
where they cannot change the result for types a schema already allowed (:data:`INERT_NEW_ATTRIBUTES`). Any other
change is an error naming the op, and the model is left as it was.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnx import defs

from arl2rt.errors import Arl2rtError
from arl2rt.export.passes.base import CountedResult, default_opset

logger = logging.getLogger(__name__)

# op -> attributes added after opset 18 that only apply to element types added with them (float8/float4 casts).
INERT_NEW_ATTRIBUTES = {"Cast": {"saturate", "round_mode"}}


def _signature(schema: defs.OpSchema):
    params = [(p.name, p.option, p.type_str) for p in (*schema.inputs, *schema.outputs)]
    attrs = {n: (a.type, a.required, a.default_value.SerializeToString()) for n, a in schema.attributes.items()}
    types = {t.type_param_str: set(t.allowed_type_strs) for t in schema.type_constraints}
    return params, attrs, types


def schema_change(op_type: str, old: int, new: int) -> str | None:
    """Why ``op_type`` at opset ``new`` may compute something else than at ``old`` (None when it cannot)."""
    try:
        before, after = defs.get_schema(op_type, old), defs.get_schema(op_type, new)
    except defs.SchemaError:
        return f"no schema for {op_type} at opset {old} or {new}"
    if before.since_version == after.since_version:
        return None
    (p0, a0, t0), (p1, a1, t1) = _signature(before), _signature(after)
    if p0 != p1:
        return f"{op_type}: inputs/outputs changed between opset {old} and {new}"
    changed = sorted(n for n in a0 if a1.get(n) != a0[n])
    added = sorted(set(a1) - set(a0) - INERT_NEW_ATTRIBUTES.get(op_type, set()))
    if changed or added:
        return f"{op_type}: attributes changed {changed} or added {added} between opset {old} and {new}"
    narrowed = sorted(t for t in t0 if not t0[t] <= t1.get(t, set()))
    if narrowed:
        return f"{op_type}: type constraints {narrowed} narrowed between opset {old} and {new}"
    return None


class RaiseOpsetPass(ir.passes.InPlacePass):
    def __init__(self, target: int) -> None:
        super().__init__()
        self.target = target

    def call(self, model: ir.Model) -> CountedResult:
        current = default_opset(model)
        if current >= self.target:
            return CountedResult(model, False, 0)
        op_types = sorted({n.op_type for n in model.graph.all_nodes() if n.domain in ("", "ai.onnx")})
        problems = [p for op in op_types if (p := schema_change(op, current, self.target))]
        if problems:
            raise Arl2rtError(
                f"graph {model.graph.name}: cannot raise opset {current} -> {self.target} without changing results: "
                + "; ".join(problems)
                + f" (export at opset {current} instead)"
            )
        model.graph.opset_imports[""] = self.target
        logger.info("opset %d -> %d (%d op types checked)", current, self.target, len(op_types))
        return CountedResult(model, True, 1)
