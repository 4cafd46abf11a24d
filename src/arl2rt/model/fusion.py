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
        self.over_limit = False  # dynamo's recompile limit was hit: shapes beyond it run the plain body
        functools.update_wrapper(self, fn)

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.unavailable or not fusion_wanted(x):
            return self.fn(x, *args, **kwargs)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=False, fullgraph=True)
        try:
            out = self.compiled(x, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: run the plain body
            if self.proven and _recompile_limit(exc):
                # one process meeting more shapes than dynamo keeps graphs for (several models, tests): these
                # shapes run as written; the shapes compiled so far stay compiled
                if not self.over_limit:
                    self.over_limit = True
                    warnings.warn(
                        f"arl2rt: {self.fn.__name__} met more shapes than torch.compile keeps; running the new ones "
                        "unfused",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                return self.fn(x, *args, **kwargs)
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


def _recompile_limit(exc: Exception) -> bool:
    """Dynamo refused to compile one more variant of a chain (its per-function recompile limit)."""
    limit_hit = getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", ())
    return isinstance(exc, limit_hit) or "recompile limit" in str(exc).lower()


def fused(fn: F) -> F:
    """Run ``fn`` compiled where :func:`fusion_wanted` holds for its first argument, else as written.

    If the first compiled call fails (a platform where ``torch.compile`` cannot build kernels), the chain warns once
    and runs as written from then on; past dynamo's recompile limit, new shapes run as written (warned once); any other
    failure after a compiled call has succeeded is re-raised.
    """
    return _Chain(fn)  # type: ignore[return-value]
