"""``--context FILE``: embeddings with NaN or infinite values are refused before a stream starts, naming the file and
the tensor."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from arl2rt.cli.main import app
from arl2rt.errors import Arl2rtError
from arl2rt.runtime.text import load_context
from micro_configs import micro_rgb_config

RGB = micro_rgb_config("context-rgb")


@pytest.mark.parametrize(
    ("bad", "found"),
    [
        ({(0, 1, 2): float("nan")}, "1 NaN and 0 infinite"),
        ({(0, 0, 0): float("inf"), (0, 2, 1): -float("inf")}, "0 NaN and 2 infinite"),
    ],
    ids=["nan", "inf"],
)
def test_non_finite_embeddings_are_refused(tmp_path, bad, found):
    context = torch.randn(1, RGB.text_len, RGB.text_dim)
    for index, value in bad.items():
        context[index] = value
    path = tmp_path / "c.safetensors"
    save_file({"context": context}, path)
    with pytest.raises(
        Arl2rtError, match=rf"--context {path}: tensor 'context': expected finite values, found {found}"
    ):
        load_context(path, RGB)

    config, out = tmp_path / "rgb.json", tmp_path / "o.npz"
    config.write_text(json.dumps(RGB.to_dict()))
    before = path.read_bytes(), path.stat().st_mtime_ns
    res = CliRunner().invoke(app, ["generate", "--config", str(config), "--context", str(path), "-o", str(out)])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit) and "Traceback" not in res.output
    assert "".join(f"--context {path}: tensor 'context': expected finite values".split()) in "".join(res.output.split())
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before and not out.exists()


def test_half_precision_embeddings_are_checked_too(tmp_path):
    context = torch.randn(1, RGB.text_len, RGB.text_dim).half()
    context[0, 0, 0] = float("nan")
    save_file({"context": context}, tmp_path / "c.safetensors")
    with pytest.raises(Arl2rtError, match="found 1 NaN"):
        load_context(tmp_path / "c.safetensors", RGB)
