"""A config JSON is checked field by field (type and range) before any field is used: every problem named in one
error, through the CLI one line and exit 1."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from arl2rt.cli.main import app
from arl2rt.errors import Arl2rtError
from arl2rt.model.config import PRESETS, ModelConfig, load_config

TINY = PRESETS["tiny"].to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_heads": 0}, "num_heads: expected an integer >= 1, found 0"),
        ({"ffn_dim": -128}, "ffn_dim: expected an integer >= 1, found -128"),
        ({"dim": "64"}, "dim: expected an integer >= 1, found str '64'"),
        ({"latent_height": -8}, "latent_height: expected an integer >= 1, found -8"),
        ({"num_layers": 2.5}, "num_layers: expected an integer >= 1, found 2.5"),
        ({"text_len": True}, "text_len: expected an integer >= 1, found bool True"),
        ({"sink_frames": -1}, "sink_frames: expected an integer >= 0, found -1"),
        ({"attn_window_frames": 0}, "attn_window_frames: expected -1 (global) or a window >= 1, found 0"),
        ({"freq_dim": 255}, "freq_dim: expected an even integer"),
        ({"lora_rank": 0}, "lora_rank: expected an integer >= 1, found 0"),
        ({"eps": 0}, "eps: expected a finite number > 0, found 0"),
        ({"rope_theta": "big"}, "rope_theta: expected a finite number > 0, found str 'big'"),
        ({"scheduler_shift": float("nan")}, "scheduler_shift: expected a finite number > 0, found nan"),
        ({"lora_alpha": float("inf")}, "lora_alpha: expected a finite number, found inf"),
        ({"warp_timesteps": "yes"}, "warp_timesteps: expected true or false, found str 'yes'"),
        ({"patch_size": [1, 2]}, "patch_size: expected a list of 3 integers >= 1, found (1, 2)"),
        ({"patch_size": [1, 0, 2]}, "patch_size: expected a list of 3 integers >= 1"),
        ({"hybrid_layers": [0, -1]}, "hybrid_layers: expected a list of layer indices >= 0"),
        ({"hybrid_layers": "012"}, "hybrid_layers: expected a list of layer indices >= 0, found str '012'"),
        ({"timesteps": [1000, 0]}, r"timesteps: expected a list of numbers in (0, 1000]"),
        ({"timesteps": []}, "timesteps: expected at least one timestep, found none"),
        ({"vocab": ["ball", 3]}, "vocab: expected a list of non-empty words"),
        ({"name": 7}, "name: expected a string, found 7"),
        ({"sampler": None}, "sampler: expected a string, found None"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else "",
)
def test_each_field_is_checked_and_named(change, message):
    with pytest.raises(Arl2rtError) as info:
        ModelConfig.from_dict({**TINY, **change}, source="cfg.json")
    assert str(info.value).startswith("cfg.json: invalid model config") and message in str(info.value)


def test_every_problem_is_listed_in_one_error():
    with pytest.raises(Arl2rtError) as info:
        ModelConfig.from_dict({**TINY, "num_heads": 0, "ffn_dim": -1, "dim": "64", "latent_height": -8})
    text = str(info.value)
    for field in ("num_heads", "ffn_dim", "dim", "latent_height"):
        assert f"{field}: expected an integer >= 1" in text
    assert text.count(";") == 3  # one error, four problems; no derived problem (head_dim) from the bad fields


def test_the_presets_and_their_round_trip_are_valid(tmp_path):
    for cfg in PRESETS.values():
        assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "change", [{"num_heads": 0}, {"ffn_dim": -1}, {"dim": "64"}, {"latent_height": -8}], ids=lambda c: next(iter(c))
)
def test_the_cli_names_the_field_in_one_line(tmp_path, change):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**TINY, **change}))
    before = path.read_bytes(), path.stat().st_mtime_ns
    out = tmp_path / "o.npz"
    res = CliRunner().invoke(app, ["generate", "--config", str(path), "-o", str(out), "--blocks", "1"])
    flat = "".join(res.output.split())
    field = next(iter(change))
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "".join(f"{path}: invalid model config 'tiny': {field}: expected an integer >= 1".split()) in flat
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


def test_load_config_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**TINY, "num_heads": 0}))
    with pytest.raises(Arl2rtError, match=rf"^{path}: invalid model config 'tiny': num_heads"):
        load_config(path)
