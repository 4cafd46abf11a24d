"""Configs are data: presets, JSON files with the same fields, and clear errors for bad ones."""

from __future__ import annotations

import json

import pytest

from arl2rt.errors import Arl2rtError
from arl2rt.model.config import PRESETS, ModelConfig, load_config


def test_wan_preset_has_the_real_dimensions():
    cfg = load_config("wan2.1-t2v-1.3b")
    assert (cfg.dim, cfg.num_heads, cfg.head_dim, cfg.num_layers) == (1536, 12, 128, 30)
    assert cfg.tokens_per_frame == 1560 and cfg.tokens_per_block == 4680
    assert cfg.hybrid_layers == tuple(range(22)) and cfg.softmax_layers == tuple(range(22, 30))
    assert cfg.lora_scale == 2.0


def test_json_round_trip(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(PRESETS["tiny"].to_dict()))
    assert load_config(path) == PRESETS["tiny"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hybrid_layers": [0, 9]}, r"hybrid_layers \[9\] outside 0..3"),
        ({"num_heads": 3}, "not divisible by num_heads"),
        ({"latent_height": 7}, "not divisible by patch"),
        ({"attn_window_frames": 2}, "attn_window_frames"),
        ({"colour": "red"}, r"unknown config fields \['colour'\]"),
    ],
)
def test_bad_configs_are_named(tmp_path, change, message):
    data = {**PRESETS["tiny"].to_dict(), **change}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(Arl2rtError, match=message):
        load_config(path)


def test_missing_fields_and_unknown_names():
    with pytest.raises(Arl2rtError, match="missing config fields"):
        ModelConfig.from_dict({"name": "x"})
    with pytest.raises(Arl2rtError, match="not a preset"):
        load_config("no-such-config")
