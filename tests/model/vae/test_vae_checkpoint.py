"""VAE checkpoint errors: whatever is wrong is one Arl2rtError naming it; another model's weights are called that."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from vae_helpers import TINY, random_decoder

from arl2rt.errors import Arl2rtError
from arl2rt.model.config import PRESETS
from arl2rt.model.dit import CausalDiT
from arl2rt.model.vae.checkpoint import convert_state_dict, load_decoder, read_tensors, to_layout
from arl2rt.model.vae.config import VaeConfig
from arl2rt.model.vae.keys import DIFFUSERS, ORIGINAL


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return random_decoder().state_dict()


@pytest.mark.parametrize("layout", [ORIGINAL, DIFFUSERS])
def test_missing_unknown_and_misshaped_keys_in_one_error(weights, layout):
    state = to_layout(weights, TINY, layout)
    names = sorted(state)
    for key in names[:10]:
        del state[key]
    state["decoder.extra.weight"] = torch.ones(1)
    bad = names[-1]
    want = list(state[bad].shape)
    state[bad] = torch.ones(3, 3)
    with pytest.raises(Arl2rtError) as err:
        convert_state_dict(state, TINY, "vae.pth")
    message = str(err.value)
    assert message.startswith(f"VAE checkpoint vae.pth ({layout} layout) does not fit VAE config 'vae-tiny': ")
    assert "10 missing keys (" in message and names[0] in message and ", ... and 2 more)" in message
    assert "1 unknown key (decoder.extra.weight)" in message
    assert f"1 shape mismatch ({bad}: expected {want}, found [3, 3])" in message


def test_another_model_is_not_a_wan_vae():
    dit = CausalDiT(PRESETS["tiny"]).state_dict()
    with pytest.raises(Arl2rtError, match=r"VAE checkpoint dit.safetensors: not a Wan2.1 VAE: 0 of the 108 decoder"):
        convert_state_dict(dit, TINY, "dit.safetensors")


def test_decoder_of_another_width_is_named(weights):
    wider = VaeConfig(name="wider", dim=16, z_dim=4, latents_mean=TINY.latents_mean, latents_std=TINY.latents_std)
    with pytest.raises(
        Arl2rtError, match=r"does not fit VAE config 'wider': \d+ shape mismatches \(decoder.conv1.weig"
    ):
        convert_state_dict(to_layout(weights, TINY, ORIGINAL), wider)


def test_file_errors(weights, tmp_path):
    with pytest.raises(Arl2rtError, match="no such file or directory"):
        read_tensors(tmp_path / "absent.pth")
    (tmp_path / "vae.ckpt").write_bytes(b"x")
    with pytest.raises(Arl2rtError, match=r"unknown file type; expected \.safetensors, \.pth, \.pt, \.bin"):
        read_tensors(tmp_path / "vae.ckpt")
    torch.save({"model": {"conv2.weight": torch.ones(1)}}, tmp_path / "nested.pth")
    with pytest.raises(Arl2rtError, match=r"expected a flat state dict of tensors, found values of type \['dict'\]"):
        read_tensors(tmp_path / "nested.pth")
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(Arl2rtError, match="not a readable safetensors file"):
        read_tensors(tmp_path / "broken.safetensors")
    folder = tmp_path / "vae"
    folder.mkdir()
    save_file(to_layout(weights, TINY, DIFFUSERS), folder / "diffusion_pytorch_model.safetensors")
    assert load_decoder(folder, TINY).conv_in.weight.shape == weights["conv_in.weight"].shape
    torch.save({}, folder / "other.pt")
    with pytest.raises(Arl2rtError, match="expected one weights file in the directory, found diffusion_pytorch_model"):
        read_tensors(folder)
