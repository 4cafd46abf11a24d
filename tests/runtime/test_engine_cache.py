"""The engine cache and the profile ranges: pure logic, no TensorRT needed.

A cache entry is found only under its exact key, verified byte for byte before use, and replaced (never used) when
anything in it is corrupt; writes go through a temporary directory so a failure leaves no partial entry.
"""

from __future__ import annotations

import json

import pytest

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import BATCH, PAST_LEN, StateSpec
from arl2rt.model.config import PRESETS
from arl2rt.runtime.trt.cache import ENTRY_FILE, EngineCache, key_digest, read_entry
from arl2rt.runtime.trt.loaders import check_network_io, expected_io
from arl2rt.runtime.trt.profiles import DimRange, dim_ranges, profile_shapes

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
