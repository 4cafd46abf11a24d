"""Trace the step modules into ONNX with the dynamo exporter: the one export every target starts from.

``torch.onnx.export(..., dynamo=True)`` traces :mod:`arl2rt.export.steps` (the modules the torch backend runs) at
:data:`EXPORT_OPSET`, where attention is still MatMul/Softmax (no opset-23 ``Attention`` node, which TensorRT cannot
build in fp32: docs/targets.md §1). The GDN write, ``torch.ops.arl2.gdn_state_update``, becomes one
``arl2::gdn_state_update`` node through a ``custom_translation_table``; the target passes then rewrite that node.
Batch and the softmax layers' past length are dynamic (``past_len`` may be 0: the first block has no past).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import onnx_ir as ir
import onnxscript
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import BATCH, PAST_LEN, StateSpec, TensorSpec
from arl2rt.export.steps import step_modules
from arl2rt.model.dit import CausalDiT
from arl2rt.plugins.gdn.plugin_spec import GDN_PLUGIN, register_onnx_schema

EXPORT_OPSET = 18
EXPORT_DTYPES = ("float32", "float16", "bfloat16")
# Example sizes for tracing; any value >= 2 keeps torch.export from specialising the dimension to 0 or 1.
_EXAMPLE_DIMS = {BATCH: 2, PAST_LEN: 2}


def _gdn_translation():
    """onnxscript function emitting the ``arl2::gdn_state_update`` node (positional inputs, no attributes)."""
    register_onnx_schema()
    op = onnxscript.values.Op(onnxscript.values.Opset(GDN_PLUGIN.namespace, int(GDN_PLUGIN.version)), GDN_PLUGIN.name)

    def gdn_state_update_onnx(k, v, g, beta, state):
        return op(k, v, g, beta, state)

    return gdn_state_update_onnx


def _example(spec: TensorSpec, generator: torch.Generator) -> torch.Tensor:
    shape = spec.resolve(**_EXAMPLE_DIMS)
    if spec.dtype == "int64":
        return torch.zeros(shape, dtype=torch.int64)
    return torch.randn(shape, generator=generator).to(spec.torch_dtype)


def _dynamic_dims(spec: TensorSpec, dims: dict[str, torch.export.Dim]) -> dict[int, torch.export.Dim] | None:
    found = {i: dims[d] for i, d in enumerate(spec.shape) if isinstance(d, str)}
    return found or None


def export_graph(model: CausalDiT, spec: StateSpec, graph: str) -> ir.Model:
    """One step graph of ``model`` as an in-memory ONNX model (opset :data:`EXPORT_OPSET`, weights not yet written).

    Inputs and outputs carry the StateSpec's names; dynamic dims are named ``batch`` and ``past_len``.
    """
    if spec.dtype not in EXPORT_DTYPES:
        raise Arl2rtError(f"export precision {spec.dtype!r}: expected one of {list(EXPORT_DTYPES)}")
    if model.dtype != spec.config_dtype:
        raise Arl2rtError(f"model weights are {model.dtype}; expected {spec.config_dtype} for precision {spec.dtype}")
    module = step_modules(model, spec)[graph].eval()
    inputs, outputs = spec.inputs(graph), spec.outputs(graph)
    generator = torch.Generator().manual_seed(0)
    args = tuple(_example(s, generator) for s in inputs)
    dims = {
        BATCH: torch.export.Dim(BATCH, min=1, max=4096),
        PAST_LEN: torch.export.Dim(PAST_LEN, min=0, max=spec.config.rope_max_positions * spec.config.tokens_per_frame),
    }
    dynamic = tuple(_dynamic_dims(s, dims) for s in inputs)
    # ``forward(*args)`` takes one variadic argument: its dynamic shapes are one tuple, one entry per tensor.
    dynamic_shapes = (dynamic,) if graph != "encode_context" else dynamic
    # The exporter prints its progress and warns that our axis names are shared; keep stdout for our results.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="# The axis name")
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=EXPORT_OPSET,
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            dynamic_shapes=dynamic_shapes,
            custom_translation_table={torch.ops.arl2.gdn_state_update.default: _gdn_translation()},
            optimize=True,
            verbose=False,
        )
    model_ir = program.model
    model_ir.graph.name = graph
    return model_ir
