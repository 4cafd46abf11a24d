"""The past attention of a growing cache, exact length against the whole-buffer forms a CUDA graph can replay.

At Wan2.1-1.3B dims (a 3-frame block's 4680 queries, 12 heads of 128, bf16) over a cache of ``--capacity`` latent
frames holding N valid frames, per N: cuDNN and flash at the exact length (the eager path), flash's variable-length
kernel reading ``seqused_k`` keys of the whole buffer (the step graphs' form), and cuDNN's variable-length form with
the valid length in ``cum_seq_k``. Each form's output and log-sum-exp against the exact cuDNN result, and whether a
CUDA graph captured at one N replays right at another (the length read on the device).

Run on the GPU machine: ``PYTHONPATH=src python -m benchmarks.varlen_attention`` (prints a table).
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks._harness import environment, time_calls

TPF = 1560  # tokens per latent frame at 480x832


def forms(q, k_buf, v_buf, used: torch.Tensor, n_tokens: int):
    """name -> a no-argument callable returning (out [Lq, H, D], lse [H, Lq]) for batch 1."""
    lq, h, d = q.shape[1:]
    cap = k_buf.shape[1]
    qt = q.transpose(1, 2)
    cu_q = torch.tensor([0, lq], dtype=torch.int32, device=q.device)
    cu_k_cap = torch.tensor([0, cap], dtype=torch.int32, device=q.device)

    def exact(op):
        def call():
            k, v = k_buf[:, :n_tokens].transpose(1, 2), v_buf[:, :n_tokens].transpose(1, 2)
            out, lse = op(qt, k, v)[:2]
            return out[0].transpose(0, 1), lse.reshape(h, lq)

        return call

    def flash_varlen():
        out, lse = torch.ops.aten._flash_attention_forward(
            q[0], k_buf[0], v_buf[0], cu_q, cu_k_cap, lq, cap, 0.0, False, False, seqused_k=used.to(torch.int32)
        )[:2]
        return out, lse.reshape(h, lq)

    def cudnn_varlen():
        cu_k_used = torch.cat([torch.zeros_like(used), used]).to(torch.int32)  # made on the device, in the graph
        out, lse = torch.ops.aten._cudnn_attention_forward(
            q[0], k_buf[0], v_buf[0], None, cu_q, cu_k_used, lq, cap, True, 0.0, False, False
        )[:2]
        return out, lse.reshape(h, lq)

    return {
        "cudnn exact": exact(lambda a, b, c: torch.ops.aten._scaled_dot_product_cudnn_attention(a, b, c, None, True)),
        "flash exact": exact(torch.ops.aten._scaled_dot_product_flash_attention),
        "flash varlen (whole buffer)": flash_varlen,
        "cudnn varlen (whole buffer)": cudnn_varlen,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capacity", type=int, default=256, help="cache capacity in latent frames")
    ap.add_argument("--frames", default="21,126,252", help="valid past frames N")
    ap.add_argument("--replays", type=int, default=10)
    args = ap.parse_args(argv)
    device = torch.device("cuda")
    gen = torch.Generator(device).manual_seed(0)
    h, d, lq, cap = 12, 128, 3 * TPF, args.capacity * TPF
    q = torch.randn(1, lq, h, d, generator=gen, device=device, dtype=torch.bfloat16)
    k_buf = torch.randn(1, cap, h, d, generator=gen, device=device, dtype=torch.bfloat16)
    v_buf = torch.randn(1, cap, h, d, generator=gen, device=device, dtype=torch.bfloat16)
    used = torch.zeros(1, dtype=torch.int64, device=device)
    rows = []
    for frames in map(int, args.frames.split(",")):
        n = frames * TPF
        used.fill_(n)
        made = forms(q, k_buf, v_buf, used, n)
        ref_out, ref_lse = (t.float() for t in made["cudnn exact"]())
        for name, call in made.items():
            try:
                out, lse = call()
                err = ((out.float() - ref_out).norm() / ref_out.norm()).item()
                lse_err = (lse.float() - ref_lse).abs().max().item()
                ms = sorted(time_calls(call, args.replays, device))[args.replays // 2] * 1e3
                rows.append((frames, name, f"{ms:.2f}", f"{err:.1e}", f"{lse_err:.1e}"))
            except Exception as exc:  # noqa: BLE001 - a form this torch build lacks is a row, not a crash
                rows.append((frames, name, "-", f"{type(exc).__name__}: {str(exc)[:100]}", "-"))
    # a graph captured at the first N, replayed after the length changed on the device
    graph_rows = []
    for name in ("flash varlen (whole buffer)", "cudnn varlen (whole buffer)"):
        try:
            first, last = (int(f) * TPF for f in args.frames.split(",")[:: len(args.frames.split(",")) - 1])
            used.fill_(first)
            call = forms(q, k_buf, v_buf, used, first)[name]
            call()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out, lse = call()
            used.fill_(last)
            graph.replay()
            ref_out, _ = forms(q, k_buf, v_buf, used, last)["cudnn exact"]()
            err = ((out.float() - ref_out.float()).norm() / ref_out.float().norm()).item()
            graph_rows.append((name, f"replay at the new length: rel err {err:.1e}"))
        except Exception as exc:  # noqa: BLE001
            graph_rows.append((name, f"{type(exc).__name__}: {str(exc)[:160]}"))
            torch.cuda.synchronize()
    env = environment(device)
    print(f"{env['device']}, torch {env['torch']}, cuDNN {env['cudnn']}, {env['date']}")
    print(f"q {lq} tokens x {h} heads x {d}, bf16, cache capacity {args.capacity} frames ({cap} tokens)\n")
    print("| past frames | form | ms (median) | out rel err vs cuDNN exact | max abs lse err |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |")
    print()
    for name, what in graph_rows:
        print(f"graph {name}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
