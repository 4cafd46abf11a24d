"""Reading a torch checkpoint file safely: ``torch.load(weights_only=True)``, with every refusal said in our words.

Unpickling arbitrary objects can run code, so a file that pickles anything but tensors and plain containers is
refused, naming the Python object it asked for (torch's message changed wording between releases; both are read).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from arl2rt.errors import Arl2rtError

# torch <= 2.5: "Unsupported global: GLOBAL os.system"; torch >= 2.6: "unsupported GLOBAL posix.system whose module"
_UNSAFE_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)")


def load_torch_file(path: Path, what: str, expected: str) -> Any:
    """``torch.load`` of ``path`` with ``weights_only=True`` (memory-mapped where the file is a zip archive).

    ``what`` names the file in messages ("checkpoint", "VAE checkpoint"), ``expected`` says what it should hold.
    """
    # mmap avoids holding a second copy of every weight; only zip-format (torch >= 1.6) files support it.
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        found = _UNSAFE_GLOBAL.search(str(exc))
        if found:
            raise Arl2rtError(
                f"{what} {path}: refused: it pickles a Python object of type {found.group(1)}, and arl2rt only "
                "loads tensors and plain containers (torch.load weights_only=True), since unpickling objects can "
                "run code; re-save only the state dicts, e.g. torch.save({'generator': sd}, path)"
            ) from None
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise Arl2rtError(
            f"{what} {path}: cannot be read by torch.load(weights_only=True); expected {expected} "
            f"({type(exc).__name__}: {detail})"
        ) from None
