"""StateIOPass: graph I/O named exactly as the StateSpec, or an error naming the tensor."""

from __future__ import annotations

import onnx_ir as ir
import pytest

from arl2rt.errors import Arl2rtError
from arl2rt.export.passes.state_io import StateIOPass
from arl2rt.export.state_spec import StateSpec
from micro_packages import MICRO


def test_the_export_already_conforms(micro_graphs):
    spec = StateSpec(MICRO)
    for graph, model in micro_graphs.items():
        assert StateIOPass(spec, graph)(model).count == 0


def test_renames_inputs_and_dims(micro_graphs):
    model = micro_graphs["commit_step"]
    past = next(v for v in model.graph.inputs if v.name == "past_key.1")
    past.name = "arg7_1"
    past.shape = ir.Shape([ir.SymbolicDim("s0"), ir.SymbolicDim("s1"), 2, 16])
    assert StateIOPass(StateSpec(MICRO), "commit_step")(model).count == 3
    assert past.name == "past_key.1" and [str(d) for d in past.shape] == ["batch", "past_len", "2", "16"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: setattr(m.graph.inputs[-1], "dtype", ir.DataType.FLOAT16), "past_value.1.*expected dtype float32"),
        (lambda m: setattr(m.graph.outputs[0], "shape", ir.Shape([1, 3, 16, 16])), "present_state.0.*expected shape"),
        (lambda m: m.graph.inputs.pop(), "expected 10 inputs"),
    ],
    ids=["dtype", "shape", "count"],
)
def test_a_mismatch_names_the_tensor(micro_graphs, edit, message):
    model = micro_graphs["commit_step"]
    edit(model)
    with pytest.raises(Arl2rtError, match=message):
        StateIOPass(StateSpec(MICRO), "commit_step")(model)
