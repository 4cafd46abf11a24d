"""Launch Triton kernels the way a TensorRT plugin does: raw device pointers, int sizes and a CUDA stream.

A launch is described once, by a :class:`KernelLaunch` (kernel, grid, warps, stages, compile-time constants, the runtime
argument order and the Triton signature). The JIT path runs it with :func:`run_launch`; an ahead-of-time path hands
the kernel, ``signature`` and ``constexprs`` to ``triton.compile(triton.compiler.ASTSource(...))`` and launches the
result with the same grid. Runtime arguments are always ordered inputs → int sizes → outputs.

A launch names its kernel (:class:`KernelRef`) rather than holding it: the kernel's module, which imports Triton, is
imported only when the launch runs or compiles, so planning (the export's AOT stages, TensorRT's shape arithmetic) works
where Triton is absent. This module imports no Triton.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

_TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int32: "i32"}


@dataclass(frozen=True)
class DevicePtr:
    """A raw device address plus the element type that Triton specialises the kernel on."""

    ptr: int
    dtype: torch.dtype

    def data_ptr(self) -> int:
        return self.ptr


def as_kernel_arg(x: torch.Tensor | int, dtype: torch.dtype, name: str) -> torch.Tensor | DevicePtr:
    """A tensor (checked to hold ``dtype``) or a raw address (wrapped as :class:`DevicePtr`) for a pointer argument."""
    if isinstance(x, torch.Tensor):
        if x.dtype != dtype:
            raise ValueError(f"{name} must be {dtype}; got {x.dtype}")
        return x
    return DevicePtr(int(x), dtype)


def sub_buffer(base: torch.Tensor | int, offset: int, dtype: torch.dtype, numel: int) -> torch.Tensor | DevicePtr:
    """A typed piece of a workspace starting ``offset`` bytes in: a view of a uint8 tensor, or a raw address."""
    if isinstance(base, torch.Tensor):
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        return base[offset : offset + nbytes].view(dtype)
    return DevicePtr(int(base) + offset, dtype)


def is_interpreted(kernel: Any) -> bool:
    """Whether ``kernel`` was decorated under ``TRITON_INTERPRET=1`` (runs on the CPU through NumPy)."""
    return type(kernel).__name__ == "InterpretedFunction"


def interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET`` switches Triton's CPU interpreter on, read as ``triton.jit`` reads it when it
    defines a kernel, without importing Triton (plans pick interpreter-safe constexprs from it)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on")


def pointer_type(dtype: torch.dtype) -> str:
    """Triton signature string of a pointer to ``dtype`` (``*bf16``...)."""
    return "*" + _TRITON_TYPES[dtype]


@dataclass(frozen=True)
class KernelRef:
    """A Triton kernel named by its module and attribute, imported on :meth:`resolve` (the module imports Triton)."""

    module: str
    name: str

    def resolve(self) -> Any:
        """The ``triton.jit`` function (or its interpreted form under ``TRITON_INTERPRET=1``)."""
        return getattr(importlib.import_module(self.module), self.name)


@dataclass(frozen=True)
class KernelLaunch:
    """One kernel launch: enough to run it through Triton's JIT or to compile it ahead of time.

    ``args`` names the runtime arguments in launch order (inputs, then int sizes, then outputs); ``signature`` maps each
    of them to a Triton type (``*bf16``, ``i32``...) and each constexpr to ``"constexpr"``, as ``ASTSource`` wants.
    """

    kernel: KernelRef
    grid: tuple[int, int, int]
    num_warps: int
    num_stages: int
    args: tuple[str, ...]
    signature: dict[str, str]
    constexprs: dict[str, Any]

    @property
    def name(self) -> str:
        return self.kernel.name


@contextlib.contextmanager
def _on_stream(stream: int | torch.cuda.Stream | None):
    if stream is None or not torch.cuda.is_available():
        yield
        return
    if isinstance(stream, int):
        stream = torch.cuda.ExternalStream(stream)
    with torch.cuda.stream(stream):
        yield


def run_launch(launch: KernelLaunch, args: Sequence[Any], stream: int | torch.cuda.Stream | None = None) -> Any:
    """Launch through Triton's JIT on ``stream`` (a raw ``cudaStream_t``, a torch stream, or None for the current one).

    Returns what Triton returns (the compiled kernel, whose ``metadata.shared`` and ``n_regs`` the benchmarks log).
    """
    if len(args) != len(launch.args):
        raise ValueError(f"{launch.name} takes {len(launch.args)} runtime arguments {launch.args}; got {len(args)}")
    with _on_stream(stream):
        return launch.kernel.resolve()[launch.grid](
            *args, **launch.constexprs, num_warps=launch.num_warps, num_stages=launch.num_stages
        )


# What the GDN kernels take: head dims (K, V each) and q/k/v dtypes; g, beta and states are fp32.
SUPPORTED_DIMS = (16, 32, 64, 128)
INPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def kernels_support(head_k: int, head_v: int, dtype: torch.dtype) -> bool:
    """Whether the GDN kernels take these head dims and q/k/v dtype (else callers use the torch reference)."""
    return head_k in SUPPORTED_DIMS and head_v in SUPPORTED_DIMS and dtype in INPUT_DTYPES


def check_kernel_sizes(
    batch: int, seq_len: int, num_heads: int, head_k: int, head_v: int, dtype: torch.dtype, inputs: str
) -> None:
    """Raise ``ValueError`` naming what is outside what the kernels take (``inputs`` names the dtype's tensors)."""
    if dtype not in INPUT_DTYPES:
        raise ValueError(f"{inputs} dtype must be one of {INPUT_DTYPES}; got {dtype}")
    if head_k not in SUPPORTED_DIMS or head_v not in SUPPORTED_DIMS:
        raise ValueError(f"head dims K={head_k}, V={head_v}: each must be one of {SUPPORTED_DIMS}")
    if batch < 1 or num_heads < 1 or seq_len < 1:
        raise ValueError(f"need B, H, T >= 1; got B={batch}, H={num_heads}, T={seq_len}")
