"""export_package and ModelPackage.load: a complete, verified package or nothing; every bad package named."""

from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest

from arl2rt.errors import Arl2rtError
from arl2rt.export import package as package_module
from arl2rt.export.manifest import DIGEST_FIELD, manifest_digest
from arl2rt.export.package import GRAPH_FILES, MANIFEST_NAME, WEIGHTS_NAME, ModelPackage, export_package
from arl2rt.export.state_spec import GRAPHS
from arl2rt.files import sha256_file
from micro_packages import MICRO


@pytest.fixture
def package_dir(tmp_path, micro_exports):
    """A writable copy of the session's portable package: these tests damage it."""
    return micro_exports.copy_package("portable", tmp_path / "pkg").root


def _rewrite_manifest(root, edit) -> None:
    """Edit the manifest and record its new digest, so that only the check of the edited field can notice."""
    path = root / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    edit(manifest)
    manifest[DIGEST_FIELD] = manifest_digest(manifest)
    path.write_text(json.dumps(manifest))


def _replace_graph(root, graph, edit) -> None:
    """Change a graph file and record its new hash, so that only the I/O check can notice."""
    path = root / GRAPH_FILES[graph]
    proto = onnx.load(str(path), load_external_data=False)
    edit(proto)
    onnx.save(proto, str(path))

    def rehash(manifest):
        manifest["files"][path.name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}

    _rewrite_manifest(root, rehash)


def test_writes_a_complete_verified_package(tmp_path, fast_export, micro_model):
    progress = []
    pkg = export_package(micro_model, tmp_path / "pkg", target="onnxruntime", progress=lambda *a: progress.append(a))
    files = sorted(p.name for p in pkg.root.iterdir())
    assert files == sorted([MANIFEST_NAME, WEIGHTS_NAME, *(GRAPH_FILES[g] for g in GRAPHS)])
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]  # no temporary directory left
    assert [done for done, _, _ in progress] == list(range(8)) and progress[0][2] == "trace encode_context"
    m = pkg.manifest
    assert (m["target"], m["dtype"], m["opset"], m["export_opset"]) == ("onnxruntime", "float32", 27, 18)
    assert m["tokens_per_block"] == MICRO.tokens_per_block and m["config"]["name"] == "micro"
    assert m["graphs"]["commit_step"]["passes"]["GdnToLinearAttentionPass"] == 1
    for name, entry in m["files"].items():
        assert entry == {"bytes": (pkg.root / name).stat().st_size, "sha256": sha256_file(pkg.root / name)}
    loaded = ModelPackage.load(pkg.root)
    assert (loaded.target, loaded.opset, loaded.spec, loaded.config) == ("onnxruntime", 27, pkg.spec, MICRO)
    # Weights live in the shared file (each distinct tensor once), and onnxruntime finds them through the graph.
    proto = onnx.load(str(pkg.graph_path("denoise_step")), load_external_data=False)
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all(e.value == WEIGHTS_NAME for t in external for e in t.external_data if e.key == "location")
    weight_bytes = sum(p.numel() * 4 for p in micro_model.parameters())
    assert m["files"][WEIGHTS_NAME]["bytes"] < 1.5 * weight_bytes  # not once per graph
    session = ort.InferenceSession(str(pkg.graph_path("denoise_step")), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [s.name for s in pkg.spec.step_inputs()]


def test_a_failed_export_leaves_nothing_behind(tmp_path, fast_export, micro_model, monkeypatch):
    def failing(model, spec, graph, *args, **kwargs):
        if graph == "commit_step":
            raise Arl2rtError("planted failure")
        return {}

    monkeypatch.setattr(package_module, "apply_target", failing)
    with pytest.raises(Arl2rtError, match="planted failure"):
        export_package(micro_model, tmp_path / "pkg")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_package_is_replaced_only_when_asked(package_dir, fast_export, micro_model):
    before = (package_dir / MANIFEST_NAME).read_text()
    with pytest.raises(Arl2rtError, match="a package already exists"):
        export_package(micro_model, package_dir, target="tensorrt")
    assert (package_dir / MANIFEST_NAME).read_text() == before
    pkg = export_package(micro_model, package_dir, target="tensorrt", overwrite=True)
    assert pkg.target == "tensorrt" and ModelPackage.load(package_dir).target == "tensorrt"
    assert [p.name for p in package_dir.parent.iterdir()] == [package_dir.name]


def test_refuses_a_directory_that_is_not_a_package(tmp_path, fast_export, micro_model):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(Arl2rtError, match="expected an empty directory or an arl2rt package, found other files"):
        export_package(micro_model, tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_refuses_bad_options(tmp_path, micro_model):
    with pytest.raises(Arl2rtError, match="export dtype 'int8'"):
        export_package(micro_model, tmp_path / "p", dtype="int8")
    with pytest.raises(Arl2rtError, match="unknown target"):
        export_package(micro_model, tmp_path / "p", target="tflite")
    assert list(tmp_path.iterdir()) == []


BAD_MANIFESTS = [
    (lambda m: m.pop("opset"), "missing field 'opset'"),
    (lambda m: m.update(opset="27"), "field 'opset' expected int, found str"),
    (lambda m: m.update(format_version=99), "format_version expected 1, found 99"),
    (lambda m: m.update(dtype="float16"), "state_spec does not match"),
    (lambda m: m["config"].update(num_layers=3), "state_spec does not match"),
    (
        lambda m: m["graphs"]["denoise_step"].update(file="x.onnx"),
        r"graphs.denoise_step.file expected 'denoise_step.onnx'",
    ),
    (lambda m: m.update(target="tvm"), "unknown target 'tvm'"),
]


@pytest.mark.parametrize(
    ("edit", "message"),
    BAD_MANIFESTS,
    ids=["no-opset", "opset-str", "format-version", "dtype", "config", "graph-file", "target"],
)
def test_a_bad_manifest_is_named(package_dir, edit, message):
    _rewrite_manifest(package_dir, edit)
    with pytest.raises(Arl2rtError, match=message):
        ModelPackage.load(package_dir, verify=False)


def test_unreadable_or_missing_manifest(package_dir, tmp_path):
    with pytest.raises(Arl2rtError, match="expected a directory"):
        ModelPackage.load(tmp_path / "nowhere")
    (package_dir / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(Arl2rtError, match=r"manifest.json: expected JSON"):
        ModelPackage.load(package_dir)
    (package_dir / MANIFEST_NAME).unlink()
    with pytest.raises(Arl2rtError, match="expected manifest.json, found no such file"):
        ModelPackage.load(package_dir)


def test_a_graph_missing_a_state_input_is_named(package_dir):
    def drop_state(proto):
        (state,) = [i for i in proto.graph.input if i.name == "past_state.0"]
        proto.graph.input.remove(state)

    _replace_graph(package_dir, "commit_step", drop_state)
    with pytest.raises(
        Arl2rtError, match=r"commit_step.onnx: inputs do not match manifest.json: missing \['past_state.0'\]"
    ):
        ModelPackage.load(package_dir)


def test_a_graph_input_of_another_dtype_is_named(package_dir):
    _replace_graph(package_dir, "denoise_step", lambda p: setattr(p.graph.input[-1].type.tensor_type, "elem_type", 10))
    with pytest.raises(Arl2rtError, match=r"input past_value.1 expected dtype float32, found float16"):
        ModelPackage.load(package_dir)


def test_a_graph_output_of_another_shape_is_named(package_dir):
    _replace_graph(
        package_dir,
        "denoise_step",
        lambda p: p.graph.output[0].type.tensor_type.shape.dim[1].__setattr__("dim_value", 3),
    )
    with pytest.raises(
        Arl2rtError, match=r"output velocity expected shape \['batch', 4, 2, 4, 6\], found \['batch', 3, 2, 4, 6\]"
    ):
        ModelPackage.load(package_dir)


def test_a_truncated_graph_is_named(package_dir):
    path = package_dir / GRAPH_FILES["commit_step"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(Arl2rtError, match=rf"commit_step.onnx: expected {len(data)} bytes, found {len(data) // 2}"):
        ModelPackage.load(package_dir)
    pkg = ModelPackage.load(package_dir, verify=False)  # sizes and hashes unchecked: reading the graph still fails
    with pytest.raises(Arl2rtError, match="commit_step.onnx"):
        pkg.check_graph("commit_step")


def test_a_modified_or_missing_file_is_named(package_dir):
    weights = package_dir / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(Arl2rtError, match=r"weights.bin: expected sha256 .*, found .* \(modified\?\)"):
        ModelPackage.load(package_dir)
    weights.unlink()
    with pytest.raises(Arl2rtError, match="file weights.bin listed in manifest.json is missing"):
        ModelPackage.load(package_dir, verify=False)


def test_describe_lists_the_state_contract_and_ops(package_dir):
    info = ModelPackage.load(package_dir).describe()
    rows = {(t["io"], t["name"]): t for t in info["tensors"]}
    state = rows[("input", "past_state.0")]
    assert state["graphs"] == ["denoise_step", "commit_step"] and state["bytes"] == 2 * 16 * 16 * 4
    past = rows[("input", "past_key.1")]
    assert past["per_past_frame"] and past["bytes"] == MICRO.tokens_per_frame * 2 * 16 * 4
    assert info["stream_bytes"]["gdn_states"] == 2 * 16 * 16 * 4
    assert info["ops"]["commit_step"]["CumSum"] == 1 and "arl2::gdn_state_update" not in info["ops"]["commit_step"]
    assert info["bytes"] == sum(f["bytes"] for f in info["files"].values())
