"""The store, the step modules and StaticBlock take every name from the StateSpec: a spec spelling every tensor
differently streams the very same video, binding each present state as its past."""

from __future__ import annotations

import itertools

import pytest
import torch

from arl2rt.export.state_spec import (
    CONTEXT,
    CONTEXT_KEY,
    CONTEXT_VALUE,
    FRAME_OFFSET,
    LATENTS,
    PAST_KEY,
    PAST_STATE,
    PAST_VALUE,
    PRESENT_KEY,
    PRESENT_KV,
    PRESENT_STATE,
    PRESENT_VALUE,
    TIMESTEP,
    VELOCITY,
    StateSpec,
)
from arl2rt.model.random import random_context, random_model
from arl2rt.runtime.cuda_graph import StaticBlock
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend
from micro_configs import micro_config

MICRO = micro_config("state-store-micro")  # layer 0 hybrid, layer 1 softmax
_CODES = {
    CONTEXT: "text",
    CONTEXT_KEY: "c_k",
    CONTEXT_VALUE: "c_v",
    LATENTS: "x",
    TIMESTEP: "t",
    FRAME_OFFSET: "pos",
    VELOCITY: "v",
    PAST_STATE: "p_st",
    PAST_KEY: "p_k",
    PAST_VALUE: "p_v",
    PRESENT_STATE: "n_st",
    PRESENT_KEY: "n_k",
    PRESENT_VALUE: "n_v",
}


class RenamedSpec(StateSpec):
    """Every tensor named unlike the default spelling (other words, other separator), as a rename here would."""

    def name(self, kind: str, layer: int | None = None) -> str:
        return _CODES[kind] if layer is None else f"{_CODES[kind]}/{layer}"


@pytest.fixture(scope="module")
def model():
    return random_model(MICRO, seed=0)


def test_a_renamed_spec_streams_the_same_video(model):
    context = random_context(MICRO, seed=1)
    with TorchBackend(model, StateSpec(MICRO)) as be:
        expected = Streamer(be, seed=4).generate(context, 3)
    with TorchBackend(model, RenamedSpec(MICRO)) as be:
        streamer = Streamer(be, seed=4)
        assert torch.equal(streamer.generate(context, 3), expected)
    store = streamer.store
    assert set(store.states) == {"p_st/0"} and set(store.spare_buffers()) == {"n_st/0", "n_k/1", "n_v/1"}
    assert set(store.feeds()) == {"c_k/0", "c_v/0", "c_k/1", "c_v/1", "p_st/0", "p_k/1", "p_v/1"}
    assert store.past_frames == 3

    saved = {n: t.clone() for n, t in store.state_dict().items()}
    store.reset()
    store.load_state_dict(saved)
    assert all(torch.equal(store.state_dict()[n], t) for n, t in saved.items())


def test_a_renamed_spec_runs_a_static_block(model):
    spec = RenamedSpec(MICRO)
    gen = torch.Generator().manual_seed(11)
    shape = (1, MICRO.in_channels, MICRO.frames_per_block, MICRO.latent_height, MICRO.latent_width)
    noises = [torch.randn(shape, generator=gen) for _ in range(4)]
    with TorchBackend(model, spec) as be:
        streamer = Streamer(be, seed=2, max_frames=4)
        streamer.start(random_context(MICRO, seed=1))
        streamer.next_block()
        cache = streamer.store.caches[1]
        start, end = cache.frames * cache.tpf, (cache.frames + 1) * cache.tpf
        cycle = itertools.cycle(noises)
        out = StaticBlock(be, streamer.store, streamer.position.rope_frame, noise=lambda: next(cycle))()
        assert torch.equal(cache.key[:, start:end], out["n_k/1"]) and torch.equal(
            cache.value[:, start:end], out["n_v/1"]
        )
        replayed = iter(noises)
        streamer._noise = lambda: next(replayed)
        x0 = streamer.next_block()
    assert torch.equal(out["x"], x0)
    assert torch.equal(out["n_st/0"], streamer.store.states["p_st/0"])


def _cache(max_past, sink=0, batch=1, capacity=2):
    from arl2rt.runtime.state_store import KVCache

    return KVCache((batch, 2, 4), 3, max_past, sink, torch.float32, torch.device("cpu"), capacity)


def _block(frames, seed, batch=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames * 3, 2, 4, generator=gen), torch.randn(batch, frames * 3, 2, 4, generator=gen)


@pytest.mark.parametrize("max_past, sink", [(None, 0), (4, 1)], ids=["global", "rolling-with-sink"])
def test_a_block_written_into_its_slot_is_committed_without_a_copy(max_past, sink):
    """Writing each block into ``slot`` and appending the views gives the same cache as appending copies, and while
    the block lands in place the append copies nothing (the slot's memory is the cache's)."""
    written, copied = _cache(max_past, sink), _cache(max_past, sink)
    for b in range(6):
        key, value = _block(1, seed=b)
        views = written.slot(1)
        if views is None:
            assert max_past is not None and written.frames + 1 > max_past  # only a full window shifts
            written.append(key, value)
        else:
            views[0].copy_(key), views[1].copy_(value)
            before = views[0].data_ptr()
            written.append(*views)
            assert written.key.data_ptr() <= before < written.key.data_ptr() + written.key.nbytes
        copied.append(key, value)
        assert written.frames == copied.frames
        for got, want in zip(written.view(), copied.view()):
            assert torch.equal(got, want)
    assert (written.slot(1) is None) == (max_past is not None)  # the rolling window is full by now


def test_no_slot_for_a_batch_whose_view_is_not_contiguous():
    cache = _cache(None, batch=2)
    cache.append(*_block(1, seed=0, batch=2))
    assert cache.slot(1) is None


def test_the_torch_backend_writes_block_kv_into_the_cache_slots(model):
    """Each softmax layer's block K/V go straight into the cache (the commit's outputs are the cache's memory), and
    the stream is bit for bit the one whose K/V are appended by copy."""
    context = random_context(MICRO, seed=1)
    seen = []

    def keep(graph, block, pass_index, feeds, outputs):
        if graph == "commit_step":
            seen.append({n: t.data_ptr() for n, t in outputs.items()})

    with TorchBackend(model, StateSpec(MICRO)) as be:
        streamer = Streamer(be, seed=4, hook=keep, max_frames=8)
        video = streamer.generate(context, 3)
        cache = streamer.store.caches[1]
        spec = be.spec
        copied = Streamer(be, seed=4, max_frames=8)
        copied.store.spare_buffers = lambda: {}  # no slots offered: K/V returned, then appended by copy
        assert torch.equal(copied.generate(context, 3), video)
    block_bytes = MICRO.tokens_per_block * cache.heads * cache.dim * cache.key.element_size()
    key, value = spec.names(PRESENT_KV, 1)
    assert [p[key] for p in seen] == [cache.key.data_ptr() + b * block_bytes for b in range(3)]
    assert [p[value] for p in seen] == [cache.value.data_ptr() + b * block_bytes for b in range(3)]
