"""One ONNX graph for every request of a block, so that Triton can keep a stream's GDN states (implicit state).

Triton keeps state per model and sequence, and feeds each request's state outputs to the sequence's next request.
A block is several requests to the same states (denoising passes read them, the commit writes them), so the package's
``denoise_step`` and ``commit_step`` go into one graph behind an ``If`` on the ``commit`` input: the commit branch is
``commit_step`` (``velocity`` is zeros there: the request's latents already are the block), the other is
``denoise_step`` with every ``past_state`` passed through unchanged as its ``present_state``. The text K/V are not
kept between requests: ``encode_context`` runs in front of the ``If`` on the request's ``context``.

The graphs are joined, not re-exported: their nodes keep their ops, each graph's values get a prefix so that no name
shadows another, and the weights stay where they are (``weights.bin``): a weight the graphs share (the same bytes of
the file) is one initializer of the joined graph, which the branches read from the outer scope. ``frame_offset`` and
``commit`` take a batch axis ([B]; one request is one stream, B = 1) because Triton gives every input of a model with
``max_batch_size`` > 0 one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto, helper

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import BATCH, CONTEXT, CONTEXT_KEY, CONTEXT_VALUE, FRAME_OFFSET, VELOCITY

COMMIT = "commit"  # bool [B]: true runs commit_step, false denoise_step
_OFFSET = "serve/offset"  # the scalar frame offset the step graphs read
_COND = "serve/commit"
_SCALAR = "serve/scalar_shape"
_ONNX_DTYPES = {"float64": TensorProto.DOUBLE, "float32": TensorProto.FLOAT}


@dataclass
class _Part:
    """One source graph's nodes, non-shared initializers and value infos, renamed."""

    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    value_info: list = field(default_factory=list)


class _Weights:
    """The joined graph's external weights: one initializer per stretch of ``weights.bin`` (dtype, dims, location,
    offset, length), whichever graphs use it and under whatever name."""

    def __init__(self) -> None:
        self.by_key: dict[tuple, TensorProto] = {}

    def add(self, t: TensorProto, source: str) -> str:
        """The joined graph's name of ``t``: an earlier graph's for the same bytes, else its own (prefixed if another
        weight has that name)."""
        key = (t.data_type, tuple(t.dims), tuple(sorted((e.key, e.value) for e in t.external_data)))
        if key not in self.by_key:
            t = copy.deepcopy(t)
            if any(w.name == t.name for w in self.by_key.values()):
                t.name = f"{source}/{t.name}"
            self.by_key[key] = t
        return self.by_key[key].name

    def initializers(self) -> list[TensorProto]:
        return list(self.by_key.values())


def _rename_graph(
    graph: onnx.GraphProto, source: str, keep: set[str], mapping: dict[str, str], weights: _Weights
) -> tuple[_Part, Callable[[str], str]]:
    """``graph``'s pieces with every name outside ``keep`` prefixed ``source/`` (its weights named as ``weights``
    says)."""
    mapping = dict(mapping)
    for t in graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            mapping[t.name] = weights.add(t, source)

    def rename(name: str) -> str:
        if not name or name in keep:
            return name
        return mapping.get(name, f"{source}/{name}")

    part = _Part()
    for t in graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            t = copy.deepcopy(t)
            t.name = rename(t.name)
            part.initializers.append(t)
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise Arl2rtError(f"{source}: node {node.name} ({node.op_type}) holds a subgraph; joining takes none")
        node = copy.deepcopy(node)
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
        node.name = f"{source}/{node.name}"
        part.nodes.append(node)
    for vi in graph.value_info:
        vi = copy.deepcopy(vi)
        vi.name = rename(vi.name)
        part.value_info.append(vi)
    return part, rename


def _renamed(vi: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    vi = copy.deepcopy(vi)
    vi.name = name
    return vi


def _branch(part: _Part, name: str, outputs: list[onnx.ValueInfoProto]) -> onnx.GraphProto:
    return helper.make_graph(part.nodes, name, [], outputs, part.initializers, value_info=part.value_info)


def _batched(name: str, elem_type: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, [BATCH])


def build_step_graph(package) -> onnx.ModelProto:
    """The joined graph of ``package`` (a :class:`~arl2rt.export.package.ModelPackage`), weights left external."""
    spec = package.spec
    encode, denoise, commit = (package.load_graph(g) for g in ("encode_context", "denoise_step", "commit_step"))
    offset = spec.name(FRAME_OFFSET)
    context_kv = {s.name for s in spec.of_kind(CONTEXT_KEY, CONTEXT_VALUE)}
    step_inputs = {s.name for s in spec.step_inputs()} - {offset}
    weights = _Weights()
    enc, _ = _rename_graph(encode.graph, "encode", {spec.name(CONTEXT)} | context_kv, {}, weights)
    den, den_name = _rename_graph(denoise.graph, "denoise", step_inputs, {offset: _OFFSET}, weights)
    com, com_name = _rename_graph(commit.graph, "commit", step_inputs, {offset: _OFFSET}, weights)

    outputs = {o.name: o for o in (*denoise.graph.output, *commit.graph.output)}
    velocity = spec.name(VELOCITY)
    presents = [o.name for o in commit.graph.output]
    io_type = _ONNX_DTYPES[spec.io_dtype]
    latents = spec.step_inputs()[0].name

    # commit branch: commit_step's outputs, and zeros for velocity
    zeros = helper.make_tensor("zero", io_type, [1], [0.0])
    com.nodes += [
        helper.make_node("Shape", [latents], ["commit/serve/shape"], name="commit/serve/Shape"),
        helper.make_node("ConstantOfShape", ["commit/serve/shape"], ["commit/serve/velocity"], value=zeros),
    ]
    then_outputs = [_renamed(outputs[velocity], "commit/serve/velocity")]
    then_outputs += [_renamed(outputs[n], com_name(n)) for n in presents]
    # denoise branch: denoise_step's velocity, every past state passed through
    else_outputs = [_renamed(outputs[velocity], den_name(velocity))]
    for name in presents:
        past = spec.past_of(name)
        den.nodes.append(helper.make_node("Identity", [past], [f"denoise/serve/{name}"], name=f"denoise/serve/{name}"))
        else_outputs.append(_renamed(outputs[name], f"denoise/serve/{name}"))
    branches = {
        "then_branch": _branch(com, "commit_step", then_outputs),
        "else_branch": _branch(den, "denoise_step", else_outputs),
    }
    nodes = [
        *enc.nodes,
        helper.make_node("Reshape", [offset, _SCALAR], [_OFFSET], name=_OFFSET),
        helper.make_node("Reshape", [COMMIT, _SCALAR], [_COND], name="serve/commit"),
        helper.make_node("If", [_COND], [velocity, *presents], name="serve/step", **branches),
    ]
    by_name = {i.name: i for i in (*encode.graph.input, *denoise.graph.input)}
    inputs = [by_name[spec.name(CONTEXT)]]
    inputs += [by_name[s.name] for s in spec.step_inputs() if s.name in step_inputs and s.name not in context_kv]
    inputs += [_batched(offset, TensorProto.INT64), _batched(COMMIT, TensorProto.BOOL)]
    initializers = [*weights.initializers(), *enc.initializers, helper.make_tensor(_SCALAR, TensorProto.INT64, [0], [])]
    graph = helper.make_graph(
        nodes,
        f"{spec.config.name}_serve_step",
        inputs,
        [outputs[velocity], *(outputs[n] for n in presents)],
        initializers,
        value_info=enc.value_info,
    )
    model = helper.make_model(graph, opset_imports=list(denoise.opset_import), producer_name="arl2rt serve")
    model.ir_version = denoise.ir_version
    return model
