"""The three step graphs as modules with flat, positional tensors in StateSpec order.

The torch backend runs these very modules and the exporter traces them, so both compute the same thing.
"""

from __future__ import annotations

import torch
from torch import nn

from arl2rt.export.state_spec import (
    CONTEXT_KEY,
    CONTEXT_VALUE,
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

    def _run(self, args: tuple[torch.Tensor, ...]):
        cfg = self.model.cfg
        arg = dict(zip(self.input_slots, args))  # (kind, layer) -> tensor: no name is spelled here
        context_kv = [(arg[CONTEXT_KEY, i], arg[CONTEXT_VALUE, i]) for i in range(cfg.num_layers)]
        states = {i: arg[PAST_STATE, i] for i in cfg.hybrid_layers}
        past = {i: (arg[PAST_KEY, i], arg[PAST_VALUE, i]) for i in cfg.softmax_layers}
        return self.model.step(
            arg[LATENTS, None], arg[TIMESTEP, None], arg[FRAME_OFFSET, None], context_kv, states, past, self.write
        )


class DenoiseStep(_Step):
    """Inputs: ``StateSpec.step_inputs()``; output: the flow velocity. Reads states only."""

    write = False

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self._run(args).velocity.to(self.spec.velocity().torch_dtype)


class CommitStep(_Step):
    """The clean (t = 0) pass. Outputs ``StateSpec.commit_outputs()``: new GDN states, then the block's K/V."""

    write = True

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self._run(args)
        by_kind = {PRESENT_STATE: out.states, PRESENT_KEY: out.keys, PRESENT_VALUE: out.values}
        return tuple(by_kind[s.kind][s.layer] for s in self.spec.commit_outputs())


def step_modules(model: CausalDiT, spec: StateSpec) -> dict[str, nn.Module]:
    """Graph name -> module, for every graph of the state contract."""
    return {
        "encode_context": EncodeContext(model),
        "denoise_step": DenoiseStep(model, spec),
        "commit_step": CommitStep(model, spec),
    }
