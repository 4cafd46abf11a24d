"""What the export passes share: a PassResult that also says how often a pass fired, and the GDN node's layout."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from arl2rt.errors import Arl2rtError
from arl2rt.plugins.gdn.plugin_spec import GDN_PLUGIN


@dataclasses.dataclass
class CountedResult(ir.passes.PassResult):
    """``count``: rewrites (or renames) done; 0 for a check that passed."""

    count: int = 0


def gdn_nodes(graph: ir.Graph) -> list[ir.Node]:
    """The GDN-write nodes of ``graph`` as the exporter emits them (``arl2::gdn_state_update``)."""
    return [n for n in graph if (n.domain, n.op_type) == (GDN_PLUGIN.namespace, GDN_PLUGIN.name)]


def static_dims(value: ir.Value, *axes: int) -> tuple[int, ...]:
    """The sizes of ``axes`` of ``value``, which must be known at export time (heads, head dim, tokens per block)."""
    shape = value.shape
    dims = tuple(shape[a] if shape is not None and a < len(shape) else None for a in axes)
    if any(not isinstance(d, int) for d in dims):
        raise Arl2rtError(f"tensor {value.name}: expected static sizes on axes {list(axes)}, found shape {shape}")
    return dims  # type: ignore[return-value]


def default_opset(model: ir.Model) -> int:
    return model.graph.opset_imports.get("", 0)
