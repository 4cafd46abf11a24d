"""``python -m benchmarks.stream_scaling``: the options, the plan and its cost, then the run (see the package
docstring)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.model.config import PRESETS
from benchmarks import stream_scaling
from benchmarks._harness import environment
from benchmarks.stream_scaling.check import check_path
from benchmarks.stream_scaling.components import measure_components
from benchmarks.stream_scaling.measure import complete_runs, sweep
from benchmarks.stream_scaling.outputs import Outputs, plot_from_csv
from benchmarks.stream_scaling.plan import EST_START_S, MIXES, Plan, log, make_plan, passes
from benchmarks.stream_scaling.report import render_markdown
from benchmarks.stream_scaling.workload import free, sdpa_context

DEVICE_CALL_LIMIT_S = 600


def describe(plan: Plan) -> dict[str, Any]:
    b = plan.base
    return {
        "command": "python3 -m benchmarks.stream_scaling " + " ".join(plan.argv),
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
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.stream_scaling",
        description=stream_scaling.__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
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
