"""CUDA graphs of the torch backend's steps, captured where a stream's shapes stay the same, replayed by any caller.

A step graph (``denoise_step``, ``commit_step``) is a fixed sequence of kernels once its inputs' shapes and addresses
are fixed. In a stream they are, block after block, wherever nothing grows: all-hybrid models (GDN states only) and
softmax layers whose rolling window is full. The per-pass inputs (latents, timestep, frame offset) change buffers
every pass; the graph reads static copies of them. Everything else (states, K/V cache views, text K/V) is read where
it lies, so the key of a graph is the shapes, strides and addresses of those inputs, plus the address of each
``out`` buffer (the StateStore's ping-pong spare) it writes. Ping-pong gives each step two keys, so two graphs each.

A key is captured the second time it is seen, in a later block than the first (the first run is eager and warms up
what capture cannot do: ``torch.compile`` of the fused chains, Triton's compilation, cuBLAS/cuDNN plans).

A cache that still grows (a global cache, a rolling window not yet full) would change the key every block. Such
caches are fed whole instead: each step reads the cache's buffers at their capacity with the valid length as a
device tensor (``past_tokens``, staged like the per-pass inputs), attends to the valid keys only and, in the commit,
writes the block's K/V at that offset (``CausalDiT.step``). The key then stays the same until the buffer grows
(doubling) or the window fills, so a stream of N blocks captures O(log N) times. Those steps use other attention
kernels than the exact-length eager path (docs/cuda-graphs.md says which and by how much they differ), slower per key:
caches beyond ``WHOLE_MAX_TOKENS`` keep the exact form, eagerly.

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

from arl2rt.export.state_spec import PAST_KV, PER_PASS, PRESENT_KV, PRESENT_STATE, StateSpec

CAPTURED_STEPS = ("denoise_step", "commit_step")
_KEEP_BLOCKS = 3  # a key seen this many blocks ago and not captured is forgotten (ping-pong repeats every 2)
_MAX_GRAPHS = 8  # 2 steps x 2 ping-pong parities, twice over (the stream before and after a RoPE re-base)


def graphs_wanted(device: torch.device) -> bool:
    """Step graphs on a CUDA device unless ``ARL2RT_GRAPHS=0`` (read at each backend's activation)."""
    return device.type == "cuda" and os.environ.get("ARL2RT_GRAPHS", "1") != "0"


_PAST_TOKENS = "past_tokens"  # the staged input of a step fed whole caches: the valid past length
# Caches of more tokens than this keep the exact form, eager: there flash's variable-length kernel costs more than the
# launches a graph saves. Measured on an H100 (benchmarks/results/end_to_end.md): a 256-frame (399k-token) global cache
# fed whole made a 1005-frame ARL2-75 % stream's DiT 16 % slower (83.0 s against 71.4 s eager). Estimated break-even
# at Wan dims: ~150k tokens (146 ms of launches saved per block against flash at ~0.7x cuDNN's rate over 40
# layer-passes); 65,536 (42 latent frames at 480x832) keeps a Self-Forcing 21-frame window and short caches.
WHOLE_MAX_TOKENS = 65_536


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    staged: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


@dataclass
class _WholeCaches:
    """A step's feeds with every past K/V replaced by its cache's whole buffer; ``out`` likewise for a commit, whose
    caller then receives ``slots`` (the block's part of each buffer) as the present K/V."""

    feeds: dict[str, torch.Tensor]
    out: dict[str, torch.Tensor]
    tokens: torch.Tensor  # int64 [1] on the device
    slots: dict[str, torch.Tensor]


def whole_buffer(view: torch.Tensor) -> torch.Tensor | None:
    """The buffer ``[B, S_cap, H, D]`` a past K/V view ``[B, S, H, D]`` is the strict prefix of, or None (a view
    that is its whole buffer, a layout other than the KVCache's)."""
    b, length, h, d = view.shape
    if view.stride()[1:] != (h * d, d, 1) or view.stride(0) % (h * d):
        return None
    capacity = view.stride(0) // (h * d)
    end = view.storage_offset() + (b - 1) * view.stride(0) + capacity * h * d
    if capacity <= length or view.untyped_storage().nbytes() < end * view.element_size():
        return None
    return view.as_strided((b, capacity, h, d), view.stride())


def whole_caches(spec: StateSpec, graph: str, feeds: dict, out: dict) -> _WholeCaches | None:
    """The step fed whole caches (see the module's docstring), where every softmax layer's past is a strict prefix of
    a buffer, all of one length > 0 and, for a commit, each block slot offered lies right after it; else None."""
    layers = spec.config.softmax_layers
    lengths = {feeds[name].shape[1] for i in layers for name in spec.names(PAST_KV, i)}
    if not layers or len(lengths) != 1 or 0 in lengths:
        return None
    (length,) = lengths
    whole_feeds, whole_out, slots = dict(feeds), dict(out), {}
    for i in layers:
        for past, present in zip(spec.names(PAST_KV, i), spec.names(PRESENT_KV, i)):
            buffer = whole_buffer(feeds[past])
            if buffer is None or buffer.shape[1] > WHOLE_MAX_TOKENS:
                return None
            whole_feeds[past] = buffer
            if graph == "commit_step":
                slot = out.get(present)
                if slot is None or slot.data_ptr() != buffer[:, length:].data_ptr() or slot.stride() != buffer.stride():
                    return None  # no slot (a full window, batch > 1) or in a grown buffer: the exact path
                whole_out[present], slots[present] = buffer, slot
    tokens = torch.tensor([length], dtype=torch.int64, device=next(iter(whole_feeds.values())).device)
    return _WholeCaches(whole_feeds, whole_out, tokens, slots)


def staged_inputs(spec: StateSpec, graph: str, feeds: dict[str, torch.Tensor]) -> list[str]:
    """The inputs a graph reads from its own copies, refreshed before each replay: they change every pass."""
    names = [s.name for s in spec.inputs(graph) if s.kind in PER_PASS]
    return names + [_PAST_TOKENS] * (_PAST_TOKENS in feeds)


def step_key(spec: StateSpec, graph: str, feeds: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> tuple:
    """What a replay of ``graph`` must find as it was at capture: the staged inputs' shapes and dtypes, every other
    input's shape, strides, dtype and address, and the address of each buffer the step writes into (``out``)."""
    staged = staged_inputs(spec, graph, feeds)
    inputs = tuple(
        (name, tuple(t.shape), t.dtype) if name in staged else (name, tuple(t.shape), t.stride(), t.dtype, t.data_ptr())
        for name in [s.name for s in spec.inputs(graph)] + [_PAST_TOKENS] * (_PAST_TOKENS in feeds)
        for t in (feeds[name],)
    )
    targets = tuple(sorted((name, buf.data_ptr()) for name, buf in out.items()))
    return graph, inputs, targets


@dataclass
class StepGraphs:
    """Captures and replays the steps of one backend; :meth:`run` falls back to ``eager`` wherever it cannot."""

    spec: StateSpec
    device: torch.device
    eager: Callable[..., dict[str, torch.Tensor]]  # (graph, feeds[, out][, past_tokens=]) -> outputs
    capture: bool = True  # False: the graphs' feeds (whole caches) but every step eager, e.g. to compare kernels
    captures: int = 0
    replays: int = 0
    _pool: tuple | None = None
    _seen: dict[tuple, int] = field(default_factory=dict)
    _graphs: OrderedDict[tuple, _Captured | None] = field(default_factory=OrderedDict)
    _block: int = 0

    def _staged(self, graph: str, feeds: dict[str, torch.Tensor]) -> list[str]:
        return staged_inputs(self.spec, graph, feeds)

    def _key(self, graph: str, feeds: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> tuple:
        return step_key(self.spec, graph, feeds, out)

    def run(self, graph: str, feeds: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run ``graph``: replayed when captured, captured when its key was seen in an earlier block, else eager.

        ``out`` maps ``present_state`` names to buffers the step writes into (the StateStore's spares).
        """
        capturing = self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        if graph not in CAPTURED_STEPS or capturing:
            return self.eager(graph, feeds)  # inside a caller's own capture (a whole block as one graph): no nesting
        with torch.inference_mode():  # the spares may be inference tensors (earlier eager outputs)
            return self._run(graph, feeds, out)

    def _run(self, graph: str, feeds: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        block = self._block
        if graph == "commit_step":
            self._block += 1
            self._forget_before(block - _KEEP_BLOCKS)
        whole = whole_caches(self.spec, graph, feeds, out)
        if whole is not None:
            feeds, out = {**whole.feeds, _PAST_TOKENS: whole.tokens}, whole.out
        key = self._key(graph, feeds, out)
        first = self._seen.setdefault(key, block)
        captured = self._graphs.get(key, False)
        if captured is False and first < block and self.capture and self._capturable(graph, out):
            captured = self._graphs[key] = self._capture(graph, feeds, out)
        if not captured:  # not seen before, not capturable, or its capture failed: eager (K/V into their slots)
            outputs = self._into(self._eager(graph, feeds, out), out)
        else:
            self._graphs.move_to_end(key)
            for name, buf in captured.staged.items():
                buf.copy_(feeds[name])
            captured.graph.replay()
            self.replays += 1
            outputs = dict(captured.outputs)
        return outputs if whole is None else {**outputs, **whole.slots}

    def _eager(self, graph: str, feeds: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> dict:
        if _PAST_TOKENS not in feeds:
            return self.eager(graph, feeds, out)
        step_feeds = {name: t for name, t in feeds.items() if name != _PAST_TOKENS}
        return self.eager(graph, step_feeds, out, past_tokens=feeds[_PAST_TOKENS])

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
            if name not in outputs or outputs[name] is buf:  # already written there (a K/V slot, a whole cache)
                continue
            if buf.shape == outputs[name].shape and buf.dtype == outputs[name].dtype:
                buf.copy_(outputs[name])
                outputs[name] = buf
        return outputs

    def _capture(self, graph: str, feeds: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> _Captured | None:
        staged = {name: feeds[name].clone() for name in self._staged(graph, feeds)}
        reads = {**feeds, **staged}
        cuda_graph = torch.cuda.CUDAGraph()
        self._pool = self._pool or torch.cuda.graph_pool_handle()
        try:
            with torch.cuda.graph(cuda_graph, pool=self._pool):
                outputs = self._into(self._eager(graph, reads, out), out)
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
