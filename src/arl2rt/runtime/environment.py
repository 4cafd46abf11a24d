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


def dist_location(dist: str) -> str | None:
    """The sys.path entry that holds ``dist`` (its site-packages or a ``pip --target`` dir), None if not installed."""
    try:
        return str(importlib.metadata.distribution(dist).locate_file(""))
    except importlib.metadata.PackageNotFoundError:
        return None


def _importable(module: str) -> str | None:
    """None if ``module`` imports, else the reason it does not."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure is a reason to report, not to crash
        return f"import {module} failed: {type(exc).__name__}: {exc}".splitlines()[0][:200]
    return None


CUDA_EP = "CUDAExecutionProvider"


@dataclass
class OnnxruntimeBuild:
    """The onnxruntime that ``import onnxruntime`` finds and whether its CUDA EP can run here."""

    module: str | None  # the imported package's __init__.py, None if it does not import
    providers: list[str]
    cuda_ep: str | None  # None if CUDAExecutionProvider can run, else why not


def onnxruntime_build(gpu: str | None) -> OnnxruntimeBuild:
    """Which onnxruntime imports, its providers, and why its CUDA EP cannot run, most specific cause first.

    onnxruntime (CPU) and onnxruntime-gpu install the same ``onnxruntime`` package: in one site-packages the later
    install overwrites the earlier's files; in two sys.path entries the first one wins."""
    cpu, cuda = package_version("onnxruntime"), package_version("onnxruntime-gpu")
    reinstall = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
    try:
        import onnxruntime as ort

        module, providers = ort.__file__, list(ort.get_available_providers())
        version = getattr(ort, "__version__", "?")
    except Exception as exc:  # noqa: BLE001 - a broken install is a reason to report, not to crash
        if cpu is None and cuda is None:
            return OnnxruntimeBuild(
                None, [], f"{CUDA_EP} needs onnxruntime-gpu, which is not installed (pip install onnxruntime-gpu)"
            )
        return OnnxruntimeBuild(
            None, [], f"import onnxruntime failed: {type(exc).__name__}: {exc}".splitlines()[0][:200]
        )
    where = f"providers: {', '.join(providers) or 'none'}; no {CUDA_EP}"
    if cpu is not None and cuda is not None:
        if dist_location("onnxruntime") == dist_location("onnxruntime-gpu"):
            return OnnxruntimeBuild(
                module,
                providers,
                f"onnxruntime {cpu} and onnxruntime-gpu {cuda} are both installed in {dist_location('onnxruntime')} "
                f"and shadow each other (one overwrote the other's files), so {CUDA_EP} cannot be trusted: {reinstall}",
            )
        if CUDA_EP not in providers:
            return OnnxruntimeBuild(
                module,
                providers,
                f"onnxruntime {cpu} shadows onnxruntime-gpu {cuda} (in {dist_location('onnxruntime-gpu')}) ({where}): "
                "uninstall onnxruntime or put onnxruntime-gpu's folder first on PYTHONPATH",
            )
    if CUDA_EP not in providers:
        if cuda is None:
            return OnnxruntimeBuild(
                module,
                providers,
                f"onnxruntime {version} is a CPU-only build ({where}): {reinstall}",
            )
        return OnnxruntimeBuild(
            module,
            providers,
            f"onnxruntime-gpu {cuda} is installed but the onnxruntime imported ({module}) "
            f"is a CPU-only build ({where})",
        )
    if gpu is None:
        return OnnxruntimeBuild(
            module, providers, f"{CUDA_EP} is built in but torch sees no CUDA GPU (driver or device)"
        )
    return OnnxruntimeBuild(module, providers, None)


@dataclass
class Environment:
    versions: dict[str, str | None]
    gpu: str | None
    compute_capability: str | None
    backends: dict[str, str | None] = field(default_factory=dict)  # name -> None if usable, else why not
    onnxruntime: OnnxruntimeBuild | None = None

    def to_dict(self) -> dict:
        return {
            "versions": self.versions,
            "gpu": self.gpu,
            "compute_capability": self.compute_capability,
            "backends": {k: {"available": v is None, "reason": v} for k, v in self.backends.items()},
            "onnxruntime": None
            if self.onnxruntime is None
            else {"module": self.onnxruntime.module, "providers": self.onnxruntime.providers},
        }


def probe() -> Environment:
    gpu = cc = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        cc = "{}.{}".format(*torch.cuda.get_device_capability(0))
    backends: dict[str, str | None] = {"torch": None}
    backends["torch+triton"] = "no CUDA GPU" if gpu is None else _importable("triton")
    ort = onnxruntime_build(gpu)
    backends["onnxruntime"] = _importable("onnxruntime")
    backends["onnxruntime-cuda"] = ort.cuda_ep
    trt = _importable("tensorrt")
    backends["tensorrt"] = trt or ("no CUDA GPU" if gpu is None else None)
    rtx = _importable("tensorrt_rtx")
    backends["tensorrt-rtx (build)"] = rtx
    backends["tensorrt-rtx (run)"] = rtx or (
        "no CUDA GPU"
        if gpu is None
        else ("TensorRT-RTX does not run on compute capability 9.x" if cc and cc.startswith("9.") else None)
    )
    return Environment({p: package_version(p) for p in PACKAGES}, gpu, cc, backends, ort)
