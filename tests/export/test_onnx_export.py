"""The one export: StateSpec I/O, one GDN node per hybrid layer in commit_step only, opset 18, no Attention op."""

from __future__ import annotations

import pytest
import torch
from export_helpers import op_types

from arl2rt.errors import Arl2rtError
from arl2rt.export.onnx_export import EXPORT_OPSET, export_graph
from arl2rt.export.passes.state_io import onnx_dtype
from arl2rt.export.state_spec import StateSpec
from arl2rt.export.steps import step_modules
from arl2rt.model.random import random_model
from micro_packages import MICRO


def test_graph_io_is_the_state_contract(micro_graphs):
    spec = StateSpec(MICRO)
    for graph, model in micro_graphs.items():
        for values, specs in ((model.graph.inputs, spec.inputs(graph)), (model.graph.outputs, spec.outputs(graph))):
            assert [v.name for v in values] == [s.name for s in specs]
            assert [v.dtype for v in values] == [onnx_dtype(s.dtype) for s in specs]
            assert [[str(d) for d in v.shape] for v in values] == [[str(d) for d in s.shape] for s in specs]


def test_one_gdn_node_per_hybrid_layer_in_the_commit_step_only(micro_graphs):
    counts = {g: op_types(m).count("arl2::gdn_state_update") for g, m in micro_graphs.items()}
    assert counts == {"encode_context": 0, "denoise_step": 0, "commit_step": len(MICRO.hybrid_layers)}
    for model in micro_graphs.values():
        assert model.graph.opset_imports[""] == EXPORT_OPSET
        assert "Attention" not in op_types(model)


def test_exporting_leaves_the_model_usable_eagerly(micro_model, micro_graphs):
    """Tracing must not leave fake tensors in the model (RoPE tables were once cached during export)."""
    spec = StateSpec(MICRO)
    module = step_modules(micro_model, spec)["denoise_step"]
    gen = torch.Generator().manual_seed(0)
    feeds = [
        torch.tensor(2) if s.dtype == "int64" else torch.randn(s.resolve(batch=1, past_len=6), generator=gen)
        for s in spec.step_inputs()
    ]
    fresh = step_modules(random_model(MICRO, seed=0).eval(), spec)["denoise_step"]  # the fixture's weights
    with torch.inference_mode():
        assert torch.equal(module(*feeds), fresh(*feeds))


def test_rejects_float64_and_a_model_of_another_dtype(micro_model):
    with pytest.raises(Arl2rtError, match="export precision 'float64'"):
        export_graph(micro_model, StateSpec(MICRO, "float64"), "encode_context")
    with pytest.raises(Arl2rtError, match="model weights are torch.float32; expected torch.float16"):
        export_graph(micro_model, StateSpec(MICRO, "float16"), "encode_context")
