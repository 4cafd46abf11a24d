"""StaticBlock is the Streamer's block at a fixed position (bit-identical on a CPU) and never advances the stream."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import StateSpec
from arl2rt.model.random import random_model
from arl2rt.runtime.cuda_graph import CapturedCall, StaticBlock
from arl2rt.runtime.state_store import StateStore
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend


def _noises(cfg, n=4, seed=11):
    gen = torch.Generator().manual_seed(seed)
    shape = (1, cfg.in_channels, cfg.frames_per_block, cfg.latent_height, cfg.latent_width)
    return [torch.randn(shape, generator=gen) for _ in range(n)]


def test_static_block_equals_the_streamers_next_block_and_does_not_advance(tiny_cfg, tiny_context):
    cfg = tiny_cfg
    with TorchBackend(random_model(cfg), StateSpec(cfg)) as be:
        streamer = Streamer(be, seed=2, max_frames=9)
        streamer.start(tiny_context)
        streamer.next_block()
        streamer.next_block()  # states and caches now hold two real blocks
        store = streamer.store
        frames, states = store.past_frames, dict(store.states)
        saved = {name: t.clone() for name, t in states.items()}
        noises = _noises(cfg)
        cycle = itertools.cycle(noises)
        block = StaticBlock(be, store, streamer.position.rope_frame, noise=lambda: next(cycle))
        out = block()
        again = block()

        assert store.past_frames == frames and store.states == states  # same buffers, not rebound
        assert all(torch.equal(saved[n], t) for n, t in store.states.items())
        tpf = cfg.tokens_per_frame
        start, end = frames * tpf, (frames + cfg.frames_per_block) * tpf
        for i, cache in store.caches.items():
            assert torch.equal(cache.key[:, start:end], out[f"present_key.{i}"])  # written where append would write
            assert torch.equal(cache.value[:, start:end], out[f"present_value.{i}"])
        assert all(torch.equal(out[name], again[name]) for name in out)

        replayed = iter(noises)
        streamer._noise = lambda: next(replayed)
        x0 = streamer.next_block()
    assert torch.equal(out["latents"], x0)
    for name, state in store.states.items():
        assert torch.equal(out[store.spec.present_of(name)], state)
    for i, cache in store.caches.items():
        key, value = cache.view()
        assert torch.equal(key[:, start:end], out[f"present_key.{i}"])
        assert torch.equal(value[:, start:end], out[f"present_value.{i}"])


def test_static_block_rejects_a_full_cache_a_rolling_window_and_a_bad_offset(tiny_cfg, tiny_context):
    with TorchBackend(random_model(tiny_cfg), StateSpec(tiny_cfg)) as be:
        streamer = Streamer(be, max_frames=3)
        streamer.start(tiny_context)
        streamer.next_block()
        with pytest.raises(Arl2rtError, match=r"layer 3: the block needs frames 3\.\.5, found room for 3 frames"):
            StaticBlock(be, streamer.store, 3)
        with pytest.raises(Arl2rtError, match=r"frame offset 1022: expected 0\.\.1021"):
            StaticBlock(be, StateStore(StateSpec(tiny_cfg), 1, "cpu", max_frames=6), 1022)
        other = StateStore(StateSpec(tiny_cfg, "float64"), 1, "cpu")
        with pytest.raises(Arl2rtError, match="does not match"):
            StaticBlock(be, other, 0)
    rolling = dataclasses.replace(tiny_cfg, attn_window_frames=6)
    with TorchBackend(random_model(rolling), StateSpec(rolling)) as be:
        store = StateStore(StateSpec(rolling), 1, "cpu")
        with pytest.raises(Arl2rtError, match="needs a global cache, found a rolling window of 3 past frames"):
            StaticBlock(be, store, 0)


def test_captured_call_stays_eager_on_a_cpu():
    calls = []

    def fn():
        calls.append(1)
        return torch.full((2,), float(len(calls)))

    call = CapturedCall(fn, "cpu")
    times = call.capture(warmup=2)
    assert len(times) == 2 and all(t >= 0 for t in times)
    assert not call.captured
    assert torch.equal(call(), torch.full((2,), 3.0))
    call.release()
    assert call.outputs is None
