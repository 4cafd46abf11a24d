"""GdnToAotStagesPass: the GDN write as one plugin node per Triton kernel (TensorRT AOT), checked without TensorRT.

Each stage node is evaluated by its own kernel launched as its ``aot_impl`` would launch it (export_helpers.
AotStageRefs; Triton's CPU interpreter without a GPU), against the single-node graph, the float64 recurrence and
the torch step.
"""

from __future__ import annotations

import json
import os

import onnx
import onnx_ir as ir
import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is first imported: the stage kernels run on the CPU
pytest.importorskip("triton", reason="the AOT stage plan is the Triton kernels' plan")

from export_helpers import (  # noqa: E402
    AotStageRefs,
    GdnStateUpdateRef,
    gdn_graph,
    gdn_inputs,
    gdn_reference,
    interpreted_aot,
    op_types,
    rel_err,
    to_proto,
)
from onnx.reference import ReferenceEvaluator  # noqa: E402
from test_targets import PAST_LENS, _feeds, _torch_outputs  # noqa: E402

from arl2rt.errors import Arl2rtError  # noqa: E402
from arl2rt.export.package import ModelPackage, export_package  # noqa: E402
from arl2rt.export.passes.gdn_to_aot_stages import GdnToAotStagesPass  # noqa: E402
from arl2rt.export.passes.gdn_to_plugin import GdnToPluginPass  # noqa: E402
from arl2rt.export.state_spec import StateSpec  # noqa: E402
from arl2rt.export.targets import apply_target  # noqa: E402
from arl2rt.plugins.gdn.plugin_spec import AOT_STAGE_PLUGINS  # noqa: E402
from micro_packages import MICRO  # noqa: E402

SPECS = {s.name: s for s in AOT_STAGE_PLUGINS}


def _evaluate(model: ir.Model, inputs: dict, new_ops: list) -> list:
    return ReferenceEvaluator(to_proto(model), new_ops=new_ops).run(None, inputs)


@pytest.mark.parametrize(
    ("tokens", "ops"),
    [
        (12, ["arl2::gdn_prep", "arl2::gdn_scan"]),  # one chunk: one segment, the scan writes the state
        (100, ["arl2::gdn_prep", "arl2::gdn_scan", "arl2::gdn_combine"]),  # two chunks: two segments
    ],
)
def test_stage_nodes_are_exact_and_compute_the_single_node_update(tokens, ops):
    heads, dim = 2, 16
    model = gdn_graph(tokens, heads, dim, dim)
    result = GdnToAotStagesPass()(model)
    assert (result.modified, result.count) == (True, 1)
    assert op_types(model) == ops
    proto = to_proto(model)
    onnx.checker.check_model(proto, full_check=True)

    stages = interpreted_aot().gdn_stages(heads, dim, dim, torch.float32, seq_len=tokens)
    assert [s.plugin for s in stages] == [n.op_type for n in proto.graph.node]
    made = {"k": "k", "v": "v", "g": "g", "beta": "beta", "s0": "state"}  # graph tensors of the GDN inputs
    for node, stage in zip(proto.graph.node, stages):
        spec = SPECS[node.op_type]
        assert spec.node_problems(node) == []
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.keys() == spec.attribute_types().keys()
        if node.op_type == "gdn_combine":
            assert attrs["input_dtype"] == b"float32"
        # TensorRT's argument order: the kernel's arguments minus the extra ints, inputs then outputs
        assert [t.name for t in spec.inputs] == list(stage.inputs)
        assert [t.name for t in spec.outputs] == list(stage.outputs)
        assert list(node.input) == [made[stage.tensors[a]] for a in stage.inputs]
        made.update({stage.tensors[a]: name for a, name in zip(stage.outputs, node.output)})
    assert proto.graph.output[0].name == "new_state" == proto.graph.node[-1].output[0]

    inputs = gdn_inputs(2, tokens, heads, dim, dim, seed=tokens)
    (got,) = _evaluate(model, inputs, AotStageRefs.op_runs())
    single = gdn_graph(tokens, heads, dim, dim)
    GdnToPluginPass()(single)
    (want,) = _evaluate(single, inputs, [GdnStateUpdateRef.op_run()])
    assert rel_err(got, want.astype("float64")) < 1e-5
    assert rel_err(got, gdn_reference(inputs)) < 1e-5


def test_intermediate_tensors_have_the_plugins_shapes_and_dtypes():
    model = gdn_graph(100, 2, 16, 32, act=ir.DataType.BFLOAT16)
    GdnToAotStagesPass()(model)
    values = {v.name: v for n in model.graph for v in n.outputs}
    shapes = {name: (v.dtype, [str(d) for d in v.shape]) for name, v in values.items()}
    bf16, f32 = ir.DataType.BFLOAT16, ir.DataType.FLOAT
    assert shapes == {
        "new_state_w": (bf16, ["batch", "2", "128", "16"]),
        "new_state_u": (bf16, ["batch", "2", "128", "32"]),
        "new_state_gc": (f32, ["batch", "2", "128"]),
        "new_state_seg": (f32, ["batch", "2", "2", "16", "48"]),
        "new_state": (f32, ["batch", "2", "16", "32"]),
    }
    (combine,) = [n for n in model.graph if n.op_type == "gdn_combine"]
    assert combine.attributes["input_dtype"].value == "bfloat16"


def test_a_graph_without_a_gdn_node_is_left_alone(micro_graphs):
    model = micro_graphs["encode_context"]
    before = op_types(model)
    result = GdnToAotStagesPass()(model)
    assert (result.modified, result.count) == (False, 0)
    assert op_types(model) == before and "arl2" not in model.graph.opset_imports


def test_tensorrt_commit_step_runs_node_by_node_like_the_torch_step(micro_model, micro_graphs):
    spec = StateSpec(MICRO)
    model = micro_graphs["commit_step"]
    counts = apply_target(model, spec, "commit_step", "tensorrt")  # aot is the default plugin mode
    assert counts["GdnToAotStagesPass"] == len(MICRO.hybrid_layers) and "GdnToPluginPass" not in counts
    proto = to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    custom = [n.op_type for n in proto.graph.node if n.domain]
    assert custom == ["gdn_prep", "gdn_scan"] * len(MICRO.hybrid_layers)  # 12 tokens per block: one segment
    feeds = _feeds(spec, "commit_step", PAST_LENS[1], seed=5)
    got = ReferenceEvaluator(proto, new_ops=AotStageRefs.op_runs()).run(None, {k: v.numpy() for k, v in feeds.items()})
    want = _torch_outputs(micro_model, spec, "commit_step", feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5


def test_package_records_the_mode_and_load_checks_each_stage_node(tmp_path, micro_model, fast_export):
    pkg = export_package(micro_model, tmp_path / "pkg", target="tensorrt")
    manifest = json.loads((pkg.root / "manifest.json").read_text())
    assert manifest["trt_plugin"] == "aot" and pkg.plugin_mode == "aot"
    assert [p["name"] for p in manifest["plugins"]] == ["gdn_prep", "gdn_scan", "gdn_combine"]
    assert manifest["graphs"]["commit_step"]["passes"]["GdnToAotStagesPass"] == len(MICRO.hybrid_layers)
    ModelPackage.load(pkg.root)  # verifies every plugin node

    jit = export_package(micro_model, tmp_path / "jit", target="tensorrt", trt_plugin="jit")
    assert jit.manifest["trt_plugin"] == "jit" and jit.op_histogram("commit_step")["arl2::gdn_state_update"] == 1

    path = pkg.graph_path("commit_step")
    proto = onnx.load(str(path), load_external_data=False)
    (scan,) = [n for n in proto.graph.node if n.op_type == "gdn_scan"]
    scan.attribute.append(onnx.helper.make_attribute("chunk_size", 64))
    onnx.save(proto, str(path))
    with pytest.raises(Arl2rtError, match=r"commit_step.onnx: node .*expected attributes"):
        ModelPackage.load(pkg.root, verify=False).check_graph("commit_step")


def test_plugin_modes_belong_to_the_tensorrt_target(micro_graphs):
    with pytest.raises(Arl2rtError, match=r"target portable: plugin mode 'aot' not supported"):
        apply_target(micro_graphs["commit_step"], StateSpec(MICRO), "commit_step", "portable", plugin_mode="aot")
    with pytest.raises(
        Arl2rtError, match=r"target tensorrt: plugin mode 'ptx' not supported; expected \['aot', 'jit'\]"
    ):
        apply_target(micro_graphs["commit_step"], StateSpec(MICRO), "commit_step", "tensorrt", plugin_mode="ptx")


def test_correlated_keys_over_many_chunks():
    """Keys correlated across tokens, as video tokens are, once broke the prep stage's nilpotent-product inverse."""
    model = gdn_graph(100, 2, 16, 16)
    GdnToAotStagesPass()(model)
    inputs = gdn_inputs(1, 100, 2, 16, 16, seed=100)
    (got,) = _evaluate(model, inputs, AotStageRefs.op_runs())
    assert rel_err(got, gdn_reference(inputs)) < 1e-5
