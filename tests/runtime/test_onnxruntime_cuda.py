"""The onnxruntime backend on the CUDA EP (GPU machine with onnxruntime-gpu only): every node of every step on the
device, states ping-ponged in device memory, no host<->device copy inside a step, and the same stream as on the CPU."""

from __future__ import annotations

import pytest
import torch

from arl2rt.runtime.onnxruntime_backend import CUDA_EP, OnnxRuntimeBackend, cuda_available
from arl2rt.runtime.ort_placement import off_device, placement
from arl2rt.runtime.streamer import Streamer

pytestmark = pytest.mark.skipif(
    not cuda_available(), reason="needs onnxruntime-gpu (CUDAExecutionProvider) and a CUDA GPU"
)


@pytest.fixture
def contrib(micro_exports):
    return micro_exports.package("onnxruntime-contrib")


def test_every_node_of_every_step_is_on_the_cuda_ep(contrib):
    with OnnxRuntimeBackend(contrib, "cuda") as be:
        for graph, session in be.sessions.items():
            found = placement(session)
            assert found is not None, "this onnxruntime does not record node placement"
            assert off_device(found, CUDA_EP) == [], graph


def test_cuda_stream_equals_the_cpu_stream_and_keeps_states_on_the_device(contrib, micro_context):
    with OnnxRuntimeBackend(contrib, "cpu") as cpu:
        want = Streamer(cpu, seed=3).generate(micro_context, 4)
    with OnnxRuntimeBackend(contrib, "cuda") as be:
        streamer = Streamer(be, seed=3)
        streamer.start(micro_context.cuda())
        blocks, pointers = [], []
        for _ in range(4):
            blocks.append(streamer.next_block())
            pointers.append({n: t.data_ptr() for n, t in streamer.store.states.items()})
            assert all(t.is_cuda for t in streamer.store.states.values())
    got = torch.cat(blocks, dim=2).cpu()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for name in pointers[0]:  # ping-pong between two device buffers: no new state memory, no copy
        assert pointers[2][name] == pointers[0][name] and pointers[3][name] == pointers[1][name] != pointers[0][name]


def test_a_step_makes_no_host_device_copy(contrib, micro_context):
    """CUPTI sees onnxruntime's copies too: each step graph, run on device feeds, copies nothing to or from the host
    (the Streamer's own noise and offset uploads are outside the step, so the step is profiled alone)."""
    from benchmarks.ort_node_copies import cuda_trace, host_copies

    seen = {}

    def keep(graph, block, pass_index, feeds, outputs):
        if block == 1:
            seen.setdefault(graph, {n: t.clone() for n, t in feeds.items()})

    with OnnxRuntimeBackend(contrib, "cuda") as be:
        streamer = Streamer(be, seed=1, hook=keep)
        streamer.start(micro_context.cuda())
        for _ in range(2):
            streamer.next_block()
        assert set(seen) == {"denoise_step", "commit_step"}
        for graph, feeds in seen.items():
            outputs = be.run(graph, feeds)  # warm: onnxruntime allocates on first use
            torch.cuda.synchronize()
            events = cuda_trace(lambda graph=graph, feeds=feeds: be.run(graph, feeds))
            assert any(e["cat"] == "kernel" for e in events), f"{graph}: no GPU kernel ran: not on the device"
            sizes = {n: t.numel() * t.element_size() for n, t in outputs.items()}  # to tell which value moved
            assert host_copies(events) == [], (graph, host_copies(events), "output bytes:", sizes)


def test_cuda_graph_replays_equal_the_eager_runs(tmp_path, monkeypatch):
    """An all-hybrid package (every step's launches repeat): with ARL2RT_ORT_GRAPHS=1 the steps replay onnxruntime
    CUDA graphs from the third block on, and the stream equals the eager one bit for bit (the same kernels)."""
    from arl2rt.export.package import export_package
    from arl2rt.model.random import random_context, random_model
    from micro_configs import micro_config

    cfg = micro_config("micro-hybrid-graphs", num_layers=2, hybrid_layers=(0, 1), frames_per_block=2)
    package = export_package(random_model(cfg, seed=0).eval(), tmp_path / "pkg", target="onnxruntime-contrib")
    context = random_context(cfg, seed=1).cuda()
    streams = {}
    for graphs in ("0", "1"):
        monkeypatch.setenv("ARL2RT_ORT_GRAPHS", graphs)
        with OnnxRuntimeBackend(package, "cuda") as be:
            streams[graphs] = Streamer(be, seed=2).generate(context, 6).cpu()
            if graphs == "1":
                slots = list(be.graphs._slots.values())
    assert torch.isfinite(streams["0"]).all()
    assert torch.equal(streams["0"], streams["1"])
    assert sorted(s.graph_id for s in slots) == [0, 0, 1, 1]  # two ids per step (ping-pong)
