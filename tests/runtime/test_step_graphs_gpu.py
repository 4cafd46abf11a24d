"""The torch backend's step graphs on CUDA: a stream replayed from CUDA graphs equals the same steps run eagerly bit
for bit, and the exact-length eager stream to the tolerance of the attention kernels the graphs' form uses.

A cache that still grows is fed whole to the graphs (``step_graphs.whole_caches``): its past is attended by flash
attention's variable-length kernel (bf16) or a masked SDPA (fp32) instead of cuDNN/flash at the exact length, so
those streams differ from the ``ARL2RT_GRAPHS=0`` stream by rounding. With ``capture=False`` the graphs' form runs
eagerly: that stream is the graphs' bit-for-bit reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from arl2rt.export.state_spec import StateSpec
from arl2rt.model.config import PRESETS
from arl2rt.model.random import random_context, random_model
from arl2rt.runtime.step_graphs import StepGraphs
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")

TINY = PRESETS["tiny"]
# name -> (config, first block from which a key repeats in later blocks)
CONFIGS = {
    "all-hybrid": (dataclasses.replace(TINY, hybrid_layers=tuple(range(TINY.num_layers))), 0),
    "rolling-window": (dataclasses.replace(TINY, attn_window_frames=9, sink_frames=3), 2),  # full from block 2
    "global-cache": (TINY, 1),  # fed whole from block 1 (block 0 has no past)
}


def _stream(cfg, mode: str, monkeypatch, blocks: int, dtype: str):
    """mode: "eager" (ARL2RT_GRAPHS=0), "whole" (the graphs' feeds, never captured) or "graphs"."""
    monkeypatch.setenv("ARL2RT_GRAPHS", "0" if mode == "eager" else "1")
    spec = StateSpec(cfg, dtype)
    with TorchBackend(random_model(cfg, seed=1), spec, "cuda") as be:
        if mode == "whole":
            be.graphs = StepGraphs(spec, be.device, be._eager, capture=False)
        streamer = Streamer(be, seed=5, max_frames=blocks * cfg.frames_per_block)
        out = streamer.generate(random_context(cfg, seed=2), blocks)
        stats = (be.graphs.captures, be.graphs.replays) if be.graphs is not None else (0, 0)
        return out.cpu(), {k: v.cpu() for k, v in streamer.store.state_dict().items()}, stats


def _close(a: torch.Tensor, b: torch.Tensor, dtype: str) -> None:
    a, b = a.double().flatten(), b.double().flatten()
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    if dtype == "float32":
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    else:
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) >= 0.999


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_replayed_stream_equals_its_eager_steps(name, dtype, monkeypatch):
    cfg, steady = CONFIGS[name]
    blocks = 7
    eager, eager_state, _ = _stream(cfg, "eager", monkeypatch, blocks, dtype)
    whole, whole_state, _ = _stream(cfg, "whole", monkeypatch, blocks, dtype)
    graphed, graphed_state, (captures, replays) = _stream(cfg, "graphs", monkeypatch, blocks, dtype)
    assert torch.equal(whole, graphed)
    assert whole_state.keys() == graphed_state.keys() == eager_state.keys()
    for key in whole_state:
        assert torch.equal(whole_state[key], graphed_state[key]), key
    if name == "all-hybrid":  # no cache: the graphs' form is the exact form
        assert torch.equal(eager, graphed)
    _close(graphed, eager, dtype)
    for key in eager_state:
        _close(graphed_state[key], eager_state[key], dtype)
    # 2 steps x 2 ping-pong parities. A key is captured when it comes back, two blocks after it was first seen; the
    # commit of block 0 has no spare to write its state into, so the commit's steady keys start at block 1.
    denoise = (blocks - (steady + 2)) * len(cfg.timesteps)
    commit = blocks - (max(steady, 1) + 2)
    assert captures == 4 and replays == denoise + commit
