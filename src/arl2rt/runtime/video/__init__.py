"""Streaming output writers: every block's frames reach the file as soon as the block is made.

One module per format, picked by :func:`output_format` from the path:

* ``.mp4`` (:mod:`.mp4`): H.264 in a fragmented MP4, one fragment per block, playable after every block.
* ``.gif`` (:mod:`.gif`): a looping GIF89a whose trailer is rewritten after every block.
* a directory, a path without a suffix or an existing one (:mod:`.png_dir`): one ``frame_000000.png`` per frame.
* ``.npz`` (:mod:`.npz`): the raw latents, one array per block; :func:`read_latents` reads the whole stream back.

Video formats need RGB frames in [-1, 1], ``[1, 3, F, H, W]``: a pixel-space model's latents (the embedded model), or
the frames a VAE decoder (Wan2.1's or TAEHV's) makes of a latent-space model's blocks (``--vae``, or a package
exported with one).
A latent-space model without a decoder writes ``.npz`` latents; asking it for a video is an error that says so.

Appending (``--resume``): each writer reports :meth:`FrameWriter.state` (format, path, frames, bytes, and the sha256
of what it wrote) after a block; a session stores it, and a writer opened with ``resume=state`` first checks that the
output still starts with exactly what the stream wrote (its recorded size and digest: another file, a replaced or
damaged output is refused, untouched), then cuts it back to that point (frames a killed run wrote after its last
snapshot are dropped, since the resumed run makes them again) and appends. All four formats append in place: MP4
fragments continue with the next sequence number and decode time, the GIF continues before its trailer, PNG numbering
continues, the zip gets further members.
"""

from __future__ import annotations

from pathlib import Path

from arl2rt.errors import Arl2rtError
from arl2rt.runtime.video.common import (
    FrameWriter,
    check_new_output,
    check_video_output,
    output_format,
    to_rgb_frames,
)
from arl2rt.runtime.video.gif import GifWriter
from arl2rt.runtime.video.mp4 import Mp4Writer
from arl2rt.runtime.video.npz import NpzWriter, read_latents
from arl2rt.runtime.video.png_dir import PngDirWriter

__all__ = [
    "FrameWriter",
    "check_new_output",
    "check_video_output",
    "open_writer",
    "output_format",
    "read_latents",
    "to_rgb_frames",
]

_WRITERS: dict[str, type[FrameWriter]] = {"mp4": Mp4Writer, "gif": GifWriter, "png": PngDirWriter, "npz": NpzWriter}


def open_writer(
    path: Path, *, fps: int = 16, resume: dict | None = None, overwrite: bool = False, first_block: int = 0
) -> FrameWriter:
    """The writer for ``path``'s format; ``resume`` (a :meth:`FrameWriter.state`) appends after that point, at the
    frame rate the output was started with. ``first_block``: the stream's index of the first block a new output
    gets (a resumed stream written to a new file); formats that name blocks (``.npz``) name them by it."""
    fmt = output_format(Path(path))
    writer = _WRITERS[fmt]
    if resume is not None:
        if resume.get("format") != fmt:
            raise Arl2rtError(f"output {path}: the session wrote {resume.get('format')}, this path is {fmt}")
        bad = [
            f"{k} ({kind.__name__}{' >= 0' if kind is int else ''})"
            for k, kind in writer.resume_fields().items()
            if not isinstance(resume.get(k), kind) or (kind is int and (isinstance(resume[k], bool) or resume[k] < 0))
        ]
        if bad:
            raise Arl2rtError(
                f"output {path}: the session's record of it lacks {', '.join(bad)}; expected a {fmt} state"
            )
        fps = resume["fps"]
    if fps < 1:
        raise Arl2rtError(f"fps must be >= 1, got {fps}")
    if writer is NpzWriter:
        return NpzWriter(Path(path), fps, resume=resume, overwrite=overwrite, first_block=first_block)
    return writer(Path(path), fps, resume=resume, overwrite=overwrite)
