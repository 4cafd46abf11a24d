"""``.mp4``: H.264 (libx264 through PyAV) in a *fragmented* MP4, playable after every block.

The header (``ftyp`` + an empty ``moov``) is written with the first block, then one ``moof``+``mdat`` fragment per
block, each encoded by a fresh encoder that is drained at the block's end. So after every block the file on disk is a
complete, playable video of every finished frame: a crash, ``kill -9`` or Ctrl-C never leaves frames stuck in an
encoder or a muxer buffer, and no index at the end is needed. Each block starts with a key frame. Odd frame sizes are
padded (edge pixels) to even ones for yuv420p. Appending continues the fragments' sequence numbers and decode times.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.runtime.video.common import FrameWriter, prepare_file, to_rgb_frames


def _boxes(buf: bytes | bytearray, start: int = 0, end: int | None = None):
    """(offset, size, type) of the ISO-BMFF boxes in ``buf[start:end]``."""
    end = len(buf) if end is None else end
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", buf, start)
        if size < 8:
            raise ValueError(f"unsupported box size {size} at {start}")
        yield start, size, kind.decode("latin-1")
        start += size


def _child(buf: bytes | bytearray, parent: tuple[int, int], *path: str) -> tuple[int, int]:
    """(offset, size) of the box reached from ``parent`` through the container boxes named in ``path``."""
    off, size = parent
    for name in path:
        off, size = next(((o, s) for o, s, k in _boxes(buf, off + 8, off + size) if k == name), (None, None))
        if off is None:
            raise ValueError(f"no {name} box")
    return off, size


class Mp4Writer(FrameWriter):
    """Fragmented MP4, one self-contained fragment per block (see the module docstring)."""

    format = "mp4"
    RESUME_FIELDS = {"bytes": int, "fragments": int}
    MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"

    def __init__(self, path: Path, fps: int, *, resume: dict | None = None, overwrite: bool = False, crf: int = 18):
        super().__init__(path, fps)
        self.crf = crf
        self.digest = prepare_file(self.path, resume, overwrite)
        self.fragments = resume["fragments"] if resume else 0
        self.frames = resume["frames"] if resume else 0
        self.bytes = resume["bytes"] if resume else 0
        self.sample_entry = self._file_sample_entry() if self.bytes else None

    def _file_sample_entry(self) -> bytes:
        with open(self.path, "rb") as f:
            head = f.read(1 << 20)
        return self._sample_entry(head)

    @staticmethod
    def _sample_entry(buf: bytes | bytearray) -> bytes:
        """The ``stsd`` box (codec, size, SPS/PPS): every fragment must decode with the file's one."""
        moov = next((o, s) for o, s, k in _boxes(buf) if k == "moov")
        stbl = _child(buf, moov, "trak", "mdia", "minf", "stbl")
        off, size = _child(buf, stbl, "stsd")
        return bytes(buf[off : off + size])

    def _encode(self, frames: np.ndarray) -> bytearray:
        import av

        h, w = frames.shape[1:3]
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4", options={"movflags": self.MOVFLAGS}) as container:
            stream = container.add_stream(
                "libx264",
                rate=self.fps,
                options={"crf": str(self.crf), "preset": "medium", "x264-params": "log=-1:bframes=0"},
            )
            stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        return bytearray(buf.getvalue())

    def write_impl(self, latents: torch.Tensor) -> None:
        segment = self._encode(to_rgb_frames(latents))
        entry = self._sample_entry(segment)
        if self.sample_entry is not None and entry != self.sample_entry:
            raise Arl2rtError(
                f"output {self.path}: this block's H.264 parameters differ from the file's (frame size or encoder "
                "changed); write to a new output"
            )
        moov = next((o, s) for o, s, k in _boxes(segment) if k == "moov")
        mdhd, _ = _child(segment, moov, "trak", "mdia", "mdhd")
        version = segment[mdhd + 8]
        timescale = struct.unpack_from(">I", segment, mdhd + (28 if version == 1 else 20))[0]
        base = Fraction(self.frames * timescale, self.fps)  # decode time of this block's first frame
        if base.denominator != 1:
            raise Arl2rtError(f"output {self.path}: MP4 timescale {timescale} is not a multiple of {self.fps} fps")
        out = bytearray()
        for off, size, kind in _boxes(segment):
            if kind in ("ftyp", "moov") and self.sample_entry is None:
                out += segment[off : off + size]
            elif kind == "moof":
                self.fragments += 1
                mfhd, _ = _child(segment, (off, size), "mfhd")
                struct.pack_into(">I", segment, mfhd + 12, self.fragments)
                tfdt, _ = _child(segment, (off, size), "traf", "tfdt")
                fmt = ">Q" if segment[tfdt + 8] == 1 else ">I"  # the segment's own decode times start at 0
                struct.pack_into(fmt, segment, tfdt + 12, struct.unpack_from(fmt, segment, tfdt + 12)[0] + int(base))
                out += segment[off : off + size]
            elif kind == "mdat":
                out += segment[off : off + size]
        with open(self.path, "r+b") as f:
            f.seek(self.bytes)
            f.write(out)
            f.flush()
        self.digest.update(out)
        self.bytes += len(out)
        self.sample_entry = entry

    def state_impl(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "fragments": self.fragments}
