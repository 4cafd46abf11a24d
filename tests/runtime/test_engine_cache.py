"""The engine cache and the profile ranges: pure logic, no TensorRT needed.

A cache entry is found under its exact key, verified byte for byte before use, and replaced (never used) when
anything in it is corrupt; writes go through a temporary directory so a failure leaves no partial entry. A stream
also takes an entry whose profiles contain its own (built by ``arl2rt build`` for a longer one), and asks for the
profile of its own length. AOT keys leave Triton's version out.
"""

from __future__ import annotations

import dataclasses
import json
import types

import pytest

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import BATCH, PAST_LEN, StateSpec
from arl2rt.model.config import PRESETS
from arl2rt.runtime.trt.build import engine_key
from arl2rt.runtime.trt.cache import ENTRY_FILE, EngineCache, blocking_fields, key_digest, profiles_cover, read_entry
from arl2rt.runtime.trt.flavour import FLAVOURS, Flavour
from arl2rt.runtime.trt.loaders import check_network_io, expected_io
from arl2rt.runtime.trt.profiles import DimRange, dim_ranges, profile_shapes, stream_max_frames
from model.vae.vae_helpers import TINY

KEY = {"flavour": "tensorrt", "version": "10.9.0", "device": {"compute_capability": "9.0"}, "onnx": {"g": "ab"}}
ENGINES = {"encode_context": b"\x01engine-a" * 50, "denoise_step": b"\x02engine-b" * 70, "commit_step": b"\x03c" * 9}


@pytest.fixture
def cache(tmp_path):
    return EngineCache(tmp_path / "engines")


def test_store_then_hit_returns_the_same_bytes(cache):
    assert cache.lookup(KEY).status == "miss"
    entry = cache.store(KEY, ENGINES, {"build_seconds": {"g": 1.0}})
    found = cache.lookup(KEY)
    assert found.status == "hit" and found.entry.path == entry.path == cache.entry_path(KEY)
    assert {g: found.entry.engine_bytes(g) for g in ENGINES} == ENGINES
    assert found.entry.record["build_seconds"] == {"g": 1.0}
    assert [p.name for p in cache.root.iterdir()] == [key_digest(KEY)]  # no temporary directory left


@pytest.mark.parametrize("field", ["version", "device", "onnx"])
def test_any_key_change_is_a_miss(cache, field):
    cache.store(KEY, ENGINES)
    other = {**KEY, field: "something else"}
    assert cache.lookup(other).status == "miss"


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda e: _flip_byte(e / "denoise_step.engine"), "sha256"),
        (lambda e: (e / "commit_step.engine").write_bytes(b"\x03c" * 4), "bytes"),
        (lambda e: (e / "encode_context.engine").unlink(), "missing"),
        (lambda e: (e / ENTRY_FILE).write_text("{not json"), "unreadable"),
        (lambda e: (e / ENTRY_FILE).unlink(), "no engine entry"),
        (lambda e: _edit_record(e, lambda r: r["key"].update(version="10.8")), "digest"),
        (lambda e: _edit_record(e, lambda r: r.update(format=99)), "format"),
    ],
    ids=["flipped-byte", "truncated", "missing-engine", "bad-json", "no-record", "edited-key", "other-format"],
)
def test_corrupt_entry_is_detected_then_replaced(cache, damage, reason):
    entry = cache.store(KEY, ENGINES)
    damage(entry.path)
    found = cache.lookup(KEY)
    assert found.status == "corrupt" and found.entry is None and reason in found.reason
    rebuilt = {g: b + b"-rebuilt" for g, b in ENGINES.items()}
    cache.store(KEY, rebuilt)
    again = cache.lookup(KEY)
    assert again.status == "hit" and again.entry.engine_bytes("denoise_step") == rebuilt["denoise_step"]
    assert [p.name for p in cache.root.iterdir()] == [key_digest(KEY)]  # the corrupt entry is gone, no leftovers


def _edit_record(entry_path, edit):
    record = json.loads((entry_path / ENTRY_FILE).read_text())
    edit(record)
    (entry_path / ENTRY_FILE).write_text(json.dumps(record))


def test_engines_built_for_another_setup_are_refused_naming_the_fields(cache):
    entry = cache.store(KEY, ENGINES)
    here = {**KEY, "version": "11.1.0", "device": {"compute_capability": "8.9"}}
    with pytest.raises(Arl2rtError) as info:
        read_entry(entry.path, expected_key=here)
    message = str(info.value)
    assert "device: built for {'compute_capability': '9.0'}" in message and "'11.1.0'" in message
    assert "onnx" not in message  # only the fields that differ


def test_a_failed_store_leaves_nothing(cache):
    class Boom(bytes):
        def __len__(self):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cache.store(KEY, {**ENGINES, "commit_step": Boom(b"x")})
    assert not cache.entry_path(KEY).exists() and list(cache.root.iterdir()) == []


def test_profile_ranges_of_tiny():
    cfg = PRESETS["tiny"]  # 3 frames per block, 16 tokens per frame
    ranges = dim_ranges(cfg, max_frames=21, max_batch=2)
    # 7 blocks: the last sees 18 past frames, the middle (block 3) 9
    assert ranges == {BATCH: DimRange(1, 1, 2), PAST_LEN: DimRange(0, 9 * 16, 18 * 16)}
    shapes = profile_shapes(StateSpec(cfg), "denoise_step", ranges)
    assert shapes["past_key.3"] == ((1, 0, 4, 16), (1, 144, 4, 16), (2, 288, 4, 16))
    assert shapes["latents"] == ((1, 4, 3, 8, 8), (1, 4, 3, 8, 8), (2, 4, 3, 8, 8))
    assert "frame_offset" not in shapes  # static: no profile entry
    assert set(profile_shapes(StateSpec(cfg), "encode_context", ranges)) == {"context"}


def test_decode_graphs_profile_batch_only():
    spec = StateSpec(PRESETS["tiny"], vae=TINY)  # latent 8x8, 3 frames per block
    shapes = profile_shapes(spec, "decode_step", dim_ranges(spec.config, max_frames=21, max_batch=2))
    assert set(shapes) == {s.name for s in spec.inputs("decode_step")}  # the latents and all 32 caches
    assert shapes["vae_latents"] == ((1, 4, 3, 8, 8), (1, 4, 3, 8, 8), (2, 4, 3, 8, 8))
    assert all(lo[1:] == opt[1:] == hi[1:] and (lo[0], hi[0]) == (1, 2) for lo, opt, hi in shapes.values())


def test_rolling_window_caps_the_past():
    cfg = PRESETS["tiny"].__class__(**{**PRESETS["tiny"].to_dict(), "attn_window_frames": 9, "sink_frames": 3})
    assert dim_ranges(cfg, max_frames=60)[PAST_LEN] == DimRange(0, 6 * 16, 6 * 16)


@pytest.mark.parametrize(("frames", "match"), [(2, "at least one block"), (2000, "at most 1024")])
def test_max_frames_out_of_range(frames, match):
    with pytest.raises(Arl2rtError, match=match):
        dim_ranges(PRESETS["tiny"], max_frames=frames)


def test_network_io_mismatch_names_the_tensor(tmp_path):
    spec = StateSpec(PRESETS["tiny"])
    found = expected_io(spec, "commit_step")
    check_network_io(found, spec, "commit_step", tmp_path / "g.onnx")  # the spec itself passes
    found["outputs"][0]["shape"] = [1, 4, 16, 16]  # batch lost its dynamism
    with pytest.raises(Arl2rtError, match=r"tensor present_state\.0: expected shape \[-1, 4, 16, 16\] float32"):
        check_network_io(found, spec, "commit_step", tmp_path / "g.onnx")
    found = expected_io(spec, "commit_step")
    found["inputs"] = found["inputs"][1:]
    with pytest.raises(Arl2rtError, match="network inputs of commit_step"):
        check_network_io(found, spec, "commit_step", tmp_path / "g.onnx")


def test_build_cli_reports_a_bad_package_without_traceback(tmp_path):
    from typer.testing import CliRunner

    from arl2rt.cli.main import app

    result = CliRunner().invoke(app, ["build", str(tmp_path / "nowhere"), "--flavour", "tensorrt-rtx"])
    assert result.exit_code == 1
    text = " ".join(result.output.split())  # rich wraps the message at the terminal width
    assert "expected a directory with manifest.json" in text and "Traceback" not in text


# -- engines that serve a stream: wider profiles, any optimization level ---------------------------------------------
def _key(max_frames: int, max_batch: int = 1, **fields) -> dict:
    spec = StateSpec(PRESETS["tiny"])
    ranges = dim_ranges(spec.config, max_frames=max_frames, max_batch=max_batch)
    profiles = {
        g: {n: [list(s) for s in shapes] for n, shapes in profile_shapes(spec, g, ranges).items()}
        for g in ("encode_context", "denoise_step", "commit_step")
    }
    return {**KEY, "profiles": profiles, "optimization_level": None, **fields}


def test_wider_profiles_and_another_optimization_level_serve_a_stream():
    assert blocking_fields(_key(21), _key(12)) == [] and blocking_fields(_key(21, max_batch=2), _key(21)) == []
    assert blocking_fields(_key(21, optimization_level=5), _key(21)) == []
    assert blocking_fields(_key(12), _key(21)) == ["profiles"]  # too short a past
    assert blocking_fields(_key(21), _key(21, max_batch=2)) == ["profiles"]  # too small a batch
    assert blocking_fields(_key(21, version="10.8"), _key(12)) == ["version"]
    assert not profiles_cover({"g": {"x": [[1], [1], [1]]}}, {"g": {"x": [[1, 2], [1, 2], [1, 2]]}})  # another rank
    assert not profiles_cover({"g": "garbage"}, {"g": {"x": [[1], [1], [1]]}})


def test_find_takes_the_exact_entry_else_the_tightest_that_serves(cache):
    assert cache.find(_key(12)).status == "miss"
    wide, wider = cache.store(_key(30), ENGINES), cache.store(_key(60), ENGINES)
    cache.store(_key(9), ENGINES)  # too short: never chosen
    found = cache.find(_key(12))
    assert found.status == "hit" and found.entry.path == wide.path
    exact = cache.store(_key(12), ENGINES)
    assert cache.find(_key(12)).entry.path == exact.path
    (wide.path / "denoise_step.engine").write_bytes(b"damaged")
    assert cache.find(_key(15)).entry.path == wider.path  # a corrupt candidate is passed over
    assert cache.find(_key(90)).status == "miss"
    assert cache.lookup(_key(15)).status == "miss"  # `arl2rt build` still builds exactly what it is asked


def test_an_explicit_entry_serves_a_shorter_stream_but_not_a_longer_one(cache):
    entry = cache.store(_key(21), ENGINES)
    assert read_entry(entry.path, expected_key=_key(12), exact=False).path == entry.path
    with pytest.raises(Arl2rtError, match="engines built for another setup"):
        read_entry(entry.path, expected_key=_key(12))  # exact: the profile differs
    with pytest.raises(Arl2rtError, match=r"another setup \(profiles: built for"):
        read_entry(entry.path, expected_key=_key(48), exact=False)


@pytest.mark.parametrize(("window", "sinks"), [(-1, 0), (3, 0), (4, 0), (9, 3), (10, 3), (21, 0)])
def test_a_stream_asks_for_the_profile_of_its_own_length(window, sinks):
    cfg = dataclasses.replace(PRESETS["tiny"], attn_window_frames=window, sink_frames=sinks)
    for blocks in range(1, 40):
        frames = stream_max_frames(cfg, blocks)
        assert frames <= blocks * cfg.frames_per_block
        assert dim_ranges(cfg, max_frames=frames) == dim_ranges(cfg, max_frames=blocks * cfg.frames_per_block)
    if window != -1:  # the past stops growing: a stream past the RoPE table still gets a profile
        assert dim_ranges(cfg, max_frames=stream_max_frames(cfg, 10_000))[PAST_LEN].max <= window * 16


def test_a_global_cache_stream_beyond_the_rope_table_is_refused_up_front():
    with pytest.raises(Arl2rtError, match="stream at most 341 blocks on the tensorrt backend"):
        stream_max_frames(PRESETS["tiny"], 342)


# -- the plugin part of the key: AOT engines embed their kernels -----------------------------------------------------
@pytest.mark.parametrize(("mode", "depends"), [("aot", False), ("jit", True)])
def test_only_jit_keys_depend_on_the_triton_version(micro_exports, monkeypatch, mode, depends):
    from arl2rt.plugins.gdn import trt_config
    from arl2rt.runtime.trt import build

    package = dataclasses.replace(micro_exports.package("tensorrt"), plugin_mode=mode)
    flavour = Flavour("tensorrt", types.SimpleNamespace(__version__="10.13.0"), FLAVOURS["tensorrt"][1])
    monkeypatch.setattr(build, "device_key", lambda flavour, ccs=(): {"gpu": "H100", "compute_capability": "9.0"})
    keys = []
    for triton in ("triton 3.5.0", "absent"):  # built with Triton; looked up where none is installed
        monkeypatch.setattr(trt_config, "triton_version", lambda triton=triton: triton)
        keys.append(engine_key(package, flavour)[0])
    assert (keys[0] != keys[1]) is depends
    assert [k for k in keys[0] if keys[0][k] != keys[1][k]] == (["plugin"] if depends else [])
