"""The four configurations, the arithmetic of a block (FLOPs, compute floor, cost estimate, time breakdown) and the
plan of a run from its options."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.model.config import PRESETS, ModelConfig
from arl2rt.plugins.gdn.constants import CHUNK_SIZE
from benchmarks._harness import git_commit

MIXES = ("baseline", "arl2-75", "arl2-50", "all-hybrid")
LABELS = {"baseline": "baseline", "arl2-75": "ARL2-75 %", "arl2-50": "ARL2-50 %", "all-hybrid": "all-hybrid"}
PEAK_TFLOPS = 989.0  # dense bf16, H100/H200 spec sheets (docs/performance.md §1)
GIB = 2**30

# Cost model of --estimate (a guess to size the run, not a measurement): GEMMs and attention at the rates measured
# alone on the H200 (docs/performance.md §1: 690-760 and 516-551 TFLOP/s), elementwise work per layer and pass,
# CUDA-graph capture per position, a cuDNN plan per new key length in an eager run, model builds, start-up.
EST_LINEAR_TFLOPS = 700.0
EST_ATTENTION_TFLOPS = 520.0
EST_LAYER_PASS_S = 0.25e-3
EST_CAPTURE_S = 1.5
EST_PLAN_BUILD_S = 0.3
EST_BUILD_S = 5.0
EST_START_S = 20.0
EST_CHECK_S = 20.0
EST_COMPONENTS_S = 15.0


def log(*parts: Any) -> None:
    """Progress goes to stderr: stdout carries the report."""
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


def breakdown_ms(cfg: ModelConfig, frames: int, comp: dict[str, Any]) -> dict[str, float] | None:
    """Milliseconds per block of each component: its time alone times its calls per block (package docstring)."""
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
        ref = git_commit()
        return keep + (["--git-ref", ref] if ref else [])

    def device_command(self) -> str:
        args = " ".join(self.device_argv())
        return f"PYTHONPATH=src python3 -m benchmarks.stream_scaling {args} --out $OUT/stream_scaling.md".replace(
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
