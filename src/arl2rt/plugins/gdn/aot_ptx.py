"""PTX surgery for TensorRT's AOT plugins: read a kernel's ``.entry`` parameters and drop Triton's scratch pointers.

TensorRT launches an ``aot_impl`` kernel with the arguments **inputs → extra ints → outputs** and nothing else. Triton
≥ 3.3 appends two pointer parameters (global and profile scratch) to every PTX ``.entry`` that TensorRT never passes;
:func:`strip_trailing_params` deletes them after checking that the body never reads them (their sizes must be 0, which
:func:`arl2rt.plugins.gdn.aot_compile.compile_aot` checks), so the entry's parameter count is exactly inputs + ints +
outputs. Plain text processing: no Triton, no TensorRT.
"""

from __future__ import annotations

import re

from arl2rt.errors import Arl2rtError

# Triton >= 3.3: trailing (global_scratch, profile_scratch) pointers in every entry.
TRITON_SCRATCH_PARAMS = 2


def _entry_span(ptx: str, name: str) -> tuple[int, int]:
    """(start, end) of the parameter list between the parentheses of ``.entry name(...)``."""
    m = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\(", ptx)
    if m is None:
        raise Arl2rtError(f"PTX of {name}: expected an `.entry {name}(` declaration, found none")
    end = ptx.index(")", m.end())
    return m.end(), end


def ptx_entry_params(ptx: str, name: str) -> list[str]:
    """The parameter declarations of kernel ``name``'s ``.entry``, in order (``.param .u64 ... name_param_0``...)."""
    start, end = _entry_span(ptx, name)
    return [p.strip() for p in ptx[start:end].split(",") if p.strip()]


def ptx_header(ptx: str) -> dict[str, str]:
    """``.version`` and ``.target`` of a PTX module (the driver must accept the version)."""
    found = {}
    for field in ("version", "target"):
        m = re.search(r"^\s*\." + field + r"\s+(\S+)", ptx, re.M)
        found[field] = m.group(1) if m else "?"
    return found


def strip_trailing_params(ptx: str, name: str, count: int) -> str:
    """``ptx`` with the last ``count`` parameters of ``.entry name`` removed; refuses if the body reads any of them."""
    params = ptx_entry_params(ptx, name)
    if count > len(params):
        raise Arl2rtError(f"PTX of {name}: cannot drop {count} of {len(params)} entry parameters")
    keep = len(params) - count
    start, end = _entry_span(ptx, name)
    body = ptx[end:]
    for i in range(keep, len(params)):
        if re.search(rf"\b{re.escape(name)}_param_{i}\b", body):
            raise Arl2rtError(f"PTX of {name}: expected parameter {i} (Triton scratch) unused, found it read")
    inner = ",\n".join(f"\t{p}" for p in params[:keep])
    return ptx[:start] + "\n" + inner + "\n" + ptx[end:]
