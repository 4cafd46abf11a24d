"""What a TensorRT build needs to know of the GDN plugins, without importing TensorRT or Triton.

* :func:`trt_plugin_config` — the in-place-state switch (``ARL2RT_TRT_INPLACE_STATE=1``: the plugins write the new
  state over the old, aliased plugin I/O, which needs the builder's ``ALIASED_PLUGIN_IO_10_03`` preview feature). The
  environment is read once, on the first call, and the answer holds for the rest of the process: the plugin
  descriptions registered with TensorRT and the engine cache key must agree.
* :func:`plugin_sources_digest` — the sha256 of the plugin package's sources and the installed Triton version, for the
  engine cache key (both change the kernels an engine is built with; an AOT engine embeds its PTX, so its key leaves
  the version out: the machine that runs it may have no Triton).

Registering the plugins with TensorRT is :mod:`arl2rt.plugins.gdn.trt_register`'s job (the plugin module reads this
one, so this one must not name it).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.resources
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

INPLACE_STATE_ENV = "ARL2RT_TRT_INPLACE_STATE"
_SOURCES_PACKAGE = "arl2rt.plugins"  # the kernels, their plans, launchers and the plugin wrappers


@dataclass(frozen=True)
class TrtPluginConfig:
    """How the TensorRT plugins are declared in this process."""

    in_place_state: bool  # present_state aliases past_state


@functools.cache
def trt_plugin_config() -> TrtPluginConfig:
    """The plugin configuration, read from the environment on the first call and fixed from then on."""
    return TrtPluginConfig(in_place_state=os.environ.get(INPLACE_STATE_ENV, "0") == "1")


def _python_files(folder: Traversable, prefix: str = "") -> list[tuple[str, Traversable]]:
    found = []
    for item in folder.iterdir():
        if item.is_dir() and item.name != "__pycache__":
            found += _python_files(item, f"{prefix}{item.name}/")
        elif item.is_file() and item.name.endswith(".py"):
            found.append((prefix + item.name, item))
    return found


def triton_version() -> str:
    """The installed Triton distribution(s) and version, from package metadata (Triton is not imported)."""
    dists = sorted(set(importlib.metadata.packages_distributions().get("triton", [])))
    return ", ".join(f"{d} {importlib.metadata.version(d)}" for d in dists) or "absent"


def plugin_sources_digest(*, triton: bool = True) -> str:
    """sha256 of everything the plugins' kernels are made of: the ``arl2rt.plugins`` sources and (``triton``) the
    Triton version."""
    h = hashlib.sha256(f"triton {triton_version()}".encode() if triton else b"")
    for name, file in sorted(_python_files(importlib.resources.files(_SOURCES_PACKAGE)), key=lambda f: f[0]):
        h.update(name.encode() + hashlib.sha256(file.read_bytes()).hexdigest().encode())
    return h.hexdigest()


__all__ = [
    "INPLACE_STATE_ENV",
    "TrtPluginConfig",
    "plugin_sources_digest",
    "trt_plugin_config",
    "triton_version",
]
