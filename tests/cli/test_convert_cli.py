"""``arl2rt convert`` on a tiny upstream-layout checkpoint: the written file loads on its own and matches."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from arl2rt.cli.main import app
from arl2rt.model.checkpoint import load_checkpoint
from arl2rt.model.config import PRESETS
from arl2rt.model.random import random_model


def _upstream_pt(path, seed: int = 0):
    """A Causal Forcing-style checkpoint: ``model.`` keys with FFN LoRA factors on layer 0 (B non-zero)."""
    model = random_model(PRESETS["tiny"], seed=seed)
    sd = {f"model.{k}": v for k, v in model.state_dict().items() if not k.startswith("blocks.0.ffn.0.")}
    sd["model.blocks.0.ffn.0.linear.weight"] = model.blocks[0].ffn[0].weight.detach().clone()
    sd["model.blocks.0.ffn.0.linear.bias"] = model.blocks[0].ffn[0].bias.detach().clone()
    sd["model.blocks.0.ffn.0.lora_A"] = torch.randn(64, 4)
    sd["model.blocks.0.ffn.0.lora_B"] = torch.randn(4, 128)
    torch.save({"generator_ema": sd}, path)
    return model


def _text(result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_convert_writes_a_self_describing_file(tmp_path):
    model = _upstream_pt(tmp_path / "cf.pt")
    out = tmp_path / "tiny.safetensors"
    result = CliRunner().invoke(
        app, ["convert", str(tmp_path / "cf.pt"), "-o", str(out), "--config", "tiny", "--use-ema", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["merged_lora"] == 1 and summary["config"] == "tiny" and summary["random_arl2_layers"] == []
    loaded = load_checkpoint(out)  # no config needed: it is in the file
    assert torch.equal(loaded.blocks[1].self_attn.q.weight, model.blocks[1].self_attn.q.weight)
    assert not torch.equal(loaded.blocks[0].ffn[0].weight, model.blocks[0].ffn[0].weight)  # LoRA merged in


def test_convert_refuses_to_overwrite_its_input(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"user data")
    result = CliRunner().invoke(app, ["convert", str(path), "-o", str(path), "--config", "tiny"])
    assert result.exit_code == 1 and "is an input of the conversion" in _text(result)
    assert "Traceback" not in result.output and path.read_bytes() == b"user data"


def test_convert_error_names_the_missing_entry(tmp_path):
    _upstream_pt(tmp_path / "cf.pt")
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "cf.pt"), "-o", str(tmp_path / "o.safetensors")])
    assert result.exit_code == 1
    assert "no 'generator' entry" in _text(result) and "--use-ema" in _text(result)
    assert not (tmp_path / "o.safetensors").exists()
