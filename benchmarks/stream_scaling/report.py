"""The report: sweep rows with derived columns, the comparison with the issue's numbers, the markdown."""

from __future__ import annotations

import io
from typing import Any

from arl2rt.model.config import ModelConfig
from arl2rt.plugins.gdn.constants import CHUNK_SIZE
from benchmarks.stream_scaling.plan import LABELS, MIXES, PEAK_TFLOPS, breakdown_ms, span, video_frames

# The anchors (issue 8; ARL2 project page; docs/performance.md §4)
PAPER = {
    "speedup_231": 2.26,
    "memory_cut_231": 0.54,
    "frames_1005_s": 179.0,
    "frames_1005_gb": 43.0,
    "baseline_1005_gb": 91.0,
}
GOALS = {"speedup_231": 2.5, "memory_cut_231": 0.70, "floor_ratio_21": 2.0, "flat_pct": 1.0}


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
    p("Script: `benchmarks/stream_scaling/` (definitions in its package docstring, summarised at the end).\n")
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
        "Compute floor (docs/performance.md §2): 2 x per-token weights x tokens (all linear maps), 4·Sq·Skv·d·H per "
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
