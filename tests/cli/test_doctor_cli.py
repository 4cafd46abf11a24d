from __future__ import annotations

import json

from typer.testing import CliRunner

from arl2rt.cli.main import app


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
