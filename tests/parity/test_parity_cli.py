"""``arl2rt parity`` through CliRunner: exit codes, JSON, tolerances plumbed as given, errors without tracebacks."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from arl2rt.cli import parity as parity_cli
from arl2rt.cli.main import app
from arl2rt.parity.check import ParityReport
from arl2rt.parity.compare import Tolerances
from arl2rt.parity.result import ParityResult

runner = CliRunner()


@pytest.fixture
def small_config(tmp_path, tiny_cfg):
    path = tmp_path / "small.json"
    cfg = dataclasses.replace(tiny_cfg, name="small", frames_per_block=1, latent_height=4, latent_width=4)
    path.write_text(json.dumps(cfg.to_dict()))
    return str(path)


def test_torch_float32_passes_and_prints_json(small_config):
    res = runner.invoke(app, ["parity", "--config", small_config, "--backend", "torch", "--blocks", "2", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["passed"] is True and data["first_failure"] is None
    assert data["candidate"] == "torch float32" and data["reference"] == "torch float64"
    assert [p["block"] for p in data["drift"]["drift"]] == [0, 1]
    assert data["summary"]["step"]["failed_steps"] == 0
    # piped, progress is one plain line per block on stderr, and stdout holds the JSON alone
    assert "parity 1/2: blocks streamed" in res.stderr and "parity 2/2: blocks streamed" in res.stderr


def test_zero_tolerance_fails_with_exit_1_and_names_the_first_failure(small_config):
    args = ["parity", "--config", small_config, "--backend", "torch", "--blocks", "1", "--mode", "step"]
    res = runner.invoke(app, [*args, "--atol", "0", "--rtol", "0", "--per-step"])
    assert res.exit_code == 1
    assert "commit_step" in res.stdout  # the per-step table
    assert "FAILED: first at step encode_context block 0 pass 0, tensor context_key.0" in " ".join(res.stdout.split())


def test_options_reach_the_library_as_given(monkeypatch, small_config):
    seen = {}

    def fake_check_parity(model, context, **kwargs):
        seen.update(kwargs, cfg=model.cfg.name, context=tuple(context.shape))
        return ParityReport(ParityResult("r", "c", 1, 0, ("drift",), Tolerances({"": 1}, {"": 1})), None, None)

    monkeypatch.setattr(parity_cli, "check_parity", fake_check_parity)
    res = runner.invoke(
        app,
        ["parity", "--config", small_config, "--target", "portable", "--dtype", "float16", "--blocks", "5",
         "--mode", "drift", "--atol", "1e-3", "--atol", "present_state:1e-6", "--rtol", "velocity:0.01",
         "--seed", "7"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert seen["cfg"] == "small" and seen["context"] == (1, 8, 32)
    assert (seen["backend"], seen["target"], seen["dtype"], seen["blocks"], seen["seed"]) == (
        "onnxruntime", "portable", "float16", 5, 7,
    )  # fmt: skip
    assert seen["modes"] == ("drift",)
    assert seen["atol"] == {"": 1e-3, "present_state": 1e-6} and seen["rtol"] == {"velocity": 0.01}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mode", "teacher"], "--mode 'teacher': expected drift, step or both"),
        (["--target", "tensorrt"], "the tensorrt target's plugin node needs TensorRT"),
        (["--backend", "torch", "--atol", "velocity:x"], "--atol 'velocity:x': expected VALUE or NAME:VALUE"),
        (["--backend", "torch", "--save-polygraphy", "out"], "need ONNX graphs: use --backend onnxruntime"),
        (["--backend", "tvm"], "parity backend 'tvm': expected one of"),
    ],
    ids=["mode", "trt-target-on-ort", "bad-tolerance", "polygraphy-needs-onnx", "unknown-backend"],
)
def test_bad_options_exit_1_without_traceback(small_config, args, message):
    res = runner.invoke(app, ["parity", "--config", small_config, "--blocks", "1", *args])
    assert res.exit_code == 1
    assert message in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_a_tensorrt_candidate_is_given_the_profile_of_the_stream(micro_exports, micro_model, monkeypatch):
    from arl2rt.errors import Arl2rtError
    from arl2rt.model.random import random_context
    from arl2rt.parity import check
    from micro_packages import MICRO

    seen = {}

    def make_backend(name, **kwargs):
        seen[name] = kwargs.get("options")
        raise Arl2rtError("recorded")

    monkeypatch.setattr(check, "make_backend", make_backend)
    package = micro_exports.package("portable").root
    with pytest.raises(Arl2rtError, match="recorded"):
        check.check_parity(micro_model, random_context(MICRO, 0), backend="tensorrt", package=package, blocks=5)
    assert seen == {"tensorrt": {"max_frames": 10, "max_batch": 1}}  # 5 blocks of 2 frames, not the 21-frame default
