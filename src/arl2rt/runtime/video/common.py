"""What every output writer shares: the format of a path, the checks before writing, frames from latents, and the
:class:`FrameWriter` base each format implements."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arl2rt.errors import Arl2rtError

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


def check_video_output(fmt: str, channels: int, model: str, *, decodes: bool = False) -> None:
    """Video formats need RGB frames: a pixel-space model, or a latent one with a VAE decoder (``decodes``)."""
    if fmt in VIDEO_FORMATS and channels != 3 and not decodes:
        raise Arl2rtError(
            f"output format {fmt}: model {model} makes {channels}-channel latents, expected 3 (RGB, a pixel-space "
            "model); decode them with --vae Wan2.1_VAE.pth (or taew2_1.pth), or write the latents with -o out.npz"
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
    RESUME_FIELDS: dict[str, type] = {}  # of this format's state, beside the ones every writer records

    def __init__(self, path: Path, fps: int) -> None:
        self.path, self.fps = Path(path), fps
        self.frames = 0
        self.digest = hashlib.sha256()  # of everything written so far: a resumed output must still start with it

    @classmethod
    def resume_fields(cls) -> dict[str, type]:
        """What a ``resume`` state must hold (name -> type) for this format."""
        return {"frames": int, "fps": int, "sha256": str, **cls.RESUME_FIELDS}

    def write(self, latents: torch.Tensor) -> None:
        """Append one block; its frames are on disk (flushed) when this returns."""
        self.write_impl(latents)
        self.frames += latents.shape[2]

    def state(self) -> dict[str, Any]:
        """JSON-able position of the output after the last block (what a session stores to append later)."""
        where = {"format": self.format, "path": str(self.path.resolve()), "frames": self.frames, "fps": self.fps}
        return {**where, "sha256": self.digest.hexdigest(), **self.state_impl()}

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


def check_resumed_digest(path: Path, resume: dict, digest: hashlib._Hash, what: str) -> None:
    """Raise unless ``digest`` (of the output's ``what``) is the one the session recorded: it is the stream's own."""
    if digest.hexdigest() != resume["sha256"]:
        raise Arl2rtError(
            f"output {path}: its {what} differ from what the session wrote (sha256 {digest.hexdigest()[:16]}…, "
            f"recorded {resume['sha256'][:16]}…); it was replaced or changed: resume into a new output (-o)"
        )


def prepare_file(path: Path, resume: dict | None, overwrite: bool) -> hashlib._Hash:
    """A new single-file output starts empty (see :func:`check_new_output`); a resumed one must start with the bytes
    the session recorded (size and sha256), and is then cut back to them. Returns the digest of what stays."""
    if resume is None:
        check_new_output(path, overwrite)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return hashlib.sha256()
    size, want = (path.stat().st_size if path.is_file() else None), resume["bytes"]
    if size is None or size < want:
        raise Arl2rtError(
            f"output {path}: the session recorded {want} bytes ({resume['frames']} frames) written, found "
            f"{'no file' if size is None else f'{size} bytes'}; it was moved or changed: resume into a new output (-o)"
        )
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        left = want
        while left and (block := f.read(min(left, 1 << 22))):
            digest.update(block)
            left -= len(block)
    check_resumed_digest(path, resume, digest, f"first {want} bytes")
    with open(path, "r+b") as f:
        f.truncate(want)
    return digest
