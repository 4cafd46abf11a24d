"""A package is what its manifest says or it is refused: edited manifests, external data outside the weights file,
and the leftovers of killed exports; verification hashes the weights once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
from typer.testing import CliRunner

from arl2rt import files
from arl2rt.cli.main import app
from arl2rt.errors import Arl2rtError
from arl2rt.export import package as package_module
from arl2rt.export.manifest import DIGEST_FIELD, manifest_digest
from arl2rt.export.package import GRAPH_FILES, MANIFEST_NAME, WEIGHTS_NAME, ModelPackage, export_package
from arl2rt.runtime.trt import build
from arl2rt.runtime.trt.flavour import Flavour

runner = CliRunner()


@pytest.fixture
def package_dir(tmp_path, micro_exports) -> Path:
    """A writable copy of the session's onnxruntime package (opset 27): these tests damage it."""
    return micro_exports.copy_package("onnxruntime", tmp_path / "pkg").root


def _files(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _edit_manifest(root: Path, change, *, reseal: bool = True) -> None:
    """Change the manifest; ``reseal`` records its new digest (as if written so), leaving only the other checks."""
    path = root / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    change(manifest)
    if reseal:
        manifest[DIGEST_FIELD] = manifest_digest(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def _rehash(root: Path, name: str) -> None:
    """Record a changed file's size and hash in the manifest, so that only the content checks can notice."""
    _edit_manifest(root, lambda m: m["files"].update({name: files.file_record(root / name)}))


def _edit_external_data(root: Path, graph: str, **entries: str) -> str:
    """Set external-data entries of the graph's first external initializer; returns its name."""
    path = root / GRAPH_FILES[graph]
    proto = onnx.load(str(path), load_external_data=False)
    tensor = next(t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    for entry in tensor.external_data:
        if entry.key in entries:
            entry.value = entries[entry.key]
    onnx.save(proto, str(path))
    _rehash(root, path.name)
    return tensor.name


def _refused(root: Path, args: list[str], *needles: str) -> None:
    """The CLI exits 1 with one message naming ``needles``, no traceback, and leaves everything under root as it was."""
    before = _files(root)
    res = runner.invoke(app, args)
    flat = "".join(res.output.split())
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output
    for needle in needles:
        assert "".join(needle.split()) in flat, (needle, res.output)
    assert _files(root) == before


# -- external data -------------------------------------------------------------------------------------------------
def test_weights_shorter_than_the_graphs_references_are_refused(package_dir, tmp_path):
    weights = package_dir / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:4096])
    _refused(tmp_path, ["inspect", str(package_dir)], f"{WEIGHTS_NAME}: expected", "found 4096")  # size recorded
    _rehash(package_dir, WEIGHTS_NAME)  # the manifest agrees with the short file: only the references tell
    with pytest.raises(Arl2rtError, match=r"encode_context.onnx: tensor .*: external data at bytes .* of weights.bin, "
                       r"which has 4096 bytes \(truncated\?\)"):  # fmt: skip
        ModelPackage.load(package_dir)
    _refused(tmp_path, ["inspect", "--verify", str(package_dir)], "which has 4096 bytes (truncated?)")
    out = tmp_path / "out.npz"
    _refused(tmp_path, ["generate", "--model", str(package_dir), "-o", str(out), "--blocks", "1"], "which has 4096")
    assert not out.exists()


def test_external_data_outside_the_package_is_refused(package_dir, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * (1 << 20))
    name = _edit_external_data(package_dir, "denoise_step", location="../secret.bin")
    _refused(tmp_path, ["inspect", str(package_dir)], f"tensor {name}", "external data in '../secret.bin'")


def test_external_data_of_another_length_than_its_tensor_is_refused(package_dir, tmp_path):
    name = _edit_external_data(package_dir, "commit_step", length="8")
    _refused(tmp_path, ["inspect", str(package_dir)], f"commit_step.onnx: tensor {name}", "found 8")


# -- the manifest ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [lambda m: m.update(opset=26), lambda m: m.update(target="portable"), lambda m: m["config"].update(eps=1e-5)],
    ids=["opset", "target", "config"],
)
def test_an_edited_manifest_is_refused(package_dir, tmp_path, change):
    _edit_manifest(package_dir, change, reseal=False)
    message = ("manifest.json: content sha256", f"recorded {DIGEST_FIELD}", "edited after export")
    _refused(tmp_path, ["inspect", str(package_dir)], *message)
    out = tmp_path / "out.npz"
    _refused(tmp_path, ["generate", "--model", str(package_dir), "-o", str(out), "--blocks", "1"], *message)
    assert not out.exists()


def test_a_manifest_without_its_digest_is_refused(package_dir, tmp_path):
    _edit_manifest(package_dir, lambda m: m.pop(DIGEST_FIELD), reseal=False)
    _refused(tmp_path, ["inspect", str(package_dir)], f"expected field '{DIGEST_FIELD}'", "re-export")


def test_a_resealed_manifest_must_still_match_the_graphs_opset(package_dir, tmp_path):
    _edit_manifest(package_dir, lambda m: m.update(opset=26))
    _refused(tmp_path, ["inspect", str(package_dir)], "encode_context.onnx: default-domain opset expected 26", "27")


# -- killed exports --------------------------------------------------------------------------------------------------
def _dead_pid() -> int:
    """The id of a process that has exited (and was reaped)."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


def test_a_later_export_removes_what_killed_exports_of_the_same_name_left(tmp_path, fast_export, micro_model):
    host, dead = socket.gethostname(), _dead_pid()
    stale = tmp_path / f".pkg.partial-{host}-{dead}-k1ll3d"
    stale.mkdir()
    (stale / WEIGHTS_NAME).write_bytes(b"\x00" * 4096)
    kept = [
        f".pkg.partial-{host}-{os.getpid()}-running",  # its process is alive: an export still under way
        f".other.partial-{host}-{dead}-k1ll3d",  # another package's
        f".pkg.partial-elsewhere-{dead}-k1ll3d",  # another host's, on a shared disk: its process cannot be asked
        ".pkg.partial-notes",  # not an export's name
    ]
    for name in kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "mine.txt").write_text("keep")
    before = {name: _files(tmp_path / name) for name in kept}

    seen = []
    real = package_module.SharedWeights

    def watching(path, *args, **kwargs):  # the export's own temporary directory is named so that it can be cleaned
        seen.append(Path(path).parent.name)
        return real(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(package_module, "SharedWeights", watching)
        export_package(micro_model, tmp_path / "pkg")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "pkg"])
    assert {name: _files(tmp_path / name) for name in kept} == before
    assert len(seen) == 1 and seen[0].startswith(f".pkg.partial-{host}-{os.getpid()}-")


# -- hashing once ----------------------------------------------------------------------------------------------------
def test_the_weights_are_hashed_once_for_verification_and_the_engine_key(micro_exports, monkeypatch):
    root = micro_exports.package("portable").root
    reads: list[str] = []
    real = files.sha256_file

    def counting(path, *args, **kwargs):
        reads.append(Path(path).name)
        return real(path, *args, **kwargs)

    for module in (files, package_module, build):
        monkeypatch.setattr(module, "sha256_file", counting)
    package = ModelPackage.load(root)
    rtx = SimpleNamespace(__version__="0", ComputeCapability=SimpleNamespace(__members__={}))
    key, protos = build.engine_key(package, Flavour("tensorrt-rtx", rtx, ("portable",)))
    assert reads.count(WEIGHTS_NAME) == 1
    assert package.weights_digest == real(root / WEIGHTS_NAME)
    for graph, proto in protos.items():  # the same key as hashing every file afresh
        assert key["onnx"][graph] == build.graph_digest(package.graph_path(graph), proto)

    reads.clear()
    unverified = ModelPackage.load(root, verify=False)
    assert reads == [] and unverified.weights_digest == package.weights_digest
    assert unverified.weights_digest == package.weights_digest and reads == [WEIGHTS_NAME]  # hashed on first use only
