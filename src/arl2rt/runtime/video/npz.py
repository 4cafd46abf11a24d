"""``.npz``: the raw latents, one array per block, ``block_000000`` ... each ``[B, C, F_b, H, W]``, named by the block's
index in the stream (a stream resumed at block 4 into a new file starts at ``block_000004``).

:func:`read_latents` concatenates them to ``[B, C, F, H, W]``. The zip directory is rewritten after every block, so
``numpy.load`` reads every finished block, except in one case: a ``kill -9`` during the milliseconds a block is being
appended leaves the directory unwritten; ``arl2rt generate --resume`` repairs that (it truncates the file to its last
snapshot).
"""

from __future__ import annotations

import base64
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.runtime.video.common import FrameWriter, prepare_file


class NpzWriter(FrameWriter):
    """Latents as one ``block_NNNNNN`` array per block in an uncompressed ``.npz`` (a zip).

    Appending a member writes over the zip's central directory, so the state a session records holds that directory
    itself (a few dozen bytes per block), and its size and digest cover the blocks' data before it: resuming cuts the
    file back to the end of the recorded blocks' data and writes the recorded directory after it, which restores the
    file exactly as it was at the snapshot.
    """

    format = "npz"
    RESUME_FIELDS = {"bytes": int, "blocks": int, "first_block": int, "directory": str}

    def __init__(
        self, path: Path, fps: int, *, resume: dict | None = None, overwrite: bool = False, first_block: int = 0
    ):
        super().__init__(path, fps)
        self.first_block = resume["first_block"] if resume else first_block
        self.frames = resume["frames"] if resume else 0
        self.blocks = resume["blocks"] if resume else 0
        self.digest = prepare_file(self.path, resume, overwrite)
        self.data_end = resume["bytes"] if resume else 0  # where the central directory begins
        if resume:
            with open(self.path, "r+b") as f:
                f.seek(resume["bytes"])
                f.write(base64.b64decode(resume["directory"]))

    def write_impl(self, latents: torch.Tensor) -> None:
        array = latents.detach().cpu().numpy()
        # "a" on an empty file starts a new archive; otherwise it writes over the old directory and rewrites it
        with zipfile.ZipFile(self.path, "a", compression=zipfile.ZIP_STORED) as zf:
            with zf.open(f"block_{self.first_block + self.blocks:06d}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
        with zipfile.ZipFile(self.path) as zf:
            data_end = zf.start_dir  # the end of this block's data
        with open(self.path, "rb") as f:
            f.seek(self.data_end)
            self.digest.update(f.read(data_end - self.data_end))
        self.blocks, self.data_end = self.blocks + 1, data_end

    def state_impl(self) -> dict[str, Any]:
        with open(self.path, "rb") as f:
            f.seek(self.data_end)
            directory = f.read()
        directory = base64.b64encode(directory).decode()
        return {"bytes": self.data_end, "blocks": self.blocks, "first_block": self.first_block, "directory": directory}


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
