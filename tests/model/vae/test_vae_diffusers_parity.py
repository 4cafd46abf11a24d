"""Our streaming decoder against diffusers' ``AutoencoderKLWan`` sharing its random weights, through both key maps."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from vae_helpers import TINY, peak_relative, random_latents, randomise_norms

from arl2rt.model.vae.checkpoint import convert_state_dict, load_decoder, to_layout
from arl2rt.model.vae.config import WAN21_VAE
from arl2rt.model.vae.decoder import WanVaeDecoder
from arl2rt.model.vae.keys import DIFFUSERS, ORIGINAL, key_table
from arl2rt.model.vae.stream import decode_in_blocks

diffusers = pytest.importorskip(
    "diffusers", reason="the reference is diffusers' AutoencoderKLWan (pip install diffusers)"
)
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers  # noqa: E402

LENGTHS = (1, 2, 4, 7)
TOLERANCE = 1e-5  # fp32, peak-relative


def _diffusers_vae(config, **kwargs):
    return diffusers.AutoencoderKLWan(
        base_dim=config.dim,
        z_dim=config.z_dim,
        dim_mult=list(config.dim_mult),
        num_res_blocks=config.num_res_blocks,
        temperal_downsample=list(reversed(config.temporal_upsample)),
        latents_mean=list(config.latents_mean),
        latents_std=list(config.latents_std),
        **kwargs,
    )


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    vae = _diffusers_vae(TINY).eval().requires_grad_(False)
    vae.load_state_dict(randomise_norms(vae.state_dict()))
    return vae


@pytest.fixture(scope="module")
def reference_frames(reference):
    """diffusers decodes un-normalised latents (its pipelines un-normalise); ours takes the DiT's latents."""
    mean = torch.tensor(TINY.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(TINY.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        return {n: reference.decode(random_latents(n, seed=n) * std + mean).sample for n in LENGTHS}


@pytest.fixture(scope="module")
def ours(reference):
    decoder = WanVaeDecoder(TINY)
    decoder.load_state_dict(convert_state_dict(reference.state_dict(), TINY).state_dict)
    return decoder.eval().requires_grad_(False)


@pytest.mark.parametrize("block", [1, 3], ids=lambda b: f"block{b}")
@pytest.mark.parametrize("frames", LENGTHS, ids=lambda n: f"T{n}")
def test_streaming_decode_equals_the_whole_clip_decode(ours, reference_frames, frames, block):
    want = reference_frames[frames]
    got = decode_in_blocks(ours, random_latents(frames, seed=frames), block)
    assert got.shape == want.shape == (1, 3, 4 * frames - 3, 32, 48)
    assert peak_relative(got, want) <= TOLERANCE
    assert (want.abs() < 1).float().mean() > 0.99  # the clamp to [-1, 1] leaves the comparison meaningful


def test_both_key_layouts_load_alike(reference, ours, tmp_path):
    full = reference.state_dict()  # encoder keys included: they are skipped
    original = to_layout(ours.state_dict(), TINY, ORIGINAL)
    # our inverse map, run forward through diffusers' own converter, gives back diffusers' decoder keys one to one
    back = convert_wan_vae_to_diffusers(original)
    assert set(back) == set(key_table(TINY).names(DIFFUSERS))
    assert all(torch.equal(back[k], full[k]) for k in back)
    encoder_side = {k: v for k, v in full.items() if k.startswith(("encoder.", "quant_conv."))}
    original |= {"encoder.conv1.weight": encoder_side["encoder.conv_in.weight"], "conv1.bias": full["quant_conv.bias"]}

    save_file(full, tmp_path / "diffusion_pytorch_model.safetensors")
    torch.save(original, tmp_path / "Wan2.1_VAE.pth")
    from_diffusers = load_decoder(tmp_path / "diffusion_pytorch_model.safetensors", TINY).state_dict()
    from_original = load_decoder(tmp_path / "Wan2.1_VAE.pth", TINY).state_dict()
    assert from_diffusers.keys() == from_original.keys() == ours.state_dict().keys()
    assert all(torch.equal(from_diffusers[k], from_original[k]) for k in from_diffusers)
    assert convert_state_dict(original, TINY).ignored == 2
    assert convert_state_dict(full, TINY).ignored == len(encoder_side)


def test_wan_size_key_maps_agree_with_diffusers():
    """At Wan2.1's real widths (on the meta device): diffusers' keys and shapes fit ours, and the maps are inverse."""
    with torch.device("meta"):
        full = _diffusers_vae(WAN21_VAE).state_dict()
    checkpoint = convert_state_dict(full, WAN21_VAE)
    assert checkpoint.layout == DIFFUSERS and len(checkpoint.state_dict) == 108
    original = to_layout(checkpoint.state_dict, WAN21_VAE, ORIGINAL)
    assert convert_wan_vae_to_diffusers(original).keys() == {
        k for k in full if k.startswith(("decoder.", "post_quant"))
    }
