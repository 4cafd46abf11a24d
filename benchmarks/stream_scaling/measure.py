"""The sweep (one captured block per configuration and position) and the complete runs (the eager `Streamer` from
an empty stream), each result written out as soon as it is measured."""

from __future__ import annotations

import time
import traceback
from typing import Any

import torch

from arl2rt.model.random import random_context
from arl2rt.runtime.cuda_graph import StaticBlock
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend
from benchmarks._harness import quantiles, time_calls
from benchmarks.stream_scaling.outputs import Outputs
from benchmarks.stream_scaling.plan import EST_CAPTURE_S, GIB, Plan, est_block_s, floor_ms, log, video_frames
from benchmarks.stream_scaling.workload import (
    build_backend,
    capture_or_eager,
    encode,
    free,
    noise_pool,
    prepared_store,
    sync,
    weight_bytes,
)


def measure_point(backend: TorchBackend, context_kv: dict, frames: int, plan: Plan, weights: int) -> dict[str, Any]:
    device, f = plan.device, plan.f
    cuda = device.type == "cuda"
    free(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    store = prepared_store(backend, context_kv, frames, plan.seed + frames)
    block = StaticBlock(backend, store, frames - f, noise=noise_pool(backend.spec, device, plan.seed + frames))
    call, warm, mode = capture_or_eager(block, plan)
    reps = max(3, min(plan.replays, int(plan.point_budget_s / max(warm, 1e-6))))
    med, q20, q80 = quantiles(time_calls(call, reps, device))
    row = {
        "config": backend.spec.config.name.split(":")[-1],
        "hybrid_layers": len(backend.spec.config.hybrid_layers),
        "latent_frames": frames,
        "video_frames": video_frames(frames),
        "block_ms": med * 1e3,
        "block_q20_ms": q20 * 1e3,
        "block_q80_ms": q80 * 1e3,
        "replays": reps,
        "eager_ms": warm * 1e3,
        "mode": mode,
        "peak_gib": torch.cuda.max_memory_allocated(device) / GIB if cuda else None,
        "accounted_gib": (weights + sum(store.nbytes().values())) / GIB,
        "kv_cache_gib": store.nbytes()["kv_cache"] / GIB,
        "floor_ms": floor_ms(backend.spec.config, frames),
    }
    call.release()
    return row


def sweep(plan: Plan, result: dict, out: Outputs, started: float) -> None:
    for mix, frames_list in plan.positions.items():
        cfg = plan.configs[mix]
        backend = None
        for frames in frames_list:
            elapsed = time.perf_counter() - started
            est = EST_CAPTURE_S + 4 * est_block_s(cfg, frames)
            if elapsed + est > plan.deadline_s:
                result["skipped"].append(f"{mix} at {frames} latent frames: deadline ({elapsed:.0f} s + ~{est:.0f} s)")
                continue
            try:
                if backend is None:
                    backend = build_backend(cfg, plan)
                    weights, context_kv = weight_bytes(backend), encode(backend, plan)
                row = measure_point(backend, context_kv, frames, plan, weights)
            except Exception as exc:  # noqa: BLE001 - record it and keep the other measurements
                row = {"config": mix, "latent_frames": frames, "error": f"{type(exc).__name__}: {exc}"[:300]}
                log(traceback.format_exc())
            log("point", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})
            result["points"].append(row)
            out.write(result)
        del backend
        free(plan.device)


def complete_run(mix: str, plan: Plan, started: float) -> dict[str, Any]:
    cfg, device = plan.configs[mix], plan.device
    backend = build_backend(cfg, plan)
    free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    streamer = Streamer(backend, seed=plan.seed, max_frames=plan.full_frames)
    streamer.start(random_context(cfg, seed=plan.seed))
    sync(device)
    times: list[float] = []
    block_peaks: list[float] = []  # each block's own peak: the flatness of one real stream, not of separate points
    note = "complete"
    for _ in range(plan.full_frames // plan.f):
        if time.perf_counter() - started > plan.deadline_s:
            note = f"cut at {len(times) * plan.f} latent frames by the deadline"
            break
        if device.type == "cuda" and times:
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        streamer.next_block()
        sync(device)
        times.append(time.perf_counter() - start)
        if device.type == "cuda":
            block_peaks.append(torch.cuda.max_memory_allocated(device) / GIB)
    frames = len(times) * plan.f
    row = {
        "config": mix,
        "latent_frames": frames,
        "video_frames": video_frames(frames) if frames else 0,
        "total_s": sum(times),
        "fps": video_frames(frames) / sum(times) if times else None,
        "peak_gib": max(block_peaks) if block_peaks else None,
        "block_peak_gib": block_peaks,
        "block_s": times,
        "note": note,
        "mode": "eager Streamer (no CUDA graphs)",
    }
    if frames >= 231 and 231 % plan.f == 0:
        row["total_231_s"] = sum(times[: 231 // plan.f])
    del streamer, backend
    free(device)
    return row


def complete_runs(plan: Plan, result: dict, out: Outputs, started: float) -> None:
    for mix in plan.full_configs:
        elapsed, est = time.perf_counter() - started, plan.estimate_full(mix)
        if elapsed + est > plan.deadline_s:
            result["skipped"].append(f"complete run {mix}: deadline ({elapsed:.0f} s + ~{est:.0f} s)")
            out.write(result)
            continue
        try:
            row = complete_run(mix, plan, started)
        except Exception as exc:  # noqa: BLE001 - record it and keep the other runs
            row = {"config": mix, "error": f"{type(exc).__name__}: {exc}"[:300]}
            log(traceback.format_exc())
        log("complete run", {k: v for k, v in row.items() if k not in ("block_s", "block_peak_gib")})
        result["full_runs"].append(row)
        out.write(result)
