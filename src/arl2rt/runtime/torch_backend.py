"""The PyTorch backend: runs the step modules the exporter traces, eagerly (Triton kernels on CUDA)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from arl2rt.export.state_spec import StateSpec
from arl2rt.export.steps import step_modules
from arl2rt.model.dit import CausalDiT
from arl2rt.runtime.backend import Backend


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self, model: CausalDiT | Callable[[], CausalDiT], spec: StateSpec, device: torch.device | str = "cpu"
    ) -> None:
        super().__init__(spec, device)
        self._model_or_builder = model
        self.modules: dict[str, torch.nn.Module] = {}

    def activate_impl(self) -> None:
        model = self._model_or_builder
        model = model if isinstance(model, torch.nn.Module) else model()
        model = model.to(device=self.device, dtype=self.spec.config_dtype).eval()
        self.modules = step_modules(model, self.spec)

    def deactivate_impl(self) -> None:
        self.modules = {}

    def run_impl(self, graph, feeds, out):
        names = [s.name for s in self.spec.inputs(graph)]
        with torch.inference_mode():
            result = self.modules[graph](*(feeds[n] for n in names))
        result = result if isinstance(result, tuple) else (result,)
        return {s.name: r for s, r in zip(self.spec.outputs(graph), result)}
