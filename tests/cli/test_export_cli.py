"""``arl2rt export`` and ``arl2rt inspect`` through CliRunner, with the library patched (its own tests are in
tests/export/): options reach the library exactly, results print as tables or JSON, user errors exit 1 cleanly."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from arl2rt.cli import export as export_cli
from arl2rt.cli import inspect as inspect_cli
from arl2rt.cli.main import app
from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import StateSpec
from arl2rt.model.config import PRESETS


def _text(result) -> str:
    return " ".join(result.output.split())


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """Patched load_model / export_package recording their arguments; returns the record."""
    record: dict = {}
    model = object()

    def load_model(**kwargs):
        record["load_model"] = kwargs
        return SimpleNamespace(model=model, description="random weights of config tiny")

    def export_package(m, out, **kwargs):
        assert m is model
        record["export_package"] = (out, kwargs)
        kwargs["progress"](0, 8, "trace encode_context")
        manifest = {
            "files": {"commit_step.onnx": {"bytes": 10, "sha256": "x"}, "weights.bin": {"bytes": 90, "sha256": "y"}},
            "graphs": {"commit_step": {"passes": {"GdnToPluginPass": 3}}},
        }
        spec = StateSpec(PRESETS["tiny"], kwargs["dtype"])
        mode = kwargs["trt_plugin"] or ("aot" if kwargs["target"] == "tensorrt" else None)
        return SimpleNamespace(
            root=Path(out),
            manifest=manifest,
            target=kwargs["target"],
            spec=spec,
            opset=19,
            nbytes=100,
            plugin_mode=mode,
        )

    monkeypatch.setattr(export_cli, "load_model", load_model)
    monkeypatch.setattr(export_cli, "export_package", export_package)
    return record


def test_export_passes_every_option_to_the_library(calls, tmp_path):
    out = tmp_path / "pkg"
    args = ["export", "-o", str(out), "--config", "tiny", "--target", "tensorrt", "--dtype", "float16", "--opset", "19"]
    result = CliRunner().invoke(app, [*args, "--trt-plugin", "jit", "--overwrite", "--json"])
    assert result.exit_code == 0, result.output
    assert calls["load_model"] == {"config": "tiny", "checkpoint": None}
    path, kwargs = calls["export_package"]
    assert path == out
    assert callable(kwargs.pop("progress"))
    assert kwargs == {
        "target": "tensorrt", "dtype": "float16", "opset": 19, "trt_plugin": "jit", "overwrite": True,
        "source": "random weights of config tiny",
    }  # fmt: skip
    summary = json.loads(result.stdout)  # progress lines go to stderr
    assert summary["target"] == "tensorrt" and summary["dtype"] == "float16" and summary["bytes"] == 100
    assert summary["trt_plugin"] == "jit"
    assert summary["files"] == {"commit_step.onnx": 10, "weights.bin": 90}
    assert summary["passes"] == {"commit_step": {"GdnToPluginPass": 3}}


def test_export_defaults_and_table(calls, tmp_path):
    result = CliRunner().invoke(app, ["export", "-o", str(tmp_path / "pkg")])
    assert result.exit_code == 0, result.output
    assert calls["load_model"] == {"config": None, "checkpoint": None}  # no --config: the embedded model
    _, kwargs = calls["export_package"]
    defaults = (kwargs["target"], kwargs["dtype"], kwargs["opset"], kwargs["trt_plugin"], kwargs["overwrite"])
    assert defaults == ("onnxruntime", "float32", None, None, False)
    assert "weights.bin" in result.output and "total" in result.output and "exported random weights" in _text(result)


def test_export_vae_loads_the_decoder_for_the_package(calls, monkeypatch, tmp_path):
    decoder = object()
    loaded = []
    monkeypatch.setattr(export_cli, "load_vae", lambda path: loaded.append(path) or decoder)  # Wan2.1's or TAEHV's
    result = CliRunner().invoke(app, ["export", "-o", str(tmp_path / "pkg"), "--vae", str(tmp_path / "vae.pth")])
    assert result.exit_code == 0, result.output
    assert loaded == [tmp_path / "vae.pth"] and calls["export_package"][1]["vae"] is decoder


def test_export_user_error_exits_1_without_traceback(monkeypatch, tmp_path):
    def fail(**kwargs):
        raise Arl2rtError("config 'nope': not a preset (tiny, wan2.1-t2v-1.3b) and no such JSON file")

    monkeypatch.setattr(export_cli, "load_model", fail)
    result = CliRunner().invoke(app, ["export", "--output", str(tmp_path / "pkg"), "--config", "nope"])
    assert result.exit_code == 1
    assert "config 'nope': not a preset" in _text(result) and "Traceback" not in result.output


INFO = {
    "package": "/p",
    "target": "portable",
    "dtype": "float32",
    "opset": 18,
    "config": "tiny",
    "tokens_per_block": 48,
    "arl2rt_version": "0.1.0",
    "files": {"a.onnx": {"bytes": 5, "sha256": "z"}},
    "bytes": 5,
    "stream_bytes": {"gdn_states": 12288, "context_kv": 8192, "kv_cache_per_latent_frame": 8192},
    "tensors": [
        {
            "graphs": ["denoise_step", "commit_step"],
            "io": "input",
            "name": "past_state.0",
            "shape": ["batch", 4, 16, 16],
            "dtype": "float32",
            "kind": "past_state",
            "bytes": 4096,
            "per_past_frame": False,
        },
        {
            "graphs": ["denoise_step", "commit_step"],
            "io": "input",
            "name": "past_key.3",
            "shape": ["batch", "past_len", 4, 16],
            "dtype": "float32",
            "kind": "past_key",
            "bytes": 4096,
            "per_past_frame": True,
        },
    ],
    "passes": {},
    "ops": {"encode_context": {"MatMul": 10}, "denoise_step": {"MatMul": 59}, "commit_step": {"CumSum": 3}},
}


@pytest.fixture
def loads(monkeypatch):
    record = []

    def load(path, *, verify=True):
        record.append((path, verify))
        return SimpleNamespace(describe=lambda: INFO)

    monkeypatch.setattr(inspect_cli.ModelPackage, "load", load)
    return record


def test_inspect_prints_the_contract_and_ops(loads, monkeypatch):
    monkeypatch.setattr(inspect_cli.out, "width", 200)  # one table row per line
    result = CliRunner().invoke(app, ["inspect", "/p", "--no-verify"])
    assert result.exit_code == 0, result.output
    assert loads == [(Path("/p"), False)]
    text = _text(result)
    assert "past_state.0" in text and "[batch, 4, 16, 16]" in text and "4.0 KiB" in text
    assert "4.0 KiB per past frame" in text and "denoise+commit" in text
    assert "GDN states 12.0 KiB (constant)" in text and "+8.0 KiB per latent frame" in text
    assert "CumSum" in text and "59" in text


def test_inspect_json_and_verify_by_default(loads):
    result = CliRunner().invoke(app, ["inspect", "/p", "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == INFO
    assert loads == [(Path("/p"), True)]


def test_inspect_user_error_exits_1(monkeypatch):
    def load(path, *, verify=True):
        raise Arl2rtError("/p/commit_step.onnx: expected 100 bytes, found 50 (truncated or replaced?)")

    monkeypatch.setattr(inspect_cli.ModelPackage, "load", load)
    result = CliRunner().invoke(app, ["inspect", "/p"])
    assert result.exit_code == 1 and "truncated" in _text(result) and "Traceback" not in result.output


def test_export_output_is_an_option_and_the_old_positional_warns(calls, tmp_path):
    out = tmp_path / "pkg"
    result = CliRunner().invoke(app, ["export", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert calls["export_package"][0] == out and json.loads(result.stdout)["package"] == str(out)
    lines = [line for line in result.stderr.splitlines() if line.startswith("warning:")]  # not the progress lines
    assert len(lines) == 1 and "(positional) is deprecated" in lines[0] and f"use -o {out}" in lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "expected an output: -o PKG"),
        (["a", "-o", "b"], "output given 2 times: -o b, a; expected -o only"),
        (["a", "b"], "output given 2 times: a, b; expected -o only"),
    ],
    ids=["none", "option-and-positional", "two-positionals"],
)
def test_export_needs_exactly_one_output(calls, args, message):
    result = CliRunner().invoke(app, ["export", *args])
    assert result.exit_code == 1 and message in _text(result) and "export_package" not in calls
