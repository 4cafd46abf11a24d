"""``arl2rt convert -o FILE`` never loses a file: an existing one is replaced only with --overwrite, and a write that
fails leaves it as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from arl2rt.cli.main import app
from arl2rt.model import checkpoint as checkpoints
from arl2rt.model.checkpoint import load_checkpoint, save_checkpoint
from arl2rt.model.config import PRESETS
from arl2rt.model.random import random_model

runner = CliRunner()


@pytest.fixture
def source(tmp_path) -> Path:
    """An arl2rt safetensors checkpoint of the tiny model (its config inside: no --config needed)."""
    return save_checkpoint(random_model(PRESETS["tiny"], seed=0), tmp_path / "in.safetensors")


def _files(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _refused(root: Path, args: list[str], *needles: str) -> None:
    before = _files(root)
    res = runner.invoke(app, ["convert", *args])
    flat = "".join(res.output.split())
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output
    for needle in needles:
        assert "".join(needle.split()) in flat, (needle, res.output)
    assert _files(root) == before


def test_an_existing_file_is_kept_unless_overwrite(tmp_path, source):
    mine = tmp_path / "notes.safetensors"
    mine.write_bytes(b"a user's file")
    _refused(tmp_path, [str(source), "-o", str(mine)], f"--output {mine}: already exists", "pass --overwrite")
    res = runner.invoke(app, ["convert", str(source), "-o", str(mine), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert torch.equal(load_checkpoint(mine).blocks[0].ffn[0].weight, load_checkpoint(source).blocks[0].ffn[0].weight)


def test_a_failed_write_leaves_the_old_file_intact(tmp_path, source, monkeypatch):
    mine = tmp_path / "old.safetensors"
    mine.write_bytes(b"the previous conversion")

    def disk_full(tensors, path, metadata=None):
        Path(path).write_bytes(b"\x00" * 10)  # half written, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints, "save_file", disk_full)
    _refused(tmp_path, [str(source), "-o", str(mine), "--overwrite"], f"--output {mine}: cannot write", "No space left")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors", "old.safetensors"]  # no partial file


def test_an_output_that_is_a_directory_or_under_a_file_is_named(tmp_path, source):
    (tmp_path / "dir.safetensors").mkdir()
    _refused(tmp_path, [str(source), "-o", str(tmp_path / "dir.safetensors")], "is a directory")
    (tmp_path / "afile").write_text("mine")
    under = tmp_path / "afile" / "x" / "o.safetensors"
    _refused(tmp_path, [str(source), "-o", str(under)], f"{tmp_path / 'afile'} is a file")
