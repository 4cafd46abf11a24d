"""`arl2rt build --flavour tensorrt-rtx` on a CPU-only machine: TensorRT's ONNX parser and builder, for real.

TensorRT-RTX builds engines without a GPU, so CI proves here that the micro config's ``portable`` package parses into
networks whose inputs and outputs are exactly the StateSpec (names, shapes with their dynamic dims, dtypes) and builds
with the optimization profile; and it exercises the engine cache (hit, miss, corruption -> rebuild) with real engines.
The engines cannot run here (no GPU) nor on the H200 (TensorRT-RTX does not run on compute capability 9.0).
"""

from __future__ import annotations

import dataclasses
import json
import types

import onnx
import pytest
from onnx import helper
from ort_toy_graphs import write_toy_package
from typer.testing import CliRunner

from arl2rt.cli.main import app
from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import DECODE_GRAPHS, GRAPHS, PAST_VAE, PRESENT_VAE
from arl2rt.runtime.trt.build import build_engines
from arl2rt.runtime.trt.flavour import FLAVOURS, Flavour, device_key, load_flavour, rtx_capabilities
from arl2rt.runtime.trt.loaders import NetworkFromOnnx, expected_io, network_io

trt_rtx = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install tensorrt-rtx)")


@pytest.fixture
def toy(tmp_path, tiny_cfg):
    """Small graphs with the exact state contract (tests/runtime/ort_toy_graphs.py): engines build in a second."""
    return dataclasses.replace(write_toy_package(tmp_path / "toy", tiny_cfg), target="portable")


def _build(package, cache, *extra):
    result = CliRunner().invoke(
        app, ["build", str(package), "--flavour", "tensorrt-rtx", "--cache-dir", str(cache), "--json", *extra]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{") :])


def test_micro_portable_package_parses_to_the_state_contract_and_builds(micro_exports, tmp_path):
    micro_portable = micro_exports.package("portable")
    flavour = load_flavour("tensorrt-rtx")
    for graph in GRAPHS:
        parsed = NetworkFromOnnx(flavour, micro_portable.graph_path(graph))()
        assert network_io(parsed.network) == expected_io(micro_portable.spec, graph), graph
    built = _build(micro_portable.root, tmp_path / "cache")
    assert built["status"] == "built" and set(built["engines"]) == set(GRAPHS)
    assert all(e["bytes"] > 0 for e in built["engines"].values())
    assert built["key"]["device"] == {"rtx_targets": "default", "build_gpu": None}
    assert built["key"]["profiles"]["denoise_step"]["past_key.1"] == [[1, 0, 2, 16], [1, 48, 2, 16], [1, 108, 2, 16]]
    assert _build(micro_portable.root, tmp_path / "cache")["status"] == "hit"


def test_micro_portable_package_with_a_vae_builds_its_decode_graphs(micro_vae_exports, tmp_path):
    """The tiny Wan-shaped decoder's two graphs parse to the StateSpec (its 32 caches included) and build, with a
    profile over batch only."""
    package = micro_vae_exports.package("portable")
    spec, flavour = package.spec, load_flavour("tensorrt-rtx")
    for graph in DECODE_GRAPHS:
        found = network_io(NetworkFromOnnx(flavour, package.graph_path(graph))().network)
        assert found == expected_io(spec, graph), graph
        assert sum(t["name"].startswith(f"{PRESENT_VAE}.") for t in found["outputs"]) == 32, graph
    assert sum(t["name"].startswith(f"{PAST_VAE}.") for t in found["inputs"]) == 32
    built = build_engines(package, flavour="tensorrt-rtx", cache_dir=tmp_path / "cache", max_batch=2)
    assert built.status == "built" and set(built.entry.engines) == set(GRAPHS + DECODE_GRAPHS)
    assert all(built.entry.engines[g].stat().st_size > 0 for g in DECODE_GRAPHS)
    profiles = built.entry.key["profiles"]
    past0, latents = spec.vae_caches(PAST_VAE)[0].shape, spec.vae_latents().shape  # only batch is symbolic
    assert profiles["decode_step"]["past_vae.0"] == [[b, *past0[1:]] for b in (1, 1, 2)]
    assert profiles["decode_first"] == {"vae_latents": [[b, *latents[1:]] for b in (1, 1, 2)]}
    assert set(profiles["decode_step"]) == {s.name for s in spec.inputs("decode_step")}
    assert build_engines(package, flavour="tensorrt-rtx", cache_dir=tmp_path / "cache", max_batch=2).status == "hit"


def test_micro_portable_package_with_taehv_builds_its_decode_graphs(micro_taehv_exports, tmp_path):
    """The tiny TAEHV decoder's two graphs parse to the StateSpec (its 9 memories included) and build."""
    package = micro_taehv_exports.package("portable")
    flavour = load_flavour("tensorrt-rtx")
    for graph in DECODE_GRAPHS:
        found = network_io(NetworkFromOnnx(flavour, package.graph_path(graph))().network)
        assert found == expected_io(package.spec, graph), graph
        assert sum(t["name"].startswith(f"{PRESENT_VAE}.") for t in found["outputs"]) == 9, graph
    built = build_engines(package, flavour="tensorrt-rtx", cache_dir=tmp_path / "cache", max_batch=2)
    assert built.status == "built" and all(built.entry.engines[g].stat().st_size > 0 for g in DECODE_GRAPHS)


def test_cache_hit_miss_and_corruption_with_real_engines(toy, tmp_path):
    cache = tmp_path / "cache"
    first = build_engines(toy, flavour="tensorrt-rtx", cache_dir=cache)
    assert first.status == "built"
    assert build_engines(toy, flavour="tensorrt-rtx", cache_dir=cache).status == "hit"
    engine = first.entry.engines["commit_step"]
    data = bytearray(engine.read_bytes())
    data[len(data) // 3] ^= 0x5A
    engine.write_bytes(bytes(data))
    rebuilt = build_engines(toy, flavour="tensorrt-rtx", cache_dir=cache)
    assert rebuilt.status == "rebuilt" and "sha256" in rebuilt.reason
    assert rebuilt.entry.engines["commit_step"].read_bytes() != bytes(data)
    assert build_engines(toy, flavour="tensorrt-rtx", cache_dir=cache).status == "hit"
    longer = build_engines(toy, flavour="tensorrt-rtx", cache_dir=cache, max_frames=48)  # another profile: a miss
    assert longer.status == "built" and longer.entry.path != rebuilt.entry.path
    model = onnx.load(toy.graph_path("denoise_step"))
    model.doc_string = "changed"
    onnx.save(model, toy.graph_path("denoise_step"))
    assert build_engines(toy, flavour="tensorrt-rtx", cache_dir=cache).status == "built"  # new ONNX bytes: a miss


def test_rtx_refuses_the_plugin_target(toy, tmp_path):
    with pytest.raises(Arl2rtError, match="TensorRT-RTX has no plugins; export with --target portable"):
        build_engines(dataclasses.replace(toy, target="tensorrt"), flavour="tensorrt-rtx", cache_dir=tmp_path)


def test_rtx_never_parses_a_plugin_node(toy, tmp_path):
    """TensorRT-RTX's parser aborts the process on a plugin node: the build must refuse the graph first."""
    path = toy.graph_path("commit_step")
    model = onnx.load(path)
    state = "past_state.0"
    model.graph.node.append(
        helper.make_node(
            "gdn_state_update", ["latents", "latents", "timestep", "timestep", state], ["gdn_out"], domain="arl2"
        )
    )
    model.opset_import.append(helper.make_opsetid("arl2", 1))
    onnx.save(model, path)
    with pytest.raises(
        Arl2rtError, match=r"expected only standard ONNX ops for tensorrt-rtx, found \['arl2::gdn_state_update'\]"
    ):
        build_engines(toy, flavour="tensorrt-rtx", cache_dir=tmp_path)


def test_rtx_compute_capability_names():
    flavour = load_flavour("tensorrt-rtx")
    assert [c.name for c in rtx_capabilities(flavour, ("SM86", "sm_89", "12.0"))] == ["SM86", "SM89", "SM120"]
    with pytest.raises(Arl2rtError, match="compute capability 'SM90': expected one of"):
        rtx_capabilities(flavour, ("SM90",))


def test_full_tensorrt_needs_a_gpu_to_build():
    fake = Flavour("tensorrt", types.SimpleNamespace(__version__="10.9.0"), FLAVOURS["tensorrt"][1])
    import torch

    if torch.cuda.is_available():
        assert "compute_capability" in device_key(fake)
    else:
        with pytest.raises(Arl2rtError, match="needs a CUDA GPU and none was found"):
            device_key(fake)


def test_missing_tensorrt_says_how_to_install():
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure is what this test is about
        with pytest.raises(Arl2rtError, match=r"import tensorrt failed .*pip install 'tensorrt>=10.9'"):
            load_flavour("tensorrt")
    else:
        pytest.skip("tensorrt imports here")


def test_a_stream_runs_on_the_engines_build_made_for_a_longer_one(toy, tmp_path):
    """What the backend asks for (reuse_wider): `arl2rt build`'s 21-frame engines serve 12 frames, not 48."""
    cache = tmp_path / "cache"
    built = build_engines(toy, flavour="tensorrt-rtx", cache_dir=cache).entry  # as `arl2rt build`: 21 frames
    shorter = build_engines(toy, flavour="tensorrt-rtx", cache_dir=cache, max_frames=12, reuse_wider=True)
    assert shorter.status == "hit" and shorter.entry.path == built.path
    longer = build_engines(toy, flavour="tensorrt-rtx", cache_dir=cache, max_frames=48, reuse_wider=True)
    assert longer.status == "built" and longer.entry.path != built.path
    exact = build_engines(toy, flavour="tensorrt-rtx", cache_dir=cache, max_frames=12)  # arl2rt build --max-frames 12
    assert exact.status == "built" and exact.entry.path not in (shorter.entry.path, longer.entry.path)
