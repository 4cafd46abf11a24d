"""H200 correctness and timing of the Triton GDN kernels vs flash-linear-attention (fla) and the torch reference.

Run on the device machine (fla-core carried as a wheel):

    python -m benchmarks.gdn_kernels --out $OUT            # correctness table, sweeps, comparisons
    python -m benchmarks.gdn_kernels --smoke               # plumbing check on the CPU interpreter, tiny shapes

Timing: eager = ``triton.testing.do_bench`` (L2 flushed per call, launch overhead included); graph = one CUDA graph
replaying the op on ``ROTATE`` input sets in turn (so inputs do not sit in the 60 MB L2), per-call time = replay time /
ROTATE, median and 20/80 % quantiles over the replays. Results go to ``gdn_kernels.json`` and ``bench.log``; a short
table is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from dataclasses import asdict, replace

import torch

from benchmarks._harness import environment, quantiles, rel_rms, time_calls

ROTATE = 3
D = 128  # head dim (K = V), H = 12 heads: Wan2.1-1.3B
SHAPES = [(b, t) for t in (1560, 4680, 9360) for b in (1, 2)]
HAVE_FLA = False
FLA = None
COPY_TBPS = 4.27  # measured device-to-device copy ceiling (docs/performance.md §1)
GEMM_TFLOPS = 811.0  # measured bf16 GEMM ceiling


def log(*a):
    print(*a, flush=True)


def make_inputs(b, t, h, d, dtype, seed, device, correlated=False):
    """``correlated`` keys share one direction per head, as neighbouring video tokens do (β K Kᵀ entries near 2)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(b, t, h, d, generator=gen, device=device)
    shared = torch.randn(b, 1, h, d, generator=gen, device=device) if correlated else 0.0
    k = torch.nn.functional.normalize(shared + 0.7 * torch.randn(b, t, h, d, generator=gen, device=device), dim=-1)
    v = torch.randn(b, t, h, d, generator=gen, device=device)
    g = torch.nn.functional.logsigmoid(torch.randn(b, t, h, generator=gen, device=device) + 2.0) * 0.5
    beta = 2 * torch.rand(b, t, h, generator=gen, device=device)
    s0 = torch.randn(b, h, d, d, generator=gen, device=device)
    return q.to(dtype), k.to(dtype), v.to(dtype), g, beta, s0


def time_graph(fns, replays=100):
    """Per-call µs (median, q20, q80) of one CUDA graph that calls each of ``fns`` once."""
    for f in fns:
        f()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for f in fns:
            f()
    for _ in range(5):
        graph.replay()
    return [t * 1e6 / len(fns) for t in quantiles(time_calls(graph.replay, replays, torch.device("cuda")))]


def time_eager(fns):
    import triton

    it = iter(range(1 << 30))
    res = triton.testing.do_bench(lambda: fns[next(it) % len(fns)](), warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
    return [x * 1e3 for x in res]


def fmt(t):
    return f"{t[0]:.1f} ({t[1]:.1f}–{t[2]:.1f})"


def fla_version() -> str:
    try:
        import fla

        return getattr(fla, "__version__", "?")
    except Exception as exc:  # noqa: BLE001 - fla is optional here
        return f"missing ({exc})"


def compiled_resources(compiled):
    out = []
    for c in compiled:
        if c is None:
            continue
        md = c.metadata
        out.append(
            {
                "kernel": md.name,
                "shared": md.shared,
                "regs": getattr(c, "n_regs", None),
                "spills": getattr(c, "n_spills", None),
                "num_warps": md.num_warps,
                "global_scratch": getattr(md, "global_scratch_size", None),
            }
        )
    return out


def correctness(chunk, naive, device, shapes, dtypes):
    rows = []
    for b, t, corr in [(b, t, corr) for b, t in shapes for corr in (False, True)]:
        for dt in dtypes:
            q, k, v, g, beta, s0 = make_inputs(b, t, 12, D, dt, seed=t + b, device=device, correlated=corr)
            ref = naive.naive_chunk_gated_delta_rule_state(
                k.double(), v.double(), g.double(), beta.double(), s0.double()
            )
            s = chunk.chunk_gated_delta_rule_state(k, v, g, beta, s0)
            row = {"B": b, "T": t, "keys": "correlated" if corr else "independent", "dtype": str(dt)[6:]}
            row["ours_state"] = rel_rms(s, ref)
            if HAVE_FLA and device == "cuda" and dt == torch.bfloat16:
                _, s_fla = FLA(q, k, v, g, beta, initial_state=s0, output_final_state=True)
                row["fla_state"] = rel_rms(s_fla, ref)
            rows.append(row)
            log("correctness", row)
            del ref
    # per-token outputs at one shape
    for dt in dtypes:
        b, t = shapes[len(shapes) // 2]
        q, k, v, g, beta, s0 = make_inputs(b, t, 12, D, dt, seed=7, device=device, correlated=True)
        o_ref, s_ref = naive.naive_chunk_gated_delta_rule(
            q.double(), k.double(), v.double(), g.double(), beta.double(), initial_state=s0.double()
        )
        o, s = chunk.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0)
        row = {"B": b, "T": t, "keys": "correlated", "dtype": str(dt)[6:], "ours_o": rel_rms(o, o_ref)}
        row["ours_state_fwd"] = rel_rms(s, s_ref)
        if HAVE_FLA and device == "cuda" and dt == torch.bfloat16:
            o_fla, _ = FLA(q, k, v, g, beta, initial_state=s0, output_final_state=True)
            row["fla_o"] = rel_rms(o_fla, o_ref)
        rows.append(row)
        log("correctness", row)
    return rows


def state_sets(t, dt, b=1):
    return [make_inputs(b, t, 12, D, dt, seed=100 + i, device="cuda") for i in range(ROTATE)]


def sweep_state(chunk, t=4680):
    """Graph time of the state-only update over config choices, with its error vs float64."""
    sets = state_sets(t, torch.bfloat16)
    _, k, v, g, beta, s0 = sets[0]
    ref = naive_ref_state(k, v, g, beta, s0)
    base = chunk.ChunkConfig()
    cfgs = [replace(base, segments=seg) for seg in (3, 4, 5, 6, 8)]
    cfgs += [replace(base, block_v=32, segments=seg) for seg in (3, 4, 6)]
    rows = []
    for cfg in cfgs:
        try:
            err = rel_rms(chunk.chunk_gated_delta_rule_state(k, v, g, beta, s0, config=cfg), ref)
            fns = [lambda s=s, c=cfg: chunk.chunk_gated_delta_rule_state(*s[1:], config=c) for s in sets]
            tg = time_graph(fns)
            d = {k_: str(v_) for k_, v_ in asdict(cfg).items()}
            rows.append({"config": d, "graph_us": tg, "state_err": err})
            log("sweep", d, fmt(tg), f"err {err:.2e}")
        except Exception:  # noqa: BLE001 - one failing config must not end the run
            log("sweep FAILED", cfg, traceback.format_exc())
    return rows


def naive_ref_state(k, v, g, beta, s0):
    from arl2rt.plugins.gdn import naive

    return naive.naive_chunk_gated_delta_rule_state(k.double(), v.double(), g.double(), beta.double(), s0.double())


def stages(chunk, cfg, t=4680):
    """Graph time of each kernel of the state-only path, launched alone on preallocated buffers."""
    from arl2rt.plugins.common import run_launch, sub_buffer

    sets = state_sets(t, torch.bfloat16)
    plan = chunk.plan_chunk(1, t, 12, D, D, torch.bfloat16, config=cfg)
    ws = torch.empty(plan.workspace_bytes, dtype=torch.uint8, device="cuda")
    out = torch.empty(1, 12, D, D, device="cuda")
    bufs = {n: sub_buffer(ws, off, dt, numel) for n, (off, dt, numel) in plan.buffers.items()}
    nt = -(-t // 64)
    sizes = {"T": t, "H": 12, "NT": nt, "CPS": plan.chunks_per_segment, "NSEG": plan.segments}
    rows = {}

    def call(s, launch):
        _, k, v, g, beta, s0 = s
        vals = {**bufs, **sizes, "k": k, "v": v, "g": g, "beta": beta, "s0": s0, "out": out, "hs": out}
        vals["dst"] = bufs["seg"] if plan.segments > 1 else out
        run_launch(launch, [vals[a] for a in launch.args])

    for launch in plan.launches:  # fill the workspace once: later kernels read what earlier ones wrote
        call(sets[0], launch)
    for launch in plan.launches:
        rows[launch.name] = time_graph([lambda s=s, launch=launch: call(s, launch) for s in sets])
        log("stage", cfg, launch.name, launch.grid, fmt(rows[launch.name]))
    return rows


def STAGE_CONFIGS(chunk):  # noqa: N802 - a table, built once chunk is imported
    base = chunk.ChunkConfig()
    return [base, replace(base, scan_stages=1)]


def compare_state(chunk, naive, ts, cfg):
    rows = []
    for t in ts:
        sets = state_sets(t, torch.bfloat16)
        row = {"T": t}
        compiled = []
        _, k, v, g, beta, s0 = sets[0]
        plan = chunk.plan_chunk(1, t, 12, D, D, torch.bfloat16, config=cfg)
        ws = torch.empty(plan.workspace_bytes, dtype=torch.uint8, device="cuda")
        chunk.launch_gdn_state_update(
            k, v, g, beta, s0, torch.empty_like(s0), ws, 1, t, 12, D, D, torch.bfloat16, config=cfg, compiled=compiled
        )
        row["resources"] = compiled_resources(compiled)
        row["segments"] = plan.segments
        ours = [lambda s=s: chunk.chunk_gated_delta_rule_state(*s[1:], config=cfg) for s in sets]
        ours_o = [lambda s=s: chunk.chunk_gated_delta_rule(*s[:5], initial_state=s[5], config=cfg) for s in sets]
        sets32 = [tuple(x.float() for x in s) for s in sets[:2]]
        row["ours_state_fp32_graph"] = time_graph(
            [lambda s=s: chunk.chunk_gated_delta_rule_state(*s[1:], config=cfg) for s in sets32]
        )
        row["ours_state_eager"], row["ours_state_graph"] = time_eager(ours), time_graph(ours)
        row["ours_fwd_eager"], row["ours_fwd_graph"] = time_eager(ours_o), time_graph(ours_o)
        if HAVE_FLA:
            fl = [lambda s=s: FLA(*s[:5], initial_state=s[5], output_final_state=True) for s in sets]
            row["fla_eager"], row["fla_graph"] = time_eager(fl), time_graph(fl)
        ref32 = [
            lambda s=s: naive.naive_chunk_gated_delta_rule_state(*(x.float() for x in s[1:5]), s[5]) for s in sets[:1]
        ]
        row["torch_ref_eager"] = time_eager(ref32)
        try:
            row["torch_ref_graph"] = time_graph(ref32, replays=10)
        except Exception as exc:  # noqa: BLE001 - record why the reference could not be captured
            row["torch_ref_graph"] = f"capture failed: {type(exc).__name__}"
        flops = (4 * D * D + 6 * 64 * D) * t * 12
        nbytes = 2 * t * 12 * D * 2 + t * 12 * 8 + 2 * 12 * D * D * 4
        row["ours_state_TBps"] = nbytes / (row["ours_state_graph"][0] * 1e-6) / 1e12
        row["ours_state_TFLOPs"] = flops / (row["ours_state_graph"][0] * 1e-6) / 1e12
        rows.append(row)
        log("compare", json.dumps(row))
    return rows


def read_bench(read, naive, ts, sweep_configs=True):
    rows = []
    sweep = []
    base = read.ReadConfig()
    cfgs = [base]
    for bt, warps, target, bv, stages in ((64, 8, 132, 128, 3), (128, 8, 132, 128, 3), (64, 4, 396, 64, 4)):
        cfgs.append(read.ReadConfig(block_t=bt, num_warps=warps, target_programs=target, block_v=bv, num_stages=stages))
    for t in ts:
        sets = []
        for i in range(ROTATE):
            q, *_, s = make_inputs(1, t, 12, D, torch.bfloat16, seed=200 + i, device="cuda")
            sets.append((q, s, torch.rand(1, t, 12, device="cuda"), torch.randn(1, t, 12, D, device="cuda").bfloat16()))
        row = {"T": t}
        for cfg in cfgs if t == 4680 and sweep_configs else []:
            try:
                tg = time_graph([lambda x=x, c=cfg: read.block_read(x[0], x[1], config=c) for x in sets])
                sweep.append({"config": asdict(cfg), "graph_us": tg})
                log("read sweep", asdict(cfg), fmt(tg))
            except Exception:  # noqa: BLE001
                log("read sweep FAILED", cfg, traceback.format_exc())
        row["ours_eager"] = time_eager([lambda x=x: read.block_read(x[0], x[1]) for x in sets])
        row["ours_graph"] = time_graph([lambda x=x: read.block_read(x[0], x[1]) for x in sets])
        row["ours_fused_graph"] = time_graph(
            [lambda x=x: read.block_read(x[0], x[1], gate=x[2], out=x[3]) for x in sets]
        )
        row["arl2_einsum_graph"] = time_graph([lambda x=x: naive.naive_block_read(x[0], x[1]) for x in sets])
        row["arl2_fused_graph"] = time_graph(
            [lambda x=x: x[3].add_(x[2][..., None].bfloat16() * naive.naive_block_read(x[0], x[1])) for x in sets]
        )
        s_bf = [x[1].bfloat16() for x in sets]
        row["bmm_graph"] = time_graph(
            [lambda x=x, sb=sb: torch.matmul(x[0].transpose(1, 2), sb) for x, sb in zip(sets, s_bf)]
        )
        nbytes = 2 * t * 12 * D * 2 + 12 * D * D * 4
        row["ours_TBps"] = nbytes / (row["ours_graph"][0] * 1e-6) / 1e12
        rows.append(row)
        log("read", json.dumps(row))
    return rows, sweep


def smoke():
    os.environ["TRITON_INTERPRET"] = "1"
    from arl2rt.plugins.gdn import chunk, naive

    global D
    D = 32
    log(correctness(chunk, naive, "cpu", [(1, 70), (2, 130)], [torch.float32, torch.bfloat16]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--profile-once", action="store_true", help="one state update and one read, for ncu")
    ap.add_argument("--skip", default="", help="comma list of sections to skip")
    ap.add_argument("--ts", default="1560,4680,9360", help="token counts for the compare and read sections")
    args = ap.parse_args()
    if args.smoke:
        smoke()
        return
    if args.profile_once:
        from arl2rt.plugins.gdn import chunk, read

        q, k, v, g, beta, s0 = make_inputs(1, 4680, 12, D, torch.bfloat16, seed=1, device="cuda")
        chunk.chunk_gated_delta_rule_state(k, v, g, beta, s0)
        read.block_read(q, s0)
        torch.cuda.synchronize()
        return
    global HAVE_FLA, FLA
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as FLA

        HAVE_FLA = True
    except Exception:  # noqa: BLE001
        log("fla unavailable:", traceback.format_exc())
    from arl2rt.plugins import gdn  # the chunk API, plan and launchers under one name
    from arl2rt.plugins.gdn import naive, read

    skip = set(args.skip.split(","))
    ts = [int(t) for t in args.ts.split(",")]
    result = {
        "env": {**environment(torch.device("cuda" if torch.cuda.is_available() else "cpu")), "fla": fla_version()}
    }
    log("env", result["env"])
    sections = [
        ("correctness", lambda: correctness(gdn, naive, "cuda", SHAPES, [torch.float32, torch.bfloat16])),
        ("sweep", lambda: sweep_state(gdn)),
        ("stages", lambda: {repr(c): stages(gdn, c) for c in STAGE_CONFIGS(gdn)}),
        ("compare", lambda: compare_state(gdn, naive, ts, gdn.ChunkConfig())),
        ("read", lambda: read_bench(read, naive, ts, "readsweep" not in skip)),
    ]
    for name, fn in sections:
        if name in skip:
            continue
        try:
            result[name] = fn()
        except Exception:  # noqa: BLE001 - keep the other sections
            result[name] = {"error": traceback.format_exc()}
            log(name, "FAILED", result[name]["error"])
        with open(os.path.join(args.out, "gdn_kernels.json"), "w") as f:
            json.dump(result, f, indent=1, default=str)
    summary(result)


def summary(result):
    log("\n=== summary (µs, median (q20–q80)) ===")
    for row in result.get("correctness", []) if isinstance(result.get("correctness"), list) else []:
        log("err", {k: (f"{v:.2e}" if isinstance(v, float) else v) for k, v in row.items()})
    for row in result.get("compare", []) if isinstance(result.get("compare"), list) else []:
        log(
            f"T={row['T']:5d} state graph {fmt(row['ours_state_graph'])} eager {fmt(row['ours_state_eager'])} | "
            f"fwd graph {fmt(row['ours_fwd_graph'])} | fla graph {fmt(row.get('fla_graph', [0, 0, 0]))} "
            f"eager {fmt(row.get('fla_eager', [0, 0, 0]))} | ref eager {fmt(row['torch_ref_eager'])} "
            f"| {row['ours_state_TBps']:.2f} TB/s {row['ours_state_TFLOPs']:.0f} TFLOP/s"
        )
    for cfg, row in (result.get("stages") or {}).items():
        if isinstance(row, dict):
            log("stages", cfg, {k: round(v[0], 1) for k, v in row.items()})
    rd = result.get("read")
    if isinstance(rd, list | tuple) and rd:
        for row in rd[0]:
            log(
                f"read T={row['T']:5d} ours {fmt(row['ours_graph'])} fused {fmt(row['ours_fused_graph'])} "
                f"einsum {fmt(row['arl2_einsum_graph'])} bmm {fmt(row['bmm_graph'])} {row['ours_TBps']:.2f} TB/s"
            )


if __name__ == "__main__":
    sys.exit(main())
