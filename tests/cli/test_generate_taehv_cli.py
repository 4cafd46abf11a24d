"""`arl2rt generate --vae taew2_1.pth`: the file is told a TAEHV decoder by its keys, and the blocks come out as the
decoder decodes the stream's latents afterwards; a file of neither decoder is a one-line error."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from arl2rt.cli.main import app
from arl2rt.model.vae.stream import decode_in_blocks
from arl2rt.model.vae.taehv import config as taehv_config
from arl2rt.model.vae.taehv.checkpoint import load_taehv_decoder
from arl2rt.runtime.video import read_latents
from arl2rt.runtime.video.common import to_rgb_frames
from micro_packages import MICRO
from model.vae.taehv_reference import TINY_TAEHV, random_taehv_state

runner = CliRunner()


@pytest.fixture
def files(tmp_path, monkeypatch):
    """The micro DiT's config and a tiny TAEHV decoder saved as a .pth with the original keys (encoder ones too);
    --vae reads taew2_1's sizes, which the test shrinks to the tiny ones."""
    monkeypatch.setattr(taehv_config, "TAEW2_1", TINY_TAEHV)
    vae = tmp_path / "taew2_1.pth"
    torch.save(random_taehv_state(seed=5), vae)
    config = tmp_path / "micro.json"
    config.write_text(json.dumps(MICRO.to_dict()))
    return str(config), str(vae)


def test_blocks_are_decoded_as_the_decoder_decodes_the_whole_stream(tmp_path, files):
    config, vae = files
    frames_dir, latents = tmp_path / "frames", tmp_path / "z.npz"
    common = ["--config", config, "--vae", vae, "--blocks", "3", "--seed", "4", "--json"]
    res = runner.invoke(app, ["generate", *common, "-o", str(frames_dir)])
    assert res.exit_code == 0, res.output
    f = MICRO.frames_per_block
    assert json.loads(res.stdout)["frames"] == 4 * 3 * f - 3
    res = runner.invoke(app, ["generate", *common, "-o", str(latents)])
    assert res.exit_code == 0, res.output
    z = torch.from_numpy(read_latents(latents))
    with torch.no_grad():
        want = to_rgb_frames(decode_in_blocks(load_taehv_decoder(vae, TINY_TAEHV), z, f))
    got = np.stack([iio.imread(p) for p in sorted(frames_dir.glob("frame_*.png"))])
    assert got.shape == want.shape and want.std() > 10  # real frames, not a constant
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))  # one level at most, where rounding falls otherwise
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_another_model_or_other_latents_are_one_line(tmp_path, files):
    config, vae = files
    other = tmp_path / "dit.pth"
    torch.save({"blocks.0.attn.q.weight": torch.ones(2, 2)}, other)
    out = tmp_path / "o.mp4"
    res = runner.invoke(app, ["generate", "--config", config, "--vae", str(other), "-o", str(out), "--blocks", "1"])
    assert res.exit_code == 1 and "neither a Wan2.1 VAE (0 of its 108 decoder keys" in res.output
    assert "nor a TAEHV decoder (0 of its 64 decoder keys" in res.output
    rgb = tmp_path / "rgb.json"
    rgb.write_text(json.dumps({**MICRO.to_dict(), "out_channels": 3, "in_channels": 3}))
    res = runner.invoke(app, ["generate", "--config", str(rgb), "--vae", vae, "-o", str(out), "--blocks", "1"])
    assert res.exit_code == 1 and "the VAE decoder 'taehv-tiny' decodes 4-channel latents; config" in res.output
    assert "Traceback" not in res.output and not out.exists()
