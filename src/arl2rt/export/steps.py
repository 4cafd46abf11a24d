"""The three step graphs as modules with flat, positional tensors in StateSpec order.

The torch backend runs these very modules and the exporter traces them, so both compute the same thing.
"""

from __future__ import annotations

import torch
from torch import nn

from arl2rt.export.state_spec import StateSpec
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
        self.input_names = [s.name for s in spec.step_inputs()]

    def _run(self, args: tuple[torch.Tensor, ...]):
        cfg = self.model.cfg
        named = dict(zip(self.input_names, args))
        context_kv = [(named[f"context_key.{i}"], named[f"context_value.{i}"]) for i in range(cfg.num_layers)]
        states = {i: named[f"past_state.{i}"] for i in cfg.hybrid_layers}
        past = {i: (named[f"past_key.{i}"], named[f"past_value.{i}"]) for i in cfg.softmax_layers}
        return self.model.step(
            named["latents"], named["timestep"], named["frame_offset"], context_kv, states, past, self.write
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
        cfg = self.model.cfg
        result = [out.states[i] for i in cfg.hybrid_layers]
        for i in cfg.softmax_layers:
            result += [out.keys[i], out.values[i]]
        return tuple(result)


def step_modules(model: CausalDiT, spec: StateSpec) -> dict[str, nn.Module]:
    """Graph name -> module, for every graph of the state contract."""
    return {
        "encode_context": EncodeContext(model),
        "denoise_step": DenoiseStep(model, spec),
        "commit_step": CommitStep(model, spec),
    }
