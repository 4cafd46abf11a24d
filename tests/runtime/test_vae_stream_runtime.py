"""The VAE decoder in the AR loop: every block decoded after its commit, caches kept by the StateStore, snapshotted
with the session, and covered by parity like the DiT's steps."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import DECODE_GRAPHS, PAST_VAE, StateSpec
from arl2rt.model.random import random_context
from arl2rt.model.vae.stream import decode_in_blocks
from arl2rt.parity.compare import Tolerances
from arl2rt.parity.polygraphy_io import save_polygraphy
from arl2rt.parity.runner import run_parity
from arl2rt.runtime import session as sessions
from arl2rt.runtime.onnxruntime_backend import OnnxRuntimeBackend
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend
from micro_vae_packages import VAE
from model.vae.vae_helpers import random_decoder, stream_with_frames

META = {"model": {"identity": "abc", "description": "micro + vae", "config": {}}, "dtype": "float32", "batch": 1}


@pytest.fixture
def torch_backend(micro_vae_exports):
    with TorchBackend(micro_vae_exports.model, micro_vae_exports.spec(), vae=micro_vae_exports.decoder) as be:
        yield be


def test_each_block_is_decoded_as_the_whole_stream_of_latents_would_be(torch_backend, micro_vae_exports):
    """Streamed DiT + VAE == the DiT's latents decoded afterwards block by block (the same modules: exact)."""
    context = random_context(micro_vae_exports.model.cfg, seed=3)
    latents, frames = stream_with_frames(torch_backend, 4, context)
    assert [f.shape[2] for f in frames] == [5, 8, 8, 8]  # 4F - 3 for the first block, then 4F
    cfg = micro_vae_exports.model.cfg
    decoded = decode_in_blocks(micro_vae_exports.decoder, torch.cat(latents, dim=2), cfg.frames_per_block)
    assert torch.equal(torch.cat(frames, dim=2), decoded)

    # start() empties the caches: the same first blocks
    again, frames_again = stream_with_frames(torch_backend, 2, context)
    assert torch.equal(frames_again[0], frames[0]) and torch.equal(frames_again[1], frames[1])


def test_store_keeps_the_caches_and_a_reset_empties_them(torch_backend, micro_vae_exports):
    s = Streamer(torch_backend, seed=0)
    s.start(random_context(micro_vae_exports.model.cfg, seed=3))
    assert s.last_frames is None and s.store.decode_graph == "decode_first" and not s.store.vae
    s.next_block()
    spec = micro_vae_exports.spec()
    assert sorted(s.store.vae) == sorted(t.name for t in spec.vae_caches(PAST_VAE))
    assert s.store.decode_graph == "decode_step" and s.store.nbytes()["vae_caches"] == spec.vae_cache_bytes()
    assert set(s.store.state_dict()) >= set(s.store.vae)
    s.store.reset()
    assert not s.store.vae and s.store.decode_graph == "decode_first"


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_a_resumed_stream_with_the_vae_is_bit_identical(backend, tmp_path, micro_vae_exports, torch_backend):
    context = random_context(micro_vae_exports.model.cfg, seed=3)
    be = torch_backend if backend == "torch" else OnnxRuntimeBackend(micro_vae_exports.package()).activate()
    try:
        _, one_go = stream_with_frames(be, 5, context, seed=7)
        first = Streamer(be, seed=7)
        first.start(context)
        head = []
        for _ in first.stream(2):
            head.append(first.last_frames.clone())
        sessions.save_snapshot(tmp_path, first, META)
        list(first.stream(1))  # the stream goes on after the snapshot and is lost

        snap = sessions.load_snapshot(tmp_path)
        assert {f"past_vae.{i}" for i in range(32)} <= set(snap.tensors)
        second = Streamer(be, seed=123)
        snap.restore(second)
        tail = []
        for _ in second.stream(3):
            tail.append(second.last_frames)
    finally:
        if backend != "torch":
            be.deactivate()
    assert torch.equal(torch.cat(head + tail, dim=2), torch.cat(one_go, dim=2))


def test_snapshots_without_their_vae_caches_are_refused(torch_backend, micro_vae_exports):
    s = Streamer(torch_backend, seed=0)
    s.start(random_context(micro_vae_exports.model.cfg, seed=3))
    list(s.stream(1))
    tensors = {k: v.clone() for k, v in s.store.state_dict().items()}
    rng = s.generator.get_state()
    partial = {k: v for k, v in tensors.items() if k != "past_vae.7"}
    with pytest.raises(Arl2rtError, match=r"missing tensors \['past_vae.7'\]"):
        s.store.load_state_dict(partial)
    bare = {k: v for k, v in tensors.items() if not k.startswith("past_vae")}
    with pytest.raises(Arl2rtError, match="at block 1: expected VAE caches .a block was decoded., found none"):
        s.restore(bare, s.position, rng)
    wrong = {**tensors, "past_vae.0": tensors["past_vae.0"].double()}
    with pytest.raises(Arl2rtError, match="tensor past_vae.0: expected dtype float32, found float64"):
        s.store.load_state_dict(wrong)


def test_parity_covers_the_decode_steps(torch_backend, micro_vae_exports):
    context = random_context(micro_vae_exports.model.cfg, seed=3)
    with OnnxRuntimeBackend(micro_vae_exports.package()) as candidate:
        result, _ = run_parity(torch_backend, candidate, context, blocks=3)
    assert result.passed, result.first_failure()
    decodes = [(s.mode, s.graph, s.block) for s in result.steps if s.graph in DECODE_GRAPHS]
    for mode in ("drift", "step"):
        assert [d for d in decodes if d[0] == mode] == [(mode, "decode_first", 0), (mode, "decode_step", 1),
                                                         (mode, "decode_step", 2)]  # fmt: skip
    step = next(s for s in result.steps if s.graph == "decode_step")
    assert {"frames", "present_vae.31"} <= set(step.tensors)


def test_polygraphy_captures_cover_the_decode_steps(torch_backend, micro_vae_exports, tmp_path):
    """decode_first (block 0) and the capture block's decode_step get feeds and golden outputs like the DiT's steps."""
    context = random_context(micro_vae_exports.model.cfg, seed=3)
    package = micro_vae_exports.package()
    with OnnxRuntimeBackend(package) as candidate:
        _, captures = run_parity(torch_backend, candidate, context, blocks=2, modes=("drift",), capture_block=1)
        got = {c.graph: (c.block, candidate.run(c.graph, dict(c.feeds))) for c in captures}
    assert {g: b for g, (b, _) in got.items()} == {
        "encode_context": 0, "decode_first": 0, "denoise_step": 1, "commit_step": 1, "decode_step": 1,
    }  # fmt: skip
    for cap in captures:
        if cap.graph in DECODE_GRAPHS:
            assert set(cap.outputs) == {s.name for s in package.spec.outputs(cap.graph)}
            for name, golden in cap.outputs.items():
                torch.testing.assert_close(got[cap.graph][1][name], golden, rtol=1e-4, atol=1e-4)
    commands = save_polygraphy(tmp_path / "poly", captures, package.spec, Tolerances.for_dtype("float32"), package.root)
    assert (tmp_path / "poly" / "decode_step.inputs.json").is_file()
    assert commands["decode_first"]["onnxrt"][2] == str(package.root / "decode_first.onnx")


def test_the_torch_backend_needs_the_decoder_of_its_contract(micro_vae_exports):
    model, decoder = micro_vae_exports.model, micro_vae_exports.decoder
    with pytest.raises(Arl2rtError, match="has VAE 'vae-tiny': expected a decoder, found none"):
        TorchBackend(model, micro_vae_exports.spec())
    with pytest.raises(Arl2rtError, match="a VAE decoder was given, but the state contract of 'micro' has none"):
        TorchBackend(model, StateSpec(model.cfg), vae=decoder)
    other = StateSpec(model.cfg, "float32", dataclasses.replace(VAE, num_res_blocks=1))
    with pytest.raises(Arl2rtError, match=r"differs in \['num_res_blocks'\]"):
        TorchBackend(model, other, vae=decoder).activate()


def test_a_torch_model_identity_covers_its_decoder(micro_vae_exports):
    model, decoder = micro_vae_exports.model, micro_vae_exports.decoder
    with_vae = sessions.module_identity(model, decoder)
    assert with_vae != sessions.module_identity(model) and with_vae == sessions.module_identity(model, decoder)
    other = random_decoder(seed=1)
    assert sessions.module_identity(model, other) != with_vae
