from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from arl2rt.cli.main import app
from arl2rt.runtime import environment


def test_doctor_json_reports_versions_and_backends():
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["versions"]["torch"]
    assert data["backends"]["torch"]["available"] is True
    trt = data["backends"]["tensorrt"]
    assert trt["available"] or trt["reason"]  # either usable or it says why not


def test_user_error_exits_1_without_traceback(tmp_path):
    result = CliRunner().invoke(app, ["generate", "--config", str(tmp_path / "missing.json"), "-o", "x.npz"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output


CPU_ONLY = ["AzureExecutionProvider", "CPUExecutionProvider"]
WITH_CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def fake_ort(monkeypatch):
    """Set the providers ``onnxruntime`` lists, the installed distributions and their folders, and the GPU."""
    ort = pytest.importorskip("onnxruntime")

    def set_(providers, versions, locations=None, gpu=None):
        monkeypatch.setattr(ort, "get_available_providers", lambda: list(providers))
        monkeypatch.setattr(environment, "package_version", lambda dist: versions.get(dist))
        locations = locations or {dist: "/site-packages" for dist in versions}
        monkeypatch.setattr(environment, "dist_location", lambda dist: locations.get(dist))
        return environment.onnxruntime_build(gpu)

    return set_


def test_cuda_ep_needs_onnxruntime_gpu_when_nothing_is_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    monkeypatch.setattr(environment, "package_version", lambda dist: None)
    build = environment.onnxruntime_build("H100")
    assert build.module is None
    assert (
        build.cuda_ep
        == "CUDAExecutionProvider needs onnxruntime-gpu, which is not installed (pip install onnxruntime-gpu)"
    )


def test_cuda_ep_on_a_cpu_only_build(fake_ort):
    build = fake_ort(CPU_ONLY, {"onnxruntime": "1.31.1"}, gpu="H100")
    assert build.providers == CPU_ONLY
    assert "onnxruntime" in build.cuda_ep and "is a CPU-only build" in build.cuda_ep
    assert "no CUDAExecutionProvider" in build.cuda_ep and "pip install onnxruntime-gpu" in build.cuda_ep


def test_cuda_ep_when_onnxruntime_gpu_is_installed_but_a_cpu_build_imports(fake_ort):
    build = fake_ort(CPU_ONLY, {"onnxruntime-gpu": "1.31.1"}, gpu="H100")
    assert "onnxruntime-gpu 1.31.1 is installed but the onnxruntime imported" in build.cuda_ep
    assert "CPU-only build" in build.cuda_ep


def test_cuda_ep_without_a_gpu(fake_ort):
    build = fake_ort(WITH_CUDA, {"onnxruntime-gpu": "1.31.1"}, gpu=None)
    assert build.cuda_ep == "CUDAExecutionProvider is built in but torch sees no CUDA GPU (driver or device)"


def test_cuda_ep_available(fake_ort):
    assert fake_ort(WITH_CUDA, {"onnxruntime-gpu": "1.31.1"}, gpu="H100").cuda_ep is None


def test_both_builds_in_one_folder_shadow_each_other(fake_ort):
    build = fake_ort(WITH_CUDA, {"onnxruntime": "1.31.1", "onnxruntime-gpu": "1.31.1"}, gpu="H100")
    assert "onnxruntime 1.31.1 and onnxruntime-gpu 1.31.1 are both installed in /site-packages" in build.cuda_ep
    assert "shadow each other" in build.cuda_ep and "pip uninstall -y onnxruntime onnxruntime-gpu" in build.cuda_ep


def test_cpu_build_first_on_the_path_shadows_the_gpu_build(fake_ort):
    locations = {"onnxruntime": "/site-packages", "onnxruntime-gpu": "/work/.whl/site"}
    build = fake_ort(CPU_ONLY, {"onnxruntime": "1.31.1", "onnxruntime-gpu": "1.31.1"}, locations, gpu="H100")
    assert "onnxruntime 1.31.1 shadows onnxruntime-gpu 1.31.1 (in /work/.whl/site)" in build.cuda_ep
    assert "first on PYTHONPATH" in build.cuda_ep


def test_gpu_build_first_on_the_path_wins(fake_ort):
    locations = {"onnxruntime": "/site-packages", "onnxruntime-gpu": "/work/.whl/site"}
    build = fake_ort(WITH_CUDA, {"onnxruntime": "1.31.1", "onnxruntime-gpu": "1.31.1"}, locations, gpu="H100")
    assert build.cuda_ep is None


def test_doctor_names_the_cuda_ep_and_why_not(monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(CPU_ONLY))
    monkeypatch.setattr(environment, "package_version", lambda dist: {"onnxruntime": "1.31.1"}.get(dist))
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["onnxruntime"]["providers"] == CPU_ONLY
    cuda = data["backends"]["onnxruntime-cuda"]
    assert cuda["available"] is False and "is a CPU-only build" in cuda["reason"]
    plain = CliRunner().invoke(app, ["doctor"])
    assert plain.exit_code == 0, plain.output
    assert "onnxruntime providers: AzureExecutionProvider, CPUExecutionProvider" in plain.output
