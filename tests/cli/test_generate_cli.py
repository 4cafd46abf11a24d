"""``arl2rt generate``: options reach the library unchanged, errors and Ctrl-C exit cleanly, and a stream killed with
kill -9 resumes bit-identically (the CLI in a subprocess)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from arl2rt.cli.main import app
from arl2rt.errors import Arl2rtError
from arl2rt.runtime import generate as lib
from arl2rt.runtime.video import read_latents
from micro_configs import micro_rgb_config

runner = CliRunner()

RGB = micro_rgb_config("cli-rgb")


@pytest.fixture
def config(tmp_path) -> str:
    path = tmp_path / "rgb.json"
    path.write_text(json.dumps(RGB.to_dict()))
    return str(path)


def _result(**kw) -> lib.GenerateResult:
    base = dict(
        output="o.mp4", format="mp4", backend="torch", model="embedded model bouncing-balls", blocks=4, frames=4,
        total_blocks=4, total_frames=4, seconds=1.0, blocks_per_s=4.0, frames_per_s=4.0,
        state_bytes={"gdn_states": 1024, "kv_cache": 2048, "context": 64}, peak_state_bytes=3136,
        peak_rss_bytes=100 << 20, peak_cuda_bytes=None, notes=["a note"],
    )  # fmt: skip
    return lib.GenerateResult(**{**base, **kw})


def test_options_reach_the_library_unchanged(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(lib, "run_generate", lambda opts, progress=None: calls.append(opts) or _result())
    args = ["generate", "-o", "o.mp4", "--prompt", "one red ball", "--frames", "30", "--seed", "3", "--backend",
            "torch", "--save-session", "s", "--save-every", "4", "--fps", "24", "--overwrite"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert calls == [
        lib.GenerateOptions(
            output=Path("o.mp4"),
            prompt="one red ball",
            frames=30,
            seed=3,
            backend="torch",
            fps=24,
            save_session=Path("s"),
            save_every=4,
            overwrite=True,
        )  # fmt: skip
    ]
    assert "wrote o.mp4 [mp4]: 4 frames in 4 blocks" in res.stdout and "peak RSS 100.0 MiB" in res.stdout


def test_json_summary(monkeypatch):
    monkeypatch.setattr(lib, "run_generate", lambda opts, progress=None: _result(session="s", session_block=4))
    res = runner.invoke(app, ["generate", "--resume", "s", "--json"])
    data = json.loads(res.stdout)
    assert res.exit_code == 0 and data["session_block"] == 4 and data["state_bytes"]["kv_cache"] == 2048


def test_a_user_error_is_one_line_and_exit_1(monkeypatch):
    def fails(opts, progress=None):
        raise Arl2rtError("output x.avi: unknown format '.avi'")

    monkeypatch.setattr(lib, "run_generate", fails)
    res = runner.invoke(app, ["generate", "-o", "x.avi"])
    assert res.exit_code == 1 and "error: output x.avi: unknown format" in res.output and "Traceback" not in res.output


def test_ctrl_c_exits_130_after_the_summary(monkeypatch):
    monkeypatch.setattr(lib, "run_generate", lambda opts, progress=None: _result(interrupted=True, blocks=2))
    res = runner.invoke(app, ["generate", "-o", "o.mp4"])
    assert res.exit_code == 130 and "stopped (Ctrl-C) o.mp4" in res.stdout


def test_end_to_end_with_a_config(tmp_path, config):
    res = runner.invoke(app, ["generate", "--config", config, "-o", str(tmp_path / "o.gif"), "--blocks", "2", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["total_frames"] == 4 and data["format"] == "gif" and (tmp_path / "o.gif").stat().st_size > 0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from arl2rt.cli.main import main; main()", "generate", *args]


def test_kill_9_then_resume_is_bit_identical_to_one_run(tmp_path, config):
    """Start a long stream in a subprocess, kill -9 it after a snapshot, resume it to N more blocks: same latents."""
    session, out = tmp_path / "session", tmp_path / "out.npz"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same kernels as this process
    args = [
        "--config",
        config,
        "-o",
        str(out),
        "--blocks",
        "100000",
        "--save-session",
        str(session),
        "--save-every",
        "2",
    ]
    proc = subprocess.Popen(_cli(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (session / "LATEST").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no snapshot within 120 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    saved = json.loads((session / (session / "LATEST").read_text().strip() / "session.json").read_text())
    m = saved["position"]["block"]
    assert m % 2 == 0 and m >= 2

    n = 3
    res = runner.invoke(app, ["generate", "--resume", str(session), "--blocks", str(m + n), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["resumed_from_block"] == m

    one_go = tmp_path / "one_go.npz"
    res = runner.invoke(app, ["generate", "--config", config, "-o", str(one_go), "--blocks", str(m + n)])
    assert res.exit_code == 0, res.output
    resumed, reference = read_latents(out), read_latents(one_go)
    assert resumed.shape == reference.shape == (1, 3, (m + n) * RGB.frames_per_block, 8, 8)
    assert np.array_equal(resumed, reference)


def test_resume_with_a_corrupted_snapshot_or_another_model_fails_cleanly(tmp_path, config):
    session = tmp_path / "s"
    res = runner.invoke(app, ["generate", "--config", config, "-o", str(tmp_path / "a.npz"), "--blocks", "2",
                              "--save-session", str(session)])  # fmt: skip
    assert res.exit_code == 0, res.output
    other = tmp_path / "other.json"
    other.write_text(json.dumps(dataclasses.replace(RGB, dim=48, num_heads=3).to_dict()))
    res = runner.invoke(app, ["generate", "--resume", str(session), "--config", str(other), "--blocks", "3"])
    assert res.exit_code == 1 and "resume with the same model" in res.output
    tensors = session / "snap-000002" / "state.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 1
    tensors.write_bytes(bytes(data))
    res = runner.invoke(app, ["generate", "--resume", str(session), "--blocks", "3"])
    assert res.exit_code == 1 and "corrupted" in res.output


def test_a_stream_resumed_into_a_new_npz_names_its_blocks_by_their_index_in_the_stream(tmp_path, config):
    session, first, rest = tmp_path / "s", tmp_path / "first.npz", tmp_path / "rest.npz"
    res = runner.invoke(
        app, ["generate", "--config", config, "-o", str(first), "--blocks", "2", "--save-session", str(session)]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["generate", "--resume", str(session), "-o", str(rest), "--blocks", "4"])
    assert res.exit_code == 0, res.output
    with np.load(first) as a, np.load(rest) as b:
        assert sorted(a.files) == ["block_000000", "block_000001"]
        assert sorted(b.files) == ["block_000002", "block_000003"]
    one_go = tmp_path / "one.npz"
    assert runner.invoke(app, ["generate", "--config", config, "-o", str(one_go), "--blocks", "4"]).exit_code == 0
    whole = np.concatenate([read_latents(first), read_latents(rest)], axis=2)
    assert np.array_equal(whole, read_latents(one_go))
