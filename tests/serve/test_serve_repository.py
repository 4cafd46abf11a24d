"""``arl2rt serve triton``: the repository's Python-backend model, its config parsed with Triton's own schema, the
thin model.py, the settings it records, and the options refused where the repository is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from arl2rt.cli.main import app
from arl2rt.errors import Arl2rtError
from arl2rt.model.config import PRESETS
from arl2rt.serve import model_config as mc
from arl2rt.serve import protocol as p
from arl2rt.serve.repository import write_repository
from arl2rt.serve.served import ServeSettings, plan_settings

runner = CliRunner()


def parse(path: Path):
    return mc.parse_config(path.read_text(), str(path))


def test_the_python_model_config_parses_with_triton_schema_and_follows_the_model(tmp_path):
    settings, loaded = plan_settings(config="tiny", idle_timeout=2.5, threads=2)
    written = write_repository(tmp_path / "repo", settings, loaded, name="tiny", max_streams=6, instances=2)
    assert list(written.models) == ["tiny"]
    config = parse(tmp_path / "repo" / "tiny" / "config.pbtxt")
    m, cfg = mc.pb2(), PRESETS["tiny"]
    assert config.backend == "python" and config.max_batch_size == 6
    inputs = {i.name: (list(i.dims), i.optional, i.data_type) for i in config.input}
    assert inputs == {
        p.BLOCK: ([1], False, m.TYPE_INT64),
        p.SEED: ([1], True, m.TYPE_INT64),
        p.PROMPT: ([1], True, m.TYPE_STRING),
        p.CONTEXT: ([cfg.text_len, cfg.text_dim], True, m.TYPE_FP32),
    }
    outputs = {o.name: list(o.dims) for o in config.output}
    latents = [cfg.out_channels, cfg.frames_per_block, cfg.latent_height, cfg.latent_width]
    assert outputs == {p.LATENTS: latents, p.STATE_BYTES: [1], p.STREAMS: [1]}  # no decoder: no FRAMES
    batching = config.sequence_batching
    assert batching.max_sequence_idle_microseconds == 2_500_000
    assert batching.oldest.max_candidate_sequences == 6
    kinds = {c.name: (c.control[0].kind, list(c.control[0].int32_false_true)) for c in batching.control_input}
    control = m.ModelSequenceBatching.Control
    assert kinds == {
        p.START: (control.CONTROL_SEQUENCE_START, [0, 1]),
        p.END: (control.CONTROL_SEQUENCE_END, [0, 1]),
        p.READY: (control.CONTROL_SEQUENCE_READY, [0, 1]),
        p.CORRID: (control.CONTROL_SEQUENCE_CORRID, []),
    }
    assert config.instance_group[0].count == 2 and config.instance_group[0].kind == m.ModelInstanceGroup.KIND_CPU
    recorded = ServeSettings.from_json(config.parameters[p.SETTINGS_PARAMETER].string_value)
    assert recorded == settings and recorded.source == {"kind": "random", "config": "tiny"} and recorded.threads == 2
    model_py = (tmp_path / "repo" / "tiny" / "1" / "model.py").read_text()
    assert "from arl2rt.serve.python_model import TritonPythonModel" in model_py
    assert repr(str(Path(__import__("arl2rt").__file__).resolve().parents[1])) in model_py
    compile(model_py, "model.py", "exec")


def test_a_model_with_a_vae_decoder_answers_with_frames(micro_vae_exports, tmp_path):
    package = micro_vae_exports.package("onnxruntime")
    settings, loaded = plan_settings(model=package.root)
    write_repository(tmp_path, settings, loaded, name="vae")
    outputs = {o.name: list(o.dims) for o in parse(tmp_path / "vae" / "config.pbtxt").output}
    channels, _, height, width = package.spec.frames(first=False).shape[1:]
    assert outputs[p.FRAMES] == [channels, -1, height, width] and settings.vae and settings.backend == "onnxruntime"


def test_a_config_triton_cannot_parse_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "x"\nsequence_batching { idle_microseconds: 3 }\n')
    with pytest.raises(Arl2rtError, match=r"config.pbtxt: not a Triton model config"):
        parse(path)


def test_options_refused_where_the_repository_is_written(tmp_path, micro_exports):
    with pytest.raises(Arl2rtError, match="--backend tensorrt: serving runs torch or onnxruntime"):
        plan_settings(config="tiny", backend="tensorrt")
    with pytest.raises(Arl2rtError, match="idle_timeout / --idle-timeout must be > 0 s"):
        plan_settings(config="tiny", idle_timeout=0)
    trt = micro_exports.package("tensorrt")
    with pytest.raises(Arl2rtError, match="has target tensorrt, which runs on tensorrt; serving runs"):
        plan_settings(model=trt.root)
    settings, loaded = plan_settings(config="tiny")
    write_repository(tmp_path, settings, loaded, name="a")
    with pytest.raises(Arl2rtError, match="model a exists there; pass overwrite=True / --overwrite"):
        write_repository(tmp_path, settings, loaded, name="a")
    write_repository(tmp_path, settings, loaded, name="a", overwrite=True)
    with pytest.raises(Arl2rtError, match="--name 'x/y': expected a model name"):
        write_repository(tmp_path, settings, loaded, name="x/y")


def test_cli_writes_the_repository_and_generate_server_refuses_local_options(tmp_path):
    res = runner.invoke(app, ["serve", "triton", "-o", str(tmp_path), "--config", "tiny", "--name", "t", "--json"])
    assert res.exit_code == 0, res.output
    assert list(json.loads(res.stdout)["models"]) == ["t"] and (tmp_path / "t" / "config.pbtxt").is_file()
    res = runner.invoke(
        app, ["generate", "--server", "127.0.0.1:1", "--config", "tiny", "--threads", "2", "-o", "x.npz"]
    )
    assert res.exit_code == 1
    assert "error: --server 127.0.0.1:1: the server's model decides --config, --threads; drop them" in res.output
