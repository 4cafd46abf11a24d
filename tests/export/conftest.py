"""Fixtures of the export tests: fresh copies of the session's micro graphs, export_package without tracing."""

from __future__ import annotations

import onnx_ir as ir
import pytest


@pytest.fixture
def micro_graphs(micro_exports) -> dict[str, ir.Model]:
    """The three exported graphs of the micro model, fp32 (fresh copies: passes change them in place)."""
    return micro_exports.graphs()


@pytest.fixture
def fast_export(monkeypatch, micro_exports) -> None:
    """export_package with tracing replaced by copies of the session's traces (the rest runs for real)."""
    micro_exports.replace_tracing(monkeypatch)
