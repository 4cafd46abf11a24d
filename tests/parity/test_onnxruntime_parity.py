"""An exported package on onnxruntime against the float64 torch reference: 16 blocks within fp32 tolerances, the
polygraphy hand-off accepted by ``polygraphy run --onnxrt`` (and refused once a golden output is perturbed), and the
``--package`` path of the CLI, all on the session's onnxruntime package of the micro model (micro_packages.py)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from arl2rt.cli.main import app
from arl2rt.model.random import random_context
from arl2rt.parity.check import check_parity
from micro_packages import MICRO


@pytest.fixture
def package(micro_exports):
    """Both layer kinds, every state kind, 12 tokens per block: a block costs milliseconds."""
    return micro_exports.package("onnxruntime")


def test_sixteen_blocks_within_fp32_tolerances(micro_model, package):
    report = check_parity(micro_model, random_context(MICRO, 0), package=package.root, blocks=16, seed=0)
    result = report.result
    assert result.passed, result.first_failure()
    assert result.candidate.startswith("onnxruntime onnxruntime float32")
    # the bar: every output and state within 1e-4 relative, over both modes and all 16 blocks
    for mode, s in result.summary().items():
        assert s["peak_rel"] < 1e-4 and s["rel_l2"] < 1e-4, (mode, s)
        assert s["steps"] == 1 + 16 * 5
    assert len(result.drift("drift")) == 16


def _polygraphy() -> str:
    exe = shutil.which("polygraphy")
    if exe is None:
        pytest.skip("polygraphy is not installed (pip install -e '.[dev]')")
    return exe


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def test_polygraphy_accepts_the_handoff_and_catches_a_wrong_golden(micro_model, package, tmp_path):
    exe = _polygraphy()
    out = tmp_path / "pg"
    report = check_parity(
        micro_model,
        random_context(MICRO, 0),
        package=package.root,
        blocks=2,
        seed=0,
        modes=("drift",),
        save_polygraphy=out,
    )
    commands = json.loads((out / "commands.json").read_text())
    assert commands == report.polygraphy and set(commands) == {"encode_context", "denoise_step", "commit_step"}
    commit = commands["commit_step"]
    assert commit["block"] == 1 and commit["onnxrt"][2] == str(package.root / "commit_step.onnx")
    assert "--trt-opt-shapes" in commit["trt"]

    ok = _run([exe, *commit["onnxrt"][1:]])
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert "PASSED" in ok.stdout + ok.stderr

    golden = json.loads((out / "commit_step.outputs.json").read_text())
    entry = golden["lst"][0][1][0]["outputs"]["present_state.0"]["values"]
    state = np.load(io.BytesIO(base64.b64decode(entry["array"])))
    state.flat[7] += 1e-2  # one element of one state, far beyond the fp32 tolerances
    buf = io.BytesIO()
    np.save(buf, state)
    entry["array"] = base64.b64encode(buf.getvalue()).decode()
    (out / "commit_step.outputs.json").write_text(json.dumps(golden))
    bad = _run([exe, *commit["onnxrt"][1:]])
    assert bad.returncode != 0
    assert "FAILED" in bad.stdout + bad.stderr and "present_state.0" in bad.stdout + bad.stderr


def test_cli_runs_a_given_package(package, tmp_path):
    config = tmp_path / "micro.json"
    config.write_text(json.dumps(MICRO.to_dict()))
    args = ["parity", "--config", str(config), "--package", str(package.root), "--blocks", "2", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["passed"] and data["package"] == str(package.root)
    res = CliRunner().invoke(app, [*args[:-1], "--dtype", "float16"])
    assert res.exit_code == 1 and "holds float32 graphs; expected --dtype float16" in " ".join(res.output.split())
