"""`arl2rt generate --vae`: a latent-space model's blocks are decoded to video as they are made, exactly as the
decoder decodes the stream's latents afterwards; misuse is a one-line error."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from arl2rt.cli.main import app
from arl2rt.model.vae import config as vae_config
from arl2rt.model.vae.checkpoint import to_layout
from arl2rt.model.vae.keys import ORIGINAL
from arl2rt.model.vae.stream import decode_in_blocks
from arl2rt.runtime.video import read_latents
from arl2rt.runtime.video.common import to_rgb_frames
from micro_packages import MICRO
from model.vae.vae_helpers import TINY, random_decoder

runner = CliRunner()


@pytest.fixture
def files(tmp_path, monkeypatch):
    """The micro DiT's config and the tiny Wan-shaped decoder, saved in Wan2.1_VAE.pth's key layout; --vae reads
    the Wan2.1 architecture, which the test shrinks to the tiny one."""
    monkeypatch.setattr(vae_config, "WAN21_VAE", TINY)
    decoder = random_decoder(seed=3)
    vae = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in to_layout(decoder.state_dict(), TINY, ORIGINAL).items()}, str(vae))
    config = tmp_path / "micro.json"
    config.write_text(json.dumps(MICRO.to_dict()))
    return str(config), str(vae), decoder


def test_blocks_are_decoded_as_the_decoder_decodes_the_whole_stream(tmp_path, files):
    config, vae, decoder = files
    frames_dir, latents = tmp_path / "frames", tmp_path / "z.npz"
    common = ["--config", config, "--vae", vae, "--blocks", "3", "--seed", "4", "--json"]
    res = runner.invoke(app, ["generate", *common, "-o", str(frames_dir)])
    assert res.exit_code == 0, res.output
    f = MICRO.frames_per_block
    assert json.loads(res.stdout)["frames"] == 4 * 3 * f - 3  # the first latent frame gives one video frame
    res = runner.invoke(app, ["generate", *common, "-o", str(latents)])  # .npz keeps the latents
    assert res.exit_code == 0, res.output
    z = torch.from_numpy(read_latents(latents))
    with torch.no_grad():
        want = to_rgb_frames(decode_in_blocks(decoder, z, f))
    got = np.stack([iio.imread(p) for p in sorted(frames_dir.glob("frame_*.png"))])
    # the same decode up to float rounding (generate runs one CPU thread, this process may run more): a pixel may sit
    # on the other side of a rounding boundary, by one level at most
    assert got.shape == want.shape and want.std() > 10  # real frames, not a constant
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_vae_misuse_is_one_line(tmp_path, files):
    config, vae, _ = files
    out = tmp_path / "o.mp4"
    res = runner.invoke(app, ["generate", "--vae", vae, "-o", str(out)])  # the embedded model: no --config
    assert res.exit_code == 1 and "--vae: a Wan2.1 VAE decoder goes with a PyTorch model" in res.output
    res = runner.invoke(app, ["generate", "--config", config, "-o", str(out), "--blocks", "1"])  # latents to mp4
    assert res.exit_code == 1 and "decode them with --vae" in res.output
    rgb = tmp_path / "rgb.json"
    rgb.write_text(json.dumps({**MICRO.to_dict(), "out_channels": 3, "in_channels": 3}))
    res = runner.invoke(app, ["generate", "--config", str(rgb), "--vae", vae, "-o", str(out), "--blocks", "1"])
    assert res.exit_code == 1 and "decodes 4-channel latents" in res.output
    assert "Traceback" not in res.output and not out.exists()
