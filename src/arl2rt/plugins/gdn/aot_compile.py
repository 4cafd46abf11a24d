"""Compile an AOT stage with Triton as TensorRT's ``aot_impl`` does, to a PTX entry that matches TensorRT's call.

* :func:`compile_aot` — ``triton.compile(ASTSource(kernel, signature, constexprs))``; refuses float runtime scalars,
  scratch memory and an entry whose parameter count is not the stage's (+ Triton's scratch pointers, which
  :mod:`.aot_ptx` strips).
* **Shared memory.** A plain launch may use at most 48 KB of dynamic shared memory; more needs the kernel's
  ``MAX_DYNAMIC_SHARED_SIZE_BYTES`` raised first, and whether TensorRT's AOT launcher does that is not known here.
  So :func:`compile_aot` refuses a kernel above 48 KB unless ``allow_opt_in`` is given, and :func:`compile_stage`
  (what ``aot_impl`` calls) first halves the stage's column tile until it fits. How much a kernel takes depends on
  the Triton build (benchmarks/results/trt_plugin_aot.md), so the check runs where the engine is built.

Imports no ``tensorrt`` (CI and ``tools/check_trt_plugin_aot.py`` run exactly what ``aot_impl`` runs), and Triton only
when compiling. Not covered: AOT PTX is compiled without Triton's 16-byte pointer-alignment specialisation (correct for
any pointer, possibly slower than the JIT path), and the PTX ``.version`` is whatever the installed Triton emits (the
driver that runs the engine must accept it: build on the deployment machine).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from arl2rt.errors import Arl2rtError
from arl2rt.plugins.common import is_interpreted
from arl2rt.plugins.gdn.aot_ptx import TRITON_SCRATCH_PARAMS, ptx_entry_params, ptx_header, strip_trailing_params
from arl2rt.plugins.gdn.aot_stages import AotStage, gdn_stages

# 48 KB: the dynamic shared memory a launch may use without cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES).
AOT_SHARED_LIMIT = 48 * 1024


@dataclass(frozen=True)
class AotKernel:
    """A compiled stage, ready for ``aot_impl``: its PTX entry takes exactly ``stage.kernel_args``."""

    stage: AotStage
    name: str
    ptx: str
    num_warps: int
    shared: int
    params: int
    removed_params: int
    header: dict[str, str]

    @property
    def block(self) -> tuple[int, int, int]:
        return (self.num_warps * 32, 1, 1)


def _jit_function(kernel: Any) -> Any:
    """The kernel as a compilable JITFunction, also when its module was imported under ``TRITON_INTERPRET=1``."""
    if is_interpreted(kernel):
        from triton.runtime.jit import JITFunction

        return JITFunction(kernel.fn)
    return kernel


def compile_aot(
    stage: AotStage,
    *,
    target: Any = None,
    shared_limit: int = AOT_SHARED_LIMIT,
    allow_opt_in: bool = False,
) -> AotKernel:
    """Compile ``stage`` with Triton as ``aot_impl`` does and make its PTX entry match TensorRT's calling convention.

    ``target``: a ``triton.backends.compiler.GPUTarget`` (None: the current GPU, as in ``aot_impl``; pass one to
    compile without a GPU). Raises Arl2rtError for float runtime scalars, scratch memory, an entry whose parameter
    count is not declared (+ Triton's scratch pointers), or shared memory above ``shared_limit`` without opt-in.
    """
    import triton
    from triton.compiler import ASTSource

    launch = stage.launch
    floats = [a for a in stage.kernel_args if launch.signature[a] in ("fp16", "bf16", "fp32", "fp64")]
    if floats:
        raise Arl2rtError(f"AOT stage {stage.plugin}: float runtime arguments {floats}; expected them as constexprs")
    signature = dict(launch.signature)
    constexprs = dict(launch.constexprs)
    for name in stage.unused:
        signature[name], constexprs[name] = "constexpr", None
    source = ASTSource(fn=_jit_function(launch.kernel.resolve()), signature=signature, constexprs=constexprs)
    options = {"num_warps": launch.num_warps, "num_stages": launch.num_stages}
    compiled = triton.compile(source, target=target, options=options)
    meta = compiled.metadata
    for field in ("global_scratch_size", "profile_scratch_size"):
        if getattr(meta, field, 0):
            raise Arl2rtError(f"AOT stage {stage.plugin}: expected {field} 0, found {getattr(meta, field)}")
    ptx, declared = compiled.asm["ptx"], len(stage.kernel_args)
    found = len(ptx_entry_params(ptx, meta.name))
    if found not in (declared, declared + TRITON_SCRATCH_PARAMS):
        raise Arl2rtError(
            f"AOT stage {stage.plugin}: PTX entry {meta.name} has {found} parameters; expected {declared} "
            f"(inputs + ints + outputs) or {declared + TRITON_SCRATCH_PARAMS} with Triton's scratch pointers"
        )
    if found > declared:
        ptx = strip_trailing_params(ptx, meta.name, found - declared)
    if meta.shared > shared_limit and not allow_opt_in:
        raise Arl2rtError(
            f"AOT stage {stage.plugin}: kernel {meta.name} needs {meta.shared} bytes of shared memory; expected at "
            f"most {shared_limit} (more needs an opt-in TensorRT's AOT launcher is not known to make)"
        )
    return AotKernel(
        stage,
        meta.name,
        ptx,
        meta.num_warps,
        meta.shared,
        len(ptx_entry_params(ptx, meta.name)),
        found - declared,
        ptx_header(ptx),
    )


# the column-tile knob of each stage: shrinking it changes only that stage's grid, never a tensor between stages
_TILE_KNOBS = {"gdn_scan": "block_v", "gdn_combine": "combine_block_v"}


def compile_stage(
    stage: AotStage, *, target: Any = None, shared_limit: int = AOT_SHARED_LIMIT, allow_opt_in: bool = False
) -> AotKernel:
    """:func:`compile_aot`, retrying with half the stage's column tile (down to 16) while it needs more shared memory
    than ``shared_limit`` (how much a kernel takes depends on the Triton build: the H200 image's Triton 3.6 gave the
    bf16 combine 88 KB where PyPI's 3.6.0 gives 40 KB). The segment count, and so every tensor shape, stays fixed."""
    tried = []
    while True:
        kernel = compile_aot(stage, target=target, allow_opt_in=True)
        tried.append((stage.launch.constexprs.get("BV"), kernel.shared))
        knob, bv = _TILE_KNOBS.get(stage.plugin), stage.launch.constexprs.get("BV", 0)
        if kernel.shared <= shared_limit or allow_opt_in or knob is None or bv // 2 < 16:
            break
        config = dataclasses.replace(stage.config, segments=stage.segments, **{knob: bv // 2})
        heads, head_k, head_v, dtype, seq_len = stage.sizes
        stage = {s.plugin: s for s in gdn_stages(heads, head_k, head_v, dtype, seq_len, config)}[stage.plugin]
    if kernel.shared > shared_limit and not allow_opt_in:
        raise Arl2rtError(
            f"AOT stage {stage.plugin}: kernel {kernel.name} needs more than {shared_limit} bytes of shared memory at "
            f"every tile tried (BV, bytes) {tried}; more needs an opt-in TensorRT's AOT launcher is not known to make"
        )
    return kernel
