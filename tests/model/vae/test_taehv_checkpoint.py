"""TAEHV files in: the original keys (``.pth`` or ``.safetensors``), encoder keys skipped, every problem in one error,
and ``load_vae`` telling a TAEHV file from a Wan2.1 VAE and from neither."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from taehv_reference import TINY_TAEHV, random_latents, random_taehv_state, reference_decoder
from vae_helpers import TINY, random_decoder

from arl2rt.errors import Arl2rtError
from arl2rt.model.config import PRESETS
from arl2rt.model.dit import CausalDiT
from arl2rt.model.vae import config as wan_config
from arl2rt.model.vae.checkpoint import to_layout
from arl2rt.model.vae.decoder import WanVaeDecoder
from arl2rt.model.vae.keys import ORIGINAL
from arl2rt.model.vae.kinds import load_vae
from arl2rt.model.vae.stream import decode_step
from arl2rt.model.vae.taehv import config as taehv_config
from arl2rt.model.vae.taehv.checkpoint import convert_state_dict, key_table, load_taehv_decoder
from arl2rt.model.vae.taehv.config import TaehvConfig
from arl2rt.model.vae.taehv.decoder import TaehvDecoder


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_taehv_state(seed=1)


@pytest.fixture
def tiny_defaults(monkeypatch):
    """``load_vae`` reads the real architectures' sizes; the test shrinks both to the tiny ones."""
    monkeypatch.setattr(taehv_config, "TAEW2_1", TINY_TAEHV)
    monkeypatch.setattr(wan_config, "WAN21_VAE", TINY)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_taehv_file_loads_with_its_encoder_keys_skipped(state, tmp_path, suffix, tiny_defaults):
    path = tmp_path / f"taew2_1{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    decoder = load_taehv_decoder(path, TINY_TAEHV)
    theirs = {ours: state[name] for ours, name in key_table(TINY_TAEHV).items()}
    assert all(torch.equal(v, theirs[k]) for k, v in decoder.state_dict().items())
    assert len(state) == len(theirs) + 2  # the encoder's two tensors were there and are not loaded
    found = load_vae(path)  # told by its keys
    assert isinstance(found, TaehvDecoder) and found.config == TINY_TAEHV
    latents = random_latents(2, seed=2)
    with torch.no_grad():
        want = 2 * reference_decoder(state).decode_video(latents) - 1
    assert torch.allclose(decode_step(found, latents)[0], want, rtol=0, atol=1e-5)


def test_load_vae_still_reads_a_wan_vae(tmp_path, tiny_defaults):
    wan = random_decoder(seed=2)
    original = {k: v.contiguous() for k, v in to_layout(wan.state_dict(), TINY, ORIGINAL).items()}
    save_file(original, str(tmp_path / "wan.safetensors"))
    found = load_vae(tmp_path / "wan.safetensors")
    assert isinstance(found, WanVaeDecoder) and torch.equal(found.conv_in.weight, wan.conv_in.weight)


def test_a_file_of_neither_decoder_is_named_so(tmp_path, tiny_defaults):
    save_file(CausalDiT(PRESETS["tiny"]).state_dict(), str(tmp_path / "dit.safetensors"))
    with pytest.raises(
        Arl2rtError,
        match=r"dit.safetensors: neither a Wan2.1 VAE \(0 of its 108 decoder keys, e.g. decoder.conv1.weight\) nor a "
        r"TAEHV decoder \(0 of its 64 decoder keys, e.g. decoder.3.conv.0.weight\); its \d+ keys include ",
    ):
        load_vae(tmp_path / "dit.safetensors")
    with pytest.raises(Arl2rtError, match=r"VAE checkpoint dit: not a TAEHV decoder: 0 of the 64 decoder keys of"):
        convert_state_dict(CausalDiT(PRESETS["tiny"]).state_dict(), TINY_TAEHV, "dit")


def test_missing_unknown_and_misshaped_keys_in_one_error(state):
    broken = dict(state)
    for key in ("decoder.3.conv.0.bias", "decoder.7.conv.weight", "decoder.22.bias"):
        del broken[key]
    broken["decoder.23.weight"] = torch.ones(1)
    broken["decoder.14.weight"] = torch.ones(8, 12, 1, 1)
    with pytest.raises(Arl2rtError) as err:
        convert_state_dict(broken, TINY_TAEHV, "taew2_1.pth")
    assert str(err.value) == (
        "VAE checkpoint taew2_1.pth (TAEHV) does not fit TAEHV config 'taehv-tiny': 3 missing keys "
        "(decoder.3.conv.0.bias, decoder.7.conv.weight, decoder.22.bias); 1 unknown key (decoder.23.weight); "
        "1 shape mismatch (decoder.14.weight: expected [8, 12, 3, 3], found [8, 12, 1, 1])"
    )


def test_a_decoder_of_other_latents_is_named():
    """A TAEHV of 6-channel latents (as taew2_2 is one of 48) against a config of 4: the channels, then the key."""
    other = random_taehv_state(TaehvConfig(name="other", z_dim=6, widths=TINY_TAEHV.widths), seed=3)
    with pytest.raises(
        Arl2rtError,
        match=r"does not fit TAEHV config 'taehv-tiny': it decodes 6-channel latents, the config 4-channel ones; "
        r"1 shape mismatch \(decoder.1.weight: expected \[16, 4, 3, 3\], found \[16, 6, 3, 3\]\)$",
    ):
        convert_state_dict(other, TINY_TAEHV)
