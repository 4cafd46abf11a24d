"""The step graphs as modules with flat, positional tensors in StateSpec order.

The torch backend runs these very modules and the exporter traces them, so both compute the same thing. The DiT's
three come from :func:`step_modules`; a model with a VAE decoder adds the two decode graphs (:func:`decode_modules`),
whose caches are positional in :func:`~arl2rt.model.vae.kinds.decoder_cache_specs` order, the order the StateSpec
names them.
"""

from __future__ import annotations

import torch
from torch import nn

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import (
    CONTEXT_KEY,
    CONTEXT_VALUE,
    DECODE_FIRST,
    DECODE_STEP,
    FRAME_OFFSET,
    LATENTS,
    PAST_KEY,
    PAST_STATE,
    PAST_VALUE,
    PRESENT_KEY,
    PRESENT_STATE,
    PRESENT_VALUE,
    TIMESTEP,
    StateSpec,
)
from arl2rt.model.dit import CausalDiT
from arl2rt.model.vae.kinds import VaeDecoder
from arl2rt.model.vae.stream import FirstBlockDecode, SteadyBlockDecode


class EncodeContext(nn.Module):
    def __init__(self, model: CausalDiT) -> None:
        super().__init__()
        self.model = model

    def forward(self, context: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t for kv in self.model.encode_context(context) for t in kv)


class _Step(nn.Module):
    write: bool

    def __init__(self, model: CausalDiT, spec: StateSpec) -> None:
        super().__init__()
        self.model, self.spec = model, spec
        self.input_slots = [(s.kind, s.layer) for s in spec.step_inputs()]

    def _run(self, args: tuple[torch.Tensor, ...], kv_out: dict | None, past_tokens: torch.Tensor | None):
        cfg = self.model.cfg
        arg = dict(zip(self.input_slots, args))  # (kind, layer) -> tensor: no name is spelled here
        context_kv = [(arg[CONTEXT_KEY, i], arg[CONTEXT_VALUE, i]) for i in range(cfg.num_layers)]
        states = {i: arg[PAST_STATE, i] for i in cfg.hybrid_layers}
        past = {i: (arg[PAST_KEY, i], arg[PAST_VALUE, i]) for i in cfg.softmax_layers}
        return self.model.step(
            arg[LATENTS, None],
            arg[TIMESTEP, None],
            arg[FRAME_OFFSET, None],
            context_kv,
            states,
            past,
            self.write,
            kv_out,
            past_tokens,
        )


class DenoiseStep(_Step):
    """Inputs: ``StateSpec.step_inputs()``; output: the flow velocity. Reads states only."""

    write = False

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.run_into(args, None)

    def run_into(self, args: tuple[torch.Tensor, ...], kv_out: None, past_tokens: torch.Tensor | None = None):
        """:meth:`forward`; with ``past_tokens`` the past K/V are whole cache buffers (``CausalDiT.step``)."""
        return self._run(args, None, past_tokens).velocity.to(self.spec.velocity().torch_dtype)


class CommitStep(_Step):
    """The clean (t = 0) pass. Outputs ``StateSpec.commit_outputs()``: new GDN states, then the block's K/V."""

    write = True

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.run_into(args, None)

    def run_into(
        self, args: tuple[torch.Tensor, ...], kv_out: dict | None, past_tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """:meth:`forward`, with each softmax layer's block K/V written into ``kv_out[layer]`` (the torch backend
        passes the cache's next slot: no layer's K/V outlive it, no copy at the append). With ``past_tokens`` the
        past K/V and ``kv_out`` are whole cache buffers, the block written at that offset (``CausalDiT.step``)."""
        out = self._run(args, kv_out, past_tokens)
        by_kind = {PRESENT_STATE: out.states, PRESENT_KEY: out.keys, PRESENT_VALUE: out.values}
        return tuple(by_kind[s.kind][s.layer] for s in self.spec.commit_outputs())


def step_modules(model: CausalDiT, spec: StateSpec) -> dict[str, nn.Module]:
    """Graph name -> module, for every graph of the state contract."""
    return {
        "encode_context": EncodeContext(model),
        "denoise_step": DenoiseStep(model, spec),
        "commit_step": CommitStep(model, spec),
    }


def decode_modules(decoder: VaeDecoder, spec: StateSpec) -> dict[str, nn.Module]:
    """Graph name -> module for the two decode graphs: ``decode_first`` (latents -> frames and the present caches)
    and ``decode_step`` (latents and the past caches -> frames and the present caches)."""
    if spec.vae is None:
        raise Arl2rtError(f"config {spec.config.name!r}: a VAE decoder was given, but the state contract has none")
    if decoder.config != spec.vae:
        ours, theirs = spec.vae.to_dict(), decoder.config.to_dict()
        differ = sorted(k for k in {*ours, *theirs} if ours.get(k) != theirs.get(k))
        raise Arl2rtError(
            f"VAE decoder: expected the state contract's config {spec.vae.name!r}, found config "
            f"{decoder.config.name!r}, which differs in {differ}"
        )
    if decoder.dtype != spec.config_dtype:
        raise Arl2rtError(f"VAE decoder weights are {decoder.dtype}; expected {spec.config_dtype} for {spec.dtype}")
    return {DECODE_FIRST: FirstBlockDecode(decoder), DECODE_STEP: SteadyBlockDecode(decoder)}
