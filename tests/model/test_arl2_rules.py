"""The two rules that define ARL2 (docs/arl2.md §2.2): block-level read of the pre-update state; clean-pass-only
write."""

from __future__ import annotations

import dataclasses

import torch

from arl2rt.export.state_spec import StateSpec
from arl2rt.model.attention import HybridSelfAttention
from arl2rt.model.layers import RopeTables
from arl2rt.model.random import random_model
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend

DIM, HEADS, TOKENS = 32, 2, 12


def _layer_and_inputs(seed: int = 0):
    torch.manual_seed(seed)
    layer = HybridSelfAttention(DIM, HEADS, 1e-6, lora_rank=4).double()
    with torch.no_grad():
        for name in ("q", "k", "v"):  # trained-like LoRA factors (B starts at zero)
            getattr(layer, f"lora_{name}_B").normal_()
    x = torch.randn(1, TOKENS, DIM, dtype=torch.float64)
    cos, sin = RopeTables(DIM // HEADS, 2, 2, 10000.0, 16).cos_sin(5, 3, torch.float64, x.device)
    state = torch.randn(1, HEADS, DIM // HEADS, DIM // HEADS, dtype=torch.float64)
    return layer, x, cos, sin, state


def _memory_contribution(layer, x, cos, sin, state):
    """What the memory branch adds to the layer output: output(state) - output(zero state)."""
    with torch.no_grad():
        return layer(x, cos, sin, state, write=False)[0] - layer(x, cos, sin, torch.zeros_like(state), write=False)[0]


def test_first_block_memory_branch_is_exactly_zero():
    layer, x, cos, sin, state = _layer_and_inputs()
    zero = torch.zeros_like(state)
    with torch.no_grad():
        before = layer(x, cos, sin, zero, write=False)[0]
        # the memory path's weights cannot matter when the state is zero: the branch contributes exactly 0
        for p in (layer.lora_q_B, layer.phi_q.weight, layer.gate_proj.weight):
            p.add_(torch.randn_like(p))
        after = layer(x, cos, sin, zero, write=False)[0]
    assert torch.equal(before, after)


def test_token_reads_only_the_pre_update_state_not_its_block():
    layer, x, cos, sin, state = _layer_and_inputs(1)
    base = _memory_contribution(layer, x, cos, sin, state)
    assert base.abs().max() > 1e-3  # the branch is live
    x2 = x.clone()
    x2[:, 1:] += torch.randn_like(x2[:, 1:])  # perturb every other token of the block
    moved = _memory_contribution(layer, x2, cos, sin, state)
    assert torch.allclose(moved[:, 0], base[:, 0], atol=1e-12, rtol=0)  # token 0's read is unchanged
    assert (moved[:, 1:] - base[:, 1:]).abs().max() > 1e-3
    # ... but it changes with the state written by earlier blocks
    other = _memory_contribution(layer, x, cos, sin, state + torch.randn_like(state))
    assert (other[:, 0] - base[:, 0]).abs().max() > 1e-3


def test_write_only_when_asked_and_from_pre_update_state():
    layer, x, cos, sin, state = _layer_and_inputs(2)
    with torch.no_grad():
        out_read, none = layer(x, cos, sin, state, write=False)
        out_write, new = layer(x, cos, sin, state, write=True)
    assert none is None
    assert torch.equal(out_read, out_write)  # the clean pass's output reads the pre-update state too
    assert (new - state).abs().max() > 1e-3


def test_denoising_passes_leave_states_bit_identical(tiny_cfg, tiny_context):
    cfg = dataclasses.replace(tiny_cfg, frames_per_block=1)
    seen = {"denoise": 0, "commit": 0}
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def hook(graph, block, step, feeds, outputs):
        states = {n: t for n, t in feeds.items() if n.startswith("past_")}
        if graph == "denoise_step":
            seen["denoise"] += 1
            assert set(outputs) == {"velocity"}
            first = snapshots.setdefault(block, {n: t.clone() for n, t in states.items()})
            for n, t in states.items():
                assert torch.equal(t, first[n]), f"{n} changed during denoising of block {block}"
        elif graph == "commit_step":
            seen["commit"] += 1
            changed = [n for n, t in outputs.items() if n.startswith("present_state")]
            assert changed and all(not torch.equal(outputs[n], feeds[n.replace("present_", "past_")]) for n in changed)

    with TorchBackend(random_model(cfg), StateSpec(cfg, "float64")) as backend:
        streamer = Streamer(backend, seed=4, hook=hook)
        streamer.start(tiny_context.double())
        list(streamer.stream(3))
    assert seen == {"denoise": 3 * 4, "commit": 3}
