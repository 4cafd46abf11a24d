"""What this machine can run: package versions, the GPU, and which backends are usable (and why not)."""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass, field

import torch

PACKAGES = (
    "torch",
    "triton",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxscript",
    "tensorrt",
    "tensorrt-rtx",
    "polygraphy",
)


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _importable(module: str) -> str | None:
    """None if ``module`` imports, else the reason it does not."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure is a reason to report, not to crash
        return f"import {module} failed: {type(exc).__name__}: {exc}".splitlines()[0][:200]
    return None


@dataclass
class Environment:
    versions: dict[str, str | None]
    gpu: str | None
    compute_capability: str | None
    backends: dict[str, str | None] = field(default_factory=dict)  # name -> None if usable, else why not

    def to_dict(self) -> dict:
        return {
            "versions": self.versions,
            "gpu": self.gpu,
            "compute_capability": self.compute_capability,
            "backends": {k: {"available": v is None, "reason": v} for k, v in self.backends.items()},
        }


def probe() -> Environment:
    gpu = cc = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        cc = "{}.{}".format(*torch.cuda.get_device_capability(0))
    backends: dict[str, str | None] = {"torch": None}
    backends["torch+triton"] = "no CUDA GPU" if gpu is None else _importable("triton")
    backends["onnxruntime"] = _importable("onnxruntime")
    if backends["onnxruntime"] is None:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            backends["onnxruntime-cuda"] = "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
        else:
            backends["onnxruntime-cuda"] = None if gpu else "no CUDA GPU"
    trt = _importable("tensorrt")
    backends["tensorrt"] = trt or ("no CUDA GPU" if gpu is None else None)
    rtx = _importable("tensorrt_rtx")
    backends["tensorrt-rtx (build)"] = rtx
    backends["tensorrt-rtx (run)"] = rtx or (
        "no CUDA GPU"
        if gpu is None
        else ("TensorRT-RTX does not run on compute capability 9.x" if cc and cc.startswith("9.") else None)
    )
    return Environment({p: package_version(p) for p in PACKAGES}, gpu, cc, backends)
