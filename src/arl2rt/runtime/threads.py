"""How many CPU threads a stream runs on: torch's intra-op threads, which onnxruntime's CPU EP follows.

torch's default is one thread per core, each spinning at every op's barrier. For small models (the embedded model,
``tiny``: ops of well under a millisecond) a second thread gains little on an idle machine, and as soon as another
process takes a core the waiting threads spin against it. Measured on 2 cores, ``arl2rt generate --frames 48`` (the
embedded model, CLI start included): 41 s on 1 thread and 31 s on 2 when idle, 50 s and 125 s beside one busy process.
So a small model runs on one thread unless told otherwise (``--threads``): never slower than more threads when a core
is taken. A large model, whose ops are long enough to share, keeps torch's default.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.model.config import ModelConfig

SMALL_MODEL_DIM = 1024  # hidden size below which a model's ops are too short to split across threads


def default_threads(cfg: ModelConfig) -> int:
    """One thread for a small model; torch's default (one per core) for a large one."""
    return 1 if cfg.dim < SMALL_MODEL_DIM else torch.get_num_threads()


def check_threads(threads: int, source: str = "--threads") -> int:
    if threads < 1:
        raise Arl2rtError(f"{source} must be >= 1, got {threads}")
    return threads


@contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    """Run the body on ``threads`` intra-op threads, and restore the count before it after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
