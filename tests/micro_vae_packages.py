"""The micro model with a tiny VAE decoder (the VAE tests' Wan-shaped one, or the TAEHV tests' one): its decode
graphs traced once per session, packages.

The DiT's graphs come from the session's :class:`~micro_packages.MicroExports` (traced once); the decoder's two graphs
are traced here once per dtype, and every package is ``export_package`` run for real with only the traces replaced,
as :mod:`micro_packages` does. Shared packages are read-only and verified at every handout.
"""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest

from arl2rt.export import package as package_module
from arl2rt.export.onnx_export import export_decode_graph
from arl2rt.export.package import ModelPackage, export_package
from arl2rt.export.state_spec import StateSpec
from arl2rt.model.vae.kinds import VaeDecoder
from micro_packages import MicroExports
from model.vae.vae_helpers import TINY, random_decoder

VAE = TINY  # dim 8, z_dim 4 = the micro DiT's out_channels; 32 caches, as Wan2.1's decoder has


class MicroVaeExports:
    def __init__(self, dit: MicroExports, root: Path, decoder: VaeDecoder | None = None) -> None:
        self.dit, self.root = dit, root
        self.decoder: VaeDecoder = random_decoder(seed=0) if decoder is None else decoder
        self._traces: dict[tuple[str, str], bytes] = {}
        self._packages: dict[tuple[str, str], Path] = {}

    @property
    def model(self):
        return self.dit.model

    def spec(self, dtype: str = "float32") -> StateSpec:
        return StateSpec(self.model.cfg, dtype, self.decoder.config)

    def graph(self, graph: str, dtype: str = "float32") -> ir.Model:
        key = (dtype, graph)
        if key not in self._traces:
            spec = self.spec(dtype)
            decoder = self.decoder if dtype == "float32" else copy.deepcopy(self.decoder).to(spec.config_dtype)
            self._traces[key] = ir.serde.serialize_model(export_decode_graph(decoder, spec, graph)).SerializeToString()
        return ir.serde.deserialize_model(onnx.load_from_string(self._traces[key]))

    def package(self, target: str = "onnxruntime", dtype: str = "float32") -> ModelPackage:
        """The session's package with the decoder, built on first use; read-only (copy it to change it)."""
        key = (target, dtype)
        if key not in self._packages:
            root = self.root / f"{target}-{dtype}"
            with pytest.MonkeyPatch.context() as mp:
                self.dit.replace_tracing(mp)

                def traced(decoder: VaeDecoder, spec: StateSpec, graph: str) -> ir.Model:
                    want = self.decoder.config
                    assert decoder.config == want, f"the session's decode traces are of VAE config {want.name}"
                    return self.graph(graph, spec.dtype)

                mp.setattr(package_module, "export_decode_graph", traced)
                export_package(self.model, root, target=target, dtype=dtype, vae=self.decoder)
            for path in root.iterdir():
                path.chmod(0o444)
            root.chmod(0o555)
            self._packages[key] = root
        return ModelPackage.load(self._packages[key])
