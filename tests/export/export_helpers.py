"""Helpers of the export tests: a one-node GDN graph, realistic GDN inputs, the float64 oracle."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import torch

from arl2rt.plugins.gdn.naive import naive_recurrent_gated_delta_rule
from arl2rt.plugins.gdn.plugin_spec import GDN_PLUGIN, register_onnx_schema

GDN_INPUTS = ("k", "v", "g", "beta", "state")


def gdn_graph(t: int, h: int, dk: int, dv: int, act: ir.DataType = ir.DataType.FLOAT) -> ir.Model:
    """One ``arl2::gdn_state_update`` node with batch-symbolic inputs, as the exporter emits it."""
    f32 = ir.DataType.FLOAT
    batch = ir.SymbolicDim("batch")
    k = ir.val("k", act, ir.Shape([batch, t, h, dk]))
    v = ir.val("v", act, ir.Shape([batch, t, h, dv]))
    g = ir.val("g", f32, ir.Shape([batch, t, h]))
    beta = ir.val("beta", f32, ir.Shape([batch, t, h]))
    state = ir.val("state", f32, ir.Shape([batch, h, dk, dv]))
    node = ir.Node(GDN_PLUGIN.namespace, GDN_PLUGIN.name, [k, v, g, beta, state], num_outputs=1)
    out = node.outputs[0]
    out.name, out.dtype, out.shape = "new_state", f32, ir.Shape([batch, h, dk, dv])
    graph = ir.Graph(
        [k, v, g, beta, state], [out], nodes=[node], opset_imports={"": 18, GDN_PLUGIN.namespace: 1}, name="gdn"
    )
    return ir.Model(graph, ir_version=10)


def gdn_inputs(b: int, t: int, h: int, dk: int, dv: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs as the model makes them: L2-normalised keys that are correlated across tokens (as neighbouring video
    tokens are), g = -a softplus(.) <= 0, beta in (0, 2), a random (never zero) incoming state."""
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randn(b, 1, h, dk, generator=gen)
    k = torch.nn.functional.normalize(shared + 0.7 * torch.randn(b, t, h, dk, generator=gen), dim=-1)
    v = torch.randn(b, t, h, dv, generator=gen)
    a = torch.rand(h, generator=gen) + 0.5
    g = -a * torch.nn.functional.softplus(torch.randn(b, t, h, generator=gen) - 3)
    beta = 2 * torch.sigmoid(torch.randn(b, t, h, generator=gen))
    state = torch.randn(b, h, dk, dv, generator=gen)
    return {n: x.numpy() for n, x in zip(GDN_INPUTS, (k, v, g, beta, state))}


def gdn_reference(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The float64 token recurrence: the oracle every GDN graph is checked against."""
    k, v, g, beta, state = (torch.from_numpy(inputs[n].astype(np.float64)) for n in GDN_INPUTS)
    return naive_recurrent_gated_delta_rule(None, k, v, g, beta, initial_state=state)[1].numpy()


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Max abs error relative to the largest magnitude of the reference."""
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


def to_proto(model: ir.Model) -> onnx.ModelProto:
    register_onnx_schema()
    return ir.serde.serialize_model(model)


def run_ort(model: ir.Model | onnx.ModelProto | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    if isinstance(model, ir.Model):
        model = to_proto(model)
    source = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def op_types(model: ir.Model) -> list[str]:
    return [f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in model.graph]


class GdnStateUpdateRef:
    """``arl2::gdn_state_update`` for onnx's ReferenceEvaluator: evaluates a ``tensorrt`` graph without TensorRT."""

    @staticmethod
    def op_run():
        from onnx.reference.op_run import OpRun

        from arl2rt.plugins.gdn.naive import naive_chunk_gated_delta_rule_state

        class gdn_state_update(OpRun):  # noqa: N801 - OpRun looks ops up by class name
            op_domain = GDN_PLUGIN.namespace

            def _run(self, k, v, g, beta, state, chunk_size=64, plugin_namespace=None, plugin_version=None):
                args = (torch.from_numpy(np.asarray(x, dtype=np.float32)) for x in (k, v, g, beta, state))
                return (naive_chunk_gated_delta_rule_state(*args, chunk_size=chunk_size).numpy(),)

        return gdn_state_update


def interpreted_aot():
    """:mod:`arl2rt.plugins.gdn.aot_stages` with kernels that run here: compiled on a GPU, else under Triton's CPU
    interpreter (``TRITON_INTERPRET=1`` must be set before the kernels are defined, so they are re-imported if it was
    not)."""
    import importlib
    import os

    from arl2rt.plugins.common import is_interpreted
    from arl2rt.plugins.gdn import aot_stages, chunk_kernels

    if not torch.cuda.is_available() and not is_interpreted(chunk_kernels._prep_kernel):
        os.environ["TRITON_INTERPRET"] = "1"
        importlib.reload(chunk_kernels)
    return aot_stages


class AotStageRefs:
    """``arl2::gdn_prep``/``gdn_scan``/``gdn_combine`` for onnx's ReferenceEvaluator: each node runs its one Triton
    kernel with the launch its ``aot_impl`` embeds (same grid, extra ints, argument order), outputs NaN-poisoned first,
    so an AOT ``tensorrt`` graph is evaluated node by node without TensorRT."""

    @staticmethod
    def op_runs() -> list:
        from onnx.reference.op_run import OpRun

        from arl2rt.plugins.gdn.trt_impl import run_stage_jit

        aot = interpreted_aot()
        device = "cuda" if torch.cuda.is_available() else "cpu"

        def run(stage, inputs: dict, batch: int, seq_len: int, segments: int) -> tuple[np.ndarray, ...]:
            tensors = {n: torch.from_numpy(np.ascontiguousarray(x)).to(device) for n, x in inputs.items()}
            heads, head_k, head_v = stage.sizes[:3]
            shapes = aot.stage_tensor_shapes(batch, seq_len, heads, head_k, head_v, segments)
            for arg in stage.outputs:
                name = stage.tensors[arg]
                tensors[name] = torch.full(shapes[name], float("nan"), dtype=aot.stage_dtype(stage, arg), device=device)
            run_stage_jit(stage, tensors, batch, seq_len)
            return tuple(tensors[stage.tensors[a]].cpu().numpy() for a in stage.outputs)

        def stages(k: np.ndarray, v: np.ndarray) -> dict:
            b, t, h, dk = k.shape
            dtype = torch.from_numpy(k[:0]).dtype
            return {s.plugin: s for s in aot.gdn_stages(h, dk, v.shape[-1], dtype, seq_len=t)}

        class gdn_prep(OpRun):  # noqa: N801 - OpRun looks ops up by class name
            op_domain = GDN_PLUGIN.namespace

            def _run(self, k, v, g, beta, plugin_namespace=None, plugin_version=None):
                stage = stages(k, v)["gdn_prep"]
                return run(stage, {"k": k, "v": v, "g": g, "beta": beta}, k.shape[0], k.shape[1], 1)

        class gdn_scan(OpRun):  # noqa: N801
            op_domain = GDN_PLUGIN.namespace

            def _run(self, k, w, u, gc, s0, plugin_namespace=None, plugin_version=None):
                stage = stages(k, u)["gdn_scan"]
                inputs = {"k": k, "w": w, "u": u, "gc": gc, "s0": s0}
                return run(stage, inputs, k.shape[0], k.shape[1], stage.segments)

        class gdn_combine(OpRun):  # noqa: N801
            op_domain = GDN_PLUGIN.namespace

            def _run(self, seg, input_dtype=None, plugin_namespace=None, plugin_version=None):
                b, h, nseg, dk, dkv = seg.shape
                stage = aot.combine_stage(h, nseg, dk, dkv - dk, getattr(torch, input_dtype))
                return run(stage, {"seg": seg}, b, 0, nseg)

        return [gdn_prep, gdn_scan, gdn_combine]
