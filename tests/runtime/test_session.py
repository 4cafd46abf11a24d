"""Session snapshots: a restored stream continues bit-identically; a crash during a save keeps the previous snapshot;
corruption, another model and foreign directories are clear errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import StateSpec
from arl2rt.model.random import random_context, random_model
from arl2rt.runtime import session as sessions
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend


@pytest.fixture
def cfg(tiny_cfg):
    # both cache kinds: layer 3 is softmax with a rolling window and a sink; RoPE re-bases at frame 8
    return dataclasses.replace(
        tiny_cfg,
        frames_per_block=2,
        latent_height=4,
        latent_width=4,
        timesteps=(1000.0, 500.0),
        attn_window_frames=6,
        sink_frames=1,
        rope_max_positions=9,
    )


META = {"model": {"identity": "abc", "description": "test model", "config": {}}, "dtype": "float32", "batch": 1}


def _meta(cfg, identity="abc"):
    return {**META, "model": {**META["model"], "identity": identity, "config": cfg.to_dict()}}


def test_restored_stream_continues_bit_identically(tmp_path, cfg):
    model, context = random_model(cfg, seed=0), random_context(cfg, seed=1)
    with TorchBackend(model, StateSpec(cfg)) as be:
        one_go = Streamer(be, seed=5).generate(context, 8)

        first = Streamer(be, seed=5)
        first.start(context)
        head = list(first.stream(5))  # past the re-base at frame 8: rotated states and caches are saved
        sessions.save_snapshot(tmp_path, first, _meta(cfg))
        list(first.stream(2))  # the stream goes on after the snapshot and is then lost

        snap = sessions.load_snapshot(tmp_path)
        second = Streamer(be, seed=123)  # another seed: the generator state must come from the snapshot
        snap.restore(second)
        assert second.position == first.position.__class__(5, 10, 2)
        tail = list(second.stream(3))
    assert torch.equal(torch.cat(head + tail, dim=2), one_go)


def test_snapshot_holds_states_caches_text_rng_and_position(tmp_path, cfg):
    with TorchBackend(random_model(cfg), StateSpec(cfg)) as be:
        s = Streamer(be, seed=0)
        s.start(random_context(cfg, seed=1))
        list(s.stream(3))
        path = sessions.save_snapshot(tmp_path, s, _meta(cfg))
        expected = {k: v.clone() for k, v in s.store.state_dict().items()}
    snap = sessions.load_snapshot(tmp_path)
    assert path == tmp_path / "snap-000003" and (tmp_path / "LATEST").read_text().strip() == "snap-000003"
    assert sorted(snap.tensors) == sorted(expected)
    for name, t in expected.items():
        assert torch.equal(snap.tensors[name], t), name
    assert snap.tensors["past_key.3"].shape[1] == 4 * cfg.tokens_per_frame  # window 6 = 4 past frames + the block
    assert snap.meta["position"] == {"block": 3, "frame": 6, "rope_frame": 6}
    assert snap.rng_state.dtype == torch.uint8 and snap.meta["tensors"]["sha256"]


def _stream_with_snapshots(root, cfg, blocks=(2, 4)):
    with TorchBackend(random_model(cfg), StateSpec(cfg)) as be:
        s = Streamer(be, seed=0)
        s.start(random_context(cfg, seed=1))
        for b in blocks:
            list(s.stream(b - s.position.block))
            sessions.save_snapshot(root, s, _meta(cfg))


def test_a_crash_during_a_save_keeps_the_previous_snapshot(tmp_path, cfg, monkeypatch):
    def dies_halfway(tensors, path):
        with open(path, "wb") as f:
            f.write(b"\x00" * 100)
        raise KeyboardInterrupt  # as a Ctrl-C or a crash would, mid-write

    with TorchBackend(random_model(cfg), StateSpec(cfg)) as be:
        s = Streamer(be, seed=0)
        s.start(random_context(cfg, seed=1))
        list(s.stream(2))
        sessions.save_snapshot(tmp_path, s, _meta(cfg))
        list(s.stream(2))
        monkeypatch.setattr(sessions, "save_file", dies_halfway)
        with pytest.raises(KeyboardInterrupt):
            sessions.save_snapshot(tmp_path, s, _meta(cfg))
    assert sessions.load_snapshot(tmp_path).meta["position"]["block"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "snap-000002"]


def test_only_the_latest_snapshot_is_kept(tmp_path, cfg):
    _stream_with_snapshots(tmp_path, cfg, blocks=(2, 4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "snap-000004"]


def test_a_corrupted_snapshot_is_a_clear_error(tmp_path, cfg):
    _stream_with_snapshots(tmp_path, cfg, blocks=(2,))
    tensors = tmp_path / "snap-000002" / "state.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-7] ^= 0x40  # one bit of one state value
    tensors.write_bytes(bytes(data))
    with pytest.raises(Arl2rtError, match=r"state\.safetensors: sha256 .* does not match the recorded .*corrupted"):
        sessions.load_snapshot(tmp_path)


def test_a_damaged_record_or_pointer_is_a_clear_error(tmp_path, cfg):
    _stream_with_snapshots(tmp_path, cfg, blocks=(2,))
    (tmp_path / "snap-000002" / "session.json").write_text("{ not json")
    with pytest.raises(Arl2rtError, match="session.json: cannot read the snapshot record"):
        sessions.load_snapshot(tmp_path)
    (tmp_path / "LATEST").write_text("../../etc")
    with pytest.raises(Arl2rtError, match="expected a snapshot name like snap-000012"):
        sessions.load_snapshot(tmp_path)
    with pytest.raises(Arl2rtError, match="no LATEST file"):
        sessions.load_snapshot(tmp_path / "snap-000002")


def test_resuming_with_another_model_config_or_precision_is_a_clear_error(tmp_path, cfg):
    _stream_with_snapshots(tmp_path, cfg, blocks=(2,))
    snap = sessions.load_snapshot(tmp_path)
    ok = {"identity": "abc", "source": "the same", "config": cfg.to_dict(), "dtype": "float32"}
    sessions.check_compatible(snap, **ok)
    with pytest.raises(Arl2rtError, match=r"made with model abc… \(test model\), this run loads def"):
        sessions.check_compatible(snap, **{**ok, "identity": "def"})
    with pytest.raises(Arl2rtError, match=r"config differs from this run's in \['sink_frames'\]"):
        sessions.check_compatible(snap, **{**ok, "config": dataclasses.replace(cfg, sink_frames=2).to_dict()})
    with pytest.raises(Arl2rtError, match="made at precision float32, this run uses bfloat16"):
        sessions.check_compatible(snap, **{**ok, "dtype": "bfloat16"})


def test_restoring_tensors_of_another_shape_names_the_tensor(tmp_path, cfg):
    _stream_with_snapshots(tmp_path, cfg, blocks=(2,))
    snap = sessions.load_snapshot(tmp_path)
    snap.tensors["past_state.1"] = snap.tensors["past_state.1"][..., :-1]
    with TorchBackend(random_model(cfg), StateSpec(cfg)) as be:
        with pytest.raises(Arl2rtError, match=r"tensor past_state\.1: expected shape"):
            snap.restore(Streamer(be))
        del snap.tensors["past_state.1"]
        with pytest.raises(Arl2rtError, match=r"missing tensors \['past_state\.1'\]"):
            snap.restore(Streamer(be))


def test_model_identity_changes_with_any_weight(cfg):
    model = random_model(cfg, seed=0)
    before = sessions.module_identity(model)
    assert before == sessions.module_identity(random_model(cfg, seed=0))
    with torch.no_grad():
        model.blocks[2].self_attn.A_log[1] += 1e-6
    assert sessions.module_identity(model) != before


def test_session_directories_never_take_over_foreign_files(tmp_path, cfg):
    sessions.prepare_session_dir(tmp_path / "new")  # created
    sessions.prepare_session_dir(tmp_path / "new")  # empty: fine
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(Arl2rtError, match="expected a new or empty directory"):
        sessions.prepare_session_dir(tmp_path / "other")
    _stream_with_snapshots(tmp_path / "sess", cfg, blocks=(2,))
    with pytest.raises(Arl2rtError, match="already holds a session; continue it with --resume"):
        sessions.prepare_session_dir(tmp_path / "sess")
    sessions.prepare_session_dir(tmp_path / "sess", resuming_from=tmp_path / "sess")
    record = json.loads((tmp_path / "sess" / "snap-000002" / "session.json").read_text())
    assert record["format"] == "arl2rt-session" and record["version"] == 1
