"""Streaming output writers: every block's frames reach the file as soon as the block is made.

Formats (picked by :func:`output_format` from the path):

* ``.mp4``: H.264 (libx264 through PyAV) in a *fragmented* MP4. The header (``ftyp`` + an empty ``moov``) is written
  with the first block, then one ``moof``+``mdat`` fragment per block, each encoded by a fresh encoder that is drained
  at the block's end. So after every block the file on disk is a complete, playable video of every finished frame: a
  crash, ``kill -9`` or Ctrl-C never leaves frames stuck in an encoder or a muxer buffer, and no index at the end is
  needed. Each block starts with a key frame. Odd frame sizes are padded (edge pixels) to even ones for yuv420p.
* ``.gif``: a GIF89a written frame by frame (each frame quantised to its own 256-colour table by Pillow), with the
  trailer byte rewritten after every block, so the file is a valid, looping GIF after every block.
* a directory (a path without a suffix, or an existing directory): one ``frame_000000.png`` per frame, each written to
  a temporary name and renamed.
* ``.npz``: the raw latents, one array per block, ``block_000000`` ... each ``[B, C, F_b, H, W]``;
  :func:`read_latents` concatenates them to ``[B, C, F, H, W]``. The zip directory is rewritten after every block, so
  ``numpy.load`` reads every finished block, except in one case: a ``kill -9`` during the milliseconds a block is
  being appended leaves the directory unwritten; ``arl2rt generate --resume`` repairs that (it truncates the file to
  its last snapshot).

Video formats need RGB frames: a pixel-space model whose latents are RGB in [-1, 1], ``[1, 3, F, H, W]`` (the embedded
model). arl2rt has no VAE, so a latent-space model (Wan: 16 channels) can only write ``.npz`` latents; asking for a
video is an error that says so.

Appending (``--resume``): each writer reports :meth:`FrameWriter.state` (format, path, frames, bytes) after a block;
a session stores it, and a writer opened with ``resume=state`` first cuts the file back to exactly that point (frames a
killed run wrote after its last snapshot are dropped, since the resumed run makes them again) and then appends. All four
formats append in place: MP4 fragments continue with the next sequence number and decode time, the GIF continues
before its trailer, PNG numbering continues, the zip gets further members.
"""

from __future__ import annotations

import base64
import io
import os
import re
import struct
import zipfile
from abc import ABC, abstractmethod
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arl2rt.errors import Arl2rtError

FORMATS = ("mp4", "gif", "png", "npz")
VIDEO_FORMATS = ("mp4", "gif", "png")
_SUFFIXES = {".mp4": "mp4", ".gif": "gif", ".npz": "npz"}


def output_format(path: Path) -> str:
    """``mp4``, ``gif``, ``npz`` by suffix; ``png`` for a directory (existing, or a path without a suffix)."""
    if path.is_dir() or not path.suffix:
        return "png"
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise Arl2rtError(
            f"output {path}: unknown format {path.suffix!r}; expected .mp4, .gif, .npz or a directory (PNG frames)"
        ) from None


def check_video_output(fmt: str, channels: int, model: str) -> None:
    """Video formats need a pixel-space model with RGB latents; say what to do otherwise."""
    if fmt in VIDEO_FORMATS and channels != 3:
        raise Arl2rtError(
            f"output format {fmt}: model {model} makes {channels}-channel latents, expected 3 (RGB, a pixel-space "
            "model); arl2rt has no VAE to decode latents into video: write the latents with -o out.npz"
        )


def to_rgb_frames(latents: torch.Tensor) -> np.ndarray:
    """RGB latents in [-1, 1] ``[1, 3, F, H, W]`` -> uint8 frames ``[F, H, W, 3]``."""
    if latents.dim() != 5 or latents.shape[0] != 1 or latents.shape[1] != 3:
        raise Arl2rtError(f"video frames: expected latents [1, 3, F, H, W], found {list(latents.shape)}")
    x = latents[0].detach().to(device="cpu", dtype=torch.float32).clamp(-1, 1)
    return ((x + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).contiguous().numpy()


class FrameWriter(ABC):
    """Appends blocks of latents ``[B, C, F, H, W]`` to one output; a context manager (``close`` finalises)."""

    format: str

    def __init__(self, path: Path, fps: int) -> None:
        self.path, self.fps = Path(path), fps
        self.frames = 0

    def write(self, latents: torch.Tensor) -> None:
        """Append one block; its frames are on disk (flushed) when this returns."""
        self.write_impl(latents)
        self.frames += latents.shape[2]

    def state(self) -> dict[str, Any]:
        """JSON-able position of the output after the last block (what a session stores to append later)."""
        where = {"format": self.format, "path": str(self.path.resolve()), "frames": self.frames, "fps": self.fps}
        return {**where, **self.state_impl()}

    def close(self) -> None:
        return None

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def write_impl(self, latents: torch.Tensor) -> None: ...

    def state_impl(self) -> dict[str, Any]:
        return {}


def check_new_output(path: Path, overwrite: bool) -> None:
    """A new output must not replace something that exists unless ``overwrite`` (a user's file is never lost)."""
    if output_format(path) == "png":
        if path.exists() and not path.is_dir():
            raise Arl2rtError(f"output {path}: expected a directory for PNG frames, found a file")
        frames = list(path.glob("frame_*.png")) if path.is_dir() else []
        if frames and not overwrite:
            raise Arl2rtError(
                f"output {path}: already holds {len(frames)} frame_*.png files; pass --overwrite to replace them, "
                "or choose another directory"
            )
    elif path.exists() and not overwrite:
        raise Arl2rtError(f"output {path}: already exists; pass --overwrite to replace it, or choose another path")


def _prepare_file(path: Path, resume: dict | None, overwrite: bool) -> None:
    """A new output starts empty (see :func:`check_new_output`); a resumed one is cut back to the snapshot's size."""
    if resume is None:
        check_new_output(path, overwrite)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return
    size, want = (path.stat().st_size if path.is_file() else None), resume["bytes"]
    if size is None or size < want:
        raise Arl2rtError(
            f"output {path}: the session recorded {want} bytes ({resume['frames']} frames) written, found "
            f"{'no file' if size is None else f'{size} bytes'}; it was moved or changed: resume into a new output (-o)"
        )
    with open(path, "r+b") as f:
        f.truncate(want)


# -- mp4 -----------------------------------------------------------------------------------------------------------
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
    MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"

    def __init__(self, path: Path, fps: int, *, resume: dict | None = None, overwrite: bool = False, crf: int = 18):
        super().__init__(path, fps)
        self.crf = crf
        _prepare_file(self.path, resume, overwrite)
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
        self.bytes += len(out)
        self.sample_entry = entry

    def state_impl(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "fragments": self.fragments}


# -- gif -----------------------------------------------------------------------------------------------------------
class GifWriter(FrameWriter):
    """GIF89a, looping, a local 256-colour table per frame; valid (trailer in place) after every block."""

    format = "gif"
    TRAILER = b";"

    def __init__(self, path: Path, fps: int, *, resume: dict | None = None, overwrite: bool = False):
        super().__init__(path, fps)
        _prepare_file(self.path, resume, overwrite)
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
        self.bytes += len(out)

    def state_impl(self) -> dict[str, Any]:
        return {"bytes": self.bytes}


# -- png directory -------------------------------------------------------------------------------------------------
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
            Image.fromarray(rgb).save(tmp, format="PNG")
            os.replace(tmp, final)


# -- npz -----------------------------------------------------------------------------------------------------------
class NpzWriter(FrameWriter):
    """Latents as one ``block_NNNNNN`` array per block in an uncompressed ``.npz`` (a zip).

    Appending a member writes over the zip's central directory, so the state a session records holds that directory
    itself (a few dozen bytes per block): resuming cuts the file back to the end of the recorded blocks' data and
    writes the recorded directory after it, which restores the file exactly as it was at the snapshot.
    """

    format = "npz"

    def __init__(self, path: Path, fps: int, *, resume: dict | None = None, overwrite: bool = False):
        super().__init__(path, fps)
        self.frames = resume["frames"] if resume else 0
        self.blocks = resume["blocks"] if resume else 0
        _prepare_file(self.path, resume, overwrite)
        if resume:
            with open(self.path, "r+b") as f:
                f.seek(resume["bytes"])
                f.write(base64.b64decode(resume["directory"]))

    def write_impl(self, latents: torch.Tensor) -> None:
        array = latents.detach().cpu().numpy()
        # "a" on an empty file starts a new archive; otherwise it writes over the old directory and rewrites it
        with zipfile.ZipFile(self.path, "a", compression=zipfile.ZIP_STORED) as zf:
            with zf.open(f"block_{self.blocks:06d}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
        self.blocks += 1

    def state_impl(self) -> dict[str, Any]:
        if self.blocks == 0:
            return {"bytes": 0, "blocks": 0, "directory": ""}
        with zipfile.ZipFile(self.path) as zf:
            data_end = zf.start_dir  # where the central directory begins: the end of the last block's data
        with open(self.path, "rb") as f:
            f.seek(data_end)
            directory = f.read()
        return {"bytes": data_end, "blocks": self.blocks, "directory": base64.b64encode(directory).decode()}


def read_latents(path: Path) -> np.ndarray:
    """The whole stream of an ``.npz`` written by :class:`NpzWriter`: ``[B, C, F, H, W]``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            names = sorted(n for n in z.files if n.startswith("block_"))
            if not names:
                raise Arl2rtError(f"{path}: no block_* arrays; expected latents written by arl2rt generate")
            return np.concatenate([z[n] for n in names], axis=2)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise Arl2rtError(f"{path}: cannot read latents ({exc})") from None


_WRITERS: dict[str, type[FrameWriter]] = {"mp4": Mp4Writer, "gif": GifWriter, "png": PngDirWriter, "npz": NpzWriter}


def open_writer(path: Path, *, fps: int = 16, resume: dict | None = None, overwrite: bool = False) -> FrameWriter:
    """The writer for ``path``'s format; ``resume`` (a :meth:`FrameWriter.state`) appends after that point, at the
    frame rate the output was started with."""
    fmt = output_format(Path(path))
    if resume is not None:
        if resume.get("format") != fmt:
            raise Arl2rtError(f"output {path}: the session wrote {resume.get('format')}, this path is {fmt}")
        fps = resume["fps"]
    if fps < 1:
        raise Arl2rtError(f"fps must be >= 1, got {fps}")
    return _WRITERS[fmt](Path(path), fps, resume=resume, overwrite=overwrite)
