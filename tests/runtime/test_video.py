"""Streaming writers: every format reads back what was written, appends after a snapshot, and survives kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from arl2rt.errors import Arl2rtError
from arl2rt.runtime.video import (
    check_video_output,
    open_writer,
    output_format,
    read_latents,
    to_rgb_frames,
)

H, W, F = 32, 48, 3  # even sizes (odd ones are padded for yuv420p: tested separately)


def _blocks(n: int, h: int = H, w: int = W, seed: int = 0) -> list[torch.Tensor]:
    """Smooth moving gradients in [-1, 1] (lossy codecs keep them close), distinct per frame."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    out = []
    for b in range(n):
        frames = []
        for f in range(F):
            t = (b * F + f) / 5
            phase = torch.rand(3, generator=g) * 0.2
            frames.append(torch.stack([torch.sin(2 * xx + t + phase[0]), torch.cos(2 * yy - t), xx * yy + phase[2]]))
        out.append(torch.stack(frames, dim=1)[None].clamp(-1, 1))  # [1, 3, F, h, w]
    return out


def _decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _read(path: Path) -> np.ndarray:
    """Frames [N, H, W, 3] uint8 (video formats) or latents [B, C, F, H, W] (npz)."""
    fmt = output_format(path)
    if fmt == "npz":
        return read_latents(path)
    if fmt == "png":
        return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(path.glob("frame_*.png"))])
    return np.stack(_decode(path))


def _expected(fmt: str, blocks: list[torch.Tensor]) -> np.ndarray:
    whole = torch.cat(blocks, dim=2)
    return whole.numpy() if fmt == "npz" else to_rgb_frames(whole)


def _check(fmt: str, got: np.ndarray, blocks: list[torch.Tensor]) -> None:
    want = _expected(fmt, blocks)
    assert got.shape == want.shape
    if fmt in ("npz", "png"):
        np.testing.assert_array_equal(got, want)  # lossless
    else:  # H.264 / a 256-colour palette: close, and far from any other frame
        err = np.abs(got.astype(int) - want.astype(int)).mean(axis=(1, 2, 3))
        assert err.max() < 6, err
        shifted = np.abs(got[1:].astype(int) - want[:-1].astype(int)).mean()
        assert shifted > 2 * err.max()


NAMES = {"mp4": "out.mp4", "gif": "out.gif", "png": "frames", "npz": "out.npz"}


@pytest.mark.parametrize("fmt", list(NAMES))
def test_each_format_reads_back_every_frame(tmp_path, fmt):
    blocks = _blocks(3)
    path = tmp_path / NAMES[fmt]
    with open_writer(path, fps=16) as w:
        for b in blocks:
            w.write(b)
        assert w.state()["frames"] == 3 * F
    _check(fmt, _read(path), blocks)


@pytest.mark.parametrize("fmt", list(NAMES))
def test_resume_cuts_back_to_the_snapshot_and_appends(tmp_path, fmt):
    """A killed run wrote one block past its last snapshot; resuming drops it and continues from the snapshot."""
    blocks, stray = _blocks(4), _blocks(1, seed=9)[0]
    path = tmp_path / NAMES[fmt]
    with open_writer(path) as w:
        for b in blocks[:2]:
            w.write(b)
        snapshot = w.state()
        w.write(stray)  # made after the snapshot: the resumed run makes this block again
    with open_writer(path, resume=snapshot, fps=25) as w:  # appends at the output's own frame rate
        assert w.fps == 16
        _check(fmt, _read(path), blocks[:2])  # valid right after the cut, before any new block
        for b in blocks[2:]:
            w.write(b)
        assert w.state()["frames"] == 4 * F
    _check(fmt, _read(path), blocks)


def test_mp4_is_a_standard_fragmented_file_with_continuous_timestamps(tmp_path):
    path = tmp_path / "odd.mp4"
    blocks = _blocks(3, h=9, w=13)  # odd size: padded to 10 x 14 for yuv420p
    with open_writer(path, fps=16) as w:
        for b in blocks:
            w.write(b)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = list(c.decode(stream))
        assert stream.average_rate == 16 and (stream.width, stream.height) == (14, 10)
        pts = [f.pts * f.time_base for f in frames]
    assert pts == [i / 16 for i in range(3 * F)]
    data = path.read_bytes()
    assert data[4:8] == b"ftyp" and data.count(b"moof") == 3 and b"mfra" not in data


def test_gif_loops_and_holds_the_frame_rate(tmp_path):
    path = tmp_path / "out.gif"
    with open_writer(path, fps=10) as w:
        w.write(_blocks(1)[0])
    with Image.open(path) as im:
        assert im.n_frames == F and im.info["loop"] == 0 and im.info["duration"] == 100


def test_a_latent_model_writes_video_only_through_a_decoder():
    with pytest.raises(Arl2rtError, match=r"16-channel latents.*decode them with --vae.*out\.npz"):
        check_video_output("mp4", 16, "wan2.1-t2v-1.3b")
    check_video_output("npz", 16, "wan2.1-t2v-1.3b")
    check_video_output("mp4", 16, "wan2.1-t2v-1.3b", decodes=True)
    with pytest.raises(Arl2rtError, match=r"expected latents \[1, 3, F, H, W\], found \[2, 3, 3, 4, 4\]"):
        to_rgb_frames(torch.zeros(2, 3, 3, 4, 4))


def test_outputs_are_not_clobbered_and_bad_paths_are_named(tmp_path):
    existing = tmp_path / "mine.mp4"
    existing.write_bytes(b"user data")
    with pytest.raises(Arl2rtError, match="already exists; pass --overwrite"):
        open_writer(existing)
    assert existing.read_bytes() == b"user data"
    with pytest.raises(Arl2rtError, match=r"unknown format '\.avi'"):
        open_writer(tmp_path / "x.avi")
    d = tmp_path / "frames"
    with open_writer(d) as w:
        w.write(_blocks(1)[0])
    with pytest.raises(Arl2rtError, match="already holds 3 frame_"):
        open_writer(d)
    with pytest.raises(Arl2rtError, match="recorded 999 bytes"):
        open_writer(
            existing, resume={"format": "mp4", "frames": 3, "bytes": 999, "fragments": 1, "fps": 16, "sha256": "0"}
        )
    with pytest.raises(Arl2rtError, match="the session wrote gif"):
        open_writer(existing, resume={"format": "gif", "frames": 3, "bytes": 9, "fps": 16})


_KILLED = textwrap.dedent(
    """
    import sys, time, torch
    from pathlib import Path
    from arl2rt.runtime.video import open_writer
    torch.manual_seed(0)
    with open_writer(Path(sys.argv[1])) as w:
        for i in range(1000):
            w.write(torch.rand(1, 3, 3, 32, 48) * 2 - 1)
            print(i + 1, flush=True)
            time.sleep(0.05)
    """
)


@pytest.mark.parametrize("fmt", list(NAMES))
def test_kill_9_leaves_a_readable_file_with_every_finished_frame(tmp_path, fmt):
    path = tmp_path / NAMES[fmt]
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if int(line) == 3:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    got = _read(path)
    frames = got.shape[2] if fmt == "npz" else got.shape[0]
    # every frame of the 3 blocks reported done (a 4th may have landed between the print and the kill)
    assert frames in (3 * F, 4 * F)
