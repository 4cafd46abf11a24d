"""The optional packages the umT5 encoder needs, imported on first use with an install hint instead of a traceback."""

from __future__ import annotations

import importlib
from importlib import metadata
from types import ModuleType

from arl2rt.errors import Arl2rtError

INSTALL_HINT = "pip install transformers sentencepiece ftfy"


def require(module: str) -> ModuleType:
    """``import module``, or an Arl2rtError saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Arl2rtError(f"the umT5 text encoder needs the package {module!r} ({exc}); {INSTALL_HINT}") from None


def version_of(distribution: str) -> str | None:
    """Installed version of a distribution without importing it (cheap enough for every cache lookup)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
