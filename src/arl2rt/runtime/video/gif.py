"""``.gif``: a GIF89a written frame by frame, a valid, looping GIF after every block.

Each frame is quantised to its own 256-colour table by Pillow; the trailer byte is rewritten after every block, and
appending continues just before it.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import torch

from arl2rt.runtime.video.common import FrameWriter, prepare_file, to_rgb_frames


class GifWriter(FrameWriter):
    """GIF89a, looping, a local 256-colour table per frame; valid (trailer in place) after every block."""

    format = "gif"
    RESUME_FIELDS = {"bytes": int}
    TRAILER = b";"

    def __init__(self, path: Path, fps: int, *, resume: dict | None = None, overwrite: bool = False):
        super().__init__(path, fps)
        self.digest = prepare_file(self.path, resume, overwrite)  # of the frames, not the trailer after them
        self.frames = resume["frames"] if resume else 0
        self.bytes = resume["bytes"] if resume else 0  # end of the last frame: where the trailer sits
        if self.bytes:
            with open(self.path, "r+b") as f:  # valid again at once, even if no block follows
                f.seek(self.bytes)
                f.write(self.TRAILER)
        self.delay_ms = max(20, round(1000 / fps / 10) * 10)  # GIF delays are centiseconds; players clamp < 2

    def _header(self, width: int, height: int) -> bytes:
        screen = struct.pack("<6sHHBBB", b"GIF89a", width, height, 0, 0, 0)  # no global colour table
        loop = b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever
        return screen + loop

    def write_impl(self, latents: torch.Tensor) -> None:
        from PIL import GifImagePlugin, Image

        frames = to_rgb_frames(latents)
        out = bytearray(self._header(frames.shape[2], frames.shape[1]) if self.bytes == 0 else b"")
        for rgb in frames:
            image = Image.fromarray(rgb).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            image.encoderinfo = {}
            for part in GifImagePlugin.getdata(image, duration=self.delay_ms, include_color_table=True):
                out += part
        with open(self.path, "r+b") as f:
            f.seek(self.bytes)
            f.write(out + self.TRAILER)
            f.flush()
        self.digest.update(out)
        self.bytes += len(out)

    def state_impl(self) -> dict[str, Any]:
        return {"bytes": self.bytes}
