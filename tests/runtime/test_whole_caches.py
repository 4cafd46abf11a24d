"""Steps fed whole caches (the step graphs' form for caches that still grow) equal the exact-length steps.

The CUDA-graph path feeds each softmax layer its cache's whole buffers with the valid length on the device and lets
the commit write the block's K/V at that offset. Here that path runs eagerly on the CPU (``StepGraphs(capture=False)``)
with the buffers' unused tails filled with NaN: a stream equals the exact-length stream only if the attention reads
no key beyond the valid length and the commit writes each block where the cache ends.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from arl2rt.export.state_spec import PAST_KV, StateSpec
from arl2rt.model.random import random_context, random_model
from arl2rt.runtime.state_store import StateStore
from arl2rt.runtime.step_graphs import StepGraphs, whole_buffer, whole_caches
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend


def _small(cfg, **kw):
    return dataclasses.replace(cfg, frames_per_block=1, latent_height=4, latent_width=4, **kw)


def _stream(cfg, dtype: str, whole: bool, blocks: int, max_frames: int):
    """The stream's latents and final state; ``whole``: through the step graphs' feeds, counting those steps."""
    spec = StateSpec(cfg, dtype)
    with TorchBackend(random_model(cfg, seed=3), spec) as be:
        counted = []
        if whole:
            eager = be._eager

            def recording(graph, feeds, out=None, past_tokens=None):
                counted.append((graph, None if past_tokens is None else int(past_tokens)))
                return eager(graph, feeds, out, past_tokens=past_tokens)

            be.graphs = StepGraphs(spec, be.device, recording, capture=False)
        streamer = Streamer(be, seed=4, max_frames=max_frames)
        for cache in streamer.store.caches.values():  # a tail of NaN: any read beyond the valid frames shows
            cache.key.fill_(float("nan"))
            cache.value.fill_(float("nan"))
        out = streamer.generate(random_context(cfg, seed=2), blocks)
        state = {k: v.clone() for k, v in streamer.store.state_dict().items()}
    return out, state, counted


def _assert_close(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert (a - b).abs().max() <= rel * b.abs().max(), float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(("dtype", "rel"), [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize(
    "kind",
    ["global", "global-grows", "rolling"],
)
def test_stream_fed_whole_caches_equals_the_exact_stream(tiny_cfg, dtype, rel, kind):
    blocks = 5
    cfg = _small(tiny_cfg, attn_window_frames=4, sink_frames=1) if kind == "rolling" else _small(tiny_cfg)
    max_frames = 2 if kind == "global-grows" else blocks * cfg.frames_per_block
    exact, exact_state, _ = _stream(cfg, dtype, False, blocks, max_frames)
    fed, fed_state, steps = _stream(cfg, dtype, True, blocks, max_frames)
    _assert_close(fed, exact, rel)
    assert fed_state.keys() == exact_state.keys()
    for name in exact_state:
        _assert_close(fed_state[name], exact_state[name], rel)
    passes = len(cfg.timesteps)
    tokens = cfg.tokens_per_frame
    whole = [(g, n) for g, n in steps if n is not None]
    if kind == "global":  # from block 1 on every step is fed whole, its valid length that of the blocks before
        expected = [(g, b * tokens) for b in range(1, blocks) for g in ["denoise_step"] * passes + ["commit_step"]]
        assert whole == expected
    elif kind == "rolling":  # 3 past frames: blocks 1 and 2 while it fills; from block 3 on it is full (exact)
        expected = [(g, b * tokens) for b in (1, 2) for g in ["denoise_step"] * passes + ["commit_step"]]
        assert whole == expected
    else:  # capacity 2 -> 4 -> 8: a commit whose slot lies in the grown buffer takes the exact path
        assert ("commit_step", 2 * tokens) not in whole and ("commit_step", 4 * tokens) not in whole
        assert ("commit_step", tokens) in whole and ("commit_step", 3 * tokens) in whole


def test_whole_buffer_is_found_only_for_a_strict_prefix_of_a_cache_buffer(tiny_cfg):
    cfg = _small(tiny_cfg)
    store = StateStore(StateSpec(cfg), batch=2, device="cpu", max_frames=4)
    cache = next(iter(store.caches.values()))
    cache.key.normal_()
    cache.frames = 3
    key, _ = cache.view()
    whole = whole_buffer(key)
    assert whole is not None and whole.data_ptr() == cache.key.data_ptr() and whole.shape == cache.key.shape
    assert torch.equal(whole[:, : key.shape[1]], key)
    cache.frames = 4  # the view is the whole buffer: nothing to pad, the shapes already repeat
    assert whole_buffer(cache.view()[0]) is None
    assert whole_buffer(cache.key[:, :8].clone()) is None  # a copy is no prefix of anything
    assert whole_buffer(cache.key[:, :8].transpose(2, 3)) is None  # another layout


def test_first_block_and_batch_slots_take_the_exact_path(tiny_cfg):
    cfg = _small(tiny_cfg)
    spec = StateSpec(cfg)
    store = StateStore(spec, batch=1, device="cpu", max_frames=8)
    store.set_context({s.name: torch.zeros(s.resolve(batch=1)) for s in spec.context_kv()})
    feeds = {**store.feeds()}
    assert whole_caches(spec, "denoise_step", feeds, {}) is None  # nothing cached yet
    for cache in store.caches.values():
        cache.frames = 2
    feeds = store.feeds()
    commit = whole_caches(spec, "commit_step", feeds, store.spare_buffers())
    assert commit is not None and int(commit.tokens) == 2 * cfg.tokens_per_frame
    layer = cfg.softmax_layers[0]
    past_key = spec.names(PAST_KV, layer)[0]
    assert commit.feeds[past_key].shape[1] == 8 * cfg.tokens_per_frame
    assert whole_caches(spec, "commit_step", feeds, {}) is None  # no slot offered: the exact path


def test_a_cache_beyond_the_token_limit_keeps_the_exact_form(tiny_cfg, monkeypatch):
    from arl2rt.runtime import step_graphs

    cfg = _small(tiny_cfg)
    spec = StateSpec(cfg)
    store = StateStore(spec, batch=1, device="cpu", max_frames=8)
    store.set_context({s.name: torch.zeros(s.resolve(batch=1)) for s in spec.context_kv()})
    for cache in store.caches.values():
        cache.frames = 2
    assert whole_caches(spec, "denoise_step", store.feeds(), {}) is not None
    monkeypatch.setattr(step_graphs, "WHOLE_MAX_TOKENS", 8 * cfg.tokens_per_frame - 1)  # capacity: 8 frames
    assert whole_caches(spec, "denoise_step", store.feeds(), {}) is None
