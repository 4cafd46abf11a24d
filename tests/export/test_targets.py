"""The targets from one export: onnxruntime runs three of them like the torch step modules; the tensorrt graph
passes the checker, carries exact plugin nodes and computes the same with a reference for the plugin."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from export_helpers import GdnStateUpdateRef, op_types, rel_err, run_ort, to_proto
from onnx.reference import ReferenceEvaluator

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import GRAPHS, StateSpec
from arl2rt.export.steps import step_modules
from arl2rt.export.targets import TENSORRT_FORBIDDEN, apply_target, get_target
from arl2rt.plugins.gdn.plugin_spec import GDN_PLUGIN
from micro_packages import MICRO

PAST_LENS = (0, 2 * MICRO.tokens_per_block)  # the first block has no past; later ones do
REWRITE = {
    "onnxruntime": "GdnToLinearAttentionPass",
    "onnxruntime-contrib": "GdnToLinearAttentionPass",
    "portable": "GdnDecomposePass",
    "tensorrt": "GdnToPluginPass",
}
# custom-domain ops a target's graphs may carry (our plugins aside)
RUNTIME_OPS = {"onnxruntime-contrib": {"com.microsoft::LinearAttention"}}


def _feeds(spec: StateSpec, graph: str, past_len: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    offset = past_len // MICRO.tokens_per_frame
    return {
        s.name: torch.tensor(offset)
        if s.dtype == "int64"
        else torch.randn(s.resolve(batch=2, past_len=past_len), generator=gen).to(s.torch_dtype)
        for s in spec.inputs(graph)
    }


def _torch_outputs(micro_model, spec, graph, feeds) -> list[np.ndarray]:
    with torch.inference_mode():
        out = step_modules(micro_model, spec)[graph](*feeds.values())
    return [t.numpy().astype(np.float64) for t in (out if isinstance(out, tuple) else (out,))]


@pytest.mark.parametrize("target", ["onnxruntime", "onnxruntime-contrib", "portable"])
def test_onnxruntime_runs_the_target_like_the_torch_step(micro_model, micro_graphs, target):
    spec = StateSpec(MICRO)
    for graph in GRAPHS:
        model = micro_graphs[graph]
        counts = apply_target(model, spec, graph, target)
        assert counts[REWRITE[target]] == (len(MICRO.hybrid_layers) if graph == "commit_step" else 0)
        custom = {op for op in op_types(model) if "::" in op}
        assert custom == (RUNTIME_OPS.get(target, set()) if graph == "commit_step" else set())
        proto = to_proto(model)
        onnx.checker.check_model(proto, full_check=True)
        for past_len in PAST_LENS:
            feeds = _feeds(spec, graph, past_len, seed=past_len + 1)
            got = run_ort(proto, {k: v.numpy() for k, v in feeds.items()})
            want = _torch_outputs(micro_model, spec, graph, feeds)
            assert len(got) == len(want)
            for name, g, w in zip([s.name for s in spec.outputs(graph)], got, want):
                assert g.shape == w.shape, name
                assert rel_err(g, w) < 1e-5, (graph, past_len, name)


def test_tensorrt_graph_has_exact_plugin_nodes_and_computes_the_same(micro_model, micro_graphs):
    spec = StateSpec(MICRO)
    model = micro_graphs["commit_step"]
    counts = apply_target(model, spec, "commit_step", "tensorrt", plugin_mode="jit")
    assert counts["GdnToPluginPass"] == len(MICRO.hybrid_layers)
    proto = to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import} == {"": 18, "arl2": 1}
    plugin_nodes = [n for n in proto.graph.node if n.domain]
    assert len(plugin_nodes) == len(MICRO.hybrid_layers)
    assert all(GDN_PLUGIN.node_problems(n) == [] for n in plugin_nodes)
    assert not set(TENSORRT_FORBIDDEN) & {n.op_type for n in proto.graph.node}
    feeds = _feeds(spec, "commit_step", PAST_LENS[1], seed=9)
    got = ReferenceEvaluator(proto, new_ops=[GdnStateUpdateRef.op_run()]).run(
        None, {k: v.numpy() for k, v in feeds.items()}
    )
    for g, w in zip(got, _torch_outputs(micro_model, spec, "commit_step", feeds)):
        assert rel_err(g, w) < 1e-5


def test_contrib_form_needs_no_opset_27_and_is_refused_by_the_standard_target(micro_graphs):
    """com.microsoft::LinearAttention runs at any opset (the default is 23, for Attention; onnxruntime loads it
    without its opset flag); the onnxruntime target's check refuses it."""
    spec = StateSpec(MICRO)
    model = micro_graphs["commit_step"]
    apply_target(model, spec, "commit_step", "onnxruntime-contrib", opset=18)
    proto = to_proto(model)
    assert {o.domain: o.version for o in proto.opset_import} == {"": 18, "com.microsoft": 1}
    nodes = [n for n in proto.graph.node if n.domain]
    assert len(nodes) == len(MICRO.hybrid_layers)
    assert {(a.name, a.s.decode() if a.s else a.i) for a in nodes[0].attribute} >= {("update_rule", "gated_delta")}
    check = get_target("onnxruntime").check(27, None)
    with pytest.raises(Arl2rtError, match=r"custom op com\.microsoft::LinearAttention is not allowed"):
        check(model)


def test_opsets_outside_a_targets_range_are_refused():
    assert get_target("onnxruntime").resolve_opset(None) == 27
    assert get_target("onnxruntime-contrib").resolve_opset(None) == 23
    with pytest.raises(Arl2rtError, match=r"target onnxruntime: opset 18 not supported; expected 27..28"):
        get_target("onnxruntime").resolve_opset(18)
    with pytest.raises(Arl2rtError, match=r"target tensorrt: opset 23 not supported; expected 18..21"):
        get_target("tensorrt").resolve_opset(23)
    with pytest.raises(Arl2rtError, match="unknown target 'tvm'"):
        get_target("tvm")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("target", ["onnxruntime", "onnxruntime-contrib", "portable", "tensorrt"])
def test_16_bit_activations_give_valid_graphs_with_float32_states(micro_exports, micro_model, dtype, target):
    """commit_step exported with float16 and with bfloat16 activations (GDN states stay float32)."""
    spec = StateSpec(MICRO, dtype)
    model = micro_exports.graph("commit_step", dtype)
    counts = apply_target(model, spec, "commit_step", target)
    assert (counts["LegalizeTypesPass"] > 0) == (dtype == "bfloat16")  # bfloat16 Einsum (and Conv below opset 22)
    proto = to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    states = [o for o in proto.graph.output if o.name.startswith("present_state")]
    assert states and all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in states)
    if dtype == "bfloat16" or target == "tensorrt":
        return  # onnxruntime's CPU provider has no bfloat16 MatMul; the plugin needs TensorRT
    feeds = _feeds(spec, "commit_step", PAST_LENS[1], seed=3)
    got = run_ort(proto, {k: v.numpy() for k, v in feeds.items()})
    want = _torch_outputs(
        micro_model,
        StateSpec(MICRO),
        "commit_step",
        {k: v.float() if v.is_floating_point() else v for k, v in feeds.items()},
    )
    for g, w in zip(got, want):
        g = g.astype(np.float64).ravel()
        assert np.isfinite(g).all()
        assert g @ w.ravel() / (np.linalg.norm(g) * np.linalg.norm(w)) >= 0.999


@pytest.mark.parametrize("target", ["onnxruntime-contrib", "onnxruntime"])
@pytest.mark.parametrize("graph", ["denoise_step", "commit_step"])
def test_softmax_attention_becomes_the_attention_op_and_computes_the_same(micro_exports, micro_model, target, graph):
    """Every decomposed attention (one Softmax each: intra-block, over the past, text cross-attention; the commit's
    last layer is pruned, its output unused) becomes one Attention node, and onnxruntime == torch."""
    spec = StateSpec(MICRO)
    softmaxes = op_types(micro_exports.graphs()[graph]).count("Softmax")
    model = micro_exports.graphs()[graph]
    counts = apply_target(model, spec, graph, target)
    ops = op_types(model)
    assert softmaxes >= 2 and counts["SdpaToAttentionPass"] == ops.count("Attention") == softmaxes
    assert "Softmax" not in ops
    assert "Shape" not in ops  # the decomposition's shape arithmetic went with it (onnxruntime gave it to a CPU EP)
    feeds = _feeds(spec, graph, PAST_LENS[1], seed=9)
    got = run_ort(model, {k: v.numpy() for k, v in feeds.items()})
    for g, w in zip(got, _torch_outputs(micro_model, spec, graph, feeds)):
        assert rel_err(g, w) < 1e-5


def test_below_opset_23_attention_keeps_its_decomposition(micro_exports):
    spec = StateSpec(MICRO)
    low = micro_exports.graphs()["denoise_step"]
    assert apply_target(low, spec, "denoise_step", "onnxruntime-contrib", opset=18)["SdpaToAttentionPass"] == 0
    assert "Attention" not in op_types(low) and "Softmax" in op_types(low)


@pytest.mark.parametrize("target", ["onnxruntime-contrib", "onnxruntime"])
@pytest.mark.parametrize("graph", GRAPHS)
def test_every_rms_norm_becomes_one_rmsnormalization_node_and_computes_the_same(
    micro_exports, micro_model, target, graph
):
    """RMSNorms run per layer: softmax q and k; hybrid q and k, then again the memory query's and (commit) the
    write key's; cross-attention q; the text keys in encode_context. The commit's last layer (softmax in MICRO) only
    makes its block K/V: its q and cross-attention q are pruned. Each becomes one RMSNormalization node, no
    Sqrt -> Reciprocal of a norm is left, and onnxruntime == torch."""
    assert MICRO.num_layers - 1 not in MICRO.hybrid_layers
    spec = StateSpec(MICRO)
    model = micro_exports.graphs()[graph]
    sqrt_before = op_types(model).count("Sqrt")
    counts = apply_target(model, spec, graph, target)
    ops = op_types(model)
    hybrid, softmax = len(MICRO.hybrid_layers), MICRO.num_layers - len(MICRO.hybrid_layers)
    want = {
        "encode_context": MICRO.num_layers,
        "denoise_step": 2 * softmax + 3 * hybrid + MICRO.num_layers,
        "commit_step": 2 * softmax + 4 * hybrid + MICRO.num_layers - 2,
    }[graph]
    assert counts["RmsToRmsNormalizationPass"] == ops.count("RMSNormalization") == want
    assert ops.count("Sqrt") == sqrt_before - want
    feeds = _feeds(spec, graph, PAST_LENS[1], seed=11)
    got = run_ort(model, {k: v.numpy() for k, v in feeds.items()})
    for g, w in zip(got, _torch_outputs(micro_model, spec, graph, feeds)):
        assert rel_err(g, w) < 1e-5
