"""The PyTorch backend: runs the step modules the exporter traces (Triton kernels on CUDA), eagerly or, on CUDA, as
CUDA graphs replayed wherever the stream's shapes stay the same (:mod:`arl2rt.runtime.step_graphs`). With a VAE
decoder it also runs the two decode modules the exporter traces (always eagerly)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import PRESENT_KV, StateSpec
from arl2rt.export.steps import decode_modules, step_modules
from arl2rt.model.dit import CausalDiT
from arl2rt.model.fp8 import FP8_DTYPE_NAMES, check_fp8_device, quantize_linears
from arl2rt.model.vae.decoder import WanVaeDecoder
from arl2rt.runtime.backend import Backend
from arl2rt.runtime.step_graphs import StepGraphs, graphs_wanted


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self,
        model: CausalDiT | Callable[[], CausalDiT],
        spec: StateSpec,
        device: torch.device | str = "cpu",
        *,
        vae: WanVaeDecoder | Callable[[], WanVaeDecoder] | None = None,
        fp8: bool = False,
    ) -> None:
        """``vae``: the decoder (or a function building it) of a spec with a VAE; it is cast to the spec's dtype.
        ``fp8``: the DiT blocks' per-pass GEMMs in E4M3 with row scales (:mod:`arl2rt.model.fp8`; a bfloat16 or
        float16 spec, an sm_89+ GPU or the CPU)."""
        super().__init__(spec, device)
        if fp8:
            if spec.dtype not in FP8_DTYPE_NAMES:
                raise Arl2rtError(f"torch backend: --fp8 needs --dtype bfloat16 or float16; found {spec.dtype}")
            check_fp8_device(self.device)
        self.fp8 = fp8
        if vae is None and spec.vae is not None:
            raise Arl2rtError(
                f"torch backend: the state contract has VAE {spec.vae.name!r}: expected a decoder, found none"
            )
        if vae is not None and spec.vae is None:
            raise Arl2rtError(
                f"torch backend: a VAE decoder was given, but the state contract of {spec.config.name!r} has none"
            )
        self._model_or_builder = model
        self._vae_or_builder = vae
        self.modules: dict[str, torch.nn.Module] = {}
        self.graphs: StepGraphs | None = None

    def activate_impl(self) -> None:
        model = self._model_or_builder
        model = model if isinstance(model, torch.nn.Module) else model()
        model = model.to(device=self.device, dtype=self.spec.config_dtype).eval()
        if self.fp8:
            quantize_linears(model)
        self.modules = step_modules(model, self.spec)
        if self._vae_or_builder is not None:
            vae = self._vae_or_builder
            vae = vae if isinstance(vae, torch.nn.Module) else vae()
            vae = vae.to(device=self.device, dtype=self.spec.config_dtype).eval()
            self.modules.update(decode_modules(vae, self.spec))
        self.graphs = StepGraphs(self.spec, self.device, self._eager) if graphs_wanted(self.device) else None

    def deactivate_impl(self) -> None:
        if self.graphs is not None:
            self.graphs.release()
        self.modules, self.graphs = {}, None

    def run_impl(self, graph, feeds, out):
        if self.graphs is not None:
            return self.graphs.run(graph, feeds, out)
        return self._eager(graph, feeds, out)

    def _eager(
        self,
        graph: str,
        feeds: dict[str, torch.Tensor],
        out: dict[str, torch.Tensor] | None = None,
        past_tokens: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run one step's module. ``past_tokens``: the past K/V (and a commit's ``out`` K/V) are whole cache
        buffers valid up to that device-held length (the step graphs' form, ``step_graphs.whole_caches``)."""
        names = [s.name for s in self.spec.inputs(graph)]
        args = tuple(feeds[n] for n in names)
        kv_out = None
        if graph == "commit_step" and out:
            kv_out = self._kv_slots(out) if past_tokens is None else self._kv_buffers(out)
        with torch.inference_mode():
            module = self.modules[graph]
            if past_tokens is not None:
                result = module.run_into(args, kv_out, past_tokens)
            else:
                result = module.run_into(args, kv_out) if kv_out else module(*args)
        result = result if isinstance(result, tuple) else (result,)
        return {s.name: r for s, r in zip(self.spec.outputs(graph), result)}

    def _kv_buffers(self, out: dict[str, torch.Tensor]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """softmax layer -> its cache's whole (K, V) buffers, which ``out`` holds under the present K/V names."""
        return {i: tuple(out[n] for n in self.spec.names(PRESENT_KV, i)) for i in self.spec.config.softmax_layers}

    def _kv_slots(self, out: dict[str, torch.Tensor]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """softmax layer -> the (K, V) buffers ``out`` offers for its block K/V, where both fit as they are."""
        slots = {}
        for i in self.spec.config.softmax_layers:
            names = self.spec.names(PRESENT_KV, i)
            specs = [self.spec.tensor(n) for n in names]
            given = [out.get(n) for n in names]
            if all(
                g is not None and self.output_buffer(s, s.resolve(batch=g.shape[0]), g) is g
                for s, g in zip(specs, given)
            ):
                slots[i] = (given[0], given[1])
        return slots
