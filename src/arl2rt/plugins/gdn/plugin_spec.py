"""The GDN write as a TensorRT plugin node: name, namespace, version and fields, declared once.

The exporter's ``tensorrt`` target writes nodes from this description, the checks compare nodes against it, and the
TensorRT plugin registers itself with the same names (``tensorrt.plugin.register(PLUGIN.qualified_name)``, one
keyword argument per entry of ``fields``). TensorRT's ONNX parser finds the plugin creator named ``op_type`` in
``plugin_namespace`` (also the node's domain) at ``plugin_version``, and hands over only the attributes the creator
declares, converting ONNX INT to INT32 (docs/targets.md §3): so fields are ints, floats or strings.
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


# The same update as one Triton kernel per node, for TensorRT's AOT plugins (``aot_impl``: PTX in the engine, no Python
# at run time). Tensor names are the kernels' argument names (:mod:`.aot_stages`), in TensorRT's argument
# order: inputs, then (extra ints, which are not tensors), then outputs. W, U and the gate prefix sums are padded to
# whole chunks of 64 tokens; ``gdn_scan`` writes the new state itself when it runs as one segment, else the segment
# buffer that ``gdn_combine`` reduces.
GDN_PREP_PLUGIN = PluginSpec(
    name="gdn_prep",
    namespace=OP_NAMESPACE,
    version="1",
    inputs=tuple(PluginTensor(n, t.layout, t.dtypes) for n, t in zip(("k", "v", "g", "beta"), GDN_PLUGIN.inputs)),
    outputs=(
        PluginTensor("w", "[B, H, T padded to 64, K], in the key dtype", _ACT),
        PluginTensor("u", "[B, H, T padded to 64, V], in the key dtype", _ACT),
        PluginTensor("gc", "[B, H, T padded to 64], per-chunk prefix sums of the log decay", ("float32",)),
    ),
    fields=(),
)
GDN_SCAN_PLUGIN = PluginSpec(
    name="gdn_scan",
    namespace=OP_NAMESPACE,
    version="1",
    inputs=(
        PluginTensor("k", GDN_PLUGIN.inputs[0].layout, _ACT),
        *GDN_PREP_PLUGIN.outputs,
        PluginTensor("s0", GDN_PLUGIN.inputs[4].layout, ("float32",)),
    ),
    outputs=(
        PluginTensor(
            "dst",
            "one segment: [B, H, K, V], the new state; S segments: [B, H, S, K, V + K] for gdn_combine",
            ("float32",),
        ),
    ),
    fields=(),
)
GDN_COMBINE_PLUGIN = PluginSpec(
    name="gdn_combine",
    namespace=OP_NAMESPACE,
    version="1",
    inputs=(
        PluginTensor("seg", "[B, H, S, K, V + K], each segment's state contribution and transition", ("float32",)),
    ),
    outputs=(PluginTensor("out", "[B, H, K, V], the state after all T tokens", ("float32",)),),
    fields=(
        PluginField(
            "input_dtype",
            str,
            "float32",
            "key/value dtype of the update (float32, float16 or bfloat16): sets the precision of the fp32 products",
        ),
    ),
)
AOT_STAGE_PLUGINS = (GDN_PREP_PLUGIN, GDN_SCAN_PLUGIN, GDN_COMBINE_PLUGIN)
ALL_PLUGINS = (GDN_PLUGIN, *AOT_STAGE_PLUGINS)


def register_onnx_schema(*specs: PluginSpec) -> None:
    """Register the ONNX schemas of ``specs`` (default: every arl2 plugin) once per process (emitting and checking
    the nodes need them)."""
    for spec in specs or ALL_PLUGINS:
        if not defs.has(spec.name, spec.namespace):
            defs.register_schema(spec.onnx_schema())
