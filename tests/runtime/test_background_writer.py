"""Writing on a worker thread: the same bytes and the same state as writing on the caller's thread, write() returning
before the block is encoded, and a failure on the worker raised at the caller's next call without a hang."""

from __future__ import annotations

import threading
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.runtime.video import open_writer
from arl2rt.runtime.video.background import BackgroundWriter
from arl2rt.runtime.video.common import FrameWriter

NAMES = {"mp4": "out.mp4", "gif": "out.gif", "png": "frames", "npz": "out.npz"}


def _blocks(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(1, 3, 3, 16, 24, generator=g) * 2 - 1) for _ in range(n)]


def _decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _files(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}
    return {path.name: path.read_bytes()}


@pytest.mark.parametrize("fmt", sorted(NAMES))
def test_same_bytes_and_state_as_the_callers_thread(tmp_path, fmt):
    blocks = _blocks(4)
    outputs, states = [], []
    for where in ("caller", "worker"):
        path = tmp_path / where / NAMES[fmt]
        path.parent.mkdir()
        writer = open_writer(path, fps=12)
        writer = BackgroundWriter(writer) if where == "worker" else writer
        with writer:
            for block in blocks:
                buf = block.clone()
                writer.write(buf)
                buf.fill_(0.0)  # the caller reuses its buffer at once: the worker must hold its own copy
            states.append({k: v for k, v in writer.state().items() if k != "path"})
        outputs.append(_files(path))
    if fmt == "mp4":  # x264's threaded encoder does not promise the same bitstream twice: compare what it shows
        frames = [_decoded(tmp_path / where / NAMES[fmt]) for where in ("caller", "worker")]
        assert frames[0].shape == frames[1].shape == (12, 16, 24, 3)
        assert np.abs(frames[0].astype(int) - frames[1].astype(int)).max() <= 2
        states = [{k: v for k, v in st.items() if k not in ("sha256", "bytes")} for st in states]
    else:
        assert outputs[0] == outputs[1]
    assert states[0] == states[1] and states[0]["frames"] == 12


class _Gated(FrameWriter):
    """Records blocks; each write waits for the test to open the gate (proves write() does not wait for it)."""

    format = "npz"

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__(Path("gated"), 1)
        self.gate, self.entered, self.seen, self.fail_at, self.closed = (
            threading.Event(),
            threading.Event(),
            [],
            fail_at,
            False,
        )

    def write_impl(self, latents: torch.Tensor) -> None:
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        if len(self.seen) == self.fail_at:
            raise Arl2rtError(f"disk full while writing block {self.fail_at}")
        self.seen.append(latents)

    def close(self) -> None:
        self.closed = True


def test_write_returns_while_the_worker_is_still_encoding():
    inner = _Gated()
    writer = BackgroundWriter(inner)
    blocks = _blocks(2)
    writer.write(blocks[0])
    assert inner.entered.wait(10)
    writer.write(blocks[1])  # queued while block 0 is still "encoding": the caller goes on
    assert inner.seen == []
    inner.gate.set()
    assert writer.state()["frames"] == 6  # state waits for both
    assert [torch.equal(a, b) for a, b in zip(inner.seen, blocks)] == [True, True]
    writer.close()
    assert inner.closed


def test_a_failure_on_the_worker_is_raised_at_the_next_call_and_close_returns():
    inner = _Gated(fail_at=1)
    inner.gate.set()
    writer = BackgroundWriter(inner)
    blocks = _blocks(4)
    writer.write(blocks[0])
    writer.write(blocks[1])  # fails on the worker
    with pytest.raises(Arl2rtError, match="disk full while writing block 1"):
        writer.state()
    with pytest.raises(Arl2rtError, match="disk full while writing block 1"):
        writer.write(blocks[2])  # the output stops at block 0: no later block leaves a gap
    writer.close()  # already reported: close finalises quietly
    assert inner.closed and len(inner.seen) == 1


def test_close_raises_a_failure_no_call_has_seen_yet():
    inner = _Gated(fail_at=0)
    inner.gate.set()
    writer = BackgroundWriter(inner)
    writer.write(_blocks(1)[0])
    with pytest.raises(Arl2rtError, match="disk full while writing block 0"):
        writer.close()
    assert inner.closed
