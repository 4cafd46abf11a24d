"""The full-clip forward equals the streamed steps: one call over many blocks == the runtime block by block."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import StateSpec
from arl2rt.model.random import random_context, random_model
from arl2rt.model.sequence import clip_forward, teacher_forcing_forward
from arl2rt.runtime.state_store import StateStore
from arl2rt.runtime.torch_backend import TorchBackend

OFFSET = 5
WINDOWS = {
    "global-cache": {},
    # fpb 3: the cache keeps 3 sink frames + the 3 most recent ones, so from block 3 on frames drop out of view
    "window9-sink3": {"attn_window_frames": 9, "sink_frames": 3},
    "window6-no-sink": {"attn_window_frames": 6},
}


def _setup(tiny_cfg, window: dict, blocks: int, seed: int = 0):
    cfg = dataclasses.replace(tiny_cfg, latent_height=4, latent_width=4, **window)
    model = random_model(cfg, seed=seed).double()
    gen = torch.Generator().manual_seed(seed + 1)
    shape = (2, cfg.in_channels, blocks * cfg.frames_per_block, cfg.latent_height, cfg.latent_width)
    clip = torch.randn(shape, generator=gen, dtype=torch.float64)
    context = random_context(cfg, seed=seed + 2, batch=2).double()
    return cfg, model, clip, context, gen


class _Runtime:
    """The runtime's own pieces, float64: TorchBackend steps and a StateStore with the config's KV cache policy."""

    def __init__(self, model, context):
        self.cfg = model.cfg
        spec = StateSpec(self.cfg, "float64")
        self.backend = TorchBackend(model, spec).activate()
        self.store = StateStore(spec, context.shape[0], "cpu", max_frames=4)
        self.store.set_context(self.backend.run("encode_context", {"context": context}))

    def feeds(self, block: torch.Tensor, t: torch.Tensor, frame: int) -> dict:
        offset = torch.tensor(frame, dtype=torch.int64)
        return {"latents": block, "timestep": t, "frame_offset": offset, **self.store.feeds()}

    def velocity(self, block, t, frame) -> torch.Tensor:
        return self.backend.run("denoise_step", self.feeds(block, t, frame))["velocity"]

    def commit(self, block, frame) -> None:
        t = torch.zeros(block.shape[0], self.cfg.frames_per_block, dtype=torch.float64)
        self.store.commit(self.backend.run("commit_step", self.feeds(block, t, frame)))


@pytest.mark.parametrize("window", list(WINDOWS), ids=list(WINDOWS))
def test_streaming_block_by_block_equals_one_call_over_the_same_blocks(tiny_cfg, window):
    blocks = 5
    cfg, model, clip, context, _ = _setup(tiny_cfg, WINDOWS[window], blocks)
    fpb = cfg.frames_per_block
    zeros = torch.zeros(clip.shape[0], clip.shape[2], dtype=torch.float64)
    with torch.no_grad():
        whole = clip_forward(model, clip, zeros, model.encode_context(context), frame_offset=OFFSET)
    rt = _Runtime(model, context)
    for j in range(blocks):
        block = clip[:, :, j * fpb : (j + 1) * fpb]
        streamed = rt.velocity(block, zeros[:, :fpb], OFFSET + j * fpb)
        torch.testing.assert_close(whole[:, :, j * fpb : (j + 1) * fpb], streamed, rtol=0, atol=1e-10)
        rt.commit(block, OFFSET + j * fpb)
    assert rt.store.past_frames == (blocks * fpb if not WINDOWS[window] else cfg.attn_window_frames - fpb)


@pytest.mark.parametrize("window", list(WINDOWS), ids=list(WINDOWS))
def test_teacher_forcing_noisy_block_equals_a_step_on_states_from_clean_blocks_before_it(tiny_cfg, window):
    blocks = 4
    cfg, model, clean, context, gen = _setup(tiny_cfg, WINDOWS[window], blocks, seed=3)
    fpb = cfg.frames_per_block
    noisy = torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    t_noisy = torch.rand(clean.shape[0], clean.shape[2], generator=gen, dtype=torch.float64) * 1000
    with torch.no_grad():
        tf = teacher_forcing_forward(model, clean, noisy, t_noisy, model.encode_context(context), frame_offset=OFFSET)
    rt = _Runtime(model, context)
    for i in range(blocks):
        sl = slice(i * fpb, (i + 1) * fpb)
        streamed = rt.velocity(noisy[:, :, sl], t_noisy[:, sl], OFFSET + i * fpb)
        torch.testing.assert_close(tf[:, :, sl], streamed, rtol=0, atol=1e-10)
        rt.commit(clean[:, :, sl], OFFSET + i * fpb)


def test_teacher_forcing_noisy_half_never_writes_state_or_reaches_clean_half(tiny_cfg):
    cfg, model, clean, context, gen = _setup(tiny_cfg, {}, 3, seed=4)
    ctx = model.encode_context(context)
    t = torch.rand(clean.shape[0], clean.shape[2], generator=gen, dtype=torch.float64) * 1000
    noisy = torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    other = noisy.clone()
    other[:, :, : cfg.frames_per_block] = torch.randn(other[:, :, :3].shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        a = teacher_forcing_forward(model, clean, noisy, t, ctx)
        b = teacher_forcing_forward(model, clean, other, t, ctx)
    # changing noisy block 0 changes only noisy block 0's output: later noisy blocks read clean state only
    assert not torch.allclose(a[:, :, :3], b[:, :, :3])
    torch.testing.assert_close(a[:, :, 3:], b[:, :, 3:], rtol=0, atol=0)


def test_clip_forward_is_differentiable_through_the_state_write(tiny_cfg):
    cfg, model, clip, context, gen = _setup(tiny_cfg, {}, 2, seed=5)
    t = torch.rand(clip.shape[0], clip.shape[2], generator=gen, dtype=torch.float64) * 1000
    clip_forward(model, clip, t, model.encode_context(context)).square().mean().backward()
    attn = model.blocks[cfg.hybrid_layers[0]].self_attn
    # the k LoRA, A_log and b_proj act only through the GDN write, which block 1 reads
    for p in (attn.lora_k_B, attn.A_log, attn.b_proj.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0


def test_clip_forward_names_bad_inputs(tiny_cfg):
    cfg, model, clip, context, _ = _setup(tiny_cfg, {}, 2)
    ctx = model.encode_context(context)
    t = torch.zeros(clip.shape[0], clip.shape[2], dtype=torch.float64)
    with pytest.raises(Arl2rtError, match="multiple of 3 frames, found 4"):
        clip_forward(model, clip[:, :, :4], t[:, :4], ctx)
    with pytest.raises(Arl2rtError, match="expected timesteps"):
        clip_forward(model, clip, t[:, :3], ctx)
    with pytest.raises(Arl2rtError, match="RoPE table"):
        clip_forward(model, clip, t, ctx, frame_offset=cfg.rope_max_positions - 3)
