"""CUDA graphs of the torch backend's steps, captured where a stream's shapes stay the same, replayed by any caller.

A step graph (``denoise_step``, ``commit_step``) is a fixed sequence of kernels once its inputs' shapes and addresses
are fixed. In a stream they are, block after block, wherever nothing grows: all-hybrid models (GDN states only) and
softmax layers whose rolling window is full. The per-pass inputs (latents, timestep, frame offset) change buffers
every pass; the graph reads static copies of them. Everything else (states, K/V cache views, text K/V) is read where
it lies, so the key of a graph is the shapes, strides and addresses of those inputs, plus the address of each
``out`` buffer (the StateStore's ping-pong spare) it writes. Ping-pong gives each step two keys, so two graphs each.

A key is captured the second time it is seen, in a later block than the first (the first run is eager and warms up
what capture cannot do: ``torch.compile`` of the fused chains, Triton's compilation, cuBLAS/cuDNN plans). A growing
global cache changes the key every block, so such layers keep the eager path; the shapes then never repeat.

All graphs share one memory pool: they never run concurrently, and the outputs a caller holds stay allocated. A
replay's outputs (velocity, block K/V) are the graph's own tensors, overwritten by the next replay of the same
graph: the Streamer and the StateStore consume them before that; a caller that keeps them must clone them.
``ARL2RT_GRAPHS=0`` switches graphs off.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from arl2rt.export.state_spec import PER_PASS, PRESENT_STATE, StateSpec

CAPTURED_STEPS = ("denoise_step", "commit_step")
_KEEP_BLOCKS = 3  # a key seen this many blocks ago and not captured is forgotten (ping-pong repeats every 2)
_MAX_GRAPHS = 8  # 2 steps x 2 ping-pong parities, twice over (the stream before and after a RoPE re-base)


def graphs_wanted(device: torch.device) -> bool:
    """Step graphs on a CUDA device unless ``ARL2RT_GRAPHS=0`` (read at each backend's activation)."""
    return device.type == "cuda" and os.environ.get("ARL2RT_GRAPHS", "1") != "0"


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    staged: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


@dataclass
class StepGraphs:
    """Captures and replays the steps of one backend; :meth:`run` falls back to ``eager`` wherever it cannot."""

    spec: StateSpec
    device: torch.device
    eager: Callable[..., dict[str, torch.Tensor]]  # (graph, feeds[, out]) -> outputs
    captures: int = 0
    replays: int = 0
    _pool: tuple = field(default_factory=lambda: torch.cuda.graph_pool_handle())
    _seen: dict[tuple, int] = field(default_factory=dict)
    _graphs: OrderedDict[tuple, _Captured | None] = field(default_factory=OrderedDict)
    _block: int = 0

    def _key(self, graph: str, feeds: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> tuple:
        inputs = tuple(
            (s.name, tuple(t.shape), t.dtype)
            if s.kind in PER_PASS
            else (s.name, tuple(t.shape), t.stride(), t.dtype, t.data_ptr())
            for s in self.spec.inputs(graph)
            for t in (feeds[s.name],)
        )
        targets = tuple(sorted((name, buf.data_ptr()) for name, buf in out.items()))
        return graph, inputs, targets

    def run(self, graph: str, feeds: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run ``graph``: replayed when captured, captured when its key was seen in an earlier block, else eager.

        ``out`` maps ``present_state`` names to buffers the step writes into (the StateStore's spares).
        """
        if graph not in CAPTURED_STEPS or torch.cuda.is_current_stream_capturing():
            return self.eager(graph, feeds)  # inside a caller's own capture (a whole block as one graph): no nesting
        with torch.inference_mode():  # the spares may be inference tensors (earlier eager outputs)
            return self._run(graph, feeds, out)

    def _run(self, graph: str, feeds: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        block = self._block
        if graph == "commit_step":
            self._block += 1
            self._forget_before(block - _KEEP_BLOCKS)
        key = self._key(graph, feeds, out)
        first = self._seen.setdefault(key, block)
        captured = self._graphs.get(key, False)
        if captured is False and first < block and self._capturable(graph, out):
            captured = self._graphs[key] = self._capture(graph, feeds, out)
        if not captured:  # not seen before, not capturable, or its capture failed: eager (K/V into their slots)
            return self._into(self.eager(graph, feeds, out), out)
        self._graphs.move_to_end(key)
        for name, buf in captured.staged.items():
            buf.copy_(feeds[name])
        captured.graph.replay()
        self.replays += 1
        return dict(captured.outputs)

    def _capturable(self, graph: str, out: dict[str, torch.Tensor]) -> bool:
        """A new state must land in a buffer the store owns (a spare); in graph memory the next replay overwrites it."""
        return all(s.name in out for s in self.spec.outputs(graph) if s.kind == PRESENT_STATE)

    def _forget_before(self, block: int) -> None:
        """Keys last useful before ``block`` (a cache that grew, a RoPE re-base) and graphs beyond the few a stream
        alternates between are dropped, so a long stream holds a bounded number of graphs."""
        self._seen = {k: b for k, b in self._seen.items() if b >= block or k in self._graphs}
        while len(self._graphs) > _MAX_GRAPHS:
            old, _ = self._graphs.popitem(last=False)
            self._seen.pop(old, None)

    @staticmethod
    def _into(outputs: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Write new states into the given spares, so eager and replayed steps hand the store the same buffers."""
        for name, buf in out.items():
            if name in outputs and buf.shape == outputs[name].shape and buf.dtype == outputs[name].dtype:
                buf.copy_(outputs[name])
                outputs[name] = buf
        return outputs

    def _capture(self, graph: str, feeds: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> _Captured | None:
        staged = {s.name: feeds[s.name].clone() for s in self.spec.inputs(graph) if s.kind in PER_PASS}
        reads = {**feeds, **staged}
        cuda_graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(cuda_graph, pool=self._pool):
                outputs = self._into(self.eager(graph, reads), out)
        except RuntimeError:
            # e.g. an op that synchronises with the host: this key stays eager. The failed capture may have left
            # its stream in a capturing error state; make sure the device is usable before going on.
            torch.cuda.synchronize(self.device)
            return None
        self.captures += 1
        return _Captured(cuda_graph, staged, outputs)

    def release(self) -> None:
        """Drop every graph (their memory returns to the allocator) and forget the keys seen."""
        self._graphs.clear()
        self._seen.clear()
