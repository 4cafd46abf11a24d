"""Backend names to classes: ``make_backend("torch" | "onnxruntime" | "tensorrt", ...)``; optional ones load lazily.

A backend's module is imported only when asked for, so a missing optional dependency (onnxruntime, TensorRT) or a
backend not yet part of this build is an :class:`Arl2rtError` naming what is missing, never an import-time crash.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.runtime.backend import Backend

if TYPE_CHECKING:
    from arl2rt.export.package import ModelPackage
    from arl2rt.model.dit import CausalDiT

# name -> (module, class, what it runs)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "torch": ("arl2rt.runtime.torch_backend", "TorchBackend", "model"),
    "onnxruntime": ("arl2rt.runtime.onnxruntime_backend", "OnnxRuntimeBackend", "package"),
    "tensorrt": ("arl2rt.runtime.tensorrt_backend", "TensorRTBackend", "package"),
}


def backend_class(name: str) -> type[Backend]:
    """The class behind ``name``, imported now; an Arl2rtError if the name is unknown or its module is missing."""
    if name not in BACKENDS:
        raise Arl2rtError(f"backend {name!r}: unknown; expected one of {sorted(BACKENDS)}")
    module, cls, _ = BACKENDS[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise Arl2rtError(
            f"backend {name}: cannot import {module}.{cls} ({type(exc).__name__}: {exc}); "
            "`arl2rt doctor` lists the backends this machine can run"
        ) from None


def make_backend(
    name: str,
    *,
    model: CausalDiT | None = None,
    package: ModelPackage | None = None,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
) -> Backend:
    """An inactive backend (use it as a context manager) for a PyTorch ``model`` or an exported ``package``.

    Args:
        name: ``"torch"`` (needs ``model``), ``"onnxruntime"`` or ``"tensorrt"`` (need ``package``).
        dtype: precision of the torch backend (float32, float16, bfloat16, float64). Package backends run at the
            precision the package was exported with; this argument does not apply to them.
        device: torch device of the tensors the backend takes and returns.
    """
    if name not in BACKENDS:
        raise Arl2rtError(f"backend {name!r}: unknown; expected one of {sorted(BACKENDS)}")
    needs = BACKENDS[name][2]
    if needs == "model":
        if model is None:
            what = "an exported package" if package is not None else "nothing"
            raise Arl2rtError(f"backend {name}: expected a PyTorch model (--config/--checkpoint), found {what}")
        from arl2rt.export.state_spec import StateSpec

        return backend_class(name)(model, StateSpec(model.cfg, dtype), device)
    if package is None:
        what = "a PyTorch model" if model is not None else "nothing"
        raise Arl2rtError(
            f"backend {name}: expected an exported model package (--model DIR, made by `arl2rt export`), found {what}"
        )
    return backend_class(name)(package, device=device)
