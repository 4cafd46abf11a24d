"""The TAEHV decoder in the AR loop, on the torch backend and on onnxruntime: each block decoded after its commit as
the stream's latents decode afterwards, its memories kept by the StateStore and resumed bit-identically."""

from __future__ import annotations

import pytest
import torch

from arl2rt.export.state_spec import PAST_VAE
from arl2rt.model.random import random_context
from arl2rt.model.vae.stream import decode_in_blocks
from arl2rt.runtime import session as sessions
from arl2rt.runtime.onnxruntime_backend import OnnxRuntimeBackend
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend
from model.vae.vae_helpers import peak_relative, stream_with_frames

META = {"model": {"identity": "abc", "description": "micro + taehv", "config": {}}, "dtype": "float32", "batch": 1}


def _backend(kind: str, exports):
    if kind == "torch":
        return TorchBackend(exports.model, exports.spec(), vae=exports.decoder)
    return OnnxRuntimeBackend(exports.package())


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_each_block_is_decoded_as_the_whole_stream_of_latents_would_be(backend, micro_taehv_exports):
    exports = micro_taehv_exports
    context = random_context(exports.model.cfg, seed=3)
    be = _backend(backend, exports)
    with be:
        latents, frames = stream_with_frames(be, 4, context)
        one = Streamer(be, seed=0)
        one.start(context)
        one.next_block()
        assert sorted(one.store.vae) == sorted(s.name for s in exports.spec().vae_caches(PAST_VAE))
        assert one.store.nbytes()["vae_caches"] == exports.spec().vae_cache_bytes()
    assert [f.shape[2] for f in frames] == [5, 8, 8, 8]  # 4F - 3 for the first block, then 4F
    f = exports.model.cfg.frames_per_block
    decoded = decode_in_blocks(exports.decoder, torch.cat(latents, dim=2), f)
    if backend == "torch":  # the very modules the backend runs: exact
        assert torch.equal(torch.cat(frames, dim=2), decoded)
    else:
        assert peak_relative(torch.cat(frames, dim=2), decoded) <= 1e-5


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_a_resumed_stream_with_taehv_is_bit_identical(backend, tmp_path, micro_taehv_exports):
    exports = micro_taehv_exports
    context = random_context(exports.model.cfg, seed=3)
    be = _backend(backend, exports)
    with be:
        _, one_go = stream_with_frames(be, 4, context, seed=7)
        first = Streamer(be, seed=7)
        first.start(context)
        head = [first.last_frames.clone() for _ in first.stream(2)]
        sessions.save_snapshot(tmp_path, first, META)
        snap = sessions.load_snapshot(tmp_path)
        assert {f"past_vae.{i}" for i in range(9)} <= set(snap.tensors)
        second = Streamer(be, seed=123)
        snap.restore(second)
        tail = [second.last_frames.clone() for _ in second.stream(2)]
    assert torch.equal(torch.cat(head + tail, dim=2), torch.cat(one_go, dim=2))
