"""``arl2rt build`` through CliRunner with the engine builder patched: --flavour reaches the library, the old spelling
``--backend`` still works for 0.1 with one warning line, and contradictory spellings are a user error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from arl2rt.cli import build as build_cli
from arl2rt.cli.main import app
from arl2rt.runtime.trt.build import BuildResult
from arl2rt.runtime.trt.cache import CacheEntry

runner = CliRunner()


@pytest.fixture
def builds(monkeypatch, tmp_path):
    """Patched build_engines recording its keyword arguments."""
    calls: list[dict] = []

    def build_engines(package, **kwargs):
        calls.append({"package": package, **kwargs})
        record = {"engines": {"commit_step": {"bytes": 123}}}
        return BuildResult(CacheEntry(tmp_path / "entry", {"k": 1}, {}, record), "built", "", {"commit_step": 1.5})

    monkeypatch.setattr(build_cli, "build_engines", build_engines)
    return calls


def test_flavour_reaches_the_library(builds, tmp_path):
    res = runner.invoke(app, ["build", "pkg", "--flavour", "tensorrt-rtx", "--cache-dir", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    assert builds[0]["package"] == Path("pkg") and builds[0]["flavour"] == "tensorrt-rtx"
    summary = json.loads(res.stdout)
    assert summary["flavour"] == "tensorrt-rtx"
    assert summary["engines"] == {"commit_step": {"bytes": 123, "seconds": 1.5}}
    assert res.stderr == ""


def test_the_default_flavour_is_full_tensorrt(builds):
    res = runner.invoke(app, ["build", "pkg", "--json"])
    assert res.exit_code == 0, res.output
    assert builds[0]["flavour"] == "tensorrt"


def test_the_old_backend_option_works_with_one_warning_line(builds):
    res = runner.invoke(app, ["build", "pkg", "--backend", "tensorrt-rtx", "--json"])
    assert res.exit_code == 0, res.output
    assert builds[0]["flavour"] == "tensorrt-rtx"
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and "--backend` is deprecated" in lines[0] and "use --flavour tensorrt-rtx" in lines[0]
    assert "--backend" not in runner.invoke(app, ["build", "--help"]).output  # hidden


def test_flavour_and_a_different_backend_exit_1(builds):
    res = runner.invoke(app, ["build", "pkg", "--flavour", "tensorrt", "--backend", "tensorrt-rtx"])
    assert res.exit_code == 1 and not builds
    assert "--flavour tensorrt and --backend tensorrt-rtx: expected one" in " ".join(res.output.split())
