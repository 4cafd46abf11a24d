"""CUDA graphs for the AR loop: one block at a fixed stream position as a host-sync-free callable, and its capture.

At a fixed position every shape of a block is static: the softmax layers attend to K/V views of fixed length, the GDN
states sit in fixed buffers. :class:`StaticBlock` runs such a block (denoising passes, the clean pass, the append of
the block's K/V to the caches) with no host synchronisation: its noise is drawn on the device, its timesteps and frame
offset are made once. :class:`CapturedCall` records it once as a CUDA graph and replays it.

A replay regenerates the block at the same position from fresh noise; it does not advance the stream (the caches'
valid length and the store's states stay as they were). That is what "time per block at position N" measures.
:class:`~arl2rt.runtime.streamer.Streamer` remains the loop that moves a stream forward; StaticBlock mirrors its
``next_block`` because that one draws noise on the host (seeded, identical across backends), which a graph cannot hold.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import LATENTS, PRESENT_KV, VELOCITY
from arl2rt.model.scheduler import FlowMatchScheduler
from arl2rt.runtime.backend import Backend
from arl2rt.runtime.state_store import StateStore


class StaticBlock:
    """One AR block at a fixed position of a stream held by ``store``, run on ``backend``; call it to run the block.

    ``frame_offset`` is the RoPE index of the block's first latent frame (the Streamer's ``rope_frame``). The softmax
    layers' caches must be global (no rolling window) with room for the block after their valid frames: the block's
    K/V are written there, as :meth:`KVCache.append` would, without advancing the cache. ``noise`` returns latent-shaped
    noise in the io dtype on the backend's device (default: ``torch.randn`` there).

    Returns the denoised latents under ``"latents"`` and the commit outputs by StateSpec name.
    """

    def __init__(
        self,
        backend: Backend,
        store: StateStore,
        frame_offset: int,
        noise: Callable[[], torch.Tensor] | None = None,
    ) -> None:
        spec, cfg = backend.spec, backend.spec.config
        if store.spec != spec:
            raise Arl2rtError(f"state store of config {store.spec.config.name!r} does not match backend's {cfg.name!r}")
        f = cfg.frames_per_block
        if not 0 <= frame_offset <= cfg.rope_max_positions - f:
            raise Arl2rtError(
                f"frame offset {frame_offset}: expected 0..{cfg.rope_max_positions - f} "
                f"(a {f}-frame block within the {cfg.rope_max_positions}-position RoPE table)"
            )
        self.backend, self.store, self.spec = backend, store, spec
        self.scheduler = FlowMatchScheduler.from_config(cfg)
        device, io_dtype = backend.device, spec.velocity().torch_dtype
        shape = (store.batch, cfg.in_channels, f, cfg.latent_height, cfg.latent_width)
        self.noise = noise or (lambda: torch.randn(shape, dtype=io_dtype, device=device))
        steps = (*self.scheduler.timesteps, 0.0)
        self._timesteps = [torch.full((store.batch, f), t, dtype=io_dtype, device=device) for t in steps]
        self._frame_offset = torch.tensor(frame_offset, dtype=torch.int64, device=device)
        self._slots: dict[str, torch.Tensor] = {}  # present K/V name -> where the block's K/V go in its cache
        for i, cache in store.caches.items():
            if cache.max_past is not None:
                raise Arl2rtError(
                    f"K/V cache of layer {i}: a static block needs a global cache, found a rolling window of "
                    f"{cache.max_past} past frames"
                )
            if cache.frames + f > cache.capacity_frames:
                raise Arl2rtError(
                    f"K/V cache of layer {i}: the block needs frames {cache.frames}..{cache.frames + f - 1}, found "
                    f"room for {cache.capacity_frames} frames (make the StateStore with max_frames >= "
                    f"{cache.frames + f})"
                )
            start, end = cache.frames * cache.tpf, (cache.frames + f) * cache.tpf
            key, value = spec.names(PRESENT_KV, i)
            self._slots[key], self._slots[value] = cache.key[:, start:end], cache.value[:, start:end]
        self._state_feeds = store.feeds()

    def _feeds(self, latents: torch.Tensor, pass_index: int) -> dict[str, torch.Tensor]:
        return {**self.spec.pass_feeds(latents, self._timesteps[pass_index], self._frame_offset), **self._state_feeds}

    def __call__(self) -> dict[str, torch.Tensor]:
        sched = self.scheduler
        x = self.noise()
        x0 = x
        for i in range(len(sched.timesteps)):
            velocity = self.backend.run("denoise_step", self._feeds(x, i))[self.spec.name(VELOCITY)]
            x0 = sched.x0(x, velocity, sched.sigmas[i])
            if i + 1 < len(sched.timesteps):
                x = sched.next_latents(x, velocity, i, self.noise)
        outputs = self.backend.run("commit_step", self._feeds(x0, len(sched.timesteps)))
        for name, slot in self._slots.items():
            slot.copy_(outputs[name])
        return {self.spec.name(LATENTS): x0, **outputs}


class CapturedCall:
    """A no-argument callable, replayed from a CUDA graph once :meth:`capture` succeeded, else called eagerly.

    The graph owns the memory of everything ``fn`` allocates (a private pool) until :meth:`release`; its outputs are
    the same tensors at every replay, overwritten in place.
    """

    def __init__(self, fn: Callable[[], Any], device: torch.device | str) -> None:
        self.fn = fn
        self.device = torch.device(device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: Any = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def capture(self, warmup: int = 1) -> list[float]:
        """Run ``fn`` ``warmup`` times, then capture one call, all on one side stream (per-stream cuBLAS/cuDNN
        workspaces, Triton compilation and cuDNN plans are then ready before the capture starts).

        Returns the seconds each warm-up call took (eager timings). On a CPU device nothing is captured: the warm-up
        calls still run and are timed, and later calls stay eager.
        """
        if self.device.type != "cuda":
            times = []
            for _ in range(warmup):
                start = time.perf_counter()
                self.outputs = self.fn()
                times.append(time.perf_counter() - start)
            return times
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        times = []
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                self.fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            self.outputs = self.fn()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph = graph
        return times

    def __call__(self) -> Any:
        if self.graph is None:
            self.outputs = self.fn()
        else:
            self.graph.replay()
        return self.outputs

    def release(self) -> None:
        """Drop the graph and its outputs, returning the graph's memory to the allocator."""
        self.graph, self.outputs = None, None
