"""The pre-flight memory check: its plan is what a StateStore really holds after a block, and a CUDA device with too
little free memory is refused before anything of the stream is allocated, naming every part."""

from __future__ import annotations

import pytest
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import StateSpec
from arl2rt.model.random import random_context, random_model
from arl2rt.runtime.state_store import check_device_memory, planned_bytes
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend
from micro_configs import micro_config, micro_rgb_config

GLOBAL = micro_config("micro-mem-global", num_layers=3, hybrid_layers=(0,))
ROLLING = micro_rgb_config("micro-mem-rolling")


@pytest.mark.parametrize("cfg, batch, max_frames", [(GLOBAL, 1, 8), (GLOBAL, 2, 5), (ROLLING, 1, 64)])
def test_the_plan_is_what_the_store_holds_after_a_block(cfg, batch, max_frames):
    spec = StateSpec(cfg, "float32")
    with TorchBackend(random_model(cfg, seed=0), spec, "cpu") as backend:
        streamer = Streamer(backend, seed=1, batch=batch, max_frames=max_frames)
        streamer.start(random_context(cfg, seed=2).expand(batch, -1, -1))
        streamer.next_block()
        assert streamer.store.nbytes() == planned_bytes(spec, batch, max_frames)


def test_too_little_free_memory_is_refused_with_every_part_named():
    spec = StateSpec(GLOBAL, "float32")
    need = sum(planned_bytes(spec, 2, 8).values())
    with pytest.raises(Arl2rtError) as err:
        check_device_memory(spec, 2, 8, torch.device("cuda", 0), free_bytes=need - 1)
    lines = str(err.value).splitlines()
    assert lines[0].startswith("cuda:0: 0.00 GiB free; this stream (batch 2) needs at least")
    assert [line.split(":")[0].strip() for line in lines[1:-1]] == [
        "GDN states and their ping-pong spares",
        "K/V caches of 2 softmax layers",
        "text K/V",
    ]
    assert lines[-1].startswith("expected a shorter stream")
    check_device_memory(spec, 2, 8, torch.device("cuda", 0), free_bytes=need)  # exactly enough: no error


def test_the_cpu_is_never_checked():
    check_device_memory(StateSpec(GLOBAL, "float32"), 1, 8, torch.device("cpu"), free_bytes=0)
