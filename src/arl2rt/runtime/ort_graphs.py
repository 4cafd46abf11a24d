"""onnxruntime's CUDA graphs for the onnxruntime backend: which run of a step replays which captured graph.

onnxruntime's CUDA EP (session option ``enable_cuda_graph``) captures a session's run as a CUDA graph and replays it
on the same bound addresses; a run's ``gpu_graph_id`` picks one of several graphs per session, ``-1`` runs without
one. A step repeats its launches exactly where the torch backend's step graphs would replay
(:func:`arl2rt.runtime.step_graphs.step_key`): every input but the per-pass ones at the same address and shape, every
written buffer at the same address. That holds for all-hybrid models and full rolling windows, alternating between
two keys per step (ping-pong states); a cache that still grows changes the key every block, and the exported graphs
take the exact past length, so those runs stay eager (``-1``).

Each key seen again in a later block gets a graph id with its own fixed buffers: copies of the per-pass inputs
(refreshed before each run) and the outputs the caller does not provide (velocity; a full window's block K/V). Those
outputs are overwritten by the next run of the same id: the Streamer and StateStore consume them before that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from arl2rt.export.state_spec import StateSpec
from arl2rt.runtime.step_graphs import staged_inputs, step_key

GRAPH_STEPS = ("denoise_step", "commit_step")
NO_GRAPH = -1
_MAX_IDS = 8  # per step: 2 ping-pong parities, twice over (a RoPE re-base), with room to spare


def ort_graphs_wanted(device: torch.device) -> bool:
    """onnxruntime's CUDA graphs on a CUDA device when ``ARL2RT_ORT_GRAPHS=1`` (off by default until measured)."""
    return device.type == "cuda" and os.environ.get("ARL2RT_ORT_GRAPHS", "0") == "1"


@dataclass
class GraphSlot:
    """The fixed buffers of one graph id: per-pass inputs (copied into before each run) and unprovided outputs."""

    graph_id: int
    staged: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


@dataclass
class OrtGraphs:
    """Assigns graph ids to the runs of the steps of one backend, block by block."""

    spec: StateSpec
    _seen: dict[tuple, int] = field(default_factory=dict)
    _slots: dict[tuple, GraphSlot] = field(default_factory=dict)
    _ids: dict[str, int] = field(default_factory=dict)
    _block: int = 0

    def slot(
        self, graph: str, feeds: dict[str, torch.Tensor], out: dict[str, torch.Tensor], batch: int
    ) -> GraphSlot | None:
        """The graph id and buffers this run binds, or None: run without a graph (``gpu_graph_id = -1``).

        ``out``: the buffers the run writes into as they are (each fits its output), by output name."""
        if graph not in GRAPH_STEPS:
            return None
        block = self._block
        if graph == "commit_step":
            self._block += 1
            self._seen = {k: b for k, b in self._seen.items() if b >= block - 2}  # growing caches: never again
        key = step_key(self.spec, graph, feeds, out)
        found = self._slots.get(key)
        if found is not None:
            return found
        first = self._seen.setdefault(key, block)
        if first == block or self._ids.get(graph, 0) >= _MAX_IDS:
            return None
        graph_id = self._ids.get(graph, 0)
        self._ids[graph] = graph_id + 1
        device = feeds[self.spec.inputs(graph)[0].name].device
        staged = {name: torch.empty_like(feeds[name]) for name in staged_inputs(self.spec, graph, feeds)}
        outputs = {
            s.name: torch.empty(s.resolve(batch=batch), dtype=s.torch_dtype, device=device)
            for s in self.spec.outputs(graph)
            if s.name not in out
        }
        self._slots[key] = slot = GraphSlot(graph_id, staged, outputs)
        return slot
