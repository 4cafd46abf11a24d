"""Time per block of what users run (``arl2rt generate``'s ``run_generate``) against the benchmark's CUDA graph.

For each layer mix at Wan2.1-1.3B dims (random weights, bf16), one process measures side by side:

* ``generate, graphs``: :func:`arl2rt.runtime.generate.run_generate` as the CLI calls it (``--backend torch --device
  cuda``, ``.npz`` output, so every block is copied to the host and written), the torch backend replaying its step
  graphs; time per block from the progress callback, median over the blocks after the graphs are captured.
* ``generate, eager``: the same with ``ARL2RT_GRAPHS=0``.
* ``benchmark graph``: ``benchmarks.stream_scaling``'s measurement, one whole block captured as one CUDA graph at the
  same attention length (a global cache at 21 latent frames), median of replays.

The product's softmax layers attend over a rolling window of ``--window`` latent frames (Self-Forcing's 21): once it
is full every block has the shapes of the benchmark's block at that length. The model is built once per mix on the
GPU and handed to ``run_generate`` in place of its CPU-built random model (a 1.3B CPU init costs seconds per run and
changes nothing timed).

Run on the GPU machine: ``PYTHONPATH=src python -m benchmarks.generate_speed --out DIR`` (writes DIR/generate_speed.json
and prints a markdown table).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from unittest import mock

import torch

from arl2rt.export.state_spec import StateSpec
from arl2rt.model.config import PRESETS
from arl2rt.model.random import random_context, random_model
from arl2rt.runtime import sources
from arl2rt.runtime.cuda_graph import StaticBlock
from arl2rt.runtime.generate import GenerateOptions, run_generate
from arl2rt.runtime.torch_backend import TorchBackend
from benchmarks._harness import environment, time_calls
from benchmarks.stream_scaling import plan as ss_plan
from benchmarks.stream_scaling import workload

MIXES = ("all-hybrid", "arl2-75", "baseline")


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


@contextlib.contextmanager
def graphs_env(on: bool):
    old = os.environ.get("ARL2RT_GRAPHS")
    os.environ["ARL2RT_GRAPHS"] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ARL2RT_GRAPHS")
        else:
            os.environ["ARL2RT_GRAPHS"] = old


def generate_block_times(cfg, model, blocks: int, dtype: str, tmp: Path, graphs: bool, fp8: bool = False) -> dict:
    """Per-block seconds of one ``run_generate`` call on ``model`` (prebuilt), and its CUDA peak. The latents go to
    ``tmp/out-graphs|eager[-fp8].npz`` (``fp8`` quantizes ``model`` in place: run it last)."""
    config_path = tmp / f"{cfg.name.replace(':', '_')}.json"
    config_path.write_text(json.dumps(cfg.to_dict()))
    marks: list[float] = []
    opts = GenerateOptions(
        output=tmp / f"out-{'graphs' if graphs else 'eager'}{'-fp8' if fp8 else ''}.npz",
        config=str(config_path),
        backend="torch",
        blocks=blocks,
        dtype=dtype,
        device="cuda",
        overwrite=True,
        fp8=fp8,
    )
    torch.cuda.reset_peak_memory_stats()
    with graphs_env(graphs), mock.patch.object(sources, "random_model", lambda c, seed=0: model):
        result = run_generate(opts, progress=lambda p: marks.append(p.seconds))
    per_block = [b - a for a, b in zip([0.0, *marks], marks)]
    return {"per_block_s": per_block, "peak_cuda_bytes": result.peak_cuda_bytes, "seconds": result.seconds}


def benchmark_graph_time(cfg, model, dtype: str, frames: int, replays: int) -> dict:
    """The stream_scaling measurement: a block at ``frames`` latent frames (global cache) as one CUDA graph."""
    global_cfg = replace(cfg, attn_window_frames=-1, sink_frames=0)
    device = torch.device("cuda")
    backend = TorchBackend(model, StateSpec(global_cfg, dtype), device).activate()
    try:
        context_kv = backend.run("encode_context", {"context": _context(global_cfg, backend)})
        store = workload.prepared_store(backend, context_kv, frames, seed=0)
        block = StaticBlock(
            backend, store, frames - cfg.frames_per_block, noise=workload.noise_pool(backend.spec, device, 0)
        )
        torch.cuda.reset_peak_memory_stats()
        plan = argparse.Namespace(device=device, graphs=True, no_graphs_reason="")
        call, _, how = workload.capture_or_eager(block, plan)
        times = time_calls(call, replays, device)
        call.release()
        return {"per_block_s": times, "how": how, "peak_cuda_bytes": torch.cuda.max_memory_allocated()}
    finally:
        backend.deactivate()


def _context(cfg, backend) -> torch.Tensor:
    spec = backend.spec.context()
    return random_context(cfg, seed=0).to(backend.device, spec.torch_dtype)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="wan2.1-t2v-1.3b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--window", type=int, default=21, help="latent frames a block's queries see (rolling window)")
    ap.add_argument("--blocks", type=int, default=14, help="blocks per generate run")
    ap.add_argument("--steady", type=int, default=4, help="last N blocks of a run make its median")
    ap.add_argument("--replays", type=int, default=10)
    ap.add_argument("--mixes", default=",".join(MIXES))
    ap.add_argument("--fp8", action="store_true", help="also generate with --fp8 and report its drift from bf16")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    base = replace(PRESETS[args.config], attn_window_frames=args.window, sink_frames=0)
    mixes = ss_plan.layer_mixes(base)
    device = torch.device("cuda")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mix in args.mixes.split(","):
            cfg = mixes[mix]
            log(f"{mix}: building the model on the GPU")
            with torch.device(device):
                model = random_model(cfg, 0)
            row = {"mix": mix, "window": args.window}
            for graphs in (True, False):
                log(f"{mix}: generate, graphs={graphs}")
                row[f"generate_{'graphs' if graphs else 'eager'}"] = generate_block_times(
                    cfg, model, args.blocks, args.dtype, Path(tmp), graphs
                )
            log(f"{mix}: benchmark graph")
            row["benchmark_graph"] = benchmark_graph_time(cfg, model, args.dtype, args.window, args.replays)
            row["floor_ms"] = ss_plan.floor_ms(replace(cfg, attn_window_frames=-1), args.window)
            if args.fp8:
                log(f"{mix}: generate, graphs, fp8")
                row["generate_graphs_fp8"] = generate_block_times(
                    cfg, model, args.blocks, args.dtype, Path(tmp), True, fp8=True
                )
                row["fp8_drift"] = drift(Path(tmp) / "out-graphs.npz", Path(tmp) / "out-graphs-fp8.npz")
            rows.append(row)
            del model
            workload.free(device)
    env = environment(device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generate_speed.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    print(table(rows, args.steady, env))
    return 0


def drift(reference: Path, candidate: Path) -> dict:
    """Per-block cosine and peak-relative error of the candidate stream's latents (``.npz``, one array per block)
    against the reference's."""
    import numpy as np

    per_block, finite = [], True
    with np.load(reference) as a, np.load(candidate) as b:
        for name in sorted(a.files):
            r, g = torch.from_numpy(a[name]).double(), torch.from_numpy(b[name]).double()
            finite = finite and bool(g.isfinite().all())
            cos = torch.nn.functional.cosine_similarity(r.flatten(), g.flatten(), dim=0).item()
            per_block.append({"cosine": cos, "peak_rel": ((r - g).abs().max() / r.abs().max()).item()})
    return {"blocks": per_block, "min_cosine": min(x["cosine"] for x in per_block), "finite": finite}


def table(rows: list[dict], steady: int, env: dict) -> str:
    def med(xs):
        return statistics.median(xs) * 1e3

    lines = [
        f"{env['device']}, torch {env['torch']}, CUDA {env['cuda']}, triton {env['triton']}, {env['date']}",
        "",
        "| mix | generate, graphs (ms) | generate, eager (ms) | benchmark graph (ms) | generate / benchmark "
        "| floor (ms) | generate / floor | peak GiB (generate) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g = med(r["generate_graphs"]["per_block_s"][-steady:])
        e = med(r["generate_eager"]["per_block_s"][-steady:])
        b = med(r["benchmark_graph"]["per_block_s"])
        peak = (r["generate_graphs"]["peak_cuda_bytes"] or 0) / 2**30
        lines.append(
            f"| {r['mix']} | {g:.1f} | {e:.1f} | {b:.1f} ({r['benchmark_graph']['how']}) | {g / b:.3f} "
            f"| {r['floor_ms']:.0f} | {g / r['floor_ms']:.2f} | {peak:.2f} |"
        )
    for r in rows:
        if "generate_graphs_fp8" in r:
            g = med(r["generate_graphs"]["per_block_s"][-steady:])
            f = med(r["generate_graphs_fp8"]["per_block_s"][-steady:])
            d = r["fp8_drift"]
            lines.append(
                f"fp8 {r['mix']}: generate, graphs {f:.1f} ms vs bf16 {g:.1f} ms ({g / f:.2f}x), floor ratio "
                f"{f / r['floor_ms']:.2f}; latents vs bf16 over {len(d['blocks'])} blocks: min cosine "
                f"{d['min_cosine']:.5f}, finite {d['finite']}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
