"""How the CLI prints: messages plain and whole (brackets kept, never wrapped, with or without a terminal), help without
markup, tables that a pipe gets in whole rows, library errors in the CLI's words, warnings and torch.onnx's
torchvision noise."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from arl2rt.cli import _common
from arl2rt.cli import export as export_cli
from arl2rt.cli.main import app
from arl2rt.errors import Arl2rtError, setting
from arl2rt.runtime import generate as lib
from micro_configs import micro_rgb_config

runner = CliRunner()

BRACKETS = "pip install 'arl2rt[triton]' then [/red] and [bold]"


def _long_dir(root: Path, name: str = "d") -> Path:
    """A path over 200 characters, with rich markup in it: a [/x] closing tag that matches nothing, [triton], [s]."""
    path = root / ("segment-of-a-long-path-" * 5) / "[/x]-[triton]-ball[s]" / ("and-more-of-it-" * 4) / name
    assert len(str(path)) > 200
    return path


def _fails_with(monkeypatch, text: str) -> None:
    def fails(opts, progress=None):
        raise Arl2rtError(text)

    monkeypatch.setattr(lib, "run_generate", fails)


def test_an_error_with_markup_and_a_long_path_is_one_whole_line(monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "40")
    text = f"output {_long_dir(tmp_path)}/o.mp4: {BRACKETS}"
    _fails_with(monkeypatch, text)
    res = runner.invoke(app, ["generate", "-o", "o.mp4"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.stderr == f"error: {text}\n" and res.stdout == ""


def _in_a_terminal(args: list[str], columns: int = 40) -> tuple[int, str]:
    """Run the CLI with stdin, stdout and stderr on a pseudo-terminal ``columns`` wide; its exit code and text."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from arl2rt.cli.main import main; main()", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: every process holding the terminal has closed it
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    code = proc.wait(timeout=120)
    text = b"".join(chunks).decode(errors="replace")
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")


def test_in_a_terminal_an_error_is_one_whole_line_too(tmp_path):
    package = _long_dir(tmp_path, "pkg")
    code, text = _in_a_terminal(["inspect", str(package)])
    assert code == 1 and "Traceback" not in text and "MarkupError" not in text
    assert f"error: package {package}: expected a directory with manifest.json, found none\n" in text


def test_in_a_terminal_a_prompt_with_markup_is_refused_whole(tmp_path):
    out = tmp_path / "o.gif"
    code, text = _in_a_terminal(["generate", "-o", str(out), "--prompt", "two [/red] balls and one ball[s]"])
    assert code == 1 and "Traceback" not in text and "MarkupError" not in text
    assert "error: prompt 'two [/red] balls and one ball[s]': unknown words ['[/red]'" in text
    assert not out.exists()


def test_the_prompt_grammar_keeps_its_brackets():
    res = runner.invoke(app, ["generate", "-o", "o.gif", "--prompt", "two red ball"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "prompts are '<count> <colour> ball[s]' joined by 'and'" in res.stderr
    assert not Path("o.gif").exists()


def test_arl2rt_warnings_and_deprecations_are_one_plain_line(monkeypatch):
    import arl2rt.model.text.cache as ours

    def warns(opts, progress=None):
        text = f"text cache entry {BRACKETS} is corrupt; recomputing it"
        warnings.warn_explicit(text, UserWarning, ours.__file__, 139)
        warnings.warn_explicit("a library's own", UserWarning, "/elsewhere/lib.py", 7)  # keeps Python's format
        _common.deprecated("`--old [x]`", "--new [y]")
        raise Arl2rtError("stop")

    monkeypatch.setattr(lib, "run_generate", warns)
    res = runner.invoke(app, ["generate", "-o", "o.mp4"])
    assert res.exit_code == 1
    assert res.stderr.splitlines() == [
        f"warning: text cache entry {BRACKETS} is corrupt; recomputing it",
        "/elsewhere/lib.py:7: UserWarning: a library's own",
        "warning: `--old [x]` is deprecated and goes after 0.1; use --new [y]",
        "error: stop",
    ]


def _help(*command: str) -> str:
    res = runner.invoke(app, [*command, "--help"])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    return " ".join(res.output.split())  # click wraps help text at words


def test_help_is_plain_text_with_its_brackets():
    text = _help("generate")
    assert f"whole blocks. [default: {lib.DEFAULT_FRAMES}]" in text and "random text. [default: 0]" in text
    assert "[default: torch cpu, onnxruntime cpu, tensorrt cuda]" in text
    assert "'context' [B, text_len, text_dim]" in text and "[default: 16; x>=1]" in text
    assert "--threads" in text
    for command in ("", "doctor", "parity", "build", "convert", "export", "inspect"):
        assert "Usage: arl2rt" in _help(*filter(None, [command]))


# -- tables ---------------------------------------------------------------------------------------------------------
def _rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("│")]


def test_inspect_piped_prints_whole_rows(micro_exports, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    package = micro_exports.copy_package("onnxruntime", _long_dir(tmp_path, "pkg"))
    res = runner.invoke(app, ["inspect", str(package.root)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"{package.root}: micro for onnxruntime, float32, opset 27")
    past = [row for row in _rows(res.stdout) if " past_key." in row]
    assert past and all("[batch, past_len, " in row and "per past frame" in row for row in past)
    widths = {len(row) for row in _rows(res.stdout) if "input" in row or "output" in row}
    assert len(widths) == 1  # one line per row: no cell wrapped onto a second line


def test_export_summary_names_the_package_on_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "40")
    out = _long_dir(tmp_path, "pkg")

    def export_package(model, root, progress, **kwargs):
        progress(0, 8, f"trace {BRACKETS}")
        return type("Package", (), dict(root=root, target="portable", spec=type("S", (), {"dtype": "float32"}),
                                         opset=18, nbytes=3, plugin_mode=None,
                                         manifest={"files": {"w.bin": {"bytes": 3}}, "graphs": {}}))  # fmt: skip

    monkeypatch.setattr(export_cli, "load_model", lambda **kw: type("L", (), {"model": None, "description": "m"}))
    monkeypatch.setattr(export_cli, "export_package", export_package)
    res = runner.invoke(app, ["export", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0] == f"{out} (portable, float32, opset 18):"
    assert res.stderr == f"export 0/8: trace {BRACKETS}\n"  # progress, one plain line per step when piped


def test_build_prints_the_entry_path_whole(monkeypatch, tmp_path):
    from arl2rt.cli import build as build_cli
    from arl2rt.runtime.trt.build import BuildResult
    from arl2rt.runtime.trt.cache import CacheEntry

    monkeypatch.setenv("COLUMNS", "40")
    entry = _long_dir(tmp_path, "entry")

    def build_engines(package, progress, **kwargs):
        progress(f"building commit_step into {entry}")
        record = {"engines": {"commit_step": {"bytes": 123}}}
        return BuildResult(CacheEntry(entry, {"k": 1}, {}, record), "built", "", {"commit_step": 1.5})

    monkeypatch.setattr(build_cli, "build_engines", build_engines)
    res = runner.invoke(app, ["build", "pkg"])
    assert res.exit_code == 0, res.output
    assert f"entry: {entry}\n" in res.stdout and res.stderr == f"building commit_step into {entry}\n"


def test_doctor_tables_are_whole_rows_without_markup(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    res = runner.invoke(app, ["doctor"])
    assert res.exit_code == 0, res.output
    assert "[/" not in res.stdout and "[dim]" not in res.stdout
    backends = [row for row in _rows(res.stdout) if "available" in row]
    assert len(backends) >= 3 and len({len(row) for row in backends}) == 1  # a reason, however long, is one line


def test_a_table_console_is_unlimited_off_a_terminal_and_the_terminal_s_width_on_one(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    assert _common.out.width == _common.UNLIMITED_WIDTH
    on_a_terminal = _common._Console(force_terminal=True, width=40)
    assert on_a_terminal.width == 40


# -- library errors in the CLI's words ---------------------------------------------------------------------------------
def test_a_setting_reads_in_each_front_end_s_words():
    exc = Arl2rtError(f"output [x]: exists; pass {setting('--overwrite', 'overwrite=True')} to replace it")
    assert str(exc) == "output [x]: exists; pass overwrite=True / --overwrite to replace it"
    assert exc.cli_message() == "output [x]: exists; pass --overwrite to replace it"


def test_a_checkpoint_without_config_asks_for_the_option(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, path)
    res = runner.invoke(app, ["convert", str(path), "-o", str(tmp_path / "o.safetensors")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "holds no arl2rt config; name one (--config)" in res.stderr and "cfg=" not in res.stderr
    assert not (tmp_path / "o.safetensors").exists()


# -- noise ------------------------------------------------------------------------------------------------------------
def test_torch_onnx_s_torchvision_lines_are_dropped_and_nothing_else():
    logger = logging.getLogger(_common.TORCHVISION_LOGGER)
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        logger.warning(_common.TORCHVISION_MESSAGE, "torchvision::nms")
        logger.warning("something else. Skipping %s", "x")
    finally:
        logger.removeHandler(handler)
    assert seen == ["something else. Skipping x"]


def test_json_stays_alone_on_stdout_with_notes_and_progress(tmp_path):
    config = tmp_path / "rgb.json"
    config.write_text(json.dumps(micro_rgb_config("msg-rgb").to_dict()))
    res = runner.invoke(app, ["generate", "--config", str(config), "-o", str(tmp_path / "o.npz"), "--frames", "3",
                              "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["total_blocks"] == 2
    lines = res.stderr.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("blocks")] == ["blocks 1/2", "blocks 2/2"]
    assert any(line.startswith("note: 3 frames rounded up") for line in lines)


@pytest.mark.parametrize("kind", ["error", "note"])
def test_message_is_kind_and_text(capsys, kind):
    _common.message(kind, BRACKETS)
    assert capsys.readouterr().err == f"{kind}: {BRACKETS}\n"
