"""Time and memory of an ARL2 stream versus video length: baseline, ARL2-75 %, ARL2-50 % and all-hybrid (issue 8).

Device run (one call; it prints the plan and its estimated cost first):

    PYTHONPATH=src python3 benchmarks/stream_scaling.py --out $OUT/stream_scaling.md

It writes ``stream_scaling.md`` (tables against the issue's anchors), ``.csv`` (one row per configuration and
position), ``.json`` (everything, raw) and ``.png`` (time per block and peak memory versus latent frames) beside
``--out``, rewriting them after every measurement, so a run cut short still leaves what it measured. Other modes:

    python benchmarks/stream_scaling.py --estimate                       # plan, estimated cost, device command
    python benchmarks/stream_scaling.py --smoke --out /tmp/ss/stream_scaling.md   # tiny config on the CPU, seconds
    python benchmarks/stream_scaling.py --plot-from stream_scaling.csv   # the PNG from a CSV (needs matplotlib)

What one run measures (the definitions are repeated in the markdown):

* Configurations: random weights at the real dims of the base preset (``wan2.1-t2v-1.3b``: 30 layers, dim 1536,
  12 heads of 128, FFN 8960, 480x832 -> 1560 tokens per latent frame), bf16; 3 latent frames = 4680 tokens per
  block; 5 passes per block (4 denoising + the clean pass). Hybrid layers: baseline none (softmax everywhere, global
  K/V cache); ARL2-75 % the preset's 0-21; ARL2-50 % 0-14 (upstream's choice is not published: our pick);
  all-hybrid every layer.
* Position N (latent frames): the video has N latent frames once the block is done. The block holds frames N-3..N-1,
  the softmax layers attend to N-3 cached frames plus the block (N x 1560 keys), and the caches are sized to N frames,
  as ARL2's pipeline sizes them to the whole video. Caches are filled with random K/V through ``KVCache.append``; GDN
  states are random. Video frames = 4N - 3 (Wan's VAE: 1 + 4 per latent frame after the first); a block is 12.
* Time per block: the real step path (``TorchBackend`` running ``export/steps.py`` -> ``CausalDiT.step``; GDN write
  through ``torch.ops.arl2.gdn_state_update`` -> Triton on CUDA; block read through ``plugins/gdn/read.py`` on CUDA)
  driven by :class:`arl2rt.runtime.cuda_graph.StaticBlock` (4 denoising passes with device-side re-noising, the clean
  pass, the K/V append), captured once per position as one CUDA graph and replayed; median (20-80 % quantiles) of
  CUDA-event times; also the eager time of the warm-up call before the capture (Triton kernels are compiled and
  cuDNN plans built by the earlier sections at the same shapes).
  SDPA runs with the backend priority cuDNN > flash > mem-efficient > math for every configuration.
* Peak memory: ``torch.cuda.max_memory_allocated`` over the block at N after a reset, with the weights, text K/V,
  caches and GDN states resident ("accounted" = those resident bytes alone, the only number on a CPU).
* Breakdown: each component timed alone at the block's shapes (one CUDA graph per component, rotating input sets
  where they are small enough to sit in L2, CUDA events), times its calls per block; "rest" = block minus their sum
  (norms, RoPE, modulation, gates, casts, the K/V append, launch gaps; negative if the components ran slower alone).
* Compute floor (shared/research/perf-anchors.md §6.5): 2 x per-token weights x tokens for every linear map (incl.
  LoRA factors, phi maps, gate projections, patch embedding, head), 4 Sq Skv d H for each attention, 2 T H d^2 for the
  GDN read and T H (4 d^2 + 6 C d) (C = 64) for the state-only GDN write, at 989 TFLOP/s (dense bf16 H100/H200 spec).
* Complete runs: ``Streamer.next_block`` (the user-facing loop, eager, no CUDA graphs) from an empty stream to
  ``--full-frames`` latent frames, caches sized to the whole video; total = sum of block times after the text is
  encoded; peak memory over the run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import gc
import io
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import StateSpec
from arl2rt.model.attention import memory_read
from arl2rt.model.config import PRESETS, ModelConfig
from arl2rt.model.layers import attention, attention_with_past
from arl2rt.plugins.gdn.constants import CHUNK_SIZE
from arl2rt.plugins.gdn.naive import naive_block_read
from arl2rt.plugins.gdn.op import gdn_state_update
from arl2rt.runtime.cuda_graph import CapturedCall, StaticBlock
from arl2rt.runtime.generate import random_context, random_model
from arl2rt.runtime.state_store import StateStore
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend

MIXES = ("baseline", "arl2-75", "arl2-50", "all-hybrid")
LABELS = {"baseline": "baseline", "arl2-75": "ARL2-75 %", "arl2-50": "ARL2-50 %", "all-hybrid": "all-hybrid"}
PEAK_TFLOPS = 989.0  # dense bf16, H100/H200 spec sheets (perf-anchors.md §6.1)
GIB = 2**30
STATE_STD = 0.1  # random GDN states: the size of a state after a few blocks of L2-normalised keys
ROTATE = 3  # input sets per component timing, so that small inputs do not sit in the 60 MB L2
ROTATE_MAX_BYTES = 256 * 2**20  # above this an input set is far larger than L2: one set
COMPONENT_REPLAYS = 20

# The anchors (issue 8; ARL2 project page; perf-anchors.md §0, §5)
PAPER = {
    "speedup_231": 2.26,
    "memory_cut_231": 0.54,
    "frames_1005_s": 179.0,
    "frames_1005_gb": 43.0,
    "baseline_1005_gb": 91.0,
}
GOALS = {"speedup_231": 2.5, "memory_cut_231": 0.70, "floor_ratio_21": 2.0, "flat_pct": 1.0}

# Cost model of --estimate (a guess to size the run, not a measurement): GEMMs and attention at the rates measured
# alone on the H200 (perf-anchors.md §3: 690-760 and 516-551 TFLOP/s), elementwise work per layer and pass, CUDA-graph
# capture per position, a cuDNN plan per new key length in an eager run, model builds, start-up.
EST_LINEAR_TFLOPS = 700.0
EST_ATTENTION_TFLOPS = 520.0
EST_LAYER_PASS_S = 0.25e-3
EST_CAPTURE_S = 1.5
EST_PLAN_BUILD_S = 0.3
EST_BUILD_S = 5.0
EST_START_S = 20.0
EST_CHECK_S = 20.0
EST_COMPONENTS_S = 15.0

DEVICE_CALL_LIMIT_S = 600


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


# -- configurations and arithmetic ---------------------------------------------------------------------------------


def layer_mixes(base: ModelConfig) -> dict[str, ModelConfig]:
    """The four configurations: same dims as ``base``, hybrid layers none / base's / first half / all."""
    n = base.num_layers
    hybrid = {
        "baseline": (),
        "arl2-75": base.hybrid_layers,
        "arl2-50": tuple(range(n // 2)),
        "all-hybrid": tuple(range(n)),
    }
    return {m: replace(base, name=f"{base.name}:{m}", hybrid_layers=hybrid[m]) for m in MIXES}


def span(layers: tuple[int, ...]) -> str:
    if not layers:
        return "none"
    if layers == tuple(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def passes(cfg: ModelConfig) -> int:
    return len(cfg.timesteps) + 1


def video_frames(latent: int) -> int:
    return 4 * latent - 3


def block_flops(cfg: ModelConfig, frames: int) -> dict[str, float]:
    """FLOPs of one block whose softmax layers attend to ``frames`` latent frames of keys (past + this block)."""
    t, dim, h, d, r = cfg.tokens_per_block, cfg.dim, cfg.num_heads, cfg.head_dim, cfg.lora_rank
    n_hyb = len(cfg.hybrid_layers)
    n_soft = cfg.num_layers - n_hyb
    p = passes(cfg)
    patch = math.prod(cfg.patch_size)
    every_pass = (
        cfg.num_layers * (4 * dim * dim + 2 * dim * dim + 2 * dim * cfg.ffn_dim)  # self q,k,v,o; cross q,o; FFN
        + n_hyb * (2 * dim * r + h * d * d + h * dim)  # memory query: LoRA q, phi_q; output gate
        + cfg.in_channels * patch * dim
        + dim * cfg.out_channels * patch  # patch embedding, head
    )
    clean_only = n_hyb * (2 * 2 * dim * r + 2 * h * d * d + 2 * h * dim)  # LoRA k, v; phi_k, phi_v; a/b projections
    return {
        "linear": 2.0 * t * (p * every_pass + clean_only),
        "intra": 4.0 * p * n_hyb * t * t * d * h,
        "cross": 4.0 * p * n_soft * t * frames * cfg.tokens_per_frame * d * h,
        "text": 4.0 * p * cfg.num_layers * t * cfg.text_len * d * h,
        "read": 2.0 * p * n_hyb * t * h * d * d,
        "write": 1.0 * n_hyb * t * h * (4 * d * d + 6 * CHUNK_SIZE * d),
    }


def floor_ms(cfg: ModelConfig, frames: int) -> float:
    return sum(block_flops(cfg, frames).values()) / (PEAK_TFLOPS * 1e12) * 1e3


def est_block_s(cfg: ModelConfig, frames: int) -> float:
    fl = block_flops(cfg, frames)
    attn = fl["intra"] + fl["cross"] + fl["text"]
    other = sum(fl.values()) - attn
    elementwise = cfg.num_layers * passes(cfg) * EST_LAYER_PASS_S
    return other / (EST_LINEAR_TFLOPS * 1e12) + attn / (EST_ATTENTION_TFLOPS * 1e12) + elementwise


# -- the plan ------------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    base: ModelConfig
    configs: dict[str, ModelConfig]
    positions: dict[str, list[int]]
    full_frames: int
    full_configs: list[str]
    replays: int
    point_budget_s: float
    dtype: str
    device: torch.device
    sdpa: str
    check: bool
    components: bool
    deadline_s: float
    seed: int
    graphs: bool = True
    git_ref: str | None = None
    no_graphs_reason: str = "--no-graphs"
    argv: list[str] = field(default_factory=list)

    @property
    def f(self) -> int:
        return self.base.frames_per_block

    def softmax_positions(self) -> list[int]:
        return sorted({n for m, ns in self.positions.items() for n in ns if self.configs[m].softmax_layers})

    def estimate(self) -> dict[str, float]:
        """Seconds per part under the EST_* cost model (a guess to size the run, printed before it starts)."""
        est = {"start-up and imports": EST_START_S}
        if self.check:
            est["check vs float64"] = EST_CHECK_S
        if self.components:
            est["components"] = EST_COMPONENTS_S + 0.2 * len(self.softmax_positions())
        for m, ns in self.positions.items():
            cfg = self.configs[m]
            point = 0.0
            for n in ns:
                blk = est_block_s(cfg, n)
                reps = max(3, min(self.replays, int(self.point_budget_s / blk)))
                point += EST_CAPTURE_S + (1 + reps) * blk
            est[f"sweep {m}"] = EST_BUILD_S + point
        for m in self.full_configs:
            est[f"complete run {m}"] = self.estimate_full(m)
        return est

    def estimate_full(self, mix: str) -> float:
        cfg = self.configs[mix]
        blocks = self.full_frames // self.f
        builds = EST_PLAN_BUILD_S * blocks if cfg.softmax_layers else 0.0
        return EST_BUILD_S + builds + 1.1 * sum(est_block_s(cfg, (j + 1) * self.f) for j in range(blocks))

    def device_argv(self) -> list[str]:
        """This run's options for the device: without what is local to this call (output, commit stamp, device,
        estimate/smoke mode), stamped with this checkout's commit (the device copy has no .git)."""
        keep, skip = [], False
        for arg in self.argv:
            if skip:
                skip = False
            elif arg in ("--out", "--git-ref", "--device"):
                skip = True
            elif arg not in ("--estimate", "--smoke") and not arg.startswith(("--out=", "--git-ref=", "--device=")):
                keep.append(arg)
        ref = _run(["git", "rev-parse", "--short", "HEAD"])
        return keep + (["--git-ref", ref] if ref else [])

    def device_command(self) -> str:
        args = " ".join(self.device_argv())
        return f"PYTHONPATH=src python3 benchmarks/stream_scaling.py {args} --out $OUT/stream_scaling.md".replace(
            "  ", " "
        )


def parse_positions(text: str, f: int, what: str) -> list[int]:
    try:
        ns = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise Arl2rtError(f"{what} {text!r}: expected comma-separated integers") from None
    bad = [n for n in ns if n < f or n % f]
    if bad:
        raise Arl2rtError(
            f"{what}: latent-frame positions must be positive multiples of {f} (whole blocks); found {bad}"
        )
    return ns


def make_plan(args: argparse.Namespace, argv: list[str]) -> Plan:
    if args.smoke:
        base, positions, extra, full = PRESETS["tiny"], "3,6,9", "12,15", 9
    else:
        base, positions, extra, full = PRESETS[args.base], args.positions, args.hybrid_extra_positions, args.full_frames
    f = base.frames_per_block
    configs = layer_mixes(base)
    chosen = [m.strip() for m in args.configs.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(MIXES))
    if unknown:
        raise Arl2rtError(f"--configs: unknown {unknown}; expected a subset of {list(MIXES)}")
    common = parse_positions(positions, f, "--positions")
    if not common:
        raise Arl2rtError("--positions: expected at least one latent-frame position")
    more = parse_positions(extra, f, "--hybrid-extra-positions") if extra else []
    limit = base.rope_max_positions
    if max(common + more) > limit:
        raise Arl2rtError(f"positions: at most {limit} latent frames (the RoPE table), found {max(common + more)}")
    pos = {m: sorted(set(common + (more if m == "all-hybrid" else []))) for m in chosen}
    if full and full % f:
        raise Arl2rtError(f"--full-frames {full}: expected a multiple of {f} (whole blocks)")
    full_configs = [m.strip() for m in args.full_configs.split(",") if m.strip()] if full else []
    unknown = sorted(set(full_configs) - set(chosen))
    if unknown:
        raise Arl2rtError(f"--full-configs: {unknown} not among --configs {chosen}")
    device = torch.device(args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda"))
    plan = Plan(
        base=base,
        configs={m: configs[m] for m in chosen},
        positions=pos,
        full_frames=full,
        full_configs=full_configs,
        replays=args.replays,
        point_budget_s=args.point_budget_s,
        dtype=args.dtype,
        device=device,
        sdpa=args.sdpa,
        check=not args.no_check,
        components=not args.no_components,
        deadline_s=args.deadline_s,
        seed=args.seed,
        graphs=not args.no_graphs,
        git_ref=args.git_ref,
        argv=argv,
    )
    return plan


# -- environment ---------------------------------------------------------------------------------------------------


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment(device: torch.device, git_ref: str | None) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "git": git_ref or _run(["git", "rev-parse", "--short", "HEAD"]) or "unknown (no git here, no --git-ref)",
        "host_cpu": platform.processor() or platform.machine(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError as exc:
        env["triton"] = f"missing ({exc})"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env["device"] = f"{p.name}, {p.multi_processor_count} SMs, {p.total_memory / GIB:.0f} GiB"
        env["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.mem", "--format=csv,noheader"])
    else:
        env["device"] = f"CPU ({os.cpu_count()} cores)"
        env["driver"] = "-"
    return env


def sdpa_context(choice: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Every SDPA call prefers cuDNN (then flash, mem-efficient, math) unless told otherwise."""
    if device.type != "cuda" or choice == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = {
        "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
        "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
    }[choice] + [SDPBackend.MATH]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # torch without priorities: the default order among the allowed ones
        return sdpa_kernel(order)


def cudnn_accepts(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    """ "yes" if cuDNN's SDPA runs these inputs, else why not (the priority list then falls back)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            attention(q, k, v)
        return "yes"
    except RuntimeError as exc:
        return f"no: {str(exc).splitlines()[0][:160]}"


# -- building blocks -----------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_backend(cfg: ModelConfig, plan: Plan, dtype: str | None = None, seed: int | None = None) -> TorchBackend:
    """Random weights built on the device (fast at 1.3B), LoRA B factors made nonzero so that the LoRA path counts."""
    seed = plan.seed if seed is None else seed
    with torch.device(plan.device):
        model = random_model(cfg, seed)
    gen = torch.Generator(plan.device).manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name and name.endswith("_B"):
                p.normal_(0.0, 0.02, generator=gen)
    return TorchBackend(model, StateSpec(cfg, dtype or plan.dtype), plan.device).activate()


def step_model(backend: TorchBackend):
    return backend.modules["denoise_step"].model


def weight_bytes(backend: TorchBackend) -> int:
    model = step_model(backend)
    return sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))


def encode(backend: TorchBackend, plan: Plan) -> dict[str, torch.Tensor]:
    spec = backend.spec.context()
    context = random_context(backend.spec.config, seed=plan.seed).to(plan.device, spec.torch_dtype)
    return backend.run("encode_context", {"context": context})


def prepared_store(backend: TorchBackend, context_kv: dict, frames: int, seed: int) -> StateStore:
    """A stream about to make the block that ends at latent frame ``frames``: random past K/V and GDN states."""
    spec, cfg, device = backend.spec, backend.spec.config, backend.device
    store = StateStore(spec, 1, device, max_frames=frames)
    store.set_context(context_kv)
    gen = torch.Generator(device).manual_seed(seed)
    for state in store.states.values():
        state.normal_(0.0, STATE_STD, generator=gen)
    shape = (1, cfg.tokens_per_block, cfg.num_heads, cfg.head_dim)
    dtype = spec.config_dtype
    for cache in store.caches.values():
        for _ in range(frames // cfg.frames_per_block - 1):
            k = torch.randn(shape, generator=gen, device=device, dtype=dtype)
            cache.append(k, torch.randn(shape, generator=gen, device=device, dtype=dtype))
    return store


def time_calls(fn, n: int, device: torch.device) -> list[float]:
    """Seconds of each of ``n`` back-to-back calls (CUDA events on a GPU, wall clock on a CPU)."""
    if device.type != "cuda":
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return times
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) / 1e3 for start, end in events]


def quantiles(times: list[float]) -> tuple[float, float, float]:
    t = sorted(times)
    if len(t) == 1:
        return t[0], t[0], t[0]
    q = statistics.quantiles(t, n=10, method="inclusive")
    return statistics.median(t), q[1], q[7]


def capture_or_eager(fn, plan: Plan) -> tuple[CapturedCall, float, str]:
    """Capture ``fn`` after one timed warm-up; if a capture fails, time eagerly from then on and say why."""
    device = plan.device
    call = CapturedCall(fn, device)
    if not plan.graphs:
        return call, time_calls(call, 1, device)[0], f"eager ({plan.no_graphs_reason})"
    try:
        warm = call.capture(warmup=1)[0]
        return call, warm, "graph" if call.captured else "eager"
    except RuntimeError as exc:
        call.release()
        sync(device)
        plan.graphs, plan.no_graphs_reason = False, f"capture failed: {str(exc).splitlines()[0][:160]}"
        log("CUDA graphs off for the rest of the run:", plan.no_graphs_reason)
        call = CapturedCall(fn, device)
        return call, time_calls(call, 1, device)[0], f"eager ({plan.no_graphs_reason})"


def noise_pool(spec: StateSpec, device: torch.device, seed: int) -> Callable[[], torch.Tensor]:
    """Latent noise from a fixed pool of one block's worth, in turn: a captured graph holds no random number
    generator (a failed capture cannot leave one half-registered), and every replay does the same work."""
    cfg = spec.config
    gen = torch.Generator(device).manual_seed(seed)
    shape = (1, cfg.in_channels, cfg.frames_per_block, cfg.latent_height, cfg.latent_width)
    io_dtype = spec.velocity().torch_dtype
    pool = itertools.cycle([torch.randn(shape, generator=gen, device=device, dtype=io_dtype) for _ in cfg.timesteps])
    return lambda: next(pool)


# -- 1. check: the timed path against float64 ----------------------------------------------------------------------


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def check_path(plan: Plan) -> dict[str, Any]:
    """A 2-layer model at the real dims (layer 0 hybrid, layer 1 softmax, one past block) runs the benchmark's exact
    path (StaticBlock, CUDA graph, cuDNN SDPA, Triton read and write) in ``plan.dtype``, against the same weights,
    noise, states and caches in float64 (reference ops). Also each GDN kernel alone vs float64."""
    cfg = replace(plan.base, name=f"{plan.base.name}:check", num_layers=2, hybrid_layers=(0,))
    f, device = plan.f, plan.device
    fast = build_backend(cfg, plan)
    exact = build_backend(cfg, plan, dtype="float64")
    stores = [prepared_store(be, encode(be, plan), 2 * f, plan.seed + 5) for be in (fast, exact)]
    # same past for both: the float64 store gets the fast store's (already rounded) K/V and states
    for name, state in stores[0].states.items():
        stores[1].states[name].copy_(state)
    for i, cache in stores[0].caches.items():
        stores[1].caches[i].key.copy_(cache.key)
        stores[1].caches[i].value.copy_(cache.value)
    noise = noise_pool(fast.spec, device, plan.seed + 6)
    pool = [noise() for _ in cfg.timesteps]  # one cycle of it, for the float64 run
    exact_noise = itertools.cycle([n.double() for n in pool])
    blocks = [StaticBlock(fast, stores[0], f, noise=noise), StaticBlock(exact, stores[1], f, exact_noise.__next__)]
    eager = {k: v.clone() for k, v in blocks[0]().items()}
    call, _, mode = capture_or_eager(blocks[0], plan)
    replayed = call()
    reference = blocks[1]()
    result: dict[str, Any] = {"mode": mode, "dtype": plan.dtype}
    result["replay_vs_eager_max_abs"] = max(float((replayed[k] - eager[k]).abs().max()) for k in eager)
    result["rel_rms_vs_float64"] = {k: rel_rms(replayed[k], reference[k]) for k in reference}
    call.release()
    # the two GDN kernels alone, at the block's shapes
    t, h, d = cfg.tokens_per_block, cfg.num_heads, cfg.head_dim
    dt = StateSpec(cfg, plan.dtype).config_dtype
    gen = torch.Generator(device).manual_seed(plan.seed + 7)
    q = F.normalize(torch.randn(1, t, h, d, generator=gen, device=device), dim=-1)
    k = F.normalize(torch.randn(1, t, h, d, generator=gen, device=device), dim=-1)
    v = torch.randn(1, t, h, d, generator=gen, device=device)
    g = 0.5 * F.logsigmoid(torch.randn(1, t, h, generator=gen, device=device) + 2.0)
    beta = 2.0 * torch.rand(1, t, h, generator=gen, device=device)
    s0 = STATE_STD * torch.randn(1, h, d, d, generator=gen, device=device)
    result["gdn_read_rel_rms"] = rel_rms(memory_read(q.to(dt), s0), naive_block_read(q.to(dt).double(), s0.double()))
    ref_state = gdn_state_update(k.to(dt).double(), v.to(dt).double(), g.double(), beta.double(), s0.double())
    result["gdn_write_rel_rms"] = rel_rms(gdn_state_update(k.to(dt), v.to(dt), g, beta, s0), ref_state)
    del fast, exact, stores, blocks, call
    free(device)
    return result


# -- 2. components alone ---------------------------------------------------------------------------------------------


def time_op(make, plan: Plan, replays: int = COMPONENT_REPLAYS) -> float:
    """Seconds per call of the op ``make(i)`` returns for input set i (graph of ROTATE calls, median per call)."""
    first = make(0)
    nbytes = getattr(first, "input_bytes", 0)
    sets = 1 if nbytes > ROTATE_MAX_BYTES else ROTATE
    fns = [first] + [make(i) for i in range(1, sets)]

    def run_all():
        return [fn() for fn in fns]

    run_all()  # compile, plan builds
    call, _, _ = capture_or_eager(run_all, plan)
    med = quantiles(time_calls(call, replays, plan.device))[0] / len(fns)
    call.release()
    return med


class Op:
    """A component call on fixed inputs; ``input_bytes`` decides whether input sets rotate."""

    def __init__(self, fn, *inputs: torch.Tensor) -> None:
        self.fn, self.inputs = fn, inputs
        self.input_bytes = sum(t.numel() * t.element_size() for t in inputs)

    def __call__(self):
        return self.fn(*self.inputs)


def measure_components(plan: Plan) -> dict[str, Any]:
    """Seconds per call of every component of a block, alone, at the block's shapes, with the model's own modules."""
    cfg = replace(plan.base, name=f"{plan.base.name}:components", num_layers=2, hybrid_layers=(0,))
    backend = build_backend(cfg, plan)
    model = step_model(backend)
    hyb = model.blocks[0]
    attn = hyb.self_attn
    device, dt = plan.device, backend.spec.config_dtype
    t, dim, h, d, f = cfg.tokens_per_block, cfg.dim, cfg.num_heads, cfg.head_dim, cfg.frames_per_block
    gen = torch.Generator(device).manual_seed(plan.seed + 9)

    def rnd(*shape, dtype=dt):
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    def heads():
        return rnd(1, t, h, d)

    def gdn_inputs():
        k = F.normalize(rnd(1, t, h, d, dtype=torch.float32), dim=-1).to(dt)
        g = 0.5 * F.logsigmoid(rnd(1, t, h, dtype=torch.float32) + 2.0)
        beta = 2.0 * torch.rand(1, t, h, generator=gen, device=device)
        return k, heads(), g, beta, STATE_STD * rnd(1, h, d, d, dtype=torch.float32)

    w32 = attn.a_proj.weight.to(torch.float32)
    makers = {
        "intra": lambda i: Op(attention, heads(), heads(), heads()),
        "text": lambda i: Op(attention, heads(), rnd(1, cfg.text_len, h, d), rnd(1, cfg.text_len, h, d)),
        "gemm_square": lambda i: Op(attn.q, rnd(1, t, dim)),
        "gemm_ffn_up": lambda i: Op(hyb.ffn[0], rnd(1, t, dim)),
        "gemm_ffn_down": lambda i: Op(hyb.ffn[2], rnd(1, t, cfg.ffn_dim)),
        "gemm_lora": lambda i: Op(lambda x: (x @ attn.lora_q_A) @ attn.lora_q_B, rnd(1, t, dim)),
        "gemm_phi": lambda i: Op(attn.phi_q, heads()),
        "gemm_gate": lambda i: Op(attn.gate_proj, rnd(1, t, dim)),
        "gemm_decay_fp32": lambda i: Op(lambda x: F.linear(x, w32), rnd(1, t, dim, dtype=torch.float32)),
        "gemm_patch": lambda i: Op(
            model.patch_embedding, rnd(1, cfg.in_channels, f, cfg.latent_height, cfg.latent_width)
        ),
        "gemm_head": lambda i: Op(model.head.head, rnd(1, t, dim)),
        "read": lambda i: Op(
            memory_read, F.normalize(heads(), dim=-1), STATE_STD * rnd(1, h, d, d, dtype=torch.float32)
        ),
        "read_reference_einsum": lambda i: Op(
            naive_block_read, F.normalize(heads(), dim=-1), STATE_STD * rnd(1, h, d, d, dtype=torch.float32)
        ),
        "write": lambda i: Op(gdn_state_update, *gdn_inputs()),
    }
    seconds: dict[str, float] = {}
    cudnn: dict[str, str] = {}
    with torch.inference_mode():
        for name, make in makers.items():
            seconds[name] = time_op(make, plan)
            log(f"component {name}: {seconds[name] * 1e3:.3f} ms")
        if device.type == "cuda" and plan.sdpa == "cudnn":
            cudnn["intra"] = cudnn_accepts(heads(), heads(), heads())
            cudnn["text"] = cudnn_accepts(heads(), rnd(1, cfg.text_len, h, d), rnd(1, cfg.text_len, h, d))
        cross: dict[int, float] = {}
        for n in plan.softmax_positions():
            past = (1, (n - f) * cfg.tokens_per_frame, h, d)

            def make(i, past=past):
                def run(q, k, v, pk, pv):  # what SoftmaxSelfAttention does after its projections
                    return attention_with_past(q, pk, pv, k, v)

                return Op(run, heads(), heads(), heads(), rnd(*past), rnd(*past))

            cross[n] = time_op(make, plan)
            if device.type == "cuda" and plan.sdpa == "cudnn" and n == max(plan.softmax_positions()):
                cudnn[f"cross at {n} frames"] = cudnn_accepts(
                    heads(), rnd(1, n * cfg.tokens_per_frame, h, d), rnd(1, n * cfg.tokens_per_frame, h, d)
                )
            log(f"component cross-frame at {n} frames: {cross[n] * 1e3:.3f} ms")
            free(device)
    return {"seconds": seconds, "cross_seconds": {str(n): s for n, s in cross.items()}, "cudnn": cudnn}


def breakdown_ms(cfg: ModelConfig, frames: int, comp: dict[str, Any]) -> dict[str, float] | None:
    """Milliseconds per block of each component: its time alone times its calls per block (see module docstring)."""
    s = comp["seconds"]
    cross = comp["cross_seconds"].get(str(frames))
    n_hyb, n_soft = len(cfg.hybrid_layers), len(cfg.softmax_layers)
    if n_soft and cross is None:
        return None
    p, n = passes(cfg), cfg.num_layers
    gemm = (
        p * n * (6 * s["gemm_square"] + s["gemm_ffn_up"] + s["gemm_ffn_down"])
        + p * n_hyb * (s["gemm_lora"] + s["gemm_phi"] + s["gemm_gate"])
        + n_hyb * (2 * s["gemm_lora"] + 2 * s["gemm_phi"] + 2 * s["gemm_decay_fp32"])
        + p * (s["gemm_patch"] + s["gemm_head"])
    )
    parts = {
        "intra": p * n_hyb * s["intra"],
        "cross": p * n_soft * (cross or 0.0),
        "text": p * n * s["text"],
        "gemm": gemm,
        "read": p * n_hyb * s["read"],
        "write": n_hyb * s["write"],
    }
    return {k: v * 1e3 for k, v in parts.items()}


# -- 3. the sweep ----------------------------------------------------------------------------------------------------


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


# -- 4. complete runs ------------------------------------------------------------------------------------------------


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


# -- outputs ---------------------------------------------------------------------------------------------------------

CSV_FIELDS = [
    "config",
    "hybrid_layers",
    "latent_frames",
    "video_frames",
    "block_ms",
    "block_q20_ms",
    "block_q80_ms",
    "eager_ms",
    "fps",
    "peak_gib",
    "accounted_gib",
    "kv_cache_gib",
    "floor_ms",
    "floor_ratio",
    "intra_ms",
    "cross_ms",
    "text_ms",
    "gemm_ms",
    "read_ms",
    "write_ms",
    "rest_ms",
    "mode",
]


def enriched_rows(result: dict) -> list[dict[str, Any]]:
    """Sweep rows with the derived columns: video FPS, measured / floor, the per-block breakdown."""
    plan_cfgs = result["configs"]
    rows = []
    for r in result["points"]:
        if "error" in r:
            continue
        row = dict(r)
        f = plan_cfgs[r["config"]]["frames_per_block"]
        row["fps"] = 4 * f / (r["block_ms"] / 1e3)
        row["floor_ratio"] = r["block_ms"] / r["floor_ms"]
        comp = result.get("components")
        parts = None
        if comp and "seconds" in comp:
            parts = breakdown_ms(ModelConfig.from_dict(plan_cfgs[r["config"]]), r["latent_frames"], comp)
        if parts:
            for k, v in parts.items():
                row[f"{k}_ms"] = v
            row["rest_ms"] = r["block_ms"] - sum(parts.values())
        rows.append(row)
    return rows


def _gib(x: float | None) -> str:
    """GiB with two decimals, or four significant digits below 1 GiB (the smoke config's megabytes)."""
    if x is None:
        return "-"
    return f"{x:,.2f}" if x >= 1 else f"{x:.4g}"


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:,.1f}" if isinstance(x, float) else str(x)


def fit_total_s(rows: list[dict], mix: str, frames: int, f: int) -> float | None:
    """Seconds of a whole ``frames``-latent-frame video from the sweep: block time fitted as a + b N (least squares
    over the config's positions; attention over the cache grows linearly in N), summed over its blocks. None unless
    the sweep reaches ``frames`` (no extrapolation past the last position measured)."""
    pts = [(r["latent_frames"], r["block_ms"] / 1e3) for r in rows if r["config"] == mix]
    if len(pts) < 2 or max(n for n, _ in pts) < frames:
        return None
    n_mean = sum(n for n, _ in pts) / len(pts)
    t_mean = sum(t for _, t in pts) / len(pts)
    var = sum((n - n_mean) ** 2 for n, _ in pts)
    slope = sum((n - n_mean) * (t - t_mean) for n, t in pts) / var if var else 0.0
    return sum(t_mean + slope * (n - n_mean) for n in range(f, frames + 1, f))


def _mem_word(key: str) -> str:
    return "peak" if key == "peak_gib" else "resident"


def headline(result: dict, rows: list[dict]) -> list[tuple[str, str, str, str, str]]:
    """(quantity, paper, goal, ours, met) rows against the issue's anchors."""
    by = {(r["config"], r["latent_frames"]): r for r in rows}
    full = {r["config"]: r for r in result["full_runs"] if "error" not in r}
    mem = "peak_gib" if rows and rows[0].get("peak_gib") is not None else "accounted_gib"
    out = []
    base, arl2 = by.get(("baseline", 231)), by.get(("arl2-75", 231))
    if base and arl2:
        s = base["block_ms"] / arl2["block_ms"]
        out.append(
            (
                "ARL2-75 % vs baseline, time per block at 231 latent frames (921 video frames)",
                f"{PAPER['speedup_231']}× (whole video, end to end)",
                f"≥ {GOALS['speedup_231']}×",
                f"{s:.2f}× ({base['block_ms']:.0f} vs {arl2['block_ms']:.0f} ms)",
                "yes" if s >= GOALS["speedup_231"] else "no",
            )
        )
        cut = 1 - arl2[mem] / base[mem]
        out.append(
            (
                f"ARL2-75 % vs baseline, DiT {_mem_word(mem)} memory at 231 latent frames",
                f"−{PAPER['memory_cut_231']:.0%} (end to end)",
                f"≥ {GOALS['memory_cut_231']:.0%} less",
                f"−{cut:.1%} ({base[mem]:.1f} vs {arl2[mem]:.1f} GiB)",
                "yes" if cut >= GOALS["memory_cut_231"] else "no",
            )
        )
    fb, fa = full.get("baseline"), full.get("arl2-75")
    if fb and fa and "total_231_s" in fb and "total_231_s" in fa:
        s = fb["total_231_s"] / fa["total_231_s"]
        out.append(
            (
                "ARL2-75 % vs baseline, whole 231-latent-frame video (complete runs: eager Streamer, DiT only)",
                f"{PAPER['speedup_231']}×",
                "-",
                f"{s:.2f}× ({fb['total_231_s']:.0f} vs {fa['total_231_s']:.0f} s)",
                "-",
            )
        )
    f = next(iter(result["configs"].values()))["frames_per_block"]
    fit_b, fit_a = fit_total_s(rows, "baseline", 231, f), fit_total_s(rows, "arl2-75", 231, f)
    if fit_b and fit_a and 231 % f == 0:
        out.append(
            (
                "ARL2-75 % vs baseline, whole 231-latent-frame video (sweep fit: graph block times summed)",
                f"{PAPER['speedup_231']}×",
                "-",
                f"{fit_b / fit_a:.2f}× ({fit_b:.0f} vs {fit_a:.0f} s)",
                "-",
            )
        )
    for mix in MIXES:
        r = by.get((mix, 21))
        if r:
            ok = r["floor_ratio"] <= GOALS["floor_ratio_21"]
            out.append(
                (
                    f"{LABELS[mix]}: time per block at 21 latent frames / compute floor",
                    "-",
                    f"≤ {GOALS['floor_ratio_21']:.0f}×",
                    f"{r['floor_ratio']:.2f}× ({r['block_ms']:.0f} ms vs floor {r['floor_ms']:.0f} ms)",
                    "yes" if ok else "no",
                )
            )
    flat = [r for r in rows if r["config"] == "all-hybrid" and r.get(mem) is not None]
    if len(flat) >= 2:
        lo, hi = min(r[mem] for r in flat), max(r[mem] for r in flat)
        pct = (hi - lo) / lo * 100
        ns = sorted(r["latent_frames"] for r in flat)
        out.append(
            (
                f"all-hybrid {_mem_word(mem)} memory, {ns[0]} → {ns[-1]} latent frames",
                "-",
                f"flat within {GOALS['flat_pct']:.0f} %",
                f"{_gib(lo)}–{_gib(hi)} GiB ({pct:.2f} %)",
                "yes" if pct <= GOALS["flat_pct"] else "no",
            )
        )
    r = full.get("all-hybrid")
    if r and len(r.get("block_peak_gib") or []) > 1:
        peaks = r["block_peak_gib"][1:]  # block 0 also holds the text encoding's transients
        lo, hi = min(peaks), max(peaks)
        out.append(
            (
                f"all-hybrid per-block peak memory over one complete stream, blocks 2 → {len(r['block_peak_gib'])} "
                f"({2 * r['latent_frames'] // len(r['block_peak_gib'])} → {r['latent_frames']} latent frames)",
                "-",
                f"flat within {GOALS['flat_pct']:.0f} %",
                f"{_gib(lo)}–{_gib(hi)} GiB ({(hi - lo) / lo * 100:.2f} %)",
                "yes" if (hi - lo) / lo * 100 <= GOALS["flat_pct"] else "no",
            )
        )
    for mix in ("arl2-75", "baseline"):
        r = full.get(mix)
        if r and r["latent_frames"]:
            paper = (
                f"{PAPER['frames_1005_s']:.0f} s / {PAPER['frames_1005_gb']:.0f} GB (ARL2, with text encoder and VAE)"
                if mix == "arl2-75"
                else f"> {PAPER['baseline_1005_gb']:.0f} GB (OOM)"
            )
            peak = f"{_gib(r['peak_gib'])} GiB" if r.get("peak_gib") is not None else "-"
            out.append(
                (
                    f"{LABELS[mix]}: complete {r['latent_frames']}-latent-frame video ({r['video_frames']} frames)",
                    paper,
                    "-",
                    f"{r['total_s']:.1f} s DiT, {r['fps']:.1f} FPS, peak {peak}",
                    "-",
                )
            )
    return out


def render_markdown(result: dict) -> str:
    rows = enriched_rows(result)
    env, plan = result["env"], result["plan"]
    w = io.StringIO()
    p = lambda *a: print(*a, file=w)  # noqa: E731
    p("# ARL2 stream scaling: time and memory versus video length (issue 8)\n")
    p("Script: `benchmarks/stream_scaling.py` (definitions in its docstring, summarised at the end).\n")
    p("| | |\n|---|---|")
    p(f"| device | {env['device']}; driver / clocks (SM, mem) as found: {env.get('driver') or '-'} |")
    p(
        f"| software | Python {env['python']}, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
        f"cuDNN {env['cudnn']}; arl2rt {env['git']} |"
    )
    p(f"| date | {env['date']} |")
    p(f"| command | `{plan['command']}` |")
    p(f"| model | {plan['model']} |")
    p(f"| attention | {plan['sdpa']}; cuDNN accepted: {_cudnn_summary(result)} |")
    chk = result.get("check")
    if chk and "error" not in chk:
        errs = chk["rel_rms_vs_float64"]
        worst = max(errs, key=errs.get)
        p(
            f"| check | 2-layer model at these dims, one block through the timed path ({chk['mode']}, {chk['dtype']}) "
            f"vs float64: latents rel. RMS {errs['latents']:.2e}, worst output {worst} {errs[worst]:.2e}; replay vs "
            f"eager max abs {chk['replay_vs_eager_max_abs']:.1e}; GDN read alone {chk['gdn_read_rel_rms']:.2e}, "
            f"GDN write alone {chk['gdn_write_rel_rms']:.2e} |"
        )
    elif chk:
        p(f"| check | FAILED: {chk['error']} |")
    p("")
    hl = headline(result, rows)
    if hl:
        p("## Against the issue's numbers\n")
        p("| quantity | paper | goal | ours | met |\n|---|---|---|---|---|")
        for row in hl:
            p("| " + " | ".join(row) + " |")
        p("")
    mem_note = "peak GiB (max allocated)" if rows and rows[0].get("peak_gib") is not None else "peak GiB"
    p("## Time and memory per block\n")
    p(
        f"| config | hybrid layers | latent frames N | video frames | block ms, graph median (q20–q80) | eager ms "
        f"| video FPS | {mem_note} | resident GiB (weights, caches, states, text) | floor ms | measured / floor |"
    )
    p("|---|---|---|---|---|---|---|---|---|---|---|")
    cfgs = result["configs"]
    for r in rows:
        p(
            f"| {LABELS[r['config']]} | {span(tuple(cfgs[r['config']]['hybrid_layers']))} | {r['latent_frames']} "
            f"| {r['video_frames']} | **{r['block_ms']:,.1f}** ({r['block_q20_ms']:,.1f}–{r['block_q80_ms']:,.1f}) "
            f"| {r['eager_ms']:,.1f} | {r['fps']:.1f} | {_gib(r['peak_gib'])} | {_gib(r['accounted_gib'])} "
            f"| {r['floor_ms']:,.1f} | {r['floor_ratio']:.2f}× |"
        )
    modes = sorted({r["mode"] for r in rows})
    if modes:
        p(f"\nTiming mode: {', '.join(modes)}.")
    errors = [r for r in result["points"] if "error" in r]
    for r in errors:
        p(f"\n* {r['config']} at {r['latent_frames']}: **error** {r['error']}")
    p("")
    if any("gemm_ms" in r for r in rows):
        p("## Where a block's time goes (ms per block)\n")
        how = "CUDA graph, CUDA events" if result["plan"]["device"].startswith("cuda") else "eager, wall clock"
        p(f"Each component timed alone at the block's shapes ({how}), times its calls per block.\n")
        p(
            "| config | N | intra attention | cross-frame attention (cache ‖ block) | text cross-attention "
            "| GEMMs | GDN read | GDN write | rest | block |"
        )
        p("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            if "gemm_ms" not in r:
                continue
            cells = [r[k] for k in ("intra_ms", "cross_ms", "text_ms", "gemm_ms", "read_ms", "write_ms", "rest_ms")]
            p(
                f"| {LABELS[r['config']]} | {r['latent_frames']} | "
                + " | ".join(f"{c:,.1f}" for c in cells)
                + f" | {r['block_ms']:,.1f} |"
            )
        comp = result["components"]["seconds"]
        p("\nComponents alone (ms per call): " + ", ".join(f"{k} {v * 1e3:.3f}" for k, v in comp.items()) + ".")
        cross = result["components"]["cross_seconds"]
        p(
            "Cross-frame attention alone (ms per call, by N): "
            + ", ".join(f"{n}: {s * 1e3:.2f}" for n, s in cross.items())
            + "."
        )
        p("")
    f = next(iter(cfgs.values()))["frames_per_block"]
    full_frames = result["plan"]["full_frames"]
    if rows and full_frames:
        runs = {r["config"]: r for r in result["full_runs"]}
        p(f"## Whole videos ({full_frames} latent frames = {video_frames(full_frames)} video frames)\n")
        p(
            "Complete run: eager `Streamer` from an empty stream, caches sized to the whole video, DiT only. "
            "Sweep fit: the graph block times above fitted as a + b·N, summed over the video's blocks.\n"
        )
        p(
            "| config | complete run s | video FPS | first 231 latent frames s | peak GiB | sweep fit s "
            "| sweep fit, first 231 s | note |"
        )
        p("|---|---|---|---|---|---|---|---|")
        for mix in cfgs:
            fit = fit_total_s(rows, mix, full_frames, f)
            fit231 = fit_total_s(rows, mix, 231, f) if 231 % f == 0 and full_frames >= 231 else None
            r = runs.get(mix, {})
            note = r.get("error") or r.get("note") or "no complete run (skipped or not asked for)"
            if "error" in r or not r:
                r = {}
            p(
                f"| {LABELS[mix]} | {_fmt(r.get('total_s'))} | {_fmt(r.get('fps'))} | {_fmt(r.get('total_231_s'))} "
                f"| {_gib(r.get('peak_gib'))} | {_fmt(fit)} | {_fmt(fit231)} | {note} |"
            )
        p("")
    if result["skipped"]:
        p("## Skipped\n")
        for s in result["skipped"]:
            p(f"* {s}")
        p("")
    p("## Definitions\n")
    for line in definitions(result["configs"]):
        p(f"* {line}")
    return w.getvalue()


def definitions(configs: dict[str, dict]) -> list[str]:
    cfg = ModelConfig.from_dict(next(iter(configs.values())))
    f, tpf = cfg.frames_per_block, cfg.tokens_per_frame
    return [
        f"Position N: the video has N latent frames once this block is done; the block is frames N-{f}..N-1; softmax "
        f"layers attend to N x {tpf} keys (N-{f} cached frames + the block); caches sized to N frames, filled with "
        "random K/V through `KVCache.append`; GDN states random. Video frames = 4N - 3; "
        f"{4 * f} per block (video FPS = {4 * f} / block time).",
        f"Block: {len(cfg.timesteps)} denoising passes (device-side re-noising) + the clean pass + the K/V append, "
        "through `TorchBackend` (export/steps.py -> CausalDiT.step), driven by `runtime/cuda_graph.StaticBlock`, "
        "captured once per N as one CUDA graph and replayed (median of CUDA-event times); eager = the warm-up call.",
        "SDPA for every configuration with backend priority cuDNN > flash > mem-efficient > math; GDN write = "
        "`torch.ops.arl2.gdn_state_update` (Triton on CUDA), GDN read = `plugins/gdn/read.py` (Triton on CUDA).",
        "Peak memory = `torch.cuda.max_memory_allocated` over the block after a reset, with weights, text K/V, caches "
        "and states resident. Resident = those bytes alone.",
        "Compute floor (perf-anchors.md §6.5): 2 x per-token weights x tokens (all linear maps), 4·Sq·Skv·d·H per "
        f"attention, 2·T·H·d² GDN read, T·H·(4d² + 6·{CHUNK_SIZE}·d) GDN write, at {PEAK_TFLOPS:.0f} TFLOP/s "
        "(dense bf16 spec).",
        "Breakdown: components alone at the block's shapes; rest = block - their sum (norms, RoPE, modulation, gates, "
        "casts, the K/V append, gaps; negative where components ran slower alone than inside the block).",
        "Complete runs: `Streamer.next_block` from an empty stream, eager (no graphs; cuDNN builds a plan for every "
        "new key length), block times summed after the text is encoded; DiT only (no text encoder, no VAE).",
    ]


def _cudnn_summary(result: dict) -> str:
    comp = result.get("components") or {}
    cudnn = comp.get("cudnn") or {}
    return ", ".join(f"{k} {v}" for k, v in cudnn.items()) or "not probed"


def write_csv(rows: list[dict], path: Path) -> str:
    w = io.StringIO()
    writer = csv.DictWriter(w, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return w.getvalue()


def plot(rows: list[dict], path: Path) -> str | None:
    """Time per block and peak (or resident) memory versus latent frames, one line per configuration; or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no plot: {exc}"
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mix in MIXES:
        mine = sorted((r for r in rows if r["config"] == mix), key=lambda r: r["latent_frames"])
        if not mine:
            continue
        n = [r["latent_frames"] for r in mine]
        ax_t.plot(n, [r["block_ms"] for r in mine], marker="o", label=LABELS[mix])
        mem = [r["peak_gib"] if r.get("peak_gib") not in (None, "") else r["accounted_gib"] for r in mine]
        ax_m.plot(n, mem, marker="o", label=LABELS[mix])
    ax_t.set(xlabel="latent frames N", ylabel="time per block (ms, CUDA graph)", title="time per 12-frame block")
    ax_m.set(xlabel="latent frames N", ylabel="peak GPU memory (GiB)", title="peak memory (DiT)")
    for ax in (ax_t, ax_m):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    _atomic_write(path, buf.getvalue())
    return None


def _atomic_write(path: Path, data: str | bytes) -> None:
    """Write beside ``path``, then rename: a reader never sees half a file, a failure leaves the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, mode) as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Outputs:
    """The markdown at ``--out`` and its .csv, .json and .png siblings, rewritten after every measurement."""

    def __init__(self, md: Path) -> None:
        self.md = md
        self.csv, self.json, self.png = (md.with_suffix(s) for s in (".csv", ".json", ".png"))

    def write(self, result: dict, final: bool = False) -> None:
        _atomic_write(self.json, json.dumps(result, indent=1, default=str))
        rows = enriched_rows(result)
        _atomic_write(self.csv, write_csv(rows, self.csv))
        if final and rows:
            why = plot(rows, self.png)
            if why:
                result["plot"] = why
        _atomic_write(self.md, render_markdown(result))


def plot_from_csv(csv_path: Path, png: Path) -> None:
    try:
        with open(csv_path, newline="") as fh:
            raw = list(csv.DictReader(fh))
    except OSError as exc:
        raise Arl2rtError(f"{csv_path}: cannot read ({exc})") from None
    need = {"config", "latent_frames", "block_ms", "accounted_gib"}
    if not raw or not need <= set(raw[0]):
        raise Arl2rtError(f"{csv_path}: expected CSV columns {sorted(need)}, found {sorted(raw[0]) if raw else 'none'}")
    rows = []
    for r in raw:
        rows.append(
            {
                "config": r["config"],
                "latent_frames": int(r["latent_frames"]),
                "block_ms": float(r["block_ms"]),
                "peak_gib": float(r["peak_gib"]) if r.get("peak_gib") else None,
                "accounted_gib": float(r["accounted_gib"]),
            }
        )
    why = plot(rows, png)
    if why:
        raise Arl2rtError(f"{png}: {why} (pip install matplotlib)")
    log(f"wrote {png}")


# -- main ------------------------------------------------------------------------------------------------------------


def describe(plan: Plan) -> dict[str, Any]:
    b = plan.base
    return {
        "command": "python3 benchmarks/stream_scaling.py " + " ".join(plan.argv),
        "model": (
            f"{b.name} dims (dim {b.dim}, {b.num_layers} layers, {b.num_heads}×{b.head_dim} heads, FFN {b.ffn_dim}, "
            f"{b.tokens_per_frame} tokens per latent frame), random weights, {plan.dtype}; {b.frames_per_block} latent "
            f"frames = {b.tokens_per_block} tokens per block; {passes(b)} passes per block"
        ),
        "sdpa": {"cudnn": "SDPA priority cuDNN > flash > mem-efficient > math", "flash": "SDPA flash first"}.get(
            plan.sdpa, "SDPA default choice"
        ),
        "positions": plan.positions,
        "full_frames": plan.full_frames,
        "full_configs": plan.full_configs,
        "device": str(plan.device),
    }


def print_plan(plan: Plan, smoke: bool) -> float:
    """The plan and its estimated cost; then the device command (for --smoke: the full run's, with its estimate)."""
    est = plan.estimate()
    total = sum(est.values())
    log("plan:", json.dumps({m: ns for m, ns in plan.positions.items()}), f"complete runs: {plan.full_configs}")
    clock = 0.0
    for part, s in est.items():
        clock += s
        late = "  <- past --deadline-s: expect it skipped or cut" if clock > plan.deadline_s + EST_START_S else ""
        log(f"  estimate {part:<28} {s:7.0f} s{late}")
    log(f"  estimate {'total':<28} {total:7.0f} s ({total / 60:.1f} min; device-call limit {DEVICE_CALL_LIMIT_S} s)")
    command, device_total = plan.device_command(), total
    if smoke:  # the command drops --smoke: estimate the run it stands for
        device_argv = plan.device_argv()
        device_total = sum(make_plan(parse_args(device_argv), device_argv).estimate().values())
    log(f"device command: {command}   (about {device_total / 60:.1f} min; run with timeout_s={DEVICE_CALL_LIMIT_S})")
    return total


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, help="markdown file to write; .csv/.json/.png are written beside it")
    ap.add_argument("--smoke", action="store_true", help="tiny config, positions 3,6,9 (+12,15 all-hybrid), CPU")
    ap.add_argument("--estimate", action="store_true", help="print the plan, its estimated cost and the command; exit")
    ap.add_argument("--plot-from", type=Path, metavar="CSV", help="only draw the PNG from a CSV this script wrote")
    ap.add_argument("--base", default="wan2.1-t2v-1.3b", choices=sorted(PRESETS), help="preset giving the dims")
    ap.add_argument("--configs", default=",".join(MIXES), help="subset of " + ",".join(MIXES))
    ap.add_argument("--positions", default="21,63,126,231,252", help="latent-frame positions N of every config")
    ap.add_argument("--hybrid-extra-positions", default="504,1008", help="more positions for all-hybrid only")
    ap.add_argument("--full-frames", type=int, default=252, help="latent frames of each complete run (0: none)")
    ap.add_argument(
        "--full-configs",
        default="all-hybrid,arl2-75,baseline,arl2-50",
        help="configs that get a complete run, in this order (the deadline skips the last ones first)",
    )
    ap.add_argument("--replays", type=int, default=5, help="graph replays per position (at least 3)")
    ap.add_argument("--point-budget-s", type=float, default=8.0, help="fewer replays (>= 3) where a block is slow")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--device", help="cuda or cpu (default: cuda if present; cpu for --smoke)")
    ap.add_argument("--sdpa", default="cudnn", choices=["cudnn", "flash", "default"], help="SDPA backend priority")
    ap.add_argument("--no-graphs", action="store_true", help="time eagerly, no CUDA graphs")
    ap.add_argument("--no-check", action="store_true", help="skip the float64 check of the timed path")
    ap.add_argument("--no-components", action="store_true", help="skip the per-component breakdown")
    ap.add_argument("--deadline-s", type=float, default=540.0, help="skip work that would end after this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--git-ref", help="commit recorded in the report where the tree has no .git (the device copy)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        if args.plot_from:
            plot_from_csv(args.plot_from, args.out or args.plot_from.with_suffix(".png"))
            return 0
        plan = make_plan(args, argv)
        print_plan(plan, args.smoke)
        if args.estimate:
            return 0
        if args.out is None:
            raise Arl2rtError("--out: expected the markdown file to write (e.g. $OUT/stream_scaling.md)")
        if plan.device.type == "cuda" and not torch.cuda.is_available():
            raise Arl2rtError("--device cuda: no CUDA device here")
        if plan.device.type == "cpu":
            torch.set_num_threads(1)  # tiny ops on shared cores: threads only contend
        return run(plan, Outputs(args.out), started)
    except Arl2rtError as exc:
        log(f"error: {exc}")
        return 2


def run(plan: Plan, out: Outputs, started: float) -> int:
    result: dict[str, Any] = {
        "env": environment(plan.device, plan.git_ref),
        "plan": describe(plan),
        "estimate_s": plan.estimate(),
        "configs": {m: c.to_dict() for m, c in plan.configs.items()},
        "check": None,
        "components": None,
        "points": [],
        "full_runs": [],
        "skipped": [],
    }
    log("env", result["env"])
    with sdpa_context(plan.sdpa, plan.device):
        for name, enabled, fn in (
            ("check", plan.check, check_path),
            ("components", plan.components, measure_components),
        ):
            if not enabled:
                continue
            try:
                result[name] = fn(plan)
            except Exception as exc:  # noqa: BLE001 - the sweep is still worth running
                result[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                log(traceback.format_exc())
            log(name, json.dumps(result[name], default=str)[:2000])
            free(plan.device)
            out.write(result)
        sweep(plan, result, out, started)
        complete_runs(plan, result, out, started)
    result["elapsed_s"] = time.perf_counter() - started
    out.write(result, final=True)
    png = result.get("plot") or str(out.png)
    log(f"done in {result['elapsed_s']:.0f} s; wrote {out.md}, {out.csv}, {out.json}, {png}")
    print(render_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
