"""Name every graph input and output, and its dynamic dims, exactly as the StateSpec does, or fail saying why.

Cases: an input/output whose name differs from the spec at its position is renamed (the exporter may number or
prefix names); a dynamic dim is named ``batch`` / ``past_len``. A count, element type or static size that differs
from the spec is an error naming the tensor: the graph would not fit the runtime's state contract.
"""

from __future__ import annotations

import onnx_ir as ir

from arl2rt.errors import Arl2rtError
from arl2rt.export.passes.base import CountedResult
from arl2rt.export.state_spec import StateSpec, TensorSpec

_ONNX_DTYPES = {
    "float64": ir.DataType.DOUBLE,
    "float32": ir.DataType.FLOAT,
    "float16": ir.DataType.FLOAT16,
    "bfloat16": ir.DataType.BFLOAT16,
    "int64": ir.DataType.INT64,
}


def onnx_dtype(name: str) -> ir.DataType:
    return _ONNX_DTYPES[name]


class StateIOPass(ir.passes.InPlacePass):
    def __init__(self, spec: StateSpec, graph: str) -> None:
        super().__init__()
        self.spec, self.graph = spec, graph

    def call(self, model: ir.Model) -> CountedResult:
        fired = 0
        for kind, values, specs in (
            ("input", model.graph.inputs, self.spec.inputs(self.graph)),
            ("output", model.graph.outputs, self.spec.outputs(self.graph)),
        ):
            if len(values) != len(specs):
                raise Arl2rtError(
                    f"graph {self.graph}: expected {len(specs)} {kind}s {[s.name for s in specs]}, found "
                    f"{len(values)} {[v.name for v in values]}"
                )
            for value, spec in zip(values, specs):
                fired += self._conform(value, spec)
        return CountedResult(model, bool(fired), fired)

    def _conform(self, value: ir.Value, spec: TensorSpec) -> int:
        where = f"graph {self.graph}: tensor {spec.name} (exported as {value.name})"
        if value.dtype != onnx_dtype(spec.dtype):
            raise Arl2rtError(f"{where}: expected dtype {spec.dtype}, found {value.dtype}")
        shape = value.shape
        if shape is None or len(shape) != len(spec.shape):
            raise Arl2rtError(f"{where}: expected shape {list(spec.shape)}, found {shape}")
        fired = 0
        dims = []
        for want, got in zip(spec.shape, shape):
            if isinstance(want, int):
                if got != want:
                    raise Arl2rtError(f"{where}: expected shape {list(spec.shape)}, found {shape}")
                dims.append(want)
            else:
                fired += not (isinstance(got, ir.SymbolicDim) and got.value == want)
                dims.append(ir.SymbolicDim(want))
        value.shape = ir.Shape(dims)
        if value.name != spec.name:
            value.name = spec.name
            fired += 1
        return fired
