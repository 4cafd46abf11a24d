"""The onnxruntime backend: streams like its reference, binds states without copies, and names what is wrong.

The first tests run a toy package (ort_toy_graphs.py: small graphs with the exact state contract) so they check the
backend alone; the last ones run packages exported from the tiny DiT against the torch float64 reference.
"""

from __future__ import annotations

import dataclasses

import onnx
import pytest
import torch
from ort_toy_graphs import ToyTorchBackend, write_toy_package

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import PRESENT_KV
from arl2rt.model.random import random_context
from arl2rt.parity.compare import Tolerances
from arl2rt.parity.runner import run_parity
from arl2rt.runtime.onnxruntime_backend import OnnxRuntimeBackend, resolve_device
from arl2rt.runtime.streamer import Streamer

TOY_TOL = Tolerances({"": 1e-5}, {"": 1e-5})


@pytest.fixture
def toy(tmp_path, tiny_cfg):
    return write_toy_package(tmp_path / "toy", tiny_cfg)


@pytest.mark.parametrize("batch", [1, 2], ids=["batch1", "batch2-noncontiguous-kv"])
def test_toy_stream_matches_its_torch_twin(toy, tiny_cfg, batch):
    context = random_context(tiny_cfg, seed=4, batch=batch)
    with ToyTorchBackend(toy.spec) as ref, OnnxRuntimeBackend(toy) as cand:
        result, _ = run_parity(ref, cand, context, blocks=4, seed=2, tolerances=TOY_TOL)
    assert result.passed, result.first_failure()
    # the toy's outputs depend on every state: a block that got a stale state or lost K/V would not match
    assert result.summary()["drift"]["steps"] == 1 + 4 * 5


def test_commit_writes_into_the_spare_state_buffer(toy, tiny_cfg, tiny_context):
    """Ping-pong: from the second commit on, present_state.i lands in the buffer past_state.i held two steps ago."""
    with OnnxRuntimeBackend(toy) as be:
        streamer = Streamer(be, seed=0)
        streamer.start(tiny_context)
        pointers = []
        for _ in range(4):
            streamer.next_block()
            pointers.append({n: t.data_ptr() for n, t in streamer.store.states.items()})
    for name in pointers[0]:
        assert pointers[1][name] != pointers[0][name]
        assert pointers[2][name] == pointers[0][name] and pointers[3][name] == pointers[1][name]


def test_outputs_given_in_out_are_written_in_place(toy, tiny_cfg, tiny_context):
    feeds = _step_feeds(toy, tiny_context)
    buffers = {s.name: torch.full(s.resolve(batch=1), float("nan")) for s in toy.spec.commit_outputs()}
    with OnnxRuntimeBackend(toy) as be:
        out = be.run("commit_step", feeds, out=buffers)
    for name, buf in buffers.items():
        assert out[name] is buf and torch.isfinite(buf).all()


def _step_feeds(toy, context):
    with ToyTorchBackend(toy.spec) as ref:
        streamer = Streamer(ref, seed=0)
        streamer.start(context)
        streamer.next_block()  # a non-empty past
        return streamer._feeds(torch.randn(1, 4, 3, 8, 8), 0.0)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.pop("past_state.1"), r"missing inputs \['past_state.1'\]"),
        (lambda f: f.__setitem__("past_state.0", f["past_state.0"].double()), "past_state.0: expected dtype float32"),
        (lambda f: f.__setitem__("past_key.3", f["past_key.3"][..., :8]), r"past_key.3: expected shape"),
        (lambda f: f.__setitem__("latents", f["latents"][:, :, :2]), r"latents: expected shape"),
    ],
    ids=["missing-state", "wrong-dtype", "wrong-head-dim", "wrong-frames"],
)
def test_bad_feeds_name_the_tensor(toy, tiny_context, change, message):
    feeds = _step_feeds(toy, tiny_context)
    change(feeds)
    with OnnxRuntimeBackend(toy) as be, pytest.raises(Arl2rtError, match=message):
        be.run("commit_step", feeds)


def test_truncated_onnx_names_the_file(toy):
    path = toy.graph_path("commit_step")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(Arl2rtError, match=r"commit_step\.onnx: onnxruntime cannot load"):
        OnnxRuntimeBackend(toy).activate()


def test_graph_without_a_state_input_names_file_and_tensor(toy, tiny_cfg):
    """A package whose graph lost ``past_state.2`` (manifest and graph disagree) fails at activation."""
    path = toy.graph_path("denoise_step")
    model = onnx.load(path)
    kept = [i for i in model.graph.input if i.name != "past_state.2"]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.graph.initializer.append(onnx.numpy_helper.from_array(torch.zeros(1, 4, 16, 16).numpy(), "past_state.2"))
    onnx.save(model, path)
    with pytest.raises(Arl2rtError, match=r"denoise_step\.onnx: graph inputs .* missing \['past_state.2'\]"):
        OnnxRuntimeBackend(toy).activate()


def test_graph_with_a_wrong_state_dtype_is_refused(toy):
    path = toy.graph_path("commit_step")
    model = onnx.load(path)
    producer = next(n for n in model.graph.node if "present_state.0" in n.output)
    producer.output[0] = "present_state.0.float"
    model.graph.node.append(onnx.helper.make_node("Cast", [producer.output[0]], ["present_state.0"], to=11))
    next(o for o in model.graph.output if o.name == "present_state.0").type.tensor_type.elem_type = 11  # double
    onnx.save(model, path)
    with pytest.raises(
        Arl2rtError, match=r"output present_state.0 has type tensor\(double\); expected tensor\(float\)"
    ):
        OnnxRuntimeBackend(toy).activate()


def test_package_for_another_shape_is_refused(tmp_path, tiny_cfg, toy):
    """Graphs exported for 3 frames per block, a contract for 2: static dims disagree."""
    other = dataclasses.replace(
        toy, spec=dataclasses.replace(toy.spec, config=dataclasses.replace(tiny_cfg, frames_per_block=2))
    )
    with pytest.raises(Arl2rtError, match=r"latents has shape \[.*3, 8, 8\]; expected \['batch', 4, 2, 8, 8\]"):
        OnnxRuntimeBackend(other).activate()


def test_cuda_without_the_cuda_ep_is_a_clear_error():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(Arl2rtError, match="install onnxruntime-gpu"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_commit_writes_block_kv_into_the_cache_in_place(micro_exports, micro_context):
    """The onnxruntime backend binds present K/V to the cache's slot: the commit's outputs are the cache's memory."""
    package = micro_exports.package("onnxruntime")
    kv = [s.name for s in package.spec.commit_outputs() if s.kind in PRESENT_KV]
    seen = []

    def keep(graph, block, pass_index, feeds, outputs):
        if graph == "commit_step":
            seen.append({n: outputs[n].data_ptr() for n in kv if n in outputs})

    with OnnxRuntimeBackend(package) as be:
        streamer = Streamer(be, seed=0, hook=keep, max_frames=8)
        streamer.start(micro_context)
        for _ in range(3):
            streamer.next_block()
        caches = streamer.store.caches
    assert seen and all(seen)
    tpf, fpb = package.config.tokens_per_frame, package.config.frames_per_block
    for block, pointers in enumerate(seen):
        for i, cache in caches.items():
            key_name, value_name = package.spec.names(PRESENT_KV, i)
            offset = block * fpb * tpf * cache.heads * cache.dim * cache.key.element_size()
            assert pointers[key_name] == cache.key.data_ptr() + offset
            assert pointers[value_name] == cache.value.data_ptr() + offset
