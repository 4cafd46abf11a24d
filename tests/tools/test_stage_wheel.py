"""tools/stage_wheel.py: a wheel split into parts joins back bit-identically; missing or corrupt parts are named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from checkout_tools import tool

MIB = 1 << 20
WHEEL = "onnxruntime_gpu-0.0.0-cp312-cp312-manylinux_2_28_x86_64.whl"


@pytest.fixture(scope="module")
def stage():
    return tool("stage_wheel")


@pytest.fixture
def wheel(tmp_path) -> Path:
    path = tmp_path / WHEEL
    path.write_bytes(os.urandom(3 * MIB + 12345))  # not a multiple of the part size: the last part is short
    return path


@pytest.fixture
def parts(stage, wheel, tmp_path) -> Path:
    out = tmp_path / "parts"
    assert stage.main(["split", str(wheel), "--out", str(out), "--part-bytes", str(MIB)]) == 0
    return out


def test_split_writes_parts_and_manifest(stage, wheel, parts):
    manifest = json.loads((parts / f"{WHEEL}.manifest.json").read_text())
    assert manifest["wheel"] == WHEEL and manifest["size"] == wheel.stat().st_size
    assert manifest["part_count"] == 4 == len(manifest["parts"])
    assert [p["name"] for p in manifest["parts"]] == [f"{WHEEL}.part{i:02d}" for i in range(4)]
    assert [p["size"] for p in manifest["parts"]] == [MIB, MIB, MIB, 12345]
    assert manifest["sha256"] == stage.sha256_of(wheel)
    assert all(stage.sha256_of(parts / p["name"]) == p["sha256"] for p in manifest["parts"])


def test_part_mib_accepts_fractions(stage, wheel, tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "tracked_tree_bytes", lambda root: 0)
    out = tmp_path / "half"
    assert stage.main(["split", str(wheel), "--out", str(out), "--part-mib", "0.5"]) == 0
    assert json.loads((out / f"{WHEEL}.manifest.json").read_text())["part_count"] == 7


def test_part_that_does_not_fit_beside_the_tree_is_refused(stage, wheel, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(stage, "tracked_tree_bytes", lambda root: 18 * MIB)
    assert stage.main(["split", str(wheel), "--out", str(tmp_path / "p"), "--part-mib", "60"]) == 1
    err = capsys.readouterr().err
    assert "exceed one call's 64 MiB" in err and "--part-mib 44" in err
    assert stage.default_part_bytes(18 * MIB) == 44 * MIB


def test_join_is_bit_identical(stage, wheel, parts, capsys):
    assert stage.main(["join", str(parts), "--manifest", f"{WHEEL}.manifest.json"]) == 0
    joined = Path(capsys.readouterr().out.strip())
    assert joined == parts / WHEEL
    assert joined.read_bytes() == wheel.read_bytes()
    assert not list(parts.glob("*.partial-*"))


def test_missing_part_is_named_with_its_call(stage, parts, capsys):
    (parts / f"{WHEEL}.part02").unlink()
    assert stage.main(["join", str(parts)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"missing part {WHEEL}.part02 (call 3 of 4: carry" in err
    assert not (parts / WHEEL).exists() and not list(parts.glob("*.partial-*"))


def test_corrupt_part_is_named_with_its_call(stage, parts, capsys):
    path = parts / f"{WHEEL}.part00"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert stage.main(["join", str(parts)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"corrupt part {WHEEL}.part00 (call 1 of 4" in err
    assert not (parts / WHEEL).exists()


def test_status_reports_what_is_left(stage, parts, capsys):
    (parts / f"{WHEEL}.part01").unlink()
    (parts / f"{WHEEL}.part03").write_bytes(b"truncated")
    assert stage.main(["status", str(parts)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == [
        f"{WHEEL}.part00: intact",
        f"{WHEEL}.part01: missing",
        f"{WHEEL}.part02: intact",
        f"{WHEEL}.part03: corrupt",
    ]
    assert lines[4] == f"left to carry: {WHEEL}.part01, {WHEEL}.part03"


def test_status_complete(stage, parts):
    assert stage.status(parts, None)[-1] == "complete: join can run"


def test_failed_join_leaves_no_file(stage, parts, monkeypatch):
    """A whole whose sha256 does not match (a part changed after the check) leaves neither the wheel nor a temp."""
    manifest = json.loads((parts / f"{WHEEL}.manifest.json").read_text())
    manifest["sha256"] = "0" * 64
    (parts / f"{WHEEL}.manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(stage.StageError, match="expected 0000"):
        stage.join(parts, None)
    assert sorted(p.name for p in parts.iterdir()) == sorted(
        [f"{WHEEL}.manifest.json"] + [p["name"] for p in manifest["parts"]]
    )


def test_interrupted_join_keeps_the_old_wheel(stage, parts, monkeypatch):
    """An error mid-write leaves what was there before, untouched (the write goes to a temp file first)."""
    (parts / WHEEL).write_bytes(b"old")
    monkeypatch.setattr(stage.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        stage.join(parts, None)
    assert (parts / WHEEL).read_bytes() == b"old"
    assert not list(parts.glob("*.partial-*"))


class _Run:
    """Stands in for subprocess.run: records commands, answers the providers probe with ``providers``."""

    def __init__(self, module: str, providers: list[str]):
        self.calls: list[list[str]] = []
        self.env: dict | None = None
        self.answer = json.dumps([module, providers])

    def __call__(self, cmd, check=False, capture_output=False, text=False, env=None):
        self.calls.append(cmd)
        if "-c" in cmd:
            self.env = env
            return subprocess.CompletedProcess(cmd, 0, stdout=self.answer + "\n", stderr="")
        return subprocess.CompletedProcess(cmd, 0)


def test_install_runs_pip_and_lists_providers(stage, wheel, tmp_path, monkeypatch, capsys):
    target = tmp_path / "site"
    run = _Run(str(target / "onnxruntime" / "__init__.py"), ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(stage.subprocess, "run", run)
    assert stage.main(["install", str(wheel), "--target", str(target)]) == 0
    pip = run.calls[0]
    assert pip[:3] == [sys.executable, "-m", "pip"]
    assert pip[3:] == ["install", "--no-index", "--no-deps", "--upgrade", "--target", str(target), str(wheel)]
    assert run.env["PYTHONPATH"].split(os.pathsep)[0] == str(target)  # the target wins over an installed build
    assert "CUDAExecutionProvider, CPUExecutionProvider" in capsys.readouterr().out


def test_install_reports_missing_cuda_ep(stage, wheel, tmp_path, monkeypatch, capsys):
    target = tmp_path / "site"
    run = _Run(str(target / "onnxruntime" / "__init__.py"), ["CPUExecutionProvider"])
    monkeypatch.setattr(stage.subprocess, "run", run)
    assert stage.main(["install", str(wheel), "--target", str(target)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "lacks CUDAExecutionProvider (providers: CPUExecutionProvider)" in err


def test_install_reports_a_shadowing_build(stage, wheel, tmp_path, monkeypatch, capsys):
    run = _Run("/usr/lib/python3/site-packages/onnxruntime/__init__.py", ["CUDAExecutionProvider"])
    monkeypatch.setattr(stage.subprocess, "run", run)
    assert stage.main(["install", str(wheel), "--target", str(tmp_path / "site")]) == 1
    assert "another install shadows it" in capsys.readouterr().err


def test_install_of_a_missing_wheel_says_join_first(stage, tmp_path, capsys):
    assert stage.main(["install", str(tmp_path / WHEEL), "--target", str(tmp_path / "site")]) == 1
    assert "run join first" in capsys.readouterr().err
