"""Which TensorRT builds or runs an engine: full ``tensorrt`` or ``tensorrt_rtx``, and on which device.

The two share most of the Python API (Builder, OnnxParser, IBuilderConfig, Runtime, IExecutionContext with
``set_tensor_address`` / ``execute_async_v3``). The differences this project meets:

* **Plugins.** Only ``tensorrt`` has them (``tensorrt.plugin``, ``add_plugin_v3``). TensorRT-RTX has none, and its ONNX
  parser aborts the whole process when a node maps to a registered Python plugin, so RTX builds only the ``portable``
  target and we refuse a graph with a custom-domain node before its parser sees it.
* **Devices.** ``tensorrt`` builds on, and for, the GPU it runs on (an engine is specific to TensorRT version and
  compute capability). TensorRT-RTX builds without a GPU for a list of compute capabilities
  (``IBuilderConfig.set_compute_capability``; none set = its default, portable to Ampere and later) and its runtime
  does not run on compute capability 9.x (Hopper) or 10.0.
* **Timing cache.** TensorRT-RTX ignores it (its timing-cache calls are deprecated no-ops since 1.2), so only
  ``tensorrt`` builds keep one.
* **Typing.** TensorRT 11 removed weak typing (no FP16 flag); we create every network ``STRONGLY_TYPED`` on both, so
  precision is what the ONNX dtypes say.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import torch

from arl2rt.errors import Arl2rtError

# flavour name -> (module, the export targets it can build)
FLAVOURS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tensorrt": ("tensorrt", ("tensorrt", "portable")),
    "tensorrt-rtx": ("tensorrt_rtx", ("portable",)),
}
DEFAULT_FLAVOUR = "tensorrt"
_INSTALL = {"tensorrt": "pip install 'tensorrt>=10.9'", "tensorrt-rtx": "pip install tensorrt-rtx"}


@dataclass(frozen=True)
class Flavour:
    name: str
    module: ModuleType
    targets: tuple[str, ...]

    @property
    def version(self) -> str:
        return str(self.module.__version__)

    @property
    def has_plugins(self) -> bool:
        return self.name == "tensorrt"

    def check_target(self, target: str, source: str) -> None:
        """Raise unless this flavour can build a package exported for ``target``."""
        if target not in self.targets:
            why = (
                "TensorRT-RTX has no plugins; export with --target portable"
                if self.name == "tensorrt-rtx"
                else "TensorRT does not parse LinearAttention (opset 27); export with --target tensorrt or portable"
            )
            raise Arl2rtError(
                f"{source}: {self.name} builds targets {list(self.targets)}, found target {target!r}: {why}"
            )


def load_flavour(name: str) -> Flavour:
    """Import the TensorRT module of ``name`` ("tensorrt" or "tensorrt-rtx"), or say how to install it."""
    if name not in FLAVOURS:
        raise Arl2rtError(f"unknown TensorRT flavour {name!r}; expected one of {sorted(FLAVOURS)}")
    module_name, targets = FLAVOURS[name]
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - a broken install is reported the same way as a missing one
        raise Arl2rtError(
            f"flavour {name}: import {module_name} failed ({type(exc).__name__}: {exc}); "
            f"install it with {_INSTALL[name]}"
        ) from None
    return Flavour(name, module, targets)


def cuda_capability() -> tuple[str, str] | None:
    """(GPU name, compute capability "9.0") of the current CUDA device, or None without one."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(), "{}.{}".format(*torch.cuda.get_device_capability())


def rtx_capabilities(flavour: Flavour, names: tuple[str, ...]) -> list:
    """``("SM86", "sm_89", "8.9")`` -> TensorRT-RTX ComputeCapability members; an unknown name is an Arl2rtError."""
    members = flavour.module.ComputeCapability.__members__
    out = []
    for name in names:
        key = "SM" + name.upper().replace("SM_", "").replace("SM", "").replace(".", "")
        if key not in members or key in ("SMNONE", "SMCURRENT"):
            known = sorted(m for m in members if m.startswith("SM"))
            raise Arl2rtError(f"compute capability {name!r}: expected one of {known} (TensorRT-RTX {flavour.version})")
        out.append(members[key])
    return out


def device_key(flavour: Flavour, compute_capabilities: tuple[str, ...] = ()) -> dict:
    """What an engine is specific to, besides the TensorRT version: the GPU, or RTX's target list."""
    gpu = cuda_capability()
    if flavour.name == "tensorrt":
        if compute_capabilities:
            raise Arl2rtError("--compute-capability is for tensorrt-rtx; tensorrt builds for the GPU it runs on")
        if gpu is None:
            raise Arl2rtError(
                "flavour tensorrt: building an engine needs a CUDA GPU and none was found "
                "(tensorrt-rtx builds portable packages without one)"
            )
        return {"gpu": gpu[0], "compute_capability": gpu[1]}
    targets = sorted(m.name for m in rtx_capabilities(flavour, compute_capabilities))
    # RTX's default target list may depend on whether a GPU is visible at build time, so the key records both
    return {"rtx_targets": targets or "default", "build_gpu": gpu[1] if gpu else None}
