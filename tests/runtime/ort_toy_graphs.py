"""A toy model package: three small ONNX graphs with exactly the StateSpec's inputs and outputs, and a torch twin.

The graphs are not the DiT; they are cheap functions in which every output depends on the states, the past K/V, the
frame offset and the context, so a backend that binds the wrong buffer, skips the ping-pong or loses a K/V append
gives different numbers from the torch twin. They test the onnxruntime backend without the exporter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from arl2rt.export.state_spec import StateSpec
from arl2rt.model.config import ModelConfig
from arl2rt.runtime.backend import Backend

GRAPH_FILES = {g: f"{g}.onnx" for g in ("encode_context", "denoise_step", "commit_step")}
_ELEM = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "float16": TensorProto.FLOAT16}


@dataclass
class ToyPackage:
    """Duck-types the fields of arl2rt.export.package.ModelPackage the backend reads."""

    root: Path
    config: ModelConfig
    spec: StateSpec
    target: str = "portable"  # standard ops only
    opset: int = 17
    weights_digest: str | None = None  # no weights file: its graphs hold their weights

    def graph_path(self, graph: str) -> Path:
        return self.root / GRAPH_FILES[graph]


def _weights(cfg: ModelConfig) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.standard_normal((cfg.text_dim, cfg.dim)).astype(np.float32) / 8 for _ in range(2 * cfg.num_layers)]


def _value_info(spec):
    return helper.make_tensor_value_info(spec.name, _ELEM[spec.dtype], list(spec.shape))


def _model(spec: StateSpec, graph: str, nodes, initializers) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes,
        graph,
        [_value_info(s) for s in spec.inputs(graph)],
        [_value_info(s) for s in spec.outputs(graph)],
        initializers,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def write_toy_package(root: Path, cfg: ModelConfig) -> ToyPackage:
    spec = StateSpec(cfg, "float32")
    root.mkdir(parents=True, exist_ok=True)
    h, d = cfg.num_heads, cfg.head_dim

    # encode_context: context_{key,value}.i = reshape(context @ W, [B, L, H, D])
    inits = [_const("kv_shape", np.array([0, 0, h, d], np.int64))]
    nodes = []
    for n, (w, out) in enumerate(zip(_weights(cfg), spec.context_kv())):
        inits.append(_const(f"w{n}", w))
        nodes += [
            helper.make_node("MatMul", ["context", f"w{n}"], [f"proj{n}"]),
            helper.make_node("Reshape", [f"proj{n}", "kv_shape"], [out.name]),
        ]
    onnx.save(_model(spec, "encode_context", nodes, inits), root / GRAPH_FILES["encode_context"])

    # a scalar summary of every state input: s = Σ mean(past_state) + 1e-5 Σ sum(past K/V) + mean(context_key.0)
    #   + 1e-2 frame_offset + 1e-3 mean(timestep)
    def summary_nodes():
        nodes = [
            helper.make_node("Cast", ["frame_offset"], ["offset_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["offset_f", "c_1e2"], ["acc0"]),
            helper.make_node("ReduceMean", ["timestep"], ["t_mean"], keepdims=0),
            helper.make_node("Mul", ["t_mean", "c_1e3"], ["t_term"]),
            helper.make_node("Add", ["acc0", "t_term"], ["acc1"]),
            helper.make_node("ReduceMean", ["context_key.0"], ["ctx_mean"], keepdims=0),
            helper.make_node("Add", ["acc1", "ctx_mean"], ["acc2"]),
        ]
        acc = "acc2"
        for s in spec.step_inputs():
            if s.kind == "past_state":
                nodes += [helper.make_node("ReduceMean", [s.name], [f"m_{s.name}"], keepdims=0)]
                term = f"m_{s.name}"
            elif s.kind in ("past_key", "past_value"):
                nodes += [
                    helper.make_node("ReduceSum", [s.name], [f"r_{s.name}"], keepdims=0),
                    helper.make_node("Mul", [f"r_{s.name}", "c_1e5"], [f"m_{s.name}"]),
                ]
                term = f"m_{s.name}"
            else:
                continue
            nodes.append(helper.make_node("Add", [acc, term], [f"acc_{s.name}"]))
            acc = f"acc_{s.name}"
        return nodes, acc

    scalars = [
        _const("c_1e2", np.float32(1e-2)),
        _const("c_1e3", np.float32(1e-3)),
        _const("c_1e5", np.float32(1e-5)),
        _const("c_half", np.float32(0.5)),
    ]

    # denoise_step: velocity = 0.5 * latents + s
    nodes, acc = summary_nodes()
    nodes += [
        helper.make_node("Mul", ["latents", "c_half"], ["half"]),
        helper.make_node("Add", ["half", acc], ["velocity"]),
    ]
    onnx.save(_model(spec, "denoise_step", nodes, scalars), root / GRAPH_FILES["denoise_step"])

    # commit_step: present_state.i = 0.9 past_state.i + mean(latents) + 0.01 i;
    #              present_key.j = expand(s + mean(latents), [B, T, H, D]);  present_value.j = 2 present_key.j
    nodes, acc = summary_nodes()
    inits = [*scalars, _const("c_09", np.float32(0.9)), _const("c_2", np.float32(2.0))]
    inits.append(_const("block_shape", np.array([cfg.tokens_per_block, h, d], np.int64)))
    nodes += [
        helper.make_node("ReduceMean", ["latents"], ["lat_mean"], keepdims=0),
        helper.make_node("Add", [acc, "lat_mean"], ["kv_val"]),
        helper.make_node("Shape", ["latents"], ["batch_dim"], start=0, end=1),
        helper.make_node("Concat", ["batch_dim", "block_shape"], ["kv_shape"], axis=0),
        helper.make_node("Expand", ["kv_val", "kv_shape"], ["kv_block"]),
    ]
    for out in spec.commit_outputs():
        i = out.layer
        if out.kind == "present_state":
            inits.append(_const(f"layer_{i}", np.float32(0.01 * i)))
            nodes += [
                helper.make_node("Mul", [f"past_state.{i}", "c_09"], [f"decayed_{i}"]),
                helper.make_node("Add", [f"decayed_{i}", "lat_mean"], [f"written_{i}"]),
                helper.make_node("Add", [f"written_{i}", f"layer_{i}"], [out.name]),
            ]
        elif out.kind == "present_key":
            nodes.append(helper.make_node("Identity", ["kv_block"], [out.name]))
        else:
            nodes.append(helper.make_node("Mul", ["kv_block", "c_2"], [out.name]))
    onnx.save(_model(spec, "commit_step", nodes, inits), root / GRAPH_FILES["commit_step"])
    return ToyPackage(root, cfg, spec)


class ToyTorchBackend(Backend):
    """The same three functions in torch, computed in float64 and returned in float32: the toy's reference."""

    name = "toy-torch"

    def activate_impl(self) -> None:
        self.w = [torch.from_numpy(w).double() for w in _weights(self.spec.config)]

    def _summary(self, f: dict) -> torch.Tensor:
        s = f["frame_offset"].double() * 1e-2 + f["timestep"].mean() * 1e-3 + f["context_key.0"].mean()
        for spec in self.spec.step_inputs():
            if spec.kind == "past_state":
                s = s + f[spec.name].mean()
            elif spec.kind in ("past_key", "past_value"):
                s = s + f[spec.name].sum() * 1e-5
        return s

    def run_impl(self, graph, feeds, out):
        feeds = {k: v.double() for k, v in feeds.items()}
        return {k: v.float() for k, v in self._run(graph, feeds).items()}

    def _run(self, graph: str, feeds: dict) -> dict:
        cfg = self.spec.config
        if graph == "encode_context":
            ctx = feeds["context"]
            return {
                s.name: (ctx @ w).unflatten(-1, (cfg.num_heads, cfg.head_dim))
                for s, w in zip(self.spec.context_kv(), self.w)
            }
        s = self._summary(feeds)
        if graph == "denoise_step":
            return {"velocity": 0.5 * feeds["latents"] + s}
        lat_mean = feeds["latents"].mean()
        batch = feeds["latents"].shape[0]
        kv = (s + lat_mean).expand(batch, cfg.tokens_per_block, cfg.num_heads, cfg.head_dim)
        result = {}
        for spec in self.spec.commit_outputs():
            if spec.kind == "present_state":
                result[spec.name] = feeds[f"past_state.{spec.layer}"] * 0.9 + lat_mean + 0.01 * spec.layer
            else:
                result[spec.name] = (kv if spec.kind == "present_key" else 2 * kv).clone()
        return result
