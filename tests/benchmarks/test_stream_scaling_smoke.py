"""benchmarks/stream_scaling keeps working: its smoke mode end to end on the CPU, its arithmetic, its errors."""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from arl2rt.export.state_spec import StateSpec
from arl2rt.model.config import PRESETS

ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30


def _load(module: str):
    """A module of the benchmark package, imported from the repository root as ``python -m`` imports it."""
    sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module(f"benchmarks.stream_scaling.{module}")
    finally:
        sys.path.remove(str(ROOT))


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.stream_scaling", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("stream_scaling") / "stream_scaling.md"
    proc = _run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(out.with_suffix(".json").read_text()), proc


def test_smoke_measures_every_configuration_and_position(smoke):
    out, result, proc = smoke
    points = result["points"]
    assert not [p for p in points if "error" in p]
    got = {(p["config"], p["latent_frames"]) for p in points}
    want = {(m, n) for m in ("baseline", "arl2-75", "arl2-50", "all-hybrid") for n in (3, 6, 9)}
    assert got == want | {("all-hybrid", 12), ("all-hybrid", 15)}
    assert all(p["block_ms"] > 0 and math.isfinite(p["block_ms"]) and p["replays"] >= 3 for p in points)
    assert {p["mode"] for p in points} == {"eager"}  # no CUDA here: nothing is captured

    # the caches hold exactly N frames of every softmax layer; all-hybrid's resident memory does not grow
    tiny = PRESETS["tiny"]
    for p in points:
        cfg = result["configs"][p["config"]]
        per_frame = StateSpec(tiny, "bfloat16").kv_bytes_per_frame() // len(tiny.softmax_layers)
        softmax = tiny.num_layers - len(cfg["hybrid_layers"])
        assert round(p["kv_cache_gib"] * GIB) == p["latent_frames"] * per_frame * softmax
    flat = {round(p["accounted_gib"] * GIB) for p in points if p["config"] == "all-hybrid"}
    assert len(flat) == 1

    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) == len(points)
    assert all(float(r["gemm_ms"]) > 0 and float(r["write_ms"]) >= 0 for r in rows)
    assert {r["write_ms"] for r in rows if r["config"] == "baseline"} == {"0"}  # no hybrid layer, no GDN write


def test_smoke_checks_the_timed_path_against_float64(smoke):
    check = smoke[1]["check"]
    assert "error" not in check, check
    assert check["replay_vs_eager_max_abs"] == 0.0
    errors = check["rel_rms_vs_float64"]
    assert {"latents", "present_state.0", "present_key.1", "present_value.1"} <= set(errors)
    assert max(errors.values()) < 5e-2  # bf16 weights and activations through 5 passes
    assert check["gdn_write_rel_rms"] < 1e-5  # fp32 state update on the CPU
    assert check["gdn_read_rel_rms"] < 1e-2  # bf16 read


def test_smoke_complete_runs_and_report(smoke):
    out, result, proc = smoke
    runs = {r["config"]: r for r in result["full_runs"]}
    assert set(runs) == {"baseline", "arl2-75", "arl2-50", "all-hybrid"}
    assert all(r["latent_frames"] == 9 and r["video_frames"] == 33 and len(r["block_s"]) == 3 for r in runs.values())
    md = out.read_text()
    for heading in ("## Time and memory per block", "## Where a block's time goes", "## Whole videos (9 latent"):
        assert heading in md
    assert "| ARL2-75 % | 0-2 | 9 |" in md
    assert proc.stdout.startswith("# ARL2 stream scaling")
    command = r"device command: PYTHONPATH=src python3 -m benchmarks.stream_scaling (--git-ref \w+ )?--out \$OUT/"
    assert re.search(command + "stream_scaling.md", proc.stderr)


def test_compute_floor_reproduces_the_perf_anchors():
    """docs/performance.md §2: ≈202 TFLOP per block for the all-softmax model with a 21-frame window, ≈81 all-hybrid."""
    plan = _load("plan")
    mixes = plan.layer_mixes(PRESETS["wan2.1-t2v-1.3b"])
    assert mixes["arl2-75"].hybrid_layers == tuple(range(22)) and mixes["arl2-50"].hybrid_layers == tuple(range(15))
    baseline = sum(plan.block_flops(mixes["baseline"], 21).values())
    hybrid = sum(plan.block_flops(mixes["all-hybrid"], 21).values())
    assert baseline == pytest.approx(202e12, rel=0.01)
    assert hybrid == pytest.approx(81e12, rel=0.02)
    assert sum(plan.block_flops(mixes["all-hybrid"], 1008).values()) == hybrid  # no growing cache


def test_bad_positions_and_missing_plot_input_are_one_line_errors(tmp_path):
    proc = _run("--positions", "20,21", "--estimate")
    assert proc.returncode == 2
    assert "--positions: latent-frame positions must be positive multiples of 3 (whole blocks); found [20]" in (
        proc.stderr
    )
    proc = _run("--plot-from", str(tmp_path / "none.csv"))
    assert proc.returncode == 2 and "none.csv: cannot read" in proc.stderr


def test_plot_from_csv(smoke, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "plot.png"
    proc = _run("--plot-from", str(smoke[0].with_suffix(".csv")), "--out", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _point(plan, cfgs, mix, n, block_ms, peak):
    return {
        "config": mix,
        "hybrid_layers": len(cfgs[mix].hybrid_layers),
        "latent_frames": n,
        "video_frames": 4 * n - 3,
        "block_ms": block_ms,
        "block_q20_ms": block_ms,
        "block_q80_ms": block_ms,
        "replays": 3,
        "eager_ms": block_ms,
        "mode": "graph",
        "peak_gib": peak,
        "accounted_gib": peak,
        "kv_cache_gib": 0.0,
        "floor_ms": plan.floor_ms(cfgs[mix], n),
    }


def test_headline_against_the_issue_numbers_at_real_positions():
    """The report's comparison rows at the issue's positions (the smoke run never reaches them)."""
    plan, report = _load("plan"), _load("report")
    cfgs = plan.layer_mixes(PRESETS["wan2.1-t2v-1.3b"])
    points = [
        _point(plan, cfgs, "baseline", 21, 400.0, 9.0),
        _point(plan, cfgs, "baseline", 231, 3000.0, 70.0),
        _point(plan, cfgs, "arl2-75", 21, 200.0, 6.0),
        _point(plan, cfgs, "arl2-75", 231, 1000.0, 21.5),
        _point(plan, cfgs, "all-hybrid", 21, 170.0, 3.00),
        _point(plan, cfgs, "all-hybrid", 1008, 171.0, 3.04),
    ]
    result = {
        "env": dict.fromkeys(("device", "driver", "python", "torch", "triton", "cuda", "cudnn", "git", "date"), "-"),
        "plan": {"command": "c", "model": "m", "sdpa": "s", "device": "cuda", "full_frames": 252},
        "configs": {m: c.to_dict() for m, c in cfgs.items()},
        "check": None,
        "components": None,
        "points": points,
        "full_runs": [],
        "skipped": [],
    }
    rows = report.enriched_rows(result)
    assert rows[0]["fps"] == pytest.approx(12 / 0.4)
    table = {row[0]: row[3:] for row in report.headline(result, rows)}
    speed = table["ARL2-75 % vs baseline, time per block at 231 latent frames (921 video frames)"]
    assert speed == ("3.00× (3000 vs 1000 ms)", "yes")
    memory = table["ARL2-75 % vs baseline, DiT peak memory at 231 latent frames"]
    assert memory == ("−69.3% (70.0 vs 21.5 GiB)", "no")
    floor = table["baseline: time per block at 21 latent frames / compute floor"]
    assert floor[1] == "yes" and floor[0].startswith(f"{400 / plan.floor_ms(cfgs['baseline'], 21):.2f}×")
    assert table["all-hybrid peak memory, 21 → 1008 latent frames"] == ("3.00–3.04 GiB (1.33 %)", "no")
    # whole 231-frame video from the sweep: a + bN through the two points, summed over N = 3, 6, ..., 231
    fit = sum(0.4 + (3.0 - 0.4) * (n - 21) / 210 for n in range(3, 232, 3))
    assert report.fit_total_s(rows, "baseline", 231, 3) == pytest.approx(fit)
    assert report.fit_total_s(rows, "baseline", 252, 3) is None  # never past the last position measured
    md = report.render_markdown(result)
    assert "| baseline | none | 231 | 921 | **3,000.0** (3,000.0–3,000.0) |" in md
