"""Long streams: RoPE positions re-base exactly past the table, and a 2000-frame stream keeps constant memory."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from arl2rt.export.state_spec import StateSpec
from arl2rt.model.random import random_context, random_model
from arl2rt.runtime import rope_rebase
from arl2rt.runtime.state_store import StateStore
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend


def _stream(cfg, blocks: int, dtype: str = "float64") -> tuple[torch.Tensor, Streamer]:
    context = random_context(cfg, seed=1).to(StateSpec(cfg, dtype).context().torch_dtype)
    with TorchBackend(random_model(cfg, seed=0), StateSpec(cfg, dtype)) as be:
        streamer = Streamer(be, seed=3)
        return streamer.generate(context, blocks), streamer


CACHES = {
    "global-cache": {},
    "rolling-window-with-sink": {"attn_window_frames": 5, "sink_frames": 1},
    "all-hybrid": {"hybrid_layers": (0, 1, 2, 3)},
}


@pytest.mark.parametrize("cache", list(CACHES.values()), ids=list(CACHES))
def test_rebased_stream_equals_a_stream_with_an_unbounded_table(tiny_cfg, cache):
    """Table of 7 positions, 2 frames a block: re-bases at frames 6, 12, 18 (cache K and GDN states rotated)."""
    base = dataclasses.replace(
        tiny_cfg, frames_per_block=2, latent_height=4, latent_width=4, timesteps=(1000.0, 500.0), **cache
    )
    short, s_short = _stream(dataclasses.replace(base, rope_max_positions=7), blocks=12)
    long, s_long = _stream(dataclasses.replace(base, rope_max_positions=64), blocks=12)
    assert s_short.position.rope_frame < 7 and s_long.position.rope_frame == 24  # re-based vs absolute
    assert torch.isfinite(long).all()
    assert (short - long).abs().max() < 1e-10 * long.abs().max()


def test_before_block_returns_the_rope_index_and_rotates_only_past_the_table(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, rope_max_positions=7)
    store = StateStore(StateSpec(cfg), 1, "cpu")
    rotations = []
    store.rotate_keys = lambda rotate, chunk_tokens: rotations.append(chunk_tokens)
    rope, last = rope_rebase.RopePositions(cfg), 7 - cfg.frames_per_block
    assert rope.before_block(last, store) == last and not rotations
    assert rope.before_block(last + 1, store) == 0 and len(rotations) == 1


def test_rope_rebase_does_not_import_the_streamer():
    """The Streamer drives re-basing; re-basing knows nothing of the Streamer (no import circle)."""
    tree = ast.parse(Path(rope_rebase.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "arl2rt.runtime.streamer" not in imported


def test_rebasing_without_rotating_the_state_would_be_caught(tiny_cfg, monkeypatch):
    """The check above is sensitive: re-basing positions but not rotating stored keys changes the stream."""
    base = dataclasses.replace(tiny_cfg, frames_per_block=2, latent_height=4, latent_width=4, timesteps=(1000.0,))
    long, _ = _stream(dataclasses.replace(base, rope_max_positions=64), blocks=6)
    monkeypatch.setattr(rope_rebase, "rotate_time_pairs", lambda x, dim, cos, sin: x)
    short, _ = _stream(dataclasses.replace(base, rope_max_positions=7), blocks=6)
    assert (short - long).abs().max() > 1e-4 * long.abs().max()


def test_rotation_matches_rope_at_the_shifted_position(tiny_cfg):
    """Rotating a key RoPE'd at position p by -shift equals RoPE at p - shift (time pairs only rotate)."""
    from arl2rt.model.layers import RopeTables, apply_rope

    cfg = dataclasses.replace(tiny_cfg, latent_height=2, latent_width=2)
    rope = RopeTables(cfg.head_dim, 1, 1, cfg.rope_theta, cfg.rope_max_positions)
    x = torch.randn(2, 3, cfg.num_heads, cfg.head_dim, dtype=torch.float64)
    at_p = apply_rope(x, *rope.cos_sin(900, 3, torch.float64, torch.device("cpu")))
    at_p_minus = apply_rope(x, *rope.cos_sin(900 - 777, 3, torch.float64, torch.device("cpu")))
    angles = -777 * rope_rebase.time_frequencies(cfg)
    rotated = rope_rebase.rotate_time_pairs(at_p, -1, angles.cos(), angles.sin())
    torch.testing.assert_close(rotated, at_p_minus, rtol=0, atol=1e-12)
    # the state's key axis (dim 2 of [B, H, D_k, D_v]) rotates like a key
    state = torch.einsum("blhk,blhv->bhkv", at_p, x)
    expected = torch.einsum("blhk,blhv->bhkv", at_p_minus, x)
    torch.testing.assert_close(rope_rebase.rotate_time_pairs(state, 2, angles.cos(), angles.sin()), expected)


def test_a_2000_frame_stream_runs_stays_finite_and_keeps_constant_state_memory():
    """Past the 1024-position table with the default policy; every GDN state, cache and text K/V keeps its size."""
    cfg = dataclasses.replace(_micro(), frames_per_block=4, timesteps=(1000.0,), attn_window_frames=8, sink_frames=1)
    context = random_context(cfg, seed=2)
    sizes, biggest = [], 0.0
    with TorchBackend(random_model(cfg, seed=0), StateSpec(cfg)) as be:
        streamer = Streamer(be, seed=0, max_frames=1)
        streamer.start(context)
        for block in streamer.stream(500):
            biggest = max(biggest, block.abs().max().item())
            assert torch.isfinite(block).all()
            sizes.append(streamer.store.nbytes())
            assert streamer.position.rope_frame <= cfg.rope_max_positions
        states = [s.clone() for s in streamer.store.states.values()]
    assert streamer.position.frame == 2000 and streamer.position.rope_frame == 2000 - 1024
    assert all(s == sizes[2] for s in sizes[2:])  # after the rolling window has filled
    assert all(torch.isfinite(s).all() for s in states) and biggest < 1e3


def _micro():
    from micro_configs import micro_config

    return micro_config("micro-rgb", in_channels=3, out_channels=3, frames_per_block=3)
