"""Bad input at the front door of ``arl2rt generate`` (devices, threads, backends, packages and their targets, text):
each is one line naming the culprit, exit 1, no traceback, and nothing the user had is changed or created. Also:
what runs a package when no backend is named, --json alone on stdout, and CPU threads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from arl2rt.cli.main import app
from arl2rt.errors import Arl2rtError
from arl2rt.runtime import generate as lib
from arl2rt.runtime.backends import check_device, package_backend
from arl2rt.runtime.threads import SMALL_MODEL_DIM, cpu_threads, default_threads
from micro_configs import micro_rgb_config

runner = CliRunner()
RGB = micro_rgb_config("front-rgb")
USER_BYTES = b"the user's own file"


@pytest.fixture
def config(tmp_path) -> str:
    path = tmp_path / "rgb.json"
    path.write_text(json.dumps(RGB.to_dict()))
    return str(path)


@pytest.fixture
def user_files(tmp_path):
    """An output the user already has (named with --overwrite) and a session directory that must not appear."""
    output, session = tmp_path / "mine.npz", tmp_path / "session"
    output.write_bytes(USER_BYTES)
    return ["-o", str(output), "--overwrite", "--save-session", str(session)], output, session


def _refused(args: list[str], user_files, *culprit: str) -> str:
    """Run generate with ``args`` and the user's files; assert the clean refusal; return the message."""
    extra, output, session = user_files
    res = runner.invoke(app, ["generate", *args, *extra])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and res.stdout == ""
    lines = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, res.stderr
    for part in culprit:
        assert part in lines[0], lines[0]
    assert output.read_bytes() == USER_BYTES and not session.exists()
    return lines[0]


# -- devices and threads ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CUDA", "mps", "cpu,cuda", ""])
def test_an_unknown_device_is_named(config, user_files, device):
    _refused(["--config", config, "--device", device], user_files, f"--device {device!r}", "cpu, cuda, cuda:N or auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_is_one_line(config, user_files, device):
    _refused(["--config", config, "--device", device], user_files, f"--device {device}: no CUDA device here")


def test_a_cuda_index_past_the_last_gpu_is_named(config, user_files):
    index = torch.cuda.device_count() + 3
    _refused(["--config", config, "--device", f"cuda:{index}"], user_files, f"--device cuda:{index}:")


@pytest.mark.parametrize("threads", ["0", "-2"])
def test_threads_below_one_are_refused(config, user_files, threads):
    _refused(["--config", config, "--threads", threads], user_files, f"--threads must be >= 1, got {threads}")


def test_threads_reach_torch_for_the_run_only(config, tmp_path, monkeypatch):
    seen = []
    real = lib._run
    monkeypatch.setattr(lib, "_run", lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    before = torch.get_num_threads()
    for threads in (None, 1, 2):
        args = [] if threads is None else ["--threads", str(threads)]
        res = runner.invoke(app, ["generate", "--config", config, "-o", str(tmp_path / "o.npz"), "-y", *args])
        assert res.exit_code == 0, res.output
    assert seen == [1, 1, 2] and torch.get_num_threads() == before  # a small model defaults to 1 thread


def test_the_default_thread_count_follows_the_model_size():
    assert default_threads(RGB) == 1
    with cpu_threads(2):
        assert default_threads(dataclasses.replace(RGB, dim=SMALL_MODEL_DIM, num_heads=8)) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_the_device_check_names_where_the_device_came_from():
    with pytest.raises(Arl2rtError, match=r"^backend tensorrt runs on cuda: no CUDA device here"):
        check_device("cuda", "backend tensorrt runs on")


# -- backends, packages and their targets --------------------------------------------------------------------------
def test_an_unknown_backend_is_named(config, user_files):
    _refused(["--config", config, "--backend", "jax"], user_files, "--backend 'jax': expected one of")


def test_a_package_backend_for_a_pytorch_model_is_named(config, user_files):
    _refused(["--config", config, "--backend", "onnxruntime"], user_files, "backend onnxruntime: expected an exported")


def test_a_model_backend_for_a_package_is_named(micro_exports, user_files):
    package = micro_exports.package("onnxruntime").root
    _refused(["--model", str(package), "--backend", "torch"], user_files, "backend torch: expected a PyTorch model")


def test_a_package_runs_on_the_backend_its_target_needs():
    assert package_backend("onnxruntime") == "onnxruntime" and package_backend("portable") == "onnxruntime"
    assert package_backend("tensorrt") == "tensorrt"


def test_a_backend_that_cannot_run_the_package_s_target_names_the_one_that_can(micro_exports, user_files):
    package = micro_exports.package("tensorrt").root
    message = _refused(
        ["--model", str(package), "--backend", "onnxruntime"],
        user_files,
        f"--backend onnxruntime: package {package} has target 'tensorrt'",
        "the tensorrt target runs on tensorrt",
    )
    assert "registered op" not in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_tensorrt_package_is_not_handed_to_onnxruntime_by_default(micro_exports, user_files):
    package = micro_exports.package("tensorrt").root
    message = _refused(
        ["--model", str(package)],
        user_files,
        f"package {package} has target tensorrt: backend tensorrt runs it on cuda: no CUDA device here",
    )
    assert "onnxruntime" not in message and "registered op" not in message


def test_a_package_without_words_asks_for_context_only(micro_exports, user_files):
    package = micro_exports.package("onnxruntime").root
    message = _refused(["--model", str(package)], user_files, "needs text: pass --context FILE.safetensors")
    assert f"embeddings [B, {micro_exports.model.cfg.text_len}, " in message and "(or --prompt)" not in message


def test_a_prompt_for_a_package_without_words_is_refused(micro_exports, user_files):
    package = micro_exports.package("onnxruntime").root
    _refused(["--model", str(package), "--prompt", "one red ball"], user_files, "has no word vocabulary")


@pytest.mark.parametrize(("option", "value"), [("--frames", "0"), ("--blocks", "0"), ("--blocks", "-1")])
def test_a_length_below_one_is_named(config, user_files, option, value):
    _refused(["--config", config, option, value], user_files, f"{option} must be >= 1, got {value}")


# -- sessions in long paths ----------------------------------------------------------------------------------------
def test_resume_errors_are_whole_in_a_long_path(tmp_path, config):
    """The corrupted-snapshot case of test_generate_cli, under a path longer than any terminal line."""
    root = tmp_path / ("a-long-directory-name-" * 8) / "[brackets]"
    session = root / "s"
    res = runner.invoke(app, ["generate", "--config", config, "-o", str(root / "a.npz"), "--blocks", "2",
                              "--save-session", str(session)])  # fmt: skip
    assert res.exit_code == 0, res.output
    other = tmp_path / "other.json"
    other.write_text(json.dumps(dataclasses.replace(RGB, dim=48, num_heads=3).to_dict()))
    res = runner.invoke(app, ["generate", "--resume", str(session), "--config", str(other), "--blocks", "3"])
    assert res.exit_code == 1 and "resume with the same model" in res.stderr and str(session) in res.stderr
    assert len(res.stderr.splitlines()) == 1
    tensors = session / "snap-000002" / "state.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 1
    tensors.write_bytes(bytes(data))
    res = runner.invoke(app, ["generate", "--resume", str(session), "--blocks", "3"])
    assert res.exit_code == 1 and "corrupted" in res.stderr and len(res.stderr.splitlines()) == 1


# -- --json ---------------------------------------------------------------------------------------------------------
def test_json_of_inspect_and_doctor_is_alone_on_stdout(micro_exports):
    for args in (["inspect", str(micro_exports.package("onnxruntime").root), "--json"], ["doctor", "--json"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert isinstance(json.loads(res.stdout), dict) and res.stderr == ""


def test_a_run_that_works_prints_its_summary_on_stdout(config, tmp_path):
    res = runner.invoke(app, ["generate", "--config", config, "-o", str(tmp_path / "o.npz"), "--blocks", "1"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"wrote {tmp_path / 'o.npz'} [npz]: 2 frames in 1 blocks")
    assert Path(tmp_path / "o.npz").stat().st_size > 0


def test_python_dash_m_arl2rt_runs_the_cli():
    """``python -m arl2rt`` is the CLI (a machine without the script on PATH, e.g. a PYTHONPATH install)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "arl2rt", "doctor", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Usage: python -m arl2rt doctor" in done.stdout


def test_fp8_on_a_package_backend_is_named(micro_exports, user_files):
    package = micro_exports.package("onnxruntime").root
    _refused(["--model", str(package), "--fp8"], user_files, "--fp8: backend onnxruntime", "torch backend's")


def test_fp8_at_float32_is_named(config, user_files):
    _refused(["--config", config, "--fp8"], user_files, "--fp8: needs --dtype bfloat16 or float16", "found float32")
