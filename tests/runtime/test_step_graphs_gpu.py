"""The torch backend's step graphs on CUDA: a stream replayed from CUDA graphs equals the eager stream bit for bit."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from arl2rt.export.state_spec import StateSpec
from arl2rt.model.config import PRESETS
from arl2rt.model.random import random_context, random_model
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")

TINY = PRESETS["tiny"]
# name -> (config, first block whose shapes repeat in every later block; None: never)
CONFIGS = {
    "all-hybrid": (dataclasses.replace(TINY, hybrid_layers=tuple(range(TINY.num_layers))), 0),
    "rolling-window": (dataclasses.replace(TINY, attn_window_frames=9, sink_frames=3), 2),  # full from block 2
    "global-cache": (TINY, None),
}


def _stream(cfg, graphs: bool, monkeypatch, blocks: int, dtype: str):
    monkeypatch.setenv("ARL2RT_GRAPHS", "1" if graphs else "0")
    with TorchBackend(random_model(cfg, seed=1), StateSpec(cfg, dtype), "cuda") as be:
        streamer = Streamer(be, seed=5, max_frames=blocks * cfg.frames_per_block)
        out = streamer.generate(random_context(cfg, seed=2), blocks)
        stats = (be.graphs.captures, be.graphs.replays) if be.graphs is not None else (0, 0)
        return out.cpu(), {k: v.cpu() for k, v in streamer.store.state_dict().items()}, stats


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_replayed_stream_equals_the_eager_stream(name, dtype, monkeypatch):
    cfg, steady = CONFIGS[name]
    blocks = 7
    eager, eager_state, _ = _stream(cfg, False, monkeypatch, blocks, dtype)
    graphed, graphed_state, (captures, replays) = _stream(cfg, True, monkeypatch, blocks, dtype)
    assert torch.isfinite(eager.float()).all()
    assert torch.equal(eager, graphed)
    assert eager_state.keys() == graphed_state.keys()
    for key in eager_state:
        assert torch.equal(eager_state[key], graphed_state[key]), key
    if steady is None:  # the cache grows every block: shapes never repeat, nothing is captured
        assert captures == replays == 0
        return
    # 2 steps x 2 ping-pong parities. A key is captured when it comes back, two blocks after it was first seen; the
    # commit of block 0 has no spare to write its state into, so the commit's steady keys start at block 1.
    denoise = (blocks - (steady + 2)) * len(cfg.timesteps)
    commit = blocks - (max(steady, 1) + 2)
    assert captures == 4 and replays == denoise + commit
