"""DiT peak memory of what users run, a stream at N latent frames: ARL2-75 % against the all-softmax baseline.

``benchmarks.stream_scaling`` measures a block as the benchmark's own static graph, which returns every softmax
layer's block K/V at once. This measures the Streamer's ``next_block`` on the torch backend as ``arl2rt generate``
runs it (the commit writes each layer's K/V into its cache slot; step graphs replay where their keys repeat, global
caches fed whole): a stream prepared at ``N - warm * F`` latent frames (random past K/V and GDN states, global
caches with room for the blocks to come), ``warm`` blocks to warm up and capture, then the block ending at frame N,
with the allocator's peak reset just before it. Random weights, Wan2.1-1.3B dims, bf16.

Run on the GPU machine: ``PYTHONPATH=src python -m benchmarks.dit_memory --out DIR`` (DIR/dit_memory.json, a table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from arl2rt.export.state_spec import StateSpec
from arl2rt.model.config import PRESETS
from arl2rt.model.random import random_context, random_model
from arl2rt.runtime.streamer import Streamer, StreamPosition
from arl2rt.runtime.torch_backend import TorchBackend
from benchmarks._harness import environment
from benchmarks.stream_scaling import plan as ss_plan
from benchmarks.stream_scaling import workload

GIB = 2**30


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def measure(cfg, dtype: str, frames: int, warm: int) -> dict:
    """Peak bytes allocated during the block that ends at latent frame ``frames``, and what the stream holds."""
    device = torch.device("cuda")
    f = cfg.frames_per_block
    with torch.device(device):
        model = random_model(cfg, 0)
    backend = TorchBackend(model, StateSpec(cfg, dtype), device).activate()
    try:
        streamer = Streamer(backend, seed=0, max_frames=f)  # its own store only carries the context: keep it small
        streamer.start(random_context(cfg, seed=0))
        start = frames - (warm + 1) * f
        # caches filled with random K/V up to `frames` (room for every block to come), then cut to `start` frames
        store = workload.prepared_store(backend, streamer.store.context, frames + f, seed=0)
        for cache in store.caches.values():
            cache.frames = start
        streamer.store = store
        workload.free(device)  # the start's store is gone: its memory must not count in the peak
        streamer.position = StreamPosition(block=start // f, frame=start, rope_frame=start)
        times = []
        for _ in range(warm):
            t = time.perf_counter()
            streamer.next_block()
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
        torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        streamer.next_block()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
        held = store.nbytes()
        graphs = backend.graphs
        return {
            "peak_bytes": torch.cuda.max_memory_allocated(device),
            "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "state_bytes": held,
            "block_s": times,
            "replays": graphs.replays if graphs is not None else 0,
            "captures": graphs.captures if graphs is not None else 0,
        }
    finally:
        backend.deactivate()
        del model
        workload.free(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="wan2.1-t2v-1.3b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--frames", type=int, default=231, help="latent frames at the end of the measured block")
    ap.add_argument("--warm", type=int, default=4, help="blocks before it (the step graphs capture in these)")
    ap.add_argument("--mixes", default="baseline,arl2-75")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    mixes = ss_plan.layer_mixes(replace(PRESETS[args.config], attn_window_frames=-1, sink_frames=0))
    rows = {}
    for mix in args.mixes.split(","):
        log(f"{mix}: stream at {args.frames} latent frames")
        rows[mix] = measure(mixes[mix], args.dtype, args.frames, args.warm)
        log(f"{mix}: peak {rows[mix]['peak_bytes'] / GIB:.2f} GiB, replays {rows[mix]['replays']}")
    env = environment(torch.device("cuda"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dit_memory.json").write_text(json.dumps({"environment": env, "frames": args.frames, "rows": rows}))
    print(table(rows, args.frames, env))
    return 0


def table(rows: dict, frames: int, env: dict) -> str:
    lines = [
        f"{env['device']}, torch {env['torch']}, {env['date']}; block ending at latent frame {frames}",
        "",
        "| mix | peak GiB | weights GiB | K/V caches GiB | GDN states GiB | block s (measured) | replays |",
        "|---|---|---|---|---|---|---|",
    ]
    for mix, r in rows.items():
        s = r["state_bytes"]
        lines.append(
            f"| {mix} | {r['peak_bytes'] / GIB:.2f} | {r['weights_bytes'] / GIB:.2f} | {s['kv_cache'] / GIB:.2f} "
            f"| {s['gdn_states'] / GIB:.3f} | {r['block_s'][-1]:.3f} | {r['replays']} |"
        )
    if "baseline" in rows and len(rows) > 1:
        base = rows["baseline"]["peak_bytes"]
        for mix, r in rows.items():
            if mix != "baseline":
                lines.append(f"\n{mix} vs baseline: {100 * (r['peak_bytes'] / base - 1):+.1f} % peak memory")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
