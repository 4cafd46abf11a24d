"""The arl2 GDN plugins for TensorRT, registered with the decorator API (``tensorrt.plugin``); import to register.

* ``arl2::gdn_state_update`` — the node the exporter's ``tensorrt`` target writes (:data:`GDN_PLUGIN`): ``register``
  (shapes/dtypes; ``present_state`` aliased to ``past_state`` when :func:`~arl2rt.plugins.gdn.trt_config.
  trt_plugin_config` says ``in_place_state``, which needs the builder's ``ALIASED_PLUGIN_IO_10_03`` preview feature),
  ``autotune`` (fp32/fp16/bf16 key and value, fp32 gates and state; tactics = kernel configurations) and ``impl``
  (JIT, TensorRT ≥ 10.6: runs the Triton kernels on TensorRT's stream). Its update takes two or three kernels and a
  workspace, so it has no ``aot_impl``.
* ``arl2::gdn_prep`` → ``arl2::gdn_scan`` [→ ``arl2::gdn_combine``] — the same update as one kernel per node, each with
  ``aot_impl`` (TensorRT ≥ 10.9: PTX embedded in the engine, which then runs without Python) and ``impl``. A graph that
  uses them passes W, U, the gate prefix sums and the segment results between the nodes as ordinary tensors
  (:func:`arl2rt.plugins.gdn.aot_stages.stage_tensor_shapes`); ``gdn_scan`` writes the new state itself when it runs as
  one segment (a dynamic token count), else ``gdn_combine`` (string attribute ``input_dtype``: the key/value dtype)
  does. Names, versions and attributes are :data:`~arl2rt.plugins.gdn.plugin_spec.AOT_STAGE_PLUGINS`, the declaration
  the exporter's ``tensorrt`` target (default ``--trt-plugin aot``) writes these nodes from.

Everything but the wrapping lives in :mod:`.aot_stages`, :mod:`.aot_compile` and :mod:`.trt_impl`, which import no
TensorRT and are tested in CI and on the H200 (``tools/check_trt_plugin_aot.py``). This module itself has never run:
TensorRT cannot be installed on this project's machines. No ``from __future__ import annotations`` here:
``tensorrt.plugin`` reads the annotations.
"""

from typing import List, Tuple, Union  # noqa: UP035 - tensorrt.plugin validates these typing forms

import tensorrt as trt
import tensorrt.plugin as trtp
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.plugins.gdn.aot_compile import compile_stage
from arl2rt.plugins.gdn.aot_stages import combine_stage, gdn_stages, stage_launch, stage_tensor_shapes
from arl2rt.plugins.gdn.constants import CHUNK_SIZE
from arl2rt.plugins.gdn.plugin_spec import GDN_COMBINE_PLUGIN, GDN_PLUGIN, GDN_PREP_PLUGIN, GDN_SCAN_PLUGIN
from arl2rt.plugins.gdn.trt_config import trt_plugin_config
from arl2rt.plugins.gdn.trt_impl import JIT_TACTICS, enqueue_state_update, run_stage_jit

_TORCH = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}
_DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_NS = GDN_PLUGIN.namespace
# the functions below take each spec's fields as keyword arguments: they must agree with the declarations
for _spec, _fields in (
    (GDN_PLUGIN, ["chunk_size"]),
    (GDN_PREP_PLUGIN, []),
    (GDN_SCAN_PLUGIN, []),
    (GDN_COMBINE_PLUGIN, ["input_dtype"]),
):
    if [f.name for f in _spec.fields] != _fields:
        raise Arl2rtError(
            f"{__name__}: {_spec.qualified_name} written for fields {_fields}, found {[f.name for f in _spec.fields]}"
        )


def _constant(expr, what: str) -> int:
    if expr.is_fake or not expr.is_constant:
        raise Arl2rtError(f"{_NS} AOT plugin: expected a build-time constant {what}, found a dynamic dimension")
    return expr.constant_value()


def _torch_dtype(dtype) -> torch.dtype:
    if dtype not in _TORCH:
        raise Arl2rtError(f"{_NS} plugin: expected key/value of float32, float16 or bfloat16, found {dtype}")
    return _TORCH[dtype]


# -- arl2::gdn_state_update (JIT) ----------------------------------------------------------------------------------
@trtp.register(GDN_PLUGIN.qualified_name)
def _state_update_desc(
    key: trtp.TensorDesc,
    value: trtp.TensorDesc,
    decay: trtp.TensorDesc,
    beta: trtp.TensorDesc,
    past_state: trtp.TensorDesc,
    chunk_size: int,
) -> Tuple[trtp.TensorDesc]:  # noqa: UP006
    if chunk_size != CHUNK_SIZE:
        raise Arl2rtError(f"{GDN_PLUGIN.qualified_name}: chunk_size {chunk_size}; the kernels use {CHUNK_SIZE}")
    return (past_state.aliased() if trt_plugin_config().in_place_state else past_state.like(),)


@trtp.autotune(GDN_PLUGIN.qualified_name)
def _state_update_autotune(key, value, decay, beta, past_state, outputs) -> List[trtp.AutoTuneCombination]:  # noqa: UP006
    # key and value share a dtype (one combination per position-wise choice); gates and state are fp32
    return [
        trtp.AutoTuneCombination("FP32|FP16|BF16, FP32|FP16|BF16, FP32, FP32, FP32, FP32", "LINEAR", list(JIT_TACTICS))
    ]


@trtp.impl(GDN_PLUGIN.qualified_name)
def _state_update_impl(key, value, decay, beta, past_state, outputs, stream: int, tactic: int) -> None:
    b, t, h, dk = (int(d) for d in key.shape)
    ptrs = {
        "key": key.data_ptr,
        "value": value.data_ptr,
        "decay": decay.data_ptr,
        "beta": beta.data_ptr,
        "past_state": past_state.data_ptr,
        "present_state": outputs[0].data_ptr,
    }
    enqueue_state_update(ptrs, b, t, h, dk, int(value.shape[3]), _torch_dtype(key.dtype), stream, tactic)


# -- arl2::gdn_prep, arl2::gdn_scan, arl2::gdn_combine (AOT, one kernel each) ----------------------------------------
def _stages(k: trtp.TensorDesc, v_dim):
    """The AOT stages for this node's sizes (head count and dims must be build-time constants; T may be dynamic)."""
    s = k.shape_expr
    t = s[1]
    seq_len = t.constant_value() if not t.is_fake and t.is_constant else None
    dims = (_constant(s[2], "head count"), _constant(s[3], "key dim"), _constant(v_dim, "value dim"))
    return {st.plugin: st for st in gdn_stages(*dims, _torch_dtype(k.dtype), seq_len=seq_len)}


def _aot_result(plugin: str, k: trtp.TensorDesc, v_dim):
    """(kernel name, PTX, launch parameters, extra ints) for stage ``plugin``, as aot_impl returns them."""
    kernel = compile_stage(_stages(k, v_dim)[plugin])
    stage = kernel.stage  # possibly with a smaller column tile, to fit the plain-launch shared memory
    grid, ints = stage_launch(stage, k.shape_expr[0], k.shape_expr[1], cdiv=trtp.cdiv)
    params = trtp.KernelLaunchParams()
    params.grid_x, params.grid_y, params.grid_z = grid
    params.block_x = kernel.block[0]
    params.shared_mem = kernel.shared
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(ints[name]) for name in stage.ints])
    return kernel.name, kernel.ptx, params, extra


def _run_stage(plugin: str, k, v_dim: int, tensors: dict, stream: int) -> None:
    """JIT impl of a stage: the launch its aot_impl embeds, through Triton's launcher on TensorRT's stream."""
    b, t, h, dk = (int(d) for d in k.shape)
    stage = {st.plugin: st for st in gdn_stages(h, dk, v_dim, _torch_dtype(k.dtype), seq_len=t)}[plugin]
    run_stage_jit(stage, {n: x.data_ptr for n, x in tensors.items()}, b, t, stream)


@trtp.register(GDN_PREP_PLUGIN.qualified_name)
def _prep_desc(
    k: trtp.TensorDesc, v: trtp.TensorDesc, g: trtp.TensorDesc, beta: trtp.TensorDesc
) -> Tuple[trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc]:  # noqa: UP006
    s = k.shape_expr
    shapes = stage_tensor_shapes(s[0], s[1], s[2], s[3], v.shape_expr[3], cdiv=trtp.cdiv)
    # W and U are stored in the input dtype, the prefix sums in fp32 (the kernels' contract)
    dtypes = {"w": k.dtype, "u": k.dtype, "gc": trt.float32}
    return tuple(trtp.from_shape_expr(shapes[n], dtype=dtypes[n]) for n in ("w", "u", "gc"))


@trtp.autotune(GDN_PREP_PLUGIN.qualified_name)
def _prep_autotune(k, v, g, beta, outputs) -> List[trtp.AutoTuneCombination]:  # noqa: UP006
    # W and U are stored in the key/value dtype; gates, prefix sums fp32
    return [
        trtp.AutoTuneCombination("FP32|FP16|BF16, FP32|FP16|BF16, FP32, FP32, FP32|FP16|BF16, FP32|FP16|BF16, FP32")
    ]


@trtp.aot_impl(GDN_PREP_PLUGIN.qualified_name)
def _prep_aot(
    k: trtp.TensorDesc, v: trtp.TensorDesc, g: trtp.TensorDesc, beta: trtp.TensorDesc, outputs, tactic: int
) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:  # noqa: UP006, UP007
    return _aot_result("gdn_prep", k, v.shape_expr[3])


@trtp.impl(GDN_PREP_PLUGIN.qualified_name)
def _prep_impl(k, v, g, beta, outputs, stream: int) -> None:
    tensors = {"k": k, "v": v, "g": g, "beta": beta, "w": outputs[0], "u": outputs[1], "gc": outputs[2]}
    _run_stage("gdn_prep", k, int(v.shape[3]), tensors, stream)


@trtp.register(GDN_SCAN_PLUGIN.qualified_name)
def _scan_desc(
    k: trtp.TensorDesc, w: trtp.TensorDesc, u: trtp.TensorDesc, gc: trtp.TensorDesc, s0: trtp.TensorDesc
) -> Tuple[trtp.TensorDesc]:  # noqa: UP006
    if k.shape_expr[0].is_fake:  # the dtype pass: shapes are not known yet
        return (s0.like(),)
    scan = _stages(k, u.shape_expr[3])["gdn_scan"]
    if scan.segments == 1:  # the scan writes the new state itself
        return (s0.aliased() if trt_plugin_config().in_place_state else s0.like(),)
    s = k.shape_expr
    shapes = stage_tensor_shapes(s[0], s[1], s[2], s[3], u.shape_expr[3], scan.segments, cdiv=trtp.cdiv)
    return (trtp.from_shape_expr(shapes["seg"], dtype=trt.float32),)


@trtp.autotune(GDN_SCAN_PLUGIN.qualified_name)
def _scan_autotune(k, w, u, gc, s0, outputs) -> List[trtp.AutoTuneCombination]:  # noqa: UP006
    return [trtp.AutoTuneCombination("FP32|FP16|BF16, FP32|FP16|BF16, FP32|FP16|BF16, FP32, FP32, FP32")]


@trtp.aot_impl(GDN_SCAN_PLUGIN.qualified_name)
def _scan_aot(
    k: trtp.TensorDesc,
    w: trtp.TensorDesc,
    u: trtp.TensorDesc,
    gc: trtp.TensorDesc,
    s0: trtp.TensorDesc,
    outputs,
    tactic: int,
) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:  # noqa: UP006, UP007
    return _aot_result("gdn_scan", k, u.shape_expr[3])


@trtp.impl(GDN_SCAN_PLUGIN.qualified_name)
def _scan_impl(k, w, u, gc, s0, outputs, stream: int) -> None:
    tensors = {"k": k, "w": w, "u": u, "gc": gc, "s0": s0, "seg": outputs[0], "out": outputs[0]}
    _run_stage("gdn_scan", k, int(u.shape[3]), tensors, stream)


@trtp.register(GDN_COMBINE_PLUGIN.qualified_name)
def _combine_desc(seg: trtp.TensorDesc, input_dtype: str) -> Tuple[trtp.TensorDesc]:  # noqa: UP006
    s = seg.shape_expr  # [B, H, segments, K, V + K] -> [B, H, K, V]
    return (trtp.from_shape_expr((s[0], s[1], s[3], s[4] - s[3]), dtype=trt.float32),)


def _combine(seg_shape, input_dtype: str):
    if input_dtype not in _DTYPE_NAMES:
        raise Arl2rtError(
            f"{_NS}::gdn_combine: input_dtype expected one of {sorted(_DTYPE_NAMES)}, found {input_dtype!r}"
        )
    h, nseg, dk, dkv = seg_shape
    return combine_stage(h, nseg, dk, dkv - dk, _DTYPE_NAMES[input_dtype])


@trtp.aot_impl(GDN_COMBINE_PLUGIN.qualified_name)
def _combine_aot(
    seg: trtp.TensorDesc, input_dtype: str, outputs, tactic: int
) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:  # noqa: UP006, UP007
    s = seg.shape_expr
    sizes = [_constant(s[i], f"segment buffer dim {i}") for i in (1, 2, 3, 4)]
    kernel = compile_stage(_combine(sizes, input_dtype))
    grid, ints = stage_launch(kernel.stage, s[0], 0)
    params = trtp.KernelLaunchParams()
    params.grid_x, params.grid_y, params.grid_z = grid
    params.block_x = kernel.block[0]
    params.shared_mem = kernel.shared
    return kernel.name, kernel.ptx, params, trtp.SymIntExprs.from_tuple([trtp.SymInt32(ints["NSEG"])])


@trtp.impl(GDN_COMBINE_PLUGIN.qualified_name)
def _combine_impl(seg, input_dtype: str, outputs, stream: int) -> None:
    b, *sizes = (int(d) for d in seg.shape)
    run_stage_jit(_combine(sizes, input_dtype), {"seg": seg.data_ptr, "out": outputs[0].data_ptr}, b, 0, stream)
