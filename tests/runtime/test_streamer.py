"""The AR loop: deterministic streams, no state leaking between videos, constant state memory, bad feeds named."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import StateSpec
from arl2rt.model.random import random_model
from arl2rt.model.scheduler import FlowMatchScheduler
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend


def _small(cfg, **kw):
    return dataclasses.replace(cfg, frames_per_block=1, latent_height=4, latent_width=4, **kw)


def test_scheduler_matches_causal_forcing_warped_timesteps(tiny_cfg):
    steps = FlowMatchScheduler.from_config(dataclasses.replace(tiny_cfg, timesteps=(1000.0, 750.0, 500.0, 250.0)))
    assert steps.timesteps == pytest.approx([1000.0, 937.5, 833.3333333, 625.0])
    plain = FlowMatchScheduler.from_config(dataclasses.replace(tiny_cfg, warp_timesteps=False))
    assert plain.sigmas == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_two_videos_in_a_row_equal_two_fresh_runs(tiny_cfg, tiny_context):
    cfg = _small(tiny_cfg)
    model = random_model(cfg)
    other_context = torch.randn_like(tiny_context)
    spec = StateSpec(cfg)
    with TorchBackend(model, spec) as be:
        s = Streamer(be, seed=1)
        first = s.generate(other_context, 3, seed=9)
        second = s.generate(tiny_context, 3, seed=1)
    with TorchBackend(model, spec) as be:
        fresh = Streamer(be, seed=1).generate(tiny_context, 3)
    assert torch.equal(second, fresh)
    assert not torch.equal(first, fresh)


def test_stream_is_a_function_of_the_seed(tiny_cfg, tiny_context):
    cfg = _small(tiny_cfg)
    with TorchBackend(random_model(cfg), StateSpec(cfg)) as be:
        a = Streamer(be, seed=5).generate(tiny_context, 2)
        b = Streamer(be, seed=5).generate(tiny_context, 2)
        c = Streamer(be, seed=6).generate(tiny_context, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()


def _peak_state_bytes(cfg, context, blocks):
    peak = 0

    with TorchBackend(random_model(cfg), StateSpec(cfg)) as be:
        s = Streamer(be, seed=0, max_frames=1)

        def hook(*_):
            nonlocal peak
            peak = max(peak, sum(s.store.nbytes().values()))

        s.hook = hook
        s.start(context)
        for _ in s.stream(blocks):
            pass
    return peak


def test_all_hybrid_state_memory_is_constant(tiny_cfg, tiny_context):
    cfg = _small(tiny_cfg, hybrid_layers=tuple(range(tiny_cfg.num_layers)))
    assert _peak_state_bytes(cfg, tiny_context, 4) == _peak_state_bytes(cfg, tiny_context, 64)
    # while a softmax layer's cache grows with the stream
    grow = _small(tiny_cfg)
    assert _peak_state_bytes(grow, tiny_context, 16) > _peak_state_bytes(grow, tiny_context, 4)


def test_rolling_window_with_sinks_bounds_the_cache(tiny_cfg, tiny_context):
    cfg = _small(tiny_cfg, attn_window_frames=4, sink_frames=1)
    with TorchBackend(random_model(cfg), StateSpec(cfg)) as be:
        s = Streamer(be, seed=0)
        s.start(tiny_context)
        firsts = []
        for _ in s.stream(8):
            cache = s.store.caches[cfg.softmax_layers[0]]
            firsts.append(cache.view()[0][:, : cfg.tokens_per_frame].clone())
            assert cache.frames <= 3  # window 4 = 1 current + 3 past (1 sink + 2 recent)
        assert all(torch.equal(f, firsts[0]) for f in firsts)  # the sink frame is never evicted


def test_backend_names_the_bad_feed(tiny_cfg, tiny_context):
    cfg = _small(tiny_cfg)
    spec = StateSpec(cfg)
    with TorchBackend(random_model(cfg), spec) as be:
        s = Streamer(be, seed=0)
        s.start(tiny_context)
        feeds = s._feeds(s._noise(), 1000.0)
        bad = dict(feeds, **{"past_state.0": feeds["past_state.0"].double()})
        with pytest.raises(Arl2rtError, match=r"past_state\.0: expected dtype float32, found float64"):
            be.run("denoise_step", bad)
        bad = dict(feeds, latents=feeds["latents"][:, :, :, :2])
        with pytest.raises(Arl2rtError, match="tensor latents: expected shape"):
            be.run("denoise_step", bad)
        del feeds["past_state.1"]
        with pytest.raises(Arl2rtError, match=r"missing inputs \['past_state.1'\]"):
            be.run("denoise_step", feeds)
    with pytest.raises(Arl2rtError, match="not active"):
        be.run("denoise_step", feeds)


def test_stream_runs_past_the_rope_table_by_rebasing_positions(tiny_cfg, tiny_context):
    """Re-basing (runtime/rope_rebase.py; exactness is tested in test_generate_long_stream.py) keeps streams going."""
    cfg = _small(tiny_cfg, rope_max_positions=2)
    with TorchBackend(random_model(cfg), StateSpec(cfg)) as be:
        s = Streamer(be, seed=0)
        s.start(tiny_context)
        blocks = list(s.stream(5))
        assert s.position.frame == 5 and s.position.rope_frame == 1
        assert all(torch.isfinite(b).all() for b in blocks)
    with pytest.raises(Arl2rtError, match="exceeds the 2-position RoPE table"):
        Streamer(TorchBackend(random_model(cfg), StateSpec(dataclasses.replace(cfg, frames_per_block=3))))
