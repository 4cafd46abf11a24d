"""The TAEHV decoder streamed block by block equals the published whole-clip decode; its memories are the state."""

from __future__ import annotations

import pytest
import torch
from taehv_reference import TINY_TAEHV, random_latents, random_taehv_state, reference_decoder
from vae_helpers import peak_relative

from arl2rt.errors import Arl2rtError
from arl2rt.model.vae.kinds import config_from_dict, decoder_cache_specs
from arl2rt.model.vae.stream import FirstBlockDecode, SteadyBlockDecode, VaeStream, decode_in_blocks, decode_step
from arl2rt.model.vae.taehv.checkpoint import decoder_from_tensors, key_table
from arl2rt.model.vae.taehv.config import TAEW2_1, TaehvConfig
from arl2rt.model.vae.taehv.decoder import MemoryBlock, TaehvDecoder
from arl2rt.model.vae.taehv.memory import memory_bytes, memory_specs


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_taehv_state(seed=0)


@pytest.fixture(scope="module")
def decoder(state) -> TaehvDecoder:
    return decoder_from_tensors(state, TINY_TAEHV, "random")


@pytest.mark.parametrize("frames", [1, 2, 4, 7])
@pytest.mark.parametrize("block", [1, 3])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_streaming_equals_the_whole_clip_decode(state, frames, block, batch, dtype):
    """Blocks of 1 or 3 latent frames, fed their own memories, give the reference's whole-clip video (in [-1, 1])."""
    latents = random_latents(frames, batch=batch, seed=10 + frames).to(dtype)
    with torch.no_grad():
        want = 2 * reference_decoder(state).to(dtype).decode_video(latents) - 1
    got = decode_in_blocks(decoder_from_tensors(state, TINY_TAEHV, "random", dtype=dtype), latents, block)
    assert got.dtype == dtype and got.shape == want.shape == (batch, 3, 4 * frames - 3, 32, 48)
    assert (want.abs() < 1).float().mean() > 0.8  # real frames, mostly inside the clamp
    assert peak_relative(got, want) <= (1e-5 if dtype == torch.float32 else 1e-12)


def test_memories_are_each_blocks_last_input_frame(decoder):
    """Every block's present memories fit their specs, and a stream fed them continues as one whole decode would."""
    stream = VaeStream(decoder)
    assert stream.decode(random_latents(3, batch=2, seed=1)).shape == (2, 3, 9, 32, 48)
    specs = decoder.cache_specs()
    assert len(stream.caches) == len(specs) == 9
    assert [tuple(t.shape) for t in stream.caches] == [s.shape(2, 4, 6) for s in specs]
    assert stream.decode(random_latents(1, batch=2, seed=2)).shape == (2, 3, 4, 32, 48)
    assert TINY_TAEHV.frames_out(3, first=True) == 9 and TINY_TAEHV.frames_out(3, first=False) == 12


def test_absent_memories_are_zero_memories_with_the_first_frames_dropped(decoder):
    """Unlike the Wan2.1 VAE's first block, TAEHV's is the steady step on zeros, less its first 3 frames."""
    latents = random_latents(2, seed=3)
    first, present = decode_step(decoder, latents)
    zeros, present_zeros = decode_step(decoder, latents, [torch.zeros_like(t) for t in present])
    assert first.shape[2] == 5 and zeros.shape[2] == 8
    assert torch.equal(zeros[:, :, 3:], first)
    assert all(torch.equal(a, b) for a, b in zip(present, present_zeros))


def test_a_memory_is_a_copy_of_one_frame(decoder):
    """The stream holds only the last frame: a present memory owns its storage (no view of the block's activations)."""
    _, present = decode_step(decoder, random_latents(3, seed=4))
    for t, spec in zip(present, decoder.cache_specs()):
        assert t.untyped_storage().nbytes() == spec.nbytes(1, 4, 6)


def test_fixed_signature_forms_equal_the_streaming_step_and_trace(decoder):
    first_block, next_block = random_latents(3, batch=2, seed=5), random_latents(3, batch=2, seed=6)
    frames, present = decode_step(decoder, first_block)
    assert all(torch.equal(a, b) for a, b in zip(FirstBlockDecode(decoder)(first_block), (frames, *present)))
    frames, later = decode_step(decoder, next_block, present)
    steady = SteadyBlockDecode(decoder)
    assert all(torch.equal(a, b) for a, b in zip(steady(next_block, *present), (frames, *later)))
    program = torch.export.export(steady, (next_block, *present))
    assert all(torch.equal(a, b) for a, b in zip(program.module()(next_block, *present), (frames, *later)))


def test_half_precision_memories_and_fp32_frames(state, decoder):
    half = decoder_from_tensors(state, TINY_TAEHV, "random", dtype=torch.bfloat16)
    frames, present = decode_step(half, random_latents(2, seed=7))
    assert frames.dtype == torch.float32 and {t.dtype for t in present} == {torch.bfloat16}
    full, _ = decode_step(decoder, random_latents(2, seed=7))
    assert peak_relative(frames, full) < 0.1


def test_taew2_1_memories_at_480x832():
    """Nine memories, 64 MiB per stream in fp16/bf16 (the Wan2.1 VAE's caches: 1.76 GiB in bf16)."""
    specs = memory_specs(TAEW2_1, torch.float16)
    assert [s.shape(1, 60, 104) for s in specs] == (
        [(1, 256, 1, 60, 104)] * 3 + [(1, 128, 1, 120, 208)] * 3 + [(1, 64, 1, 240, 416)] * 3
    )
    assert [s.module for s in specs[::3]] == ["levels.0.mem.0", "levels.1.mem.0", "levels.2.mem.0"]
    assert memory_bytes(TAEW2_1, 1, 60, 104, torch.float16) == 67_092_480 == 63.984375 * 2**20
    assert memory_bytes(TAEW2_1, 1, 60, 104, "bfloat16") == 67_092_480
    assert memory_bytes(TAEW2_1, 2, 60, 104, "float32") == 4 * 67_092_480
    assert decoder_cache_specs(TAEW2_1, "float16") == specs


def test_taew2_1_decoder_size():
    with torch.device("meta"):
        decoder = TaehvDecoder(TAEW2_1)
    assert sum(p.numel() for p in decoder.parameters()) == 9_844_611
    assert len(key_table(TAEW2_1)) == len(decoder.state_dict()) == 64
    assert sum(isinstance(m, MemoryBlock) for m in decoder.modules()) == len(memory_specs(TAEW2_1))
    assert TAEW2_1.spatial_factor == 8 and TAEW2_1.temporal_factor == 4


def test_latent_and_memory_errors(decoder):
    latents = random_latents(2, seed=8)
    _, past = decode_step(decoder, latents)
    with pytest.raises(Arl2rtError, match=r"tensor latents: expected a float tensor \[batch, 4, frames >= 1"):
        decode_step(decoder, random_latents(2, z_dim=16))
    with pytest.raises(Arl2rtError, match=r"expected 9 \(one per time-mixing layer, in step order\), found 8"):
        decode_step(decoder, latents, past[:-1])
    with pytest.raises(
        Arl2rtError, match=r"cache 4 \(levels.1.mem.1\): expected float32 \[1, 12, 1, 8, 12\], found torch.float64"
    ):
        decode_step(decoder, latents, [*past[:4], past[4].double(), *past[5:]])


def test_config_round_trip_and_errors():
    assert config_from_dict(TINY_TAEHV.to_dict()) == TINY_TAEHV and TAEW2_1.to_dict()["kind"] == "taehv"
    with pytest.raises(Arl2rtError, match=r"widths must be 4 positive channel counts, got \[8, 8\]"):
        TaehvConfig(widths=(8, 8))
    with pytest.raises(Arl2rtError, match=r"m \(vae\): kind: expected 'taehv', found 'x'; z_dim: expected int"):
        config_from_dict({**TAEW2_1.to_dict(), "kind": "x", "z_dim": "16"}, "m (vae)")
    with pytest.raises(Arl2rtError, match=r"unknown TAEHV config fields \['dim'\], missing \['widths'\]"):
        config_from_dict({"kind": "taehv", "name": "t", "z_dim": 16, "dim": 8})
