"""Launch plans of the chunked GDN kernels: grids, warps, constexprs, signatures and the workspace layout.

A plan names its kernels (:class:`~arl2rt.plugins.common.KernelRef` into :mod:`arl2rt.plugins.gdn.chunk_kernels`)
and imports no Triton, so the export's AOT stages and TensorRT's launch arithmetic are planned where Triton is absent.
What the kernels compute, and the precision contract the knobs below choose within, is in that module's docstring.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from arl2rt.plugins.common import KernelLaunch, KernelRef, check_kernel_sizes, interpreter_enabled, pointer_type
from arl2rt.plugins.gdn.constants import CHUNK_SIZE

_ALIGN = 256
_KERNELS = "arl2rt.plugins.gdn.chunk_kernels"


@dataclass(frozen=True)
class ChunkConfig:
    """Tuning knobs; the defaults are the H200 choices recorded in benchmarks/results/gdn_kernels.md.

    ``segments``: how many pieces T is cut into for the scan (None: enough for about ``target_programs`` programs).
    ``block_v``: state columns per scan program (None: 64 for half inputs, 32 for fp32, whose split tf32x3 operands
    need more registers). ``scan_stages``: software-pipelining depth of the scan (1 keeps every half-input kernel within
    48 KB of shared memory, for ahead-of-time launches). ``half_dots``: see :mod:`~arl2rt.plugins.gdn.chunk_kernels`.
    ``precision``: Triton ``input_precision`` of fp32 products (None: "tf32x3" for fp32 inputs, "tf32" for half inputs).
    ``store_dtype``: dtype of W and U in the workspace (None: the input dtype; fp32 is more accurate and slower).
    ``prep_precision``: ``input_precision`` of the prep's products for fp32 inputs (None: as ``precision``); "ieee"
    (CUDA-core fp32) needs 32 KB of shared memory where tf32x3 stages both halves of both operands (64 KB), over the
    48 KB an ahead-of-time launch may use.
    """

    segments: int | None = None
    target_programs: int = 264
    block_v: int | None = None
    scan_warps: int = 4
    scan_stages: int = 2
    prep_warps: int = 4
    combine_block_v: int = 32
    combine_warps: int = 4
    output_warps: int = 8
    half_dots: bool = True
    precision: str | None = None
    store_dtype: torch.dtype | None = None
    prep_precision: str | None = None


@dataclass(frozen=True)
class ChunkPlan:
    """The launches of one call and how its workspace is cut: ``buffers[name] = (byte offset, dtype, numel)``."""

    launches: tuple[KernelLaunch, ...]
    buffers: dict[str, tuple[int, torch.dtype, int]]
    workspace_bytes: int
    segments: int
    chunks_per_segment: int


def _segments(cfg: ChunkConfig, bh: int, nt: int, ndv: int, ncol: int) -> int:
    if cfg.segments is not None:
        want = cfg.segments
    else:
        # programs = bh * (ndv + (P - 1) * ncol); more segments shorten the chain but add K×K transition work
        want = 1 + max(0, round((cfg.target_programs / bh - ndv) / ncol))
    want = max(1, min(want, nt))
    cps = math.ceil(nt / want)
    return math.ceil(nt / cps)


@functools.lru_cache(maxsize=256)
def plan_chunk(
    batch: int,
    seq_len: int,
    num_heads: int,
    head_k: int,
    head_v: int,
    dtype: torch.dtype,
    *,
    with_output: bool = False,
    scale: float | None = None,
    has_initial_state: bool = True,
    config: ChunkConfig | None = None,
) -> ChunkPlan:
    """Launch parameters (grids, warps, stages, constexprs, signatures) and workspace layout for given sizes.

    This is what an ahead-of-time (TensorRT ``aot_impl``) path reuses: each :class:`KernelLaunch` names the kernel and
    carries its Triton signature and constexprs, its grid and ``num_warps``/``num_stages``. Under Triton's CPU
    interpreter (``TRITON_INTERPRET=1`` when planning) bf16 products are planned on fp32 copies. Shared memory per
    kernel is known once compiled (``triton.compile(...).metadata.shared``); the H200 values are logged by
    ``benchmarks/gdn_kernels.py``.
    """
    check_kernel_sizes(batch, seq_len, num_heads, head_k, head_v, dtype, "q/k/v")
    cfg = config or ChunkConfig()
    K, V, bh = head_k, head_v, batch * num_heads
    nt = math.ceil(seq_len / CHUNK_SIZE)
    bv = min(cfg.block_v or (32 if dtype == torch.float32 else 64), K, V)
    ndv, ncol = V // bv, V // bv + K // bv
    nseg = 1 if with_output else _segments(cfg, bh, nt, ndv, ncol)
    cps = math.ceil(nt / nseg)
    prec = cfg.precision or ("tf32x3" if dtype == torch.float32 else "tf32")
    half_dots = cfg.half_dots and dtype != torch.float32
    # Triton's CPU interpreter multiplies bf16 operands as raw integers; there, half products run on exact fp32 copies
    upcast = interpreter_enabled() and dtype == torch.bfloat16

    buffers: dict[str, tuple[int, torch.dtype, int]] = {}
    offset = 0

    def add(name: str, dt: torch.dtype, numel: int) -> None:
        nonlocal offset
        buffers[name] = (offset, dt, numel)
        offset += -(-numel * torch.empty((), dtype=dt).element_size() // _ALIGN) * _ALIGN

    sdt = cfg.store_dtype or dtype
    add("w", sdt, bh * nt * CHUNK_SIZE * K)
    add("u", sdt, bh * nt * CHUNK_SIZE * V)
    add("gc", torch.float32, bh * nt * CHUNK_SIZE)
    if nseg > 1:
        add("seg", torch.float32, bh * nseg * K * (V + K))
    if with_output:
        add("hs", torch.float32, bh * nt * K * V)

    ptr = pointer_type(dtype)
    sptr = pointer_type(sdt)
    f32 = pointer_type(torch.float32)
    launches = [
        KernelLaunch(
            KernelRef(_KERNELS, "_prep_kernel"),
            (nt, bh, 1),
            cfg.prep_warps,
            1,
            ("k", "v", "g", "beta", "T", "H", "w", "u", "gc"),
            {"k": ptr, "v": ptr, "g": f32, "beta": f32, "T": "i32", "H": "i32", "w": sptr, "u": sptr, "gc": f32},
            {
                "K": K,
                "V": V,
                "PREC": (dtype == torch.float32 and cfg.prep_precision) or prec,
                "ROW_SCALED": not with_output,
                "UPCAST": upcast,
            },
        ),
        KernelLaunch(
            KernelRef(_KERNELS, "_scan_kernel"),
            (ndv + (nseg - 1) * ncol, bh, 1),
            cfg.scan_warps,
            cfg.scan_stages,
            ("k", "w", "u", "gc", "s0", "T", "H", "NT", "CPS", "NSEG", "dst", "hs"),
            {
                "k": ptr,
                "w": sptr,
                "u": sptr,
                "gc": f32,
                "s0": f32,
                "T": "i32",
                "H": "i32",
                "NT": "i32",
                "CPS": "i32",
                "NSEG": "i32",
                "dst": f32,
                "hs": f32,
            },
            {
                "K": K,
                "V": V,
                "BV": bv,
                "SINGLE": nseg == 1,
                "HAS_S0": has_initial_state,
                "STORE_STATES": with_output,
                "ROW_SCALED": not with_output,
                "HALF_DOTS": half_dots,
                "PREC": prec,
                "UPCAST": upcast,
            },
        ),
    ]
    if nseg > 1:
        launches.append(
            KernelLaunch(
                KernelRef(_KERNELS, "_combine_kernel"),
                (V // min(cfg.combine_block_v, V), bh, 1),
                cfg.combine_warps,
                1,
                ("seg", "NSEG", "out"),
                {"seg": f32, "NSEG": "i32", "out": f32},
                {"K": K, "V": V, "BV": min(cfg.combine_block_v, V), "PREC": prec},
            )
        )
    if with_output:
        launches.append(
            KernelLaunch(
                KernelRef(_KERNELS, "_output_kernel"),
                (nt, bh, V // bv),
                cfg.output_warps,
                1,
                ("q", "k", "w", "u", "gc", "hs", "T", "H", "NT", "o"),
                {
                    "q": ptr,
                    "k": ptr,
                    "w": sptr,
                    "u": sptr,
                    "gc": f32,
                    "hs": f32,
                    "T": "i32",
                    "H": "i32",
                    "NT": "i32",
                    "o": ptr,
                },
                {
                    "K": K,
                    "V": V,
                    "BV": bv,
                    "SCALE": K**-0.5 if scale is None else float(scale),
                    "PREC": prec,
                    "UPCAST": upcast,
                },
            )
        )
    for launch in launches:
        launch.signature.update(dict.fromkeys(launch.constexprs, "constexpr"))
    return ChunkPlan(tuple(launches), buffers, offset, nseg, cps)


__all__ = ["ChunkConfig", "ChunkPlan", "plan_chunk"]
