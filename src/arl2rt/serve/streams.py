"""The streams one model instance serves: a Streamer per correlation ID over one shared backend.

A request names its sequence (Triton's correlation ID) and the block it asks for. The sequence's first request
(``start``) makes a fresh Streamer (a stream already held under that ID is dropped first: START resets), later ones
continue it, and the one that ends the sequence (``end``) frees it after its block. A stream that no request has
touched for ``idle_timeout`` seconds is freed by :meth:`StreamTable.expire` (its client died or forgot to end it), as
Triton's sequence batcher forgets the sequence after the same idle time.

Each stream runs exactly as ``arl2rt generate`` runs one (:func:`arl2rt.runtime.generate.run_generate`): the same
Streamer, seed and text, on the same backend and thread count, so its blocks are bit-identical to a single-process run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.runtime.backend import Backend
from arl2rt.runtime.streamer import Streamer


@dataclass
class Block:
    """One block of a stream: its latents, its video (a model with a VAE decoder; else None) and the memory now held."""

    latents: torch.Tensor
    frames: torch.Tensor | None
    state_bytes: int
    streams: int  # streams the table holds while answering, this one included


class StreamTable:
    """Streams by correlation ID. Not thread-safe by itself: callers hold :attr:`lock` around every call."""

    def __init__(self, backend: Backend, *, idle_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        if idle_timeout <= 0:
            raise Arl2rtError(f"idle timeout must be > 0 s, got {idle_timeout}")
        self.backend, self.idle_timeout, self.clock = backend, idle_timeout, clock
        self.lock = threading.Lock()
        self._streams: dict[int, Streamer] = {}
        self._last_used: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, corrid: int) -> bool:
        return corrid in self._streams

    def start(self, corrid: int, context: torch.Tensor, seed: int) -> None:
        """A new stream for ``corrid`` (any stream held under it is dropped): text ``context [1, L, D]``, ``seed``."""
        self.end(corrid)
        # a global K/V cache starts at one block and grows geometrically: a stream holds what its length needs
        streamer = Streamer(self.backend, seed=seed, batch=1, max_frames=self.backend.spec.config.frames_per_block)
        streamer.start(context)
        self._streams[corrid] = streamer
        self._last_used[corrid] = self.clock()

    def next_block(self, corrid: int, block: int) -> Block:
        """Block number ``block`` of stream ``corrid``: it must be the stream's next one."""
        streamer = self._streams.get(corrid)
        if streamer is None:
            raise Arl2rtError(
                f"sequence {corrid}: no stream (it ended, was idle longer than {self.idle_timeout:g} s, or never "
                "started); expected a request that starts it (sequence_start)"
            )
        if block != streamer.position.block:
            raise Arl2rtError(
                f"sequence {corrid}: asked for block {block}, expected block {streamer.position.block} (the stream's "
                "next); a request was lost or repeated"
            )
        latents = streamer.next_block()
        self._last_used[corrid] = self.clock()
        state = sum(streamer.store.nbytes().values())
        return Block(latents, streamer.last_frames, state, len(self._streams))

    def touch(self, corrid: int) -> None:
        """Count ``corrid`` as used now (its response leaves only when the whole batch is done)."""
        if corrid in self._last_used:
            self._last_used[corrid] = self.clock()

    def end(self, corrid: int) -> bool:
        """Free the stream of ``corrid``; whether there was one."""
        self._last_used.pop(corrid, None)
        return self._streams.pop(corrid, None) is not None

    def expire(self) -> list[int]:
        """Free every stream idle for longer than the timeout; their correlation IDs."""
        now = self.clock()
        idle = [c for c, t in self._last_used.items() if now - t > self.idle_timeout]
        for corrid in idle:
            self.end(corrid)
        return idle


class Reaper:
    """A daemon thread that calls ``table.expire()`` (holding its lock) a few times per idle timeout until stopped,
    so an abandoned stream's memory goes back even when no other request comes."""

    def __init__(self, table: StreamTable, on_expired: Callable[[list[int]], None] | None = None) -> None:
        self.table, self.on_expired = table, on_expired
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="arl2rt-stream-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        interval = min(self.table.idle_timeout / 4, 1.0)
        while not self._stop.wait(interval):
            with self.table.lock:
                expired = self.table.expire()
            if expired and self.on_expired is not None:
                self.on_expired(expired)
