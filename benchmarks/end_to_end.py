"""A complete video from a prompt at Wan2.1-1.3B dims: text encode, DiT stream, streaming VAE decode, mp4 write.

Random weights throughout (no pretrained weights are reachable here): the DiT (``--mix``, bf16), the full Wan2.1 VAE
decoder or TAEHV's taew2_1 (``--decoder``; bf16 caches, frames in fp32), and a reduced-depth umT5 encoder (umT5-XXL's
widths, ``--text-layers`` of its 24 layers; the prompt's token ids are drawn at random, no tokenizer), so the times are
those of the real shapes.

Per block: the Streamer's ``next_block`` (torch backend; its step graphs replay wherever shapes repeat), the VAE's
``decode_step`` of the block's latent frames (caches kept on the GPU), and the fragmented-mp4 writer (frames to the
host, H.264 encode, flush). Each part is timed with a device sync around it, so the split adds up to the total.
Also reported per block: peak GPU memory and the VAE caches' bytes.

Run on the GPU machine: ``PYTHONPATH=src python -m benchmarks.end_to_end --out DIR`` (DIR/end_to_end.json, a table).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from arl2rt.export.state_spec import StateSpec
from arl2rt.model.config import PRESETS
from arl2rt.model.random import random_model
from arl2rt.model.vae.config import WAN21_VAE
from arl2rt.model.vae.decoder import WanVaeDecoder
from arl2rt.model.vae.stream import VaeStream
from arl2rt.model.vae.taehv.config import TAEW2_1
from arl2rt.model.vae.taehv.decoder import TaehvDecoder
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend
from arl2rt.runtime.video import open_writer
from benchmarks._harness import environment
from benchmarks.stream_scaling import plan as ss_plan

GIB = 2**30


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


class Clock:
    """Seconds per named part, each measured between device syncs."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.parts = device, {}

    def __call__(self, name: str, fn):
        torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize(self.device)
        self.parts.setdefault(name, []).append(time.perf_counter() - start)
        return out


def text_context(cfg, layers: int, device: torch.device, clock: Clock) -> torch.Tensor:
    """umT5-XXL's widths at ``layers`` layers, random weights, bf16: [1, 512, 4096] cut to the prompt's 40 tokens."""
    from transformers import UMT5Config, UMT5EncoderModel

    conf = UMT5Config(
        vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=layers, num_heads=64,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
    )  # fmt: skip
    with torch.device(device):
        encoder = UMT5EncoderModel(conf).to(torch.bfloat16).eval()
    true_len = 40
    ids = torch.randint(0, conf.vocab_size, (1, cfg.text_len), device=device)
    mask = torch.zeros(1, cfg.text_len, dtype=torch.long, device=device)
    mask[:, :true_len] = 1

    def encode():
        with torch.inference_mode():
            out = encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        context = torch.zeros_like(out)
        context[:, :true_len] = out[:, :true_len]
        return context

    encode()  # warm-up (cuBLAS handles), not timed
    return clock("text", encode)  # the encoder is freed when this returns


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cuda")
    base = PRESETS[args.config]
    if args.window:
        base = replace(base, attn_window_frames=args.window, sink_frames=args.sinks)
    cfg = ss_plan.layer_mixes(base)[args.mix]
    clock = Clock(device)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    context = text_context(cfg, args.text_layers, device, clock)
    torch.cuda.empty_cache()
    log("building the DiT and the VAE decoder on the GPU")
    with torch.device(device):
        model = random_model(cfg, 0)
        decoder = (TaehvDecoder(TAEW2_1) if args.decoder == "taehv" else WanVaeDecoder(WAN21_VAE)).to(torch.bfloat16)
        decoder.eval()
    backend = TorchBackend(model, StateSpec(cfg, args.dtype), device).activate()
    blocks = args.latent_frames // cfg.frames_per_block
    vae = VaeStream(decoder)
    build_s = time.perf_counter() - t0
    peaks, cache_bytes = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.video) if args.video else Path(tmp) / "video.mp4"
        streamer = Streamer(backend, seed=0, max_frames=min(args.latent_frames, 256))
        t_stream = time.perf_counter()
        clock("dit", lambda: streamer.start(context))
        frames = 0
        with open_writer(out, fps=16, overwrite=True) as writer, torch.inference_mode():
            for b in range(blocks):
                latents = clock("dit", streamer.next_block)
                video = clock("vae", lambda latents=latents: vae.decode(latents.to(torch.bfloat16)).float())
                clock("write", lambda video=video: writer.write(video))
                frames += video.shape[2]
                peaks.append(torch.cuda.max_memory_allocated(device))
                if b == 0:
                    cache_bytes = sum(t.numel() * t.element_size() for t in vae.caches)
                if b % 10 == 0:
                    log(f"block {b + 1}/{blocks}: {frames} frames, peak {peaks[-1] / GIB:.1f} GiB")
        stream_s = time.perf_counter() - t_stream
        size = out.stat().st_size
    graphs = backend.graphs
    backend_graphs_on = graphs is not None
    backend.deactivate()
    parts = {k: sum(v) for k, v in clock.parts.items()}
    return {
        "config": cfg.name,
        "mix": args.mix,
        "decoder": args.decoder,
        "graphs": backend_graphs_on,
        "window": args.window,
        "latent_frames": blocks * cfg.frames_per_block,
        "video_frames": frames,
        "text_layers": args.text_layers,
        "seconds": {
            "text": parts.get("text", 0.0),
            "stream_total": stream_s,
            **{k: parts[k] for k in ("dit", "vae", "write")},
        },
        "setup_s": build_s,
        "per_block_ms": {
            k: 1e3 * statistics.median(clock.parts[k][1:] if k == "dit" else clock.parts[k])
            for k in ("dit", "vae", "write")
        },
        "peak_gib": max(peaks) / GIB,
        "vae_cache_gib": cache_bytes / GIB,
        "mp4_bytes": size,
        "graph_replays": graphs.replays if graphs is not None else 0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="wan2.1-t2v-1.3b")
    ap.add_argument("--mix", default="arl2-75", choices=ss_plan.MIXES)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--latent-frames", type=int, default=252, help="252 latent frames = 1005 video frames")
    ap.add_argument("--window", type=int, default=0, help="rolling window of the softmax layers (0: global cache)")
    ap.add_argument("--sinks", type=int, default=0)
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--decoder", default="wan", choices=["wan", "taehv"], help="full Wan2.1 VAE or TAEHV taew2_1")
    ap.add_argument("--video", default="", help="keep the mp4 here (default: a temporary file)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    result = run(args)
    env = environment(torch.device("cuda"))
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"end_to_end_{args.mix}_w{args.window}_{args.decoder}.json"
    (args.out / name).write_text(json.dumps({"environment": env, "result": result}, indent=1))
    s, pb = result["seconds"], result["per_block_ms"]
    print(
        f"{env['device']} | {result['config']} window {args.window or 'global'} | decoder {args.decoder} | graphs "
        f"{result['graphs']} | {result['video_frames']} frames | "
        f"text {s['text']:.2f} s | DiT {s['dit']:.1f} s ({pb['dit']:.0f} ms/block) | VAE {s['vae']:.1f} s "
        f"({pb['vae']:.0f} ms/block) | write {s['write']:.1f} s ({pb['write']:.0f} ms/block) | stream total "
        f"{s['stream_total']:.1f} s | peak {result['peak_gib']:.1f} GiB | VAE caches {result['vae_cache_gib']:.2f} GiB "
        f"| replays {result['graph_replays']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
