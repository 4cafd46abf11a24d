"""The real tritonserver (nvidia-pytriton's, CPU, loopback): four concurrent streams per model equal single-process
``arl2rt generate`` with the same seed and text bit for bit; a killed client's stream is freed after the idle
timeout; unknown, ended and out-of-order sequences are clear errors."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save_file

from arl2rt.errors import Arl2rtError
from arl2rt.model.random import random_context
from arl2rt.runtime.generate import GenerateOptions, run_generate
from arl2rt.runtime.video import read_latents
from arl2rt.serve import protocol as p
from arl2rt.serve.client import RemoteOptions, block_inputs, connect, stream_remote
from micro_packages import MICRO
from serve.conftest import IDLE_MODEL, IDLE_TIMEOUT

# model -> (what generate is given for it, blocks, four streams' (seed, prompt)); the micro package has no vocabulary:
# its streams take text embeddings (a context file of their seed)
STREAMS = {
    "tiny": ({"config": "tiny"}, 3, [(0, None), (1, None), (2, None), (3, None)]),
    "embedded": (
        {},
        2,
        [(0, None), (1, "one red ball"), (2, "two blue balls"), (3, "one red ball and one blue ball")],
    ),
    "micro": (None, 3, [(0, None), (5, None), (6, None), (7, None)]),
}


@pytest.mark.parametrize("model", list(STREAMS))
def test_four_concurrent_streams_equal_generate_bit_for_bit(served, model, micro_exports, tmp_path):
    source, blocks, streams = STREAMS[model]
    contexts: dict[int, Path | None] = {seed: None for seed, _ in streams}
    if source is None:
        source = {"model": micro_exports.package("onnxruntime").root}
        for seed in contexts:
            contexts[seed] = tmp_path / f"context{seed}.safetensors"
            save_file({"context": random_context(MICRO, seed)}, str(contexts[seed]))

    def remote(i: int) -> Path:
        seed, prompt = streams[i]
        out = tmp_path / f"remote{i}.npz"
        opts = RemoteOptions(
            server=served.url, output=out, model_name=model, blocks=blocks, seed=seed, prompt=prompt,
            context=contexts[seed],
        )  # fmt: skip
        stream_remote(opts)
        return out

    with ThreadPoolExecutor(len(streams)) as pool:
        outputs = list(pool.map(remote, range(len(streams))))
    got = [read_latents(path) for path in outputs]
    for (seed, prompt), array in zip(streams, got):
        ref = tmp_path / f"ref{seed}.npz"
        run_generate(
            GenerateOptions(output=ref, blocks=blocks, seed=seed, prompt=prompt, context=contexts[seed], **source)
        )
        expected = read_latents(ref)
        assert array.shape == expected.shape and np.array_equal(array, expected), f"{model} seed {seed}"
    assert not np.array_equal(got[0], got[1])  # distinct streams: a shared state would show here


def test_video_frames_are_written_as_they_arrive(served, tmp_path):
    """The embedded model's frames through the PNG writer: the same files as generate writes."""
    stream_remote(RemoteOptions(server=served.url, output=tmp_path / "remote", model_name="embedded", blocks=2))
    run_generate(GenerateOptions(output=tmp_path / "local", blocks=2))
    remote, local = sorted((tmp_path / "remote").iterdir()), sorted((tmp_path / "local").iterdir())
    assert [f.name for f in remote] == [f.name for f in local] and len(remote) == 2
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(remote, local))


def _streams_held(client, sequence_id: int) -> int:
    """A one-block probe stream (started and ended by one request): how many streams the instance held with it."""
    r = client.infer(
        IDLE_MODEL, block_inputs(0), outputs=None, sequence_id=sequence_id, sequence_start=True, sequence_end=True
    )
    return int(r.as_numpy(p.STREAMS).reshape(-1)[0])


def test_a_killed_client_frees_its_stream_after_the_idle_timeout(served, tmp_path):
    killed = 4242
    cmd = [sys.executable, "-c", "from arl2rt.cli.main import main; main()", "generate", "--server", served.url,
           "--model-name", IDLE_MODEL, "--blocks", "100000", "--sequence-id", str(killed),
           "-o", str(tmp_path / "k.npz")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        deadline, line = time.monotonic() + 120, ""
        while not line.startswith("blocks 2/") and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 1.0)
            if ready:
                line = proc.stderr.readline()
                assert line or proc.poll() is None, "the client exited before streaming"
        assert line.startswith("blocks 2/"), "the client made no blocks"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    client = connect(served.url)
    held = [_streams_held(client, 5000)]
    assert held == [2]  # the killed stream is still held right after the kill
    for probe in range(5001, 5400):  # bounded: the idle timeout is IDLE_TIMEOUT s
        if held[-1] == 1:
            break
        time.sleep(IDLE_TIMEOUT / 8)
        held.append(_streams_held(client, probe))
    assert held[-1] == 1, f"the killed client's stream was never freed: {held}"
    with pytest.raises(Exception, match=f"sequence {killed} .*must specify the START flag"):
        client.infer(IDLE_MODEL, block_inputs(2), sequence_id=killed)


def test_unknown_ended_and_out_of_order_sequences_are_clear_errors(served, tmp_path):
    client = connect(served.url)

    def infer(block: int, sequence_id: int, **flags):
        return client.infer("tiny", block_inputs(block), sequence_id=sequence_id, **flags)

    with pytest.raises(Exception, match="sequence 77 .*must specify the START flag on the first request"):
        infer(0, 77)
    infer(0, 78, sequence_start=True)
    with pytest.raises(Exception, match=r"sequence 78: asked for block 4, expected block 1 \(the stream's next\)"):
        infer(4, 78)
    infer(1, 78, sequence_end=True)
    with pytest.raises(Exception, match="sequence 78 .*must specify the START flag"):
        infer(2, 78)
    with pytest.raises(Arl2rtError, match="server .* model nowhere: .*nowhere"):
        stream_remote(RemoteOptions(server=served.url, output=tmp_path / "x.npz", model_name="nowhere", blocks=1))
