"""Which runs of a stream would replay an onnxruntime CUDA graph: the ids follow the steps whose launches repeat.

The assignment is plain bookkeeping on the stream's real feeds and buffers, so it is checked on the CPU here with
the torch backend's stream; the CUDA runs themselves are in tests/runtime/test_onnxruntime_cuda.py (GPU only)."""

from __future__ import annotations

import dataclasses

import torch

from arl2rt.export.state_spec import StateSpec
from arl2rt.model.random import random_context, random_model
from arl2rt.runtime.ort_graphs import OrtGraphs
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend


class _Recording(TorchBackend):
    """The torch backend, asking an OrtGraphs which graph id each run would bind (and recording the slots)."""

    def activate_impl(self) -> None:
        super().activate_impl()
        self.assign, self.ids = OrtGraphs(self.spec), []

    def run_impl(self, graph, feeds, out):
        slot = self.assign.slot(graph, feeds, out, batch=1)
        self.ids.append((graph, None if slot is None else slot.graph_id))
        outputs = super().run_impl(graph, feeds, out)
        with torch.inference_mode():
            self._bind_like_onnxruntime(outputs, out, slot)
        return outputs

    @staticmethod
    def _bind_like_onnxruntime(outputs, out, slot) -> None:
        for name, buf in out.items():  # bind as the onnxruntime backend does: into the spares (ping-pong) ...
            if outputs[name] is not buf and outputs[name].shape == buf.shape:
                buf.copy_(outputs[name])
                outputs[name] = buf
        if slot is not None:  # ... and fixed buffers for what out does not hold
            for name, buf in slot.outputs.items():
                buf.copy_(outputs[name])
                outputs[name] = buf


def _ids(cfg, blocks: int) -> list[tuple[str, int | None]]:
    with _Recording(random_model(cfg, seed=0), StateSpec(cfg)) as be:
        Streamer(be, seed=1, max_frames=blocks * cfg.frames_per_block).generate(random_context(cfg, 0), blocks)
        return be.ids


def test_all_hybrid_steps_replay_two_graphs_each_from_the_third_block(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, frames_per_block=1, latent_height=4, latent_width=4, hybrid_layers=(0, 1))
    cfg = dataclasses.replace(cfg, num_layers=2)
    ids = _ids(cfg, 6)
    passes = len(cfg.timesteps)
    per_block = [ids[i : i + passes + 1] for i in range(1, len(ids), passes + 1)]  # ids[0]: encode_context
    assert ids[0] == ("encode_context", None)
    denoise = [{i for g, i in block if g == "denoise_step"} for block in per_block]
    commit = [next(i for g, i in block if g == "commit_step") for block in per_block]
    # denoise reads the zero states (block 0), block 0's commit output (1), then the zeros' buffer again (2: block 0's
    # key comes back), ...: two keys alternating, each given an id when it comes back
    assert denoise == [{None}, {None}, {0}, {1}, {0}, {1}]
    # block 0's commit writes no spare, block 1's is the first of its parity: ids from block 3 on, alternating
    assert commit == [None, None, None, 0, 1, 0]


def test_a_growing_cache_never_gets_a_graph(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, frames_per_block=1, latent_height=4, latent_width=4)
    assert all(i is None for _, i in _ids(cfg, 6))


def test_a_replayed_run_binds_the_same_addresses_as_its_capture(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, frames_per_block=1, latent_height=4, latent_width=4, hybrid_layers=(0, 1))
    cfg = dataclasses.replace(cfg, num_layers=2)
    spec = StateSpec(cfg)
    assign = OrtGraphs(spec)
    feeds = {s.name: torch.randn(s.resolve(batch=1)) for s in spec.inputs("denoise_step") if s.dtype != "int64"}
    feeds.update({s.name: torch.tensor(0) for s in spec.inputs("denoise_step") if s.dtype == "int64"})
    first = [assign.slot("denoise_step", feeds, {}, 1), None]
    assign.slot("commit_step", {**feeds}, {}, 1)  # a commit ends block 0
    again = assign.slot("denoise_step", {**feeds, "latents": torch.randn_like(feeds["latents"])}, {}, 1)
    assert first[0] is None and again is not None and again.graph_id == 0
    later = assign.slot("denoise_step", {**feeds, "latents": torch.randn_like(feeds["latents"])}, {}, 1)
    assert later is again  # same id, same staged buffers and outputs
    moved = {**feeds, next(n for n in feeds if n.startswith("past_state")): torch.randn(1)}
    assert assign.slot("denoise_step", moved, {}, 1) is None  # a state elsewhere is another key: eager first
