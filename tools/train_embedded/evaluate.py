"""Quality of the embedded model over long streams, measured with the colour-blob detector (blobs.py).

Streams every prompt of ``PROMPTS`` (one batch, the runtime's own Streamer on the torch backend) for ``--frames``
frames and reports per prompt: ball count right, per-colour counts right, motion within the training data's maximum
speed (as the detector measures it on ground-truth clips), blank and saturated frames. Writes ``eval.json`` and the
streams as uint8 (``streams.npz``) to ``--out``::

    PYTHONPATH=src python tools/train_embedded/evaluate.py --out runs/balls --frames 1000 --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from blobs import colour_counts, detect, max_displacement, stream_quality  # noqa: E402
from data import make_batch  # noqa: E402

from arl2rt.export.state_spec import StateSpec  # noqa: E402
from arl2rt.model.embedded import embedded_config, load_embedded, load_embedded_from, parse_prompt  # noqa: E402
from arl2rt.runtime.streamer import Streamer  # noqa: E402
from arl2rt.runtime.torch_backend import TorchBackend  # noqa: E402

PROMPTS = (
    "one red ball",
    "one blue ball",
    "two yellow balls",
    "one red ball and one blue ball",
    "one green ball and one white ball",
    "three white balls",
    "two red balls and one green ball",
    "one red ball and one green ball and one blue ball",
)


def data_max_speed(clips: int = 512, frames: int = 24, seed: int = 123) -> float:
    """Largest frame-to-frame blob displacement the detector sees on ground-truth training clips."""
    _, video, _ = make_batch(clips, frames, torch.Generator().manual_seed(seed))
    worst = 0.0
    for clip in video.numpy():
        blobs = detect(np.moveaxis(clip, 1, 0))
        moves = [max_displacement(a, b) for a, b in zip(blobs, blobs[1:])]
        worst = max([worst] + [m for m in moves if m is not None])
    return worst


def stream(em, prompts, frames: int, device: str, seed: int, deadline: float | None = None) -> np.ndarray:
    """Frames ``[P, F, 3, H, W]`` (float32, as generated) of one stream per prompt; stops early at ``deadline``."""
    context = torch.cat([em.encode_prompt(p) for p in prompts])
    out = []
    with TorchBackend(em.model, StateSpec(em.model.cfg), device) as be:
        s = Streamer(be, seed=seed, batch=len(prompts), max_frames=16)
        s.start(context)
        for block in s.stream(frames // em.model.cfg.frames_per_block):
            out.append(block.float().cpu())
            if deadline is not None and time.time() > deadline:
                break
    return torch.cat(out, dim=2).permute(0, 2, 1, 3, 4).numpy()


def conditioned_accuracy(em, clips: int = 16, context: int = 5, seed: int = 5) -> dict[str, float]:
    """Fraction of generated frames whose blob colours match the truth, without and with ground-truth context.

    Frame ``context`` of real clips is sampled with the config's sampler and timesteps (Euler) given the true frames
    before it (teacher forcing at inference), and frame 0 given the prompt only. Separates what the weights learned
    from how a free-running stream compounds its own errors.
    """
    from arl2rt.model.scheduler import FlowMatchScheduler
    from arl2rt.model.sequence import clip_forward

    gen = torch.Generator().manual_seed(seed)
    device = next(em.model.parameters()).device
    prompts, video, _ = make_batch(clips, context + 1, gen, device)
    ctx = em.model.encode_context(torch.cat([em.encode_prompt(p) for p in prompts]).to(device))
    sched = FlowMatchScheduler.from_config(em.model.cfg)
    shape = video[:, :, :1].shape

    def fresh_noise() -> torch.Tensor:
        return torch.randn(shape, generator=gen).to(device)

    result = {}
    for name, known in (("prompt_only_frame0", 0), (f"after_{context}_true_frames", context)):
        x = fresh_noise()
        for i, t in enumerate(sched.timesteps):
            steps = torch.zeros(clips, known + 1, device=device)
            steps[:, -1] = t
            with torch.no_grad():
                v = clip_forward(em.model, torch.cat([video[:, :, :known], x], 2), steps, ctx)[:, :, -1:]
            last = i + 1 == len(sched.timesteps)
            x = sched.x0(x, v, sched.sigmas[i]) if last else sched.next_latents(x, v, i, fresh_noise)
        hits = [
            colour_counts(detect(x[b].transpose(0, 1).cpu().numpy())[0])
            == colour_counts(detect(video[b, :, known : known + 1].transpose(0, 1).cpu().numpy())[0])
            for b in range(clips)
        ]
        result[name] = float(np.mean(hits))
    return result


def want_counts(prompt: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in parse_prompt(prompt):
        counts[c] = counts.get(c, 0) + 1
    return counts


def count_ok_first_n(prompts, found, spans=(24, 48, 200, 1000)) -> dict[str, dict[str, float]]:
    """Share of frames with the prompt's ball count over the first N frames: per prompt (mean of its streams), mean.

    ``found``: the blobs of every frame of every stream, as ``detect`` gives them.
    """
    ok = {p: [] for p in dict.fromkeys(prompts)}
    for p, blobs in zip(prompts, found):
        n_want = len(parse_prompt(p))
        ok[p].append(np.array([len(b) == n_want for b in blobs]))
    out = {}
    for n in (s for s in spans if s <= len(found[0])):
        per_prompt = {p: float(np.mean([r[:n].mean() for r in runs])) for p, runs in ok.items()}
        out[str(n)] = {**per_prompt, "mean": float(np.mean(list(per_prompt.values())))}
    return out


def from_uint8(frames: np.ndarray) -> np.ndarray:
    """:func:`to_uint8` undone (to within its rounding): ``[..., H, W, 3]`` uint8 -> ``[..., 3, H, W]`` in [-1, 1]."""
    return np.moveaxis(frames.astype(np.float32) / 127.5 - 1, -1, -3)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """``[..., 3, H, W]`` in [-1, 1] -> ``[..., H, W, 3]`` uint8."""
    return np.moveaxis(((np.clip(frames, -1, 1) + 1) * 127.5).round().astype(np.uint8), -3, -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--weights", type=Path, help="safetensors from train.py (default: the shipped model)")
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=0, help="stop streaming after this long (0 = no limit)")
    ap.add_argument("--conditioned", type=int, default=32, help="clips for conditioned_accuracy (0 = skip)")
    ap.add_argument("--repeats", type=int, default=1, help="streams per prompt (one batch, different noise)")
    ap.add_argument(
        "--streams", type=Path, help="re-score an earlier run's streams.npz (uint8) into <out>/rescore.json"
    )
    args = ap.parse_args()

    result: dict = {}
    if args.streams is not None:
        saved = np.load(args.streams)
        prompts = [str(p) for p in saved["prompts"]]
        frames = from_uint8(saved["frames"])
        result.update(source=str(args.streams), note="scored from uint8 frames")
    else:
        if args.weights is None:
            em = load_embedded()
        else:
            em = load_embedded_from(embedded_config(), args.weights.read_bytes(), source=str(args.weights))
        start = time.time()
        prompts = list(PROMPTS * args.repeats)
        deadline = start + args.max_seconds if args.max_seconds else None
        frames = stream(em, prompts, args.frames, args.device, args.seed, deadline)
        result.update(
            stream_seconds=time.time() - start,
            device=args.device if args.device == "cpu" else torch.cuda.get_device_name(),
            torch=torch.__version__,
            seed=args.seed,
            repeats=args.repeats,
        )
        seconds, device = result["stream_seconds"], result["device"]
        print(f"{frames.shape[1]} frames x {len(prompts)} streams in {seconds:.0f}s on {device}")
    threshold = data_max_speed()
    found = [detect(f) for f in frames]
    rows = [
        dataclasses.asdict(stream_quality(p, want_counts(p), f, threshold, blobs))
        for p, f, blobs in zip(prompts, frames, found)
    ]
    result.update(
        frames=int(frames.shape[1]),
        max_speed_threshold_px=threshold,
        prompts=rows,
        count_ok_first_n=count_ok_first_n(prompts, found),
    )
    if args.conditioned and args.streams is None:
        result["conditioned_accuracy"] = conditioned_accuracy(em, args.conditioned)
        print(f"blob colours right in sampled frames: {result['conditioned_accuracy']}")
    args.out.mkdir(parents=True, exist_ok=True)
    # a re-score never overwrites the eval.json of the run that made the streams
    (args.out / ("eval.json" if args.streams is None else "rescore.json")).write_text(json.dumps(result, indent=2))
    if args.streams is None:
        np.savez_compressed(args.out / "streams.npz", frames=to_uint8(frames), prompts=np.array(prompts))
    print(f"max speed threshold (detector on training data): {threshold:.2f} px/frame")
    print(markdown_table(rows))
    first_n = result["count_ok_first_n"]
    print("count ok over the first N frames, mean of all streams:", {n: f"{v['mean']:.1%}" for n, v in first_n.items()})


def markdown_table(rows: list[dict]) -> str:
    """Per prompt (mean over its streams) and over all: the shares and the blank / saturated frame totals."""
    shares = ("count_ok", "colours_ok", "motion_ok", "speed_ok")
    groups = {r["prompt"]: [] for r in rows}
    for r in rows:
        groups[r["prompt"]].append(r)
    lines = [
        "| prompt | streams | count ok | colours ok | motion ok | speed ok | blank | saturated |",
        "|" + "---|" * 8,
    ]
    for name, rs in [*groups.items(), ("**all**", rows)]:
        cells = [f"{np.mean([r[k] for r in rs]):.1%}" for k in shares]
        blank, sat = sum(r["blank"] for r in rs), sum(r["saturated"] for r in rs)
        lines.append(f"| {name} | {len(rs)} | {' | '.join(cells)} | {blank} | {sat} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
