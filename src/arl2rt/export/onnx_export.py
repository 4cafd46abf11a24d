"""Trace the step modules into ONNX with the dynamo exporter: the one export every target starts from.

``torch.onnx.export(..., dynamo=True)`` traces :mod:`arl2rt.export.steps` (the modules the torch backend runs) at
:data:`EXPORT_OPSET`, where attention is still MatMul/Softmax (no opset-23 ``Attention`` node, which TensorRT cannot
build in fp32: docs/targets.md §1). The GDN write, ``torch.ops.arl2.gdn_state_update``, becomes one
``arl2::gdn_state_update`` node through a ``custom_translation_table``; the target passes then rewrite that node.
Batch and the softmax layers' past length are dynamic (``past_len`` may be 0: the first block has no past). The VAE
decoder's two graphs (:func:`export_decode_graph`) go the same way, with a dynamic batch only.
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
from arl2rt.export.steps import decode_modules, step_modules
from arl2rt.model.dit import CausalDiT
from arl2rt.model.vae.kinds import VaeDecoder
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
    max_past = spec.config.rope_max_positions * spec.config.tokens_per_frame
    past_len = {PAST_LEN: torch.export.Dim(PAST_LEN, min=0, max=max_past)}
    # encode_context: forward(context); the steps: forward(*args), all variadic
    return _export(module, spec, graph, past_len, fixed_args=None if graph == "encode_context" else 0)


def export_decode_graph(decoder: VaeDecoder, spec: StateSpec, graph: str) -> ir.Model:
    """``decode_first`` or ``decode_step`` of ``decoder`` as an in-memory ONNX model (weights not yet written).

    Inputs and outputs carry the StateSpec's names (``vae_latents``, ``past_vae.i`` -> frames, ``present_vae.i``);
    batch is dynamic, every other size is the spec's.
    """
    if spec.dtype not in EXPORT_DTYPES:
        raise Arl2rtError(f"export precision {spec.dtype!r}: expected one of {list(EXPORT_DTYPES)}")
    module = decode_modules(decoder, spec)[graph].eval()
    # decode_first: forward(latents); decode_step: forward(latents, *past)
    return _export(module, spec, graph, {}, fixed_args=None if graph == "decode_first" else 1)


def _export(
    module: torch.nn.Module, spec: StateSpec, graph: str, dims: dict[str, torch.export.Dim], fixed_args: int | None
) -> ir.Model:
    """Trace ``module`` on example inputs of ``spec.inputs(graph)``. ``fixed_args``: the number of named arguments
    before ``forward``'s variadic ``*args`` (None: no variadic part), whose dynamic shapes are one tuple."""
    inputs, outputs = spec.inputs(graph), spec.outputs(graph)
    generator = torch.Generator().manual_seed(0)
    args = tuple(_example(s, generator) for s in inputs)
    dims = {BATCH: torch.export.Dim(BATCH, min=1, max=4096), **dims}
    dynamic = tuple(_dynamic_dims(s, dims) for s in inputs)
    dynamic_shapes = dynamic if fixed_args is None else (*dynamic[:fixed_args], dynamic[fixed_args:])
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
