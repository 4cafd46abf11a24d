"""The streaming decode step: frame counts, caches as explicit state, the two fixed-signature forms, input errors."""

from __future__ import annotations

import pytest
import torch
from vae_helpers import TINY, peak_relative, random_decoder, random_latents

from arl2rt.errors import Arl2rtError
from arl2rt.model.vae.caches import cache_bytes, cache_specs
from arl2rt.model.vae.config import WAN21_VAE, VaeConfig
from arl2rt.model.vae.decoder import WanVaeDecoder
from arl2rt.model.vae.stream import (
    FirstBlockDecode,
    SteadyBlockDecode,
    VaeStream,
    decode_in_blocks,
    decode_step,
)


@pytest.fixture(scope="module")
def decoder() -> WanVaeDecoder:
    return random_decoder()


def test_frames_per_block_and_present_caches(decoder):
    stream = VaeStream(decoder)
    assert stream.decode(random_latents(3, batch=2)).shape == (2, 3, 9, 32, 48)  # first block: 4T - 3
    assert stream.decode(random_latents(1, batch=2, seed=1)).shape == (2, 3, 4, 32, 48)
    assert stream.decode(random_latents(2, batch=2, seed=2)).shape == (2, 3, 8, 32, 48)
    specs = cache_specs(TINY)
    assert len(stream.caches) == len(specs) == 32
    assert all(cache.shape == s.shape(2, 4, 6) for cache, s in zip(stream.caches, specs))
    assert TINY.frames_out(3, first=True) == 9 and TINY.frames_out(3, first=False) == 12


def test_any_block_split_gives_the_same_video(decoder):
    latents = random_latents(7, seed=5)
    whole = decode_in_blocks(decoder, latents, 7)
    for block in (1, 2, 3):
        assert peak_relative(decode_in_blocks(decoder, latents, block), whole) <= 1e-5


def test_the_first_block_is_not_a_zero_cache_block(decoder):
    """Zero caches fed to the steady-state step give 4 frames and other values than the official first block."""
    latents = random_latents(1, seed=7)
    first, present = decode_step(decoder, latents)
    zeros = [torch.zeros_like(t) for t in present]
    seeded, _ = decode_step(decoder, latents, zeros)
    assert first.shape[2] == 1 and seeded.shape[2] == 4
    assert peak_relative(seeded[:, :, -1:], first) > 1e-3


def test_fixed_signature_forms_equal_the_streaming_step(decoder):
    first_block, next_block = random_latents(3, batch=2, seed=3), random_latents(3, batch=2, seed=4)
    frames, present = decode_step(decoder, first_block)
    first = FirstBlockDecode(decoder)
    out = first(first_block)
    assert len(out) == 1 + len(present) == 1 + len(decoder.cache_specs())
    assert all(torch.equal(a, b) for a, b in zip(out, (frames, *present)))

    past = present
    frames, present = decode_step(decoder, next_block, past)
    steady = SteadyBlockDecode(decoder)
    out = steady(next_block, *past)
    assert len(out) == 1 + len(present)
    assert all(torch.equal(a, b) for a, b in zip(out, (frames, *present)))


def test_both_forms_trace_to_plain_tensor_graphs(decoder):
    latents = random_latents(2, seed=6)
    _, present = decode_step(decoder, latents)
    cases = ((FirstBlockDecode(decoder), (latents,)), (SteadyBlockDecode(decoder), (latents, *present)))
    for module, args in cases:
        program = torch.export.export(module, args)
        assert all(torch.equal(a, b) for a, b in zip(program.module()(*args), module(*args)))


def test_bfloat16_caches_and_fp32_frames(decoder):
    half = random_decoder().to(torch.bfloat16)
    frames, present = decode_step(half, random_latents(2, seed=8))
    assert frames.dtype == torch.float32 and torch.isfinite(frames).all()
    assert {t.dtype for t in present} == {torch.bfloat16}
    full, _ = decode_step(decoder, random_latents(2, seed=8))
    assert peak_relative(frames, full) < 0.1


def test_wan_caches_at_480x832():
    specs = cache_specs(WAN21_VAE, torch.bfloat16)
    shapes = [s.shape(1, 60, 104) for s in specs]
    assert shapes == (
        [(1, 16, 2, 60, 104)]
        + [(1, 384, 2, 60, 104)] * 11
        + [(1, 192, 2, 120, 208)]
        + [(1, 384, 2, 120, 208)] * 6
        + [(1, 192, 2, 240, 416)] * 6
        + [(1, 96, 2, 480, 832)] * 7
    )
    assert specs[12].module == "levels.1.res.0.conv1" and specs[-1].module == "conv_out"
    assert cache_bytes(WAN21_VAE, 1, 60, 104, torch.bfloat16) == 2 * 944_286_720  # 1.76 GiB per stream
    assert cache_bytes(WAN21_VAE, 2, 60, 104, "float32") == 8 * 944_286_720


def test_wan_decoder_size():
    with torch.device("meta"):
        decoder = WanVaeDecoder(WAN21_VAE)
    assert sum(p.numel() for p in decoder.parameters()) == 73_295_603  # decoder (73.3 M) plus the post-quant conv
    assert [type(m).__name__ for m in decoder.modules()].count("CausalConv3d") == len(cache_specs(WAN21_VAE))


def test_latent_and_cache_errors(decoder):
    latents = random_latents(2, seed=9)
    _, past = decode_step(decoder, latents)
    with pytest.raises(Arl2rtError, match=r"tensor latents: expected a float tensor \[batch, 4, frames >= 1"):
        decode_step(decoder, torch.randn(1, 16, 2, 4, 6))
    with pytest.raises(Arl2rtError, match=r"found torch.float32 \[1, 4, 0, 4, 6\]"):
        decode_step(decoder, latents[:, :, :0])
    with pytest.raises(Arl2rtError, match="latent size 4x8 does not match the stream's caches, made for 4x6"):
        decode_step(decoder, random_latents(1, hw=(4, 8)), past)
    with pytest.raises(Arl2rtError, match=r"expected 32 \(one per time-mixing layer, in step order\), found 31"):
        decode_step(decoder, latents, past[:-1])
    with pytest.raises(
        Arl2rtError, match=r"cache 0 \(conv_in\): expected float32 \[2, 4, 2, 4, 6\], found torch.float32 \[1,"
    ):
        decode_step(decoder, random_latents(1, batch=2), past)
    with pytest.raises(Arl2rtError, match=r"cache 5 \(levels.0.res.0.conv1\): expected float32"):
        decode_step(decoder, latents, [*past[:5], past[5].double(), *past[6:]])


def test_config_errors():
    with pytest.raises(Arl2rtError, match="temporal_upsample needs one flag per up-sampling level"):
        VaeConfig(temporal_upsample=(True, False))
    with pytest.raises(Arl2rtError, match="latents_mean needs z_dim = 4 values, got 16"):
        VaeConfig(z_dim=4)
