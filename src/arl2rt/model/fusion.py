"""Fusing the DiT's pointwise chains (norms, AdaLN, RoPE, gates) on CUDA with ``torch.compile``.

Eager PyTorch runs each cast, multiply and add of a norm or a RoPE as its own kernel over the whole activation: at
Wan2.1-1.3B dims that was 65 % of an all-hybrid block on the H200 (benchmarks/results/stream_scaling.md). Each
function decorated with :func:`fused` is a short pointwise chain whose plain body is the reference; on CUDA, at
inference, it runs through ``torch.compile`` instead, which emits one Triton kernel per chain. Shapes inside these
chains never depend on the stream's length, so each compiles once per model shape.

The plain body runs on the CPU, with autograd (training), while torch.export or torch.compile trace, and everywhere
when ``ARL2RT_FUSE=0``.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable[..., torch.Tensor])


def fusion_wanted(x: torch.Tensor) -> bool:
    """Whether a chain on ``x`` should run compiled: CUDA, no autograd, not tracing, not switched off."""
    return (
        x.is_cuda
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and os.environ.get("ARL2RT_FUSE", "1") != "0"
    )


class _Chain:
    """A pointwise chain: its plain body, and its compiled form once one has been built and has run."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn = fn
        self.compiled: Callable[..., torch.Tensor] | None = None
        self.proven = False  # a compiled call has succeeded
        self.unavailable = False  # the first compiled call failed: plain body from now on
        functools.update_wrapper(self, fn)

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.unavailable or not fusion_wanted(x):
            return self.fn(x, *args, **kwargs)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=False, fullgraph=True)
        try:
            out = self.compiled(x, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: run the plain body
            if self.proven:
                raise
            self.unavailable = True
            warnings.warn(
                f"arl2rt: torch.compile could not fuse {self.fn.__name__} ({type(exc).__name__}: {str(exc)[:200]}); "
                "running it unfused (set ARL2RT_FUSE=0 to skip the attempt)",
                RuntimeWarning,
                stacklevel=2,
            )
            return self.fn(x, *args, **kwargs)
        self.proven = True
        return out


def fused(fn: F) -> F:
    """Run ``fn`` compiled where :func:`fusion_wanted` holds for its first argument, else as written.

    If the first compiled call fails (a platform where ``torch.compile`` cannot build kernels), the chain warns once
    and runs as written from then on; a failure after a compiled call has succeeded is re-raised.
    """
    return _Chain(fn)  # type: ignore[return-value]
