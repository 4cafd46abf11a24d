"""A package with the VAE decoder: its two decode graphs verified like the DiT's, listed by inspect, and on
onnxruntime equal to our torch decode, per block and over a stream."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from typer.testing import CliRunner

from arl2rt.cli.main import app
from arl2rt.errors import Arl2rtError
from arl2rt.export.manifest import DIGEST_FIELD, manifest_digest
from arl2rt.export.package import GRAPH_FILES, MANIFEST_NAME, ModelPackage
from arl2rt.export.state_spec import DECODE_GRAPHS, GRAPHS, PAST_VAE, PRESENT_VAE
from arl2rt.files import sha256_file
from arl2rt.model.vae.stream import VaeStream, decode_step
from arl2rt.runtime.onnxruntime_backend import OnnxRuntimeBackend
from micro_vae_packages import VAE
from model.vae.vae_helpers import peak_relative


@pytest.fixture(scope="module")
def package(micro_vae_exports):
    return micro_vae_exports.package("onnxruntime")


def _latents(block: int, frames: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + block)
    return torch.randn(1, VAE.z_dim, frames, 4, 6, generator=g)


def test_the_package_holds_and_verifies_the_decode_graphs(package):
    m = package.manifest
    assert list(m["graphs"]) == [*GRAPHS, *DECODE_GRAPHS] and m["vae"] == json.loads(json.dumps(VAE.to_dict()))
    assert {GRAPH_FILES[g] for g in DECODE_GRAPHS} <= set(m["files"]) and "weights.bin" in m["files"]
    assert package.spec.vae == VAE
    for graph in DECODE_GRAPHS:  # ModelPackage.load verified them; the I/O is the contract's, by name
        proto = package.load_graph(graph)
        assert [v.name for v in proto.graph.output] == [s.name for s in package.spec.outputs(graph)]
    assert len(package.load_graph("decode_step").graph.input) == 1 + 32


def test_describe_and_inspect_list_the_vae_caches(package):
    info = package.describe()
    rows = {(t["io"], t["name"]): t for t in info["tensors"]}
    assert rows[("input", "past_vae.31")]["graphs"] == ["decode_step"]
    assert rows[("output", "present_vae.0")]["graphs"] == list(DECODE_GRAPHS)
    assert info["stream_bytes"]["vae_caches"] == package.spec.vae_cache_bytes() > 0 and info["vae"] == VAE.name
    assert set(info["ops"]) == set(GRAPHS + DECODE_GRAPHS) and info["ops"]["decode_step"]["Conv"] > 0
    result = CliRunner().invoke(app, ["inspect", str(package.root), "--no-verify"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "past_vae.31" in result.output and "first_frames" in result.output and "VAE caches" in result.output


def test_a_manifest_without_its_vae_or_a_decode_graph_is_refused(package, tmp_path):
    root = tmp_path / "pkg"
    root.mkdir()
    for path in package.root.iterdir():
        (root / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((root / MANIFEST_NAME).read_text())

    def write(edit) -> None:
        m = json.loads(json.dumps(manifest))
        edit(m)
        m[DIGEST_FIELD] = manifest_digest(m)
        (root / MANIFEST_NAME).write_text(json.dumps(m))

    write(lambda m: m.pop("vae"))
    with pytest.raises(Arl2rtError, match=r"field 'graphs' expected \['commit_step', 'denoise_step', 'encode_cont"):
        ModelPackage.load(root)
    write(lambda m: m["graphs"].pop("decode_step"))
    with pytest.raises(Arl2rtError, match=r"\(the manifest has a 'vae' config\), found"):
        ModelPackage.load(root)
    write(lambda m: m["vae"].update(dim=4))  # another decoder than the graphs': the recorded contract differs
    with pytest.raises(Arl2rtError, match="state_spec does not match"):
        ModelPackage.load(root)

    path = root / GRAPH_FILES["decode_step"]  # an output renamed in the graph, its hash re-recorded
    proto = onnx.load(str(path), load_external_data=False)
    proto.graph.output[5].name = "present_vae.x"
    onnx.save(proto, str(path))
    write(lambda m: m["files"][path.name].update(bytes=path.stat().st_size, sha256=sha256_file(path)))
    with pytest.raises(Arl2rtError, match=r"decode_step.onnx: outputs do not match .*missing \['present_vae.4'\]"):
        ModelPackage.load(root)


def test_onnxruntime_decodes_as_torch_does_per_block_and_over_a_stream(package, micro_vae_exports):
    """The exported graphs, fed the same latents, give our torch decode's frames and caches (fp32, <= 1e-5)."""
    decoder, spec = micro_vae_exports.decoder, package.spec
    with OnnxRuntimeBackend(package) as ort:
        latents = _latents(0)  # one block through each graph on its own, against decode_step
        frames, present = decode_step(decoder, latents)
        out = ort.run("decode_first", {"vae_latents": latents})
        assert peak_relative(out["first_frames"], frames) <= 1e-5
        assert all(peak_relative(out[s.name], t) <= 1e-5 for s, t in zip(spec.vae_caches(PRESENT_VAE), present))
        past = {s.name: t for s, t in zip(spec.vae_caches(PAST_VAE), present)}
        frames, present = decode_step(decoder, _latents(1), list(past.values()))
        out = ort.run("decode_step", {"vae_latents": _latents(1), **past})
        assert peak_relative(out["frames"], frames) <= 1e-5
        assert all(peak_relative(out[s.name], t) <= 1e-5 for s, t in zip(spec.vae_caches(PRESENT_VAE), present))

        stream, caches, worst = VaeStream(decoder), {}, 0.0  # 4 blocks, each side feeding itself its own caches
        for block in range(4):
            want = stream.decode(_latents(block))
            graph = spec.decode_graph(first=not caches)
            out = ort.run(graph, {"vae_latents": _latents(block), **caches})
            caches = {spec.past_of(s.name): out[s.name] for s in spec.vae_caches(PRESENT_VAE)}
            worst = max(worst, peak_relative(out[spec.outputs(graph)[0].name], want))
    assert worst <= 1e-5
