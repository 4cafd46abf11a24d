"""A directory of PNG frames (a path without a suffix, or an existing directory): one ``frame_000000.png`` per
frame, each written to a temporary name and renamed; appending continues the numbering, after checking that the
frames already there are the stream's own (their digest)."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.runtime.video.common import FrameWriter, check_new_output, check_resumed_digest, to_rgb_frames

_PNG_NAME = re.compile(r"frame_(\d{6,})\.png")


class PngDirWriter(FrameWriter):
    """``DIR/frame_000000.png`` ..., each written under a temporary name and renamed into place."""

    format = "png"

    def __init__(self, path: Path, fps: int, *, resume: dict | None = None, overwrite: bool = False):
        super().__init__(path, fps)
        existing = sorted(self.path.glob("frame_*.png")) if self.path.is_dir() else []
        if resume is None:
            check_new_output(self.path, overwrite)
            self.path.mkdir(parents=True, exist_ok=True)
            keep = 0
        else:
            keep = resume["frames"]
            have = {int(m.group(1)) for p in existing if (m := _PNG_NAME.fullmatch(p.name))}
            if not set(range(keep)) <= have:
                raise Arl2rtError(
                    f"output {self.path}: the session recorded {keep} frames written, found {len(have)} frame files "
                    "with gaps; it was changed: resume into a new output (-o)"
                )
            for i in range(keep):
                self.digest.update((self.path / f"frame_{i:06d}.png").read_bytes())
            check_resumed_digest(self.path, resume, self.digest, f"frames 0..{keep - 1}")
            self.frames = keep
        for p in existing:  # frames past the resume point (or all, when overwriting) are made again
            m = _PNG_NAME.fullmatch(p.name)
            if m and int(m.group(1)) >= keep:
                p.unlink()

    def write_impl(self, latents: torch.Tensor) -> None:
        from PIL import Image

        for i, rgb in enumerate(to_rgb_frames(latents)):
            final = self.path / f"frame_{self.frames + i:06d}.png"
            tmp = final.with_name(f".{final.name}.partial")
            data = io.BytesIO()
            Image.fromarray(rgb).save(data, format="PNG")
            tmp.write_bytes(data.getvalue())
            os.replace(tmp, final)
            self.digest.update(data.getvalue())
