"""``generate --resume`` never continues from an edited record and never touches a file that is not the stream's own
output: each bad session or output is one line, exit 1, and every file the user has is left as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from arl2rt.cli.main import app
from arl2rt.files import record_digest
from arl2rt.runtime import session as sessions
from micro_configs import micro_rgb_config

runner = CliRunner()
RGB = micro_rgb_config("session-rgb")
OUTPUTS = {"mp4": "out.mp4", "gif": "out.gif", "npz": "out.npz", "png": "frames"}


@pytest.fixture
def config(tmp_path) -> str:
    path = tmp_path / "rgb.json"
    path.write_text(json.dumps(RGB.to_dict()))
    return str(path)


def _generate(*args: str) -> object:
    return runner.invoke(app, ["generate", *args])


def _stream(tmp_path: Path, config: str, fmt: str = "npz", blocks: int = 2) -> tuple[Path, Path]:
    """A stream of ``blocks`` blocks with its session; returns (session dir, output)."""
    session, output = tmp_path / "s", tmp_path / OUTPUTS[fmt]
    res = _generate("--config", config, "-o", str(output), "--blocks", str(blocks), "--save-session", str(session))
    assert res.exit_code == 0, res.output
    return session, output


def _record(session: Path) -> Path:
    return session / (session / sessions.LATEST).read_text().strip() / sessions.META


def _edit(session: Path, change, *, reseal: bool = False) -> None:
    """Change session.json; ``reseal`` also records the new content's checksum (a record written that way)."""
    path = _record(session)
    meta = json.loads(path.read_text())
    change(meta)
    if reseal:
        meta[sessions.CHECKSUM] = record_digest(meta, sessions.CHECKSUM)
    path.write_text(json.dumps(meta, indent=2))


def _files(root: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every file under ``root``: what must not change when a command is refused."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _refused(root: Path, args: list[str], *needles: str) -> str:
    """Run ``generate args``: exit 1, one message naming ``needles``, no traceback, nothing under ``root`` changed."""
    before = _files(root)
    res = _generate(*args)
    flat = "".join(res.output.split())  # wherever the console wraps
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)  # not an uncaught exception
    for needle in needles:
        assert "".join(needle.split()) in flat, (needle, res.output)
    assert _files(root) == before
    return res.output


def _resume(session: Path, blocks: int = 3) -> list[str]:
    return ["--resume", str(session), "--blocks", str(blocks)]


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["position"].update(block=1),
        lambda m: m["position"].update(rope_frame=0),
        lambda m: m.update(seed=m["seed"] + 1),
        lambda m: m["output"].update(frames=2),
    ],
    ids=["block", "rope-frame", "seed", "output-frames"],
)
def test_an_edited_record_is_refused(tmp_path, config, change):
    session, _ = _stream(tmp_path, config)
    _edit(session, change)
    _refused(tmp_path, _resume(session), "session.json", "record_sha256", "edited or damaged")


def test_a_record_without_its_checksum_is_refused(tmp_path, config):
    session, _ = _stream(tmp_path, config)
    _edit(session, lambda m: m.pop(sessions.CHECKSUM))
    _refused(tmp_path, _resume(session), "session.json", "expected the record's own checksum")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("position"), "position: missing"),
        (lambda m: m["position"].pop("rope_frame"), "position.rope_frame: missing"),
        (lambda m: m["position"].update(block="2"), "position.block: expected int, found str"),
        (lambda m: m.pop("tensors"), "tensors: missing"),
        (lambda m: m.pop("model"), "model: missing"),
        (lambda m: m["model"].pop("identity"), "model.identity: missing"),
        (lambda m: m.update(batch=None), "batch: expected int, found NoneType"),
        (lambda m: m["output"].pop("path"), "output.path: missing"),
        (lambda m: m["output"].pop("sha256"), "lacks sha256"),
        (lambda m: m["output"].update(bytes=-5), "lacks bytes"),
    ],
    ids=[
        "position",
        "rope-frame",
        "block-str",
        "tensors",
        "model",
        "identity",
        "batch",
        "output-path",
        "output-sha",
        "output-bytes",
    ],  # fmt: skip
)
def test_a_malformed_record_is_named(tmp_path, config, change, message):
    """A record with its checksum in order but a field missing or of another type (another writer, an old version)."""
    session, _ = _stream(tmp_path, config)
    _edit(session, change, reseal=True)
    _refused(tmp_path, _resume(session), message)


def test_an_edited_output_path_never_touches_the_other_file(tmp_path, config):
    """The record names another file of the user's: refused, whether or not the record's checksum was redone."""
    session, output = _stream(tmp_path, config, "mp4")
    other = tmp_path / "holiday.mp4"
    other.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 4096)  # larger than the stream's output

    def elsewhere(meta):
        meta["output"]["path"] = str(other)

    _edit(session, elsewhere)
    _refused(tmp_path, _resume(session), "session.json", "record_sha256")
    _edit(session, elsewhere, reseal=True)
    _refused(tmp_path, _resume(session), f"output {other}", "differ from what the session wrote", "new output (-o)")
    other.write_bytes(b"short")
    _refused(tmp_path, _resume(session), f"output {other}", "found 5 bytes")
    assert output.is_file()


@pytest.mark.parametrize("fmt", list(OUTPUTS))
def test_an_output_replaced_by_another_video_is_refused(tmp_path, config, fmt):
    session, output = _stream(tmp_path, config, fmt, blocks=2)
    res = _generate("--config", config, "-o", str(output), "--blocks", "3", "--seed", "7", "--overwrite")
    assert res.exit_code == 0, res.output  # the user made another video at the same path
    what = "frames 0..3" if fmt == "png" else "first"
    _refused(tmp_path, _resume(session, 4), f"output {output}", what, "differ from what the session wrote")


@pytest.mark.parametrize("fmt", list(OUTPUTS))
def test_a_damaged_output_is_refused_and_an_intact_one_resumes(tmp_path, config, fmt):
    session, output = _stream(tmp_path, config, fmt, blocks=2)
    kept = tmp_path / "kept"
    shutil.copytree(session, kept / "s")
    (shutil.copytree if output.is_dir() else shutil.copy2)(output, kept / output.name)
    damaged = output / "frame_000001.png" if fmt == "png" else output
    data = bytearray(damaged.read_bytes())
    data[40] ^= 0xFF  # inside the header: the MP4's moov, the GIF's first image, the zip's first member, a PNG chunk
    damaged.write_bytes(bytes(data))
    _refused(tmp_path, _resume(session), f"output {output}", "differ from what the session wrote")

    shutil.rmtree(session)
    (shutil.rmtree if output.is_dir() else Path.unlink)(output)
    shutil.move(kept / "s", session)
    shutil.move(kept / output.name, output)
    res = _generate(*_resume(session), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["total_frames"] == 3 * RGB.frames_per_block


def test_a_truncated_or_missing_output_is_refused(tmp_path, config):
    session, output = _stream(tmp_path, config, "gif")
    output.write_bytes(output.read_bytes()[:100])
    _refused(tmp_path, _resume(session), f"output {output}", "found 100 bytes", "moved or changed")
    output.unlink()
    _refused(tmp_path, _resume(session), f"output {output}", "found no file")
