"""Fixtures of the export tests: one export of the micro model per session, handed out as fresh copies."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest
from export_helpers import MICRO

from arl2rt.export.onnx_export import export_graph
from arl2rt.export.state_spec import GRAPHS, StateSpec
from arl2rt.model.random import random_model


@pytest.fixture(scope="session")
def micro_model():
    return random_model(MICRO, seed=1).eval()


@pytest.fixture(scope="session")
def _micro_exported(micro_model) -> dict[str, bytes]:
    spec = StateSpec(MICRO)
    return {g: ir.serde.serialize_model(export_graph(micro_model, spec, g)).SerializeToString() for g in GRAPHS}


@pytest.fixture
def micro_graphs(_micro_exported) -> dict[str, ir.Model]:
    """The three exported graphs of the micro model, fp32 (fresh copies: passes change them in place)."""
    return {g: ir.serde.deserialize_model(onnx.load_from_string(data)) for g, data in _micro_exported.items()}
