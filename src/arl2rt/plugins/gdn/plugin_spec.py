"""The GDN write as a TensorRT plugin node: name, namespace, version and fields, declared once.

The exporter's ``tensorrt`` target writes nodes from this description, the checks compare nodes against it, and the
TensorRT plugin registers itself with the same names (``tensorrt.plugin.register(PLUGIN.qualified_name)``, one
keyword argument per entry of ``fields``). TensorRT's ONNX parser finds the plugin creator named ``op_type`` in
``plugin_namespace`` (also the node's domain) at ``plugin_version``, and hands over only the attributes the creator
declares, converting ONNX INT to INT32 (shared/research/trt-ecosystem.md §2.1): so fields are ints, floats or strings.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import defs

from arl2rt.plugins.gdn.op import OP_NAME, OP_NAMESPACE

_ATTR_TYPES = {int: defs.OpSchema.AttrType.INT, float: defs.OpSchema.AttrType.FLOAT, str: defs.OpSchema.AttrType.STRING}
_ONNX_ATTR_TYPES = {int: onnx.AttributeProto.INT, float: onnx.AttributeProto.FLOAT, str: onnx.AttributeProto.STRING}


@dataclass(frozen=True)
class PluginField:
    """One plugin field = one node attribute of a scalar type TensorRT passes through (int -> INT32)."""

    name: str
    type: type
    default: int | float | str
    doc: str


@dataclass(frozen=True)
class PluginTensor:
    """One plugin input or output: its name in ``torch.ops.arl2.gdn_state_update`` / ONNX, layout and dtypes."""

    name: str
    layout: str
    dtypes: tuple[str, ...]


@dataclass(frozen=True)
class PluginSpec:
    name: str
    namespace: str
    version: str
    inputs: tuple[PluginTensor, ...]
    outputs: tuple[PluginTensor, ...]
    fields: tuple[PluginField, ...]

    @property
    def qualified_name(self) -> str:
        """``namespace::name``, as ``tensorrt.plugin.register`` and ``torch.library`` spell it."""
        return f"{self.namespace}::{self.name}"

    def node_attributes(self, **values: int | float | str) -> dict[str, int | float | str]:
        """All attributes of a plugin node: the parser's ``plugin_namespace``/``plugin_version``, then each field."""
        unknown = sorted(set(values) - {f.name for f in self.fields})
        if unknown:
            raise ValueError(f"plugin {self.qualified_name}: unknown fields {unknown}")
        attrs: dict[str, int | float | str] = {"plugin_namespace": self.namespace, "plugin_version": self.version}
        for f in self.fields:
            value = values.get(f.name, f.default)
            if type(value) is not f.type:
                raise ValueError(f"plugin field {f.name}: expected {f.type.__name__}, found {type(value).__name__}")
            attrs[f.name] = value
        return attrs

    def attribute_types(self) -> dict[str, int]:
        """Attribute name -> ``onnx.AttributeProto`` type, for checking nodes."""
        types = {"plugin_namespace": onnx.AttributeProto.STRING, "plugin_version": onnx.AttributeProto.STRING}
        types.update({f.name: _ONNX_ATTR_TYPES[f.type] for f in self.fields})
        return types

    def node_problems(self, node: onnx.NodeProto) -> list[str]:
        """Why ``node`` is not exactly a node of this plugin (empty when it is)."""
        where = f"node {node.name or '?'}"
        if (node.domain, node.op_type) != (self.namespace, self.name):
            return [f"{where}: expected op {self.namespace}::{self.name}, found {node.domain}::{node.op_type}"]
        problems = []
        found = {a.name: a for a in node.attribute}
        want = self.attribute_types()
        if set(found) != set(want):
            problems.append(f"{where}: expected attributes {sorted(want)}, found {sorted(found)}")
        for name, kind in want.items():
            if name in found and found[name].type != kind:
                problems.append(
                    f"{where}: attribute {name} expected type {onnx.AttributeProto.AttributeType.Name(kind)}, "
                    f"found {onnx.AttributeProto.AttributeType.Name(found[name].type)}"
                )
        for name, value in (("plugin_namespace", self.namespace), ("plugin_version", self.version)):
            if name in found and onnx.helper.get_attribute_value(found[name]).decode() != value:
                problems.append(f"{where}: {name} expected {value!r}")
        if len(node.input) != len(self.inputs) or len(node.output) != len(self.outputs):
            problems.append(
                f"{where}: expected {len(self.inputs)} inputs and {len(self.outputs)} outputs, "
                f"found {len(node.input)} and {len(node.output)}"
            )
        return problems

    def onnx_schema(self) -> defs.OpSchema:
        """An ONNX schema for the node, so that onnxscript can emit it and ``onnx.checker`` can check it."""
        tensor_types = {t: [f"tensor({d})" for d in _onnx_dtypes(p.dtypes)] for t, p in self._type_params().items()}
        params = {p.name: t for t, p in self._type_params().items()}
        attrs = [defs.OpSchema.Attribute(n, _ATTR_TYPES[str], f"TensorRT parser: {n}") for n in self._parser_attrs()]
        attrs += [defs.OpSchema.Attribute(f.name, _ATTR_TYPES[f.type], f.doc) for f in self.fields]
        return defs.OpSchema(
            self.name,
            self.namespace,
            int(self.version),
            inputs=[defs.OpSchema.FormalParameter(t.name, params[t.name], t.layout) for t in self.inputs],
            outputs=[defs.OpSchema.FormalParameter(t.name, params[t.name], t.layout) for t in self.outputs],
            type_constraints=[(t, types, "") for t, types in tensor_types.items()],
            attributes=attrs,
        )

    def _type_params(self) -> dict[str, PluginTensor]:
        return {f"T{i}": t for i, t in enumerate(self.inputs + self.outputs)}

    @staticmethod
    def _parser_attrs() -> tuple[str, ...]:
        return ("plugin_namespace", "plugin_version")


def _onnx_dtypes(names: tuple[str, ...]) -> list[str]:
    return [{"float32": "float", "float16": "float16", "bfloat16": "bfloat16"}[n] for n in names]


_ACT = ("float32", "float16", "bfloat16")

GDN_PLUGIN = PluginSpec(
    name=OP_NAME,
    namespace=OP_NAMESPACE,
    version="1",
    inputs=(
        PluginTensor("key", "[B, T, H, K], L2-normalised per head", _ACT),
        PluginTensor("value", "[B, T, H, V]", _ACT),
        PluginTensor("decay", "[B, T, H], log of the per-token decay (<= 0)", ("float32",)),
        PluginTensor("beta", "[B, T, H], update rate in (0, 2)", ("float32",)),
        PluginTensor("past_state", "[B, H, K, V]", ("float32",)),
    ),
    outputs=(PluginTensor("present_state", "[B, H, K, V], the state after all T tokens", ("float32",)),),
    fields=(PluginField("chunk_size", int, 64, "tokens per chunk of the chunked (WY) kernel"),),
)


def register_onnx_schema(spec: PluginSpec = GDN_PLUGIN) -> None:
    """Register ``spec``'s ONNX schema once per process (emitting and checking the node need it)."""
    if not defs.has(spec.name, spec.namespace):
        defs.register_schema(spec.onnx_schema())
