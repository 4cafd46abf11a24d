"""The backends that run steps, in one registry: each one's name, what it runs (a PyTorch model or an exported
package), the export targets and TensorRT flavours it takes, and its default device. Commands and parity read their
choices and defaults from here; :func:`make_backend` builds one.

Words: a *backend* runs steps (``torch | onnxruntime | tensorrt``); a *target* is what a package was exported for
(``onnxruntime | tensorrt | portable``, :mod:`arl2rt.export.targets`); a *flavour* is the TensorRT library
(``tensorrt | tensorrt-rtx``, :mod:`arl2rt.runtime.trt.flavour`).

A backend's module is imported only when asked for, so a missing optional dependency (onnxruntime, TensorRT) is an
:class:`Arl2rtError` naming what is missing, never an import-time crash.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.runtime.backend import Backend
from arl2rt.runtime.trt.flavour import DEFAULT_FLAVOUR, FLAVOURS

if TYPE_CHECKING:
    from arl2rt.export.package import ModelPackage
    from arl2rt.model.dit import CausalDiT


@dataclass(frozen=True)
class BackendEntry:
    name: str
    module: str  # imported when the backend is made
    cls: str
    runs: str  # "model" (a PyTorch CausalDiT) or "package" (an exported ModelPackage)
    default_device: str
    targets: tuple[str, ...] = ()  # export targets of the packages it runs; the first is its default
    refuses: str = ""  # why the other targets do not run on it
    flavours: tuple[str, ...] = ()  # TensorRT libraries it runs on
    default_flavour: str | None = None

    @property
    def default_target(self) -> str | None:
        return self.targets[0] if self.targets else None


BACKENDS: dict[str, BackendEntry] = {
    "torch": BackendEntry("torch", "arl2rt.runtime.torch_backend", "TorchBackend", "model", "cpu"),
    "onnxruntime": BackendEntry(
        "onnxruntime",
        "arl2rt.runtime.onnxruntime_backend",
        "OnnxRuntimeBackend",
        "package",
        "cpu",
        targets=("onnxruntime", "onnxruntime-contrib", "portable"),
        refuses="the tensorrt target's plugin node needs TensorRT",
    ),
    "tensorrt": BackendEntry(
        "tensorrt",
        "arl2rt.runtime.tensorrt_backend",
        "TensorRTBackend",
        "package",
        "cuda",
        # every target some flavour builds (full TensorRT builds them all; tensorrt-rtx only portable)
        targets=tuple(dict.fromkeys(t for _, targets in FLAVOURS.values() for t in targets)),
        refuses="TensorRT does not parse LinearAttention (opset 27)",
        flavours=tuple(FLAVOURS),
        default_flavour=DEFAULT_FLAVOUR,
    ),
}
# what runs a PyTorch model, and an exported package, when no backend is named
DEFAULT_BACKEND = {"model": "torch", "package": "onnxruntime"}
# what `arl2rt export` writes when no target is named: the default package backend's own target
DEFAULT_TARGET = BACKENDS[DEFAULT_BACKEND["package"]].default_target


def backend_entry(name: str, source: str = "backend") -> BackendEntry:
    """The registry entry of ``name``; an Arl2rtError (``source`` names the option) if there is none."""
    if name not in BACKENDS:
        raise Arl2rtError(f"{source} {name!r}: expected one of {sorted(BACKENDS)}")
    return BACKENDS[name]


def backends_for(target: str) -> list[str]:
    """The backends that run packages exported for ``target``, in registry order."""
    return [name for name, entry in BACKENDS.items() if target in entry.targets]


def package_backend(target: str) -> str:
    """What runs a package exported for ``target`` when no backend is named: the default package backend if it runs
    that target, else the first backend that does."""
    found = backends_for(target)
    return DEFAULT_BACKEND["package"] if DEFAULT_BACKEND["package"] in found or not found else found[0]


def check_target(name: str, target: str, source: str) -> None:
    """Raise unless backend ``name`` runs packages exported for ``target`` (``source`` names where it came from); the
    message names the backends that do."""
    entry = backend_entry(name)
    if target not in entry.targets:
        runs = f"runs the targets {list(entry.targets)}" if entry.targets else "runs no exported package"
        why = f"; {entry.refuses}" if entry.refuses else ""
        found = backends_for(target)
        needs = f"; the {target} target runs on {' or '.join(found)}" if found else ""
        raise Arl2rtError(f"{source} {target!r}: {name} {runs}{why}{needs}")


DEVICES = "cpu, cuda, cuda:N or auto"


def _parse_device(device: str, source: str) -> torch.device:
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise Arl2rtError(f"{source} {device!r}: expected {DEVICES}")
    return parsed


def resolve_device(name: str, device: str | None, source: str = "--device") -> str:
    """The device backend ``name`` runs on: ``device`` as given, its default for None, the best one here for auto.

    A device that is none of cpu, cuda, cuda:N, auto is an Arl2rtError naming ``source``; whether it exists here is
    :func:`check_device`'s question.
    """
    if device is None:
        return backend_entry(name).default_device
    if device != "auto":
        _parse_device(device, source)
        return device
    if name == "onnxruntime":
        from arl2rt.runtime.onnxruntime_backend import resolve_device as ort_device  # its CUDA EP, if it has one

        return str(ort_device("auto"))
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | torch.device, source: str = "--device") -> None:
    """Raise unless ``device`` exists on this machine (a CUDA device needs a CUDA build of torch and that GPU)."""
    parsed = _parse_device(str(device), source)
    if parsed.type != "cuda":
        return
    if not torch.cuda.is_available():
        why = "torch is a CPU-only build" if torch.version.cuda is None else "torch finds no CUDA GPU"
        raise Arl2rtError(f"{source} {device}: no CUDA device here ({why})")
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise Arl2rtError(f"{source} {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")


def backend_class(name: str) -> type[Backend]:
    """The class behind ``name``, imported now; an Arl2rtError if the name is unknown or its module is missing."""
    entry = backend_entry(name)
    try:
        return getattr(importlib.import_module(entry.module), entry.cls)
    except ImportError as exc:
        raise Arl2rtError(
            f"backend {name}: cannot import {entry.module}.{entry.cls} ({type(exc).__name__}: {exc}); "
            "`arl2rt doctor` lists the backends this machine can run"
        ) from None


def check_runs(name: str, *, model: object | None = None, package: object | None = None) -> BackendEntry:
    """The entry of backend ``name`` if it runs what is given (a PyTorch ``model`` or an exported ``package``)."""
    entry = backend_entry(name)
    if entry.runs == "model" and model is None:
        what = "an exported package" if package is not None else "nothing"
        raise Arl2rtError(f"backend {name}: expected a PyTorch model (--config/--checkpoint), found {what}")
    if entry.runs == "package" and package is None:
        what = "a PyTorch model" if model is not None else "nothing"
        raise Arl2rtError(
            f"backend {name}: expected an exported model package (--model DIR, made by `arl2rt export`), found {what}"
        )
    return entry


def make_backend(
    name: str,
    *,
    model: CausalDiT | None = None,
    package: ModelPackage | None = None,
    dtype: str = "float32",
    device: str | torch.device | None = None,
    options: Mapping[str, Any] | None = None,
    vae: Any | None = None,
) -> Backend:
    """An inactive backend (use it as a context manager) for a PyTorch ``model`` or an exported ``package``.

    Args:
        name: a key of :data:`BACKENDS`: ``"torch"`` (needs ``model``), ``"onnxruntime"`` or ``"tensorrt"`` (need
            ``package``).
        dtype: precision of the torch backend (float32, float16, bfloat16, float64). Package backends run at the
            precision the package was exported with; this argument does not apply to them.
        device: torch device of the tensors the backend takes and returns; None: the backend's default.
        options: keyword arguments of the backend's own (tensorrt: ``flavour``, ``max_frames``, ``max_batch``,
            ``cache_dir``...); a name the backend does not take is an error.
        vae: a :class:`~arl2rt.model.vae.decoder.WanVaeDecoder` that decodes a PyTorch model's blocks (the state
            contract then holds its caches); a package carries its own.
    """
    entry = check_runs(name, model=model, package=package)
    device = entry.default_device if device is None else device
    cls = backend_class(name)
    check_device(device, "device")
    options = dict(options or {})
    if options:
        takes = [
            p.name
            for p in list(inspect.signature(cls).parameters.values())[1:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("device", "spec")
        ]
        unknown = sorted(set(options) - set(takes))
        if unknown:
            raise Arl2rtError(f"backend {name}: no option {', '.join(unknown)}; it takes {takes or 'none'}")
    if entry.runs == "model":
        from arl2rt.export.state_spec import StateSpec

        spec = StateSpec(model.cfg, dtype, vae.config if vae is not None else None)
        return cls(model, spec, device, **({"vae": vae} if vae is not None else {}), **options)
    return cls(package, device=device, **options)
