"""The micro model traced once per test session: its step graphs per dtype and its packages per target and dtype.

The dynamo trace dominates every export (seconds per graph on 2 cores), while a target's passes, the checker and
writing a package take a fraction of that. So each graph is traced once per dtype, on first use, and every package is
``export_package`` run for real with only the trace replaced by a copy of that one. Tests only read a shared package;
one that changes a package works on ``copy_package``. A shared package is read-only on disk and verified at every
handout, so damage cannot leak silently from one test into the next.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest

from arl2rt.export import package as package_module
from arl2rt.export.onnx_export import export_graph
from arl2rt.export.package import ModelPackage, export_package
from arl2rt.export.state_spec import GRAPHS, StateSpec
from arl2rt.model.dit import CausalDiT
from micro_configs import micro_config

# The smallest model with both layer kinds: exporting it takes a fraction of what `tiny` takes on 2 cores.
MICRO = micro_config("micro", latent_width=6, text_len=5, frames_per_block=2)


class MicroExports:
    """Traces of one model (weights as the session's ``micro_model``) and the packages built from them."""

    def __init__(self, model: CausalDiT, root: Path) -> None:
        self.model, self.root = model, root
        self._traces: dict[tuple[str, str], bytes] = {}  # (dtype, graph) -> serialized ir.Model
        self._packages: dict[tuple[str, str], Path] = {}

    def graph(self, graph: str, dtype: str = "float32") -> ir.Model:
        """A fresh copy of the traced graph (passes change graphs in place), traced on first use."""
        key = (dtype, graph)
        if key not in self._traces:
            spec = StateSpec(self.model.cfg, dtype)
            model = self.model if dtype == "float32" else copy.deepcopy(self.model).to(spec.config_dtype)
            self._traces[key] = ir.serde.serialize_model(export_graph(model, spec, graph)).SerializeToString()
        return ir.serde.deserialize_model(onnx.load_from_string(self._traces[key]))

    def graphs(self, dtype: str = "float32") -> dict[str, ir.Model]:
        return {g: self.graph(g, dtype) for g in GRAPHS}

    def replace_tracing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Make ``export_package`` take its traces from here (everything after the trace runs for real)."""

        def traced(model: CausalDiT, spec: StateSpec, graph: str) -> ir.Model:
            assert model.cfg == self.model.cfg, f"the session's traces are of config {self.model.cfg.name}"
            return self.graph(graph, spec.dtype)

        monkeypatch.setattr(package_module, "export_graph", traced)

    def package(self, target: str, dtype: str = "float32") -> ModelPackage:
        """The session's package for ``target`` and ``dtype``, built on first use; read-only (see ``copy_package``).

        Its files are read-only (a test writing into it fails at once, unless run as root) and verified at every
        handout, so damage done by an earlier test fails the next one that is given the package, naming the file.
        """
        key = (target, dtype)
        if key not in self._packages:
            root = self.root / f"{target}-{dtype}"
            with pytest.MonkeyPatch.context() as mp:
                self.replace_tracing(mp)
                export_package(self.model, root, target=target, dtype=dtype)
            for path in root.iterdir():
                path.chmod(0o444)
            root.chmod(0o555)
            self._packages[key] = root
        return ModelPackage.load(self._packages[key])

    def copy_package(self, target: str, dest: Path, dtype: str = "float32") -> ModelPackage:
        """A writable copy of the session's package at ``dest``, for tests that change or replace it."""
        shutil.copytree(self.package(target, dtype).root, dest, copy_function=shutil.copyfile)
        dest.chmod(0o755)  # copytree copied the shared directory's read-only mode
        return ModelPackage.load(dest, verify=False)
