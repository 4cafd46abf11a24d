"""Write blocks on a worker thread, so encoding a block overlaps with generating the next.

A block's frames leave the device (a copy into pinned host memory, ordered on the current stream and waited for by the
worker, not by the caller), then the worker converts, encodes and writes them through the wrapped
:class:`~arl2rt.runtime.video.common.FrameWriter`. One block at most waits in the queue: memory stays bounded and a
slow disk holds the generation back instead of piling frames up. :meth:`BackgroundWriter.state` and ``close`` first
wait for every queued block, so a session snapshot records exactly what is on disk. A failure on the worker is raised
at the caller's next ``write`` or ``state`` (and at every one after: the output stops at the last whole block, never
with a gap) or, if no call has seen it yet, at ``close``; blocks queued after it are dropped.
``ARL2RT_WRITER_THREAD=0`` writes on the caller's thread instead.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

import torch

from arl2rt.runtime.video.common import FrameWriter


def background_wanted() -> bool:
    return os.environ.get("ARL2RT_WRITER_THREAD", "1") != "0"


class BackgroundWriter:
    """``writer``'s writes on one worker thread; the same ``write`` / ``state`` / ``close`` / ``with`` as a writer."""

    def __init__(self, writer: FrameWriter, depth: int = 1) -> None:
        self.writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._reported = False
        self._thread = threading.Thread(target=self._work, name=f"arl2rt-writer-{writer.format}", daemon=True)
        self._thread.start()

    def write(self, frames: torch.Tensor) -> None:
        self._raise()
        self._queue.put(_to_host(frames))

    def state(self) -> dict[str, Any]:
        self._queue.join()
        self._raise()
        return self.writer.state()

    def close(self) -> None:
        try:
            self._queue.put(None)
            self._thread.join()
        finally:
            self.writer.close()
        if not self._reported:
            self._raise()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raise(self) -> None:
        if self._error is not None:
            self._reported = True
            raise self._error

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    frames, ready = item
                    if ready is not None:
                        ready.synchronize()
                    self.writer.write(frames)
            except BaseException as exc:  # handed to the caller's thread; later blocks are dropped
                self._error = exc
            finally:
                self._queue.task_done()


def _to_host(frames: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """A host copy the caller cannot change afterwards (backends reuse their output buffers), and, for a CUDA tensor,
    the event after which the copy is complete."""
    frames = frames.detach()
    if frames.device.type != "cuda":
        return frames.clone(), None
    host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
    host.copy_(frames, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record(torch.cuda.current_stream(frames.device))
    return host, ready
