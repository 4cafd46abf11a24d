"""Inputs that made parity (and generate) mislead a user, each now a one-line error (exit 1, the culprit named, no
traceback) or honoured as given: a tolerance name that matches nothing, a package checked against other weights, an
explicit ``--config tiny`` beside a checkpoint, and a checkpoint whose config is stored in it (generate)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from arl2rt.cli.main import app
from arl2rt.export.package import export_package
from arl2rt.model.checkpoint import save_checkpoint
from arl2rt.model.config import PRESETS
from arl2rt.model.random import random_context, random_model
from micro_packages import MICRO

runner = CliRunner()


def _text(res) -> str:
    return " ".join(res.output.split())


def _fails(res, *parts: str) -> str:
    """Exit 1 with every part in the message and no traceback; returns the message on one line."""
    text = _text(res)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    for part in parts:
        assert part in text or part in res.output.replace("\n", ""), (part, res.output)
    return text


@pytest.fixture
def micro_json(tmp_path):
    path = tmp_path / "micro.json"
    path.write_text(json.dumps(MICRO.to_dict()))
    return str(path)


# -- tolerances ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value", "culprit", "hint"),
    [
        ("--atol", "presnt_state:1e-5", "presnt_state", "did you mean 'present_state'?"),
        ("--rtol", "velocty:0.1", "velocty", "did you mean 'velocity'?"),
        ("--atol", "present_state.7:1e-5", "present_state.7", "present_state.{0}"),  # micro has one hybrid layer
        ("--rtol", "past_state:0.1", "past_state", "present_state.{0}"),  # an input: never compared
    ],
    ids=["atol-kind-typo", "rtol-kind-typo", "no-such-layer", "input-not-compared"],
)
def test_a_tolerance_for_no_compared_tensor_is_refused_listing_the_valid_names(
    micro_json, option, value, culprit, hint
):
    res = runner.invoke(app, ["parity", "--config", micro_json, "--blocks", "1", option, value])
    text = _fails(res, f"{option} {culprit}", f"no compared tensor or kind {culprit!r}", hint)
    assert "expected a kind or one of its tensors: context_key.{0-1}" in text and "latents" in text


def test_valid_tolerance_names_are_accepted(micro_json):
    args = ["parity", "--config", micro_json, "--backend", "torch", "--blocks", "1", "--mode", "step", "--json"]
    res = runner.invoke(app, [*args, "--atol", "present_state:1e-5", "--rtol", "present_key.1:1e-3", "--atol", "1e-4"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["tolerances"]["atol"]["present_state"] == 1e-5


# -- a package checked against other weights -------------------------------------------------------------------------
@pytest.fixture
def other_weights_checkpoint(tmp_path):
    return save_checkpoint(random_model(MICRO, seed=1), tmp_path / "seed1.safetensors")


def test_a_package_is_refused_against_a_reference_of_other_weights(micro_exports, micro_json, other_weights_checkpoint):
    pkg = micro_exports.package("onnxruntime")  # the session model's weights: random, seed 0
    res = runner.invoke(app, ["parity", "--package", str(pkg.root), "--checkpoint", str(other_weights_checkpoint)])
    _fails(
        res,
        f"package {pkg.root} was exported from",
        f"the reference model (checkpoint {other_weights_checkpoint} (config micro)) has other weights",
        "the --config/--checkpoint it was exported from",
    )


def test_the_refusal_names_the_checkpoint_the_package_was_exported_from(
    micro_exports, micro_json, tmp_path, monkeypatch
):
    # the traces are the session's; the manifest records the weights (and source) of the model handed to the export
    micro_exports.replace_tracing(monkeypatch)
    source = "checkpoint /data/ckpt/arl2-step9000.safetensors (config micro)"
    pkg = export_package(random_model(MICRO, seed=1), tmp_path / "pkg", source=source)
    assert pkg.manifest["weights"]["source"] == source
    res = runner.invoke(app, ["parity", "--package", str(pkg.root), "--config", micro_json, "--blocks", "1"])
    _fails(res, f"was exported from {source} (weights sha256", "(random weights of seed 0 (config micro))")


def test_a_package_of_the_reference_weights_passes(micro_exports, micro_json):
    pkg = micro_exports.package("onnxruntime")
    res = runner.invoke(app, ["parity", "--package", str(pkg.root), "--config", micro_json, "--blocks", "1"])
    assert res.exit_code == 0, res.output


# -- an explicit --config beside a checkpoint ------------------------------------------------------------------------
def test_explicit_tiny_config_is_used_for_a_checkpoint_without_one(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(random_model(PRESETS["tiny"]).state_dict(), path)
    args = ["parity", "--config", "tiny", "--checkpoint", str(path), "--backend", "torch", "--blocks", "1"]
    res = runner.invoke(app, [*args, "--mode", "step", "--json"])
    assert res.exit_code == 0, res.output  # before: "holds no arl2rt config; name one", --config tiny ignored
    assert json.loads(res.stdout)["passed"] is True


def test_explicit_tiny_config_wins_over_the_checkpoints_own(other_weights_checkpoint):
    args = ["parity", "--config", "tiny", "--checkpoint", str(other_weights_checkpoint), "--backend", "torch"]
    res = runner.invoke(app, [*args, "--blocks", "1"])
    _fails(res, f"checkpoint {other_weights_checkpoint}", "shape")  # micro weights are not tiny's


# -- generate: a checkpoint that stores its config -------------------------------------------------------------------
def test_generate_reads_the_config_a_checkpoint_stores(other_weights_checkpoint, tmp_path):
    out, context = tmp_path / "out.npz", tmp_path / "text.safetensors"
    save_file({"context": random_context(MICRO, 0)}, str(context))
    args = ["generate", "--checkpoint", str(other_weights_checkpoint), "--context", str(context), "--blocks", "1"]
    res = runner.invoke(app, [*args, "-o", str(out)])
    assert res.exit_code == 0, res.output  # before: "expected --config too"
    assert out.is_file() and "(config micro)" in _text(res)


def test_generate_names_a_checkpoint_that_stores_no_config(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(random_model(MICRO).state_dict(), path)
    out = tmp_path / "out.npz"
    res = runner.invoke(app, ["generate", "--checkpoint", str(path), "--blocks", "1", "-o", str(out)])
    _fails(res, f"checkpoint {path}", "holds no arl2rt config")
    assert not out.exists()
