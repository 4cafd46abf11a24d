"""Train the embedded bouncing-balls model: ARL2 teacher forcing, flow-matching loss, for a fixed wall-clock budget.

Run from the repo root with the package on the path (no install needed)::

    PYTHONPATH=src python tools/train_embedded/train.py --out runs/balls --minutes 5.5 --device cuda

Every ``--save-every`` seconds the EMA weights are written (temp file, then rename) as
``<out>/bouncing_balls.safetensors`` in the package-data layout, with ``loss.csv`` beside them, so a run killed at its
time limit still leaves usable weights.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import corrupted_context, make_batch  # noqa: E402

from arl2rt.model.config import load_config  # noqa: E402
from arl2rt.model.embedded import (  # noqa: E402
    CONFIG_FILE,
    WEIGHTS_FILE,
    build_embedded,
    embedded_state_dict,
    load_embedded_from,
)
from arl2rt.model.sequence import teacher_forcing_forward  # noqa: E402

ASSETS = Path(__file__).resolve().parents[2] / "src" / "arl2rt" / "assets"


def sample_timesteps(shape, table: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-frame t in (0, 1000]: half from the sampler's own timesteps, half uniform (so every level is learned)."""
    uniform = 1000 * (1 - torch.rand(shape, generator=gen))
    discrete = table[torch.randint(len(table), shape, generator=gen)]
    return torch.where(torch.rand(shape, generator=gen) < 0.5, discrete, uniform)


def noised(clips: torch.Tensor, t: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow-matching interpolation at per-frame t ``[B, F]``: ``x_t = (1 - s) x0 + s eps`` with s = t / 1000."""
    eps = torch.randn(clips.shape, generator=gen).to(clips.device)
    sigma = (t / 1000)[:, None, :, None, None]
    return (1 - sigma) * clips + sigma * eps, eps


def own_reconstruction(em, clips, context_kv, offset: int, t_ctx: torch.Tensor, gen) -> torch.Tensor:
    """The model's one-step x0 of every true frame noised at ``t_ctx`` (each given the true frames before it), no grad.

    Frames as the model itself draws them (dimmer, blurrier where it is unsure), for use as the clean context: the
    model then learns the next true frame from context with its own kind of error, not only from perfect renders.
    """
    noisy, _ = noised(clips, t_ctx, gen)
    with torch.no_grad():
        v = teacher_forcing_forward(em.model, clips, noisy, t_ctx, context_kv, frame_offset=offset)
    sigma = (t_ctx / 1000)[:, None, :, None, None]
    return (noisy - sigma * v.float()).clamp(-1.0, 1.0)  # x0 = x_t - s v, as v = eps - x0


def batch_loss(
    em, cfg, table, batch: int, frames: int, gen, device, context_noise: float, self_context=0.0, corrupt=0.0
) -> torch.Tensor:
    """Flow-matching loss of one teacher-forced batch: per-frame t, target velocity ``eps - x0``.

    The clean half is, with probability ``self_context``, the model's own reconstruction of the clip
    (:func:`own_reconstruction`, t_ctx uniform in [200, 600]); otherwise the clip with a ``corrupt`` share of its
    clips spoiled (``data.corrupted_context``: dim, small, recoloured, missing or extra balls), plus a little noise.
    """
    prompts, clips, centres = make_batch(batch, frames, gen, device)
    ids = torch.stack([em.encoder.token_ids(p) for p in prompts]).to(device)
    t = sample_timesteps((batch, frames), table, gen).to(device)
    noisy, eps = noised(clips, t, gen)
    offset = int(torch.randint(0, cfg.rope_max_positions - frames + 1, (), generator=gen))
    own = self_context > 0 and float(torch.rand((), generator=gen)) < self_context
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        context_kv = em.model.encode_context(em.encoder(ids))
        if own:
            t_ctx = (200 + 400 * torch.rand(batch, frames, generator=gen)).to(device)
            clean = own_reconstruction(em, clips, context_kv, offset, t_ctx, gen)
        else:
            clean = corrupted_context(prompts, centres, corrupt, gen) if corrupt > 0 else clips
            # a little noise on the clean half: generated frames the model commits are never exactly clean renders
            ctx_std = context_noise * torch.rand(batch, 1, 1, 1, 1, generator=gen).to(device)
            clean = clean + ctx_std * torch.randn(clips.shape, generator=gen).to(device)
        v = teacher_forcing_forward(em.model, clean, noisy, t, context_kv, frame_offset=offset)
    return F.mse_loss(v.float(), eps - clips)


def save_weights(em, path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    save_file(embedded_state_dict(em), str(tmp), metadata=metadata)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=ASSETS / CONFIG_FILE)
    ap.add_argument("--minutes", type=float, default=5.0, help="wall-clock training budget")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = time budget only)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frames", type=int, default=12, help="clip length (frames) of each teacher-forced sample")
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--context-noise", type=float, default=0.03, help="max std of noise added to the clean half")
    ap.add_argument(
        "--self-context", type=float, default=0.0, help="probability that the clean half is the model's own one-step x0"
    )
    ap.add_argument(
        "--corrupt", type=float, default=0.0, help="share of clips whose clean half is spoiled (data.Corruption)"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--first-frames", type=int, default=0, help="extra 1-frame clips per step (prompt-only frames)")
    ap.add_argument("--init", type=Path, help="start from these weights (a train.py output or the shipped file)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=float, default=60.0, help="seconds between weight saves")
    args = ap.parse_args()

    start = time.time()
    budget = args.minutes * 60
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg = load_config(args.config)
    torch.manual_seed(args.seed)
    em = build_embedded(cfg) if args.init is None else load_embedded_from(cfg, args.init.read_bytes(), str(args.init))
    em.model.to(device).train()
    em.encoder.to(device).train()
    params = [p for m in (em.model, em.encoder) for p in m.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed + 1)
    table = torch.tensor(cfg.timesteps, dtype=torch.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    recipe = {k: str(v) for k, v in vars(args).items()}
    log = open(args.out / "loss.csv", "w", newline="")
    writer = csv.writer(log)
    writer.writerow(["step", "seconds", "loss", "lr", "samples_per_s"])
    print(f"params {sum(p.numel() for p in params):,}; torch {torch.__version__}; device {device}", flush=True)

    step, last_save, smooth, seen, skipped = 0, time.time(), None, 0, 0
    t_log = time.time()
    while True:
        elapsed = time.time() - start
        if elapsed > budget or (args.max_steps and step >= args.max_steps):
            break
        frac = step / args.max_steps if args.max_steps else elapsed / budget
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1))))
        for group in opt.param_groups:
            group["lr"] = lr

        loss = batch_loss(
            em, cfg, table, args.batch, args.frames, gen, device, args.context_noise, args.self_context, args.corrupt
        )
        if args.first_frames:
            # prompt-only first frames are the hard case (no context): train them on their own as well
            first = batch_loss(em, cfg, table, args.first_frames, 1, gen, device, args.context_noise)
            n, m = args.batch * args.frames, args.first_frames
            loss = (n * loss + m * first) / (n + m)
        if not torch.isfinite(loss):
            skipped += 1
            if skipped > 20:
                raise RuntimeError(f"loss not finite in {skipped} steps; stopping at step {step}")
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        step += 1
        seen += args.batch + args.first_frames
        value = loss.item()
        smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
        if step % 10 == 0 or step == 1:
            now = time.time()
            writer.writerow([step, f"{now - start:.1f}", f"{value:.5f}", f"{lr:.2e}", f"{seen / (now - t_log):.1f}"])
            log.flush()
            seen, t_log = 0, now
        if step % 50 == 0 or step == 1:
            print(
                f"step {step} t {time.time() - start:.0f}s loss {value:.4f} (smooth {smooth:.4f}) lr {lr:.1e}",
                flush=True,
            )
        if time.time() - last_save > args.save_every:
            _save_ema(em, params, ema, args.out, {**recipe, "steps": str(step)})
            last_save = time.time()
    _save_ema(em, params, ema, args.out, {**recipe, "steps": str(step)})
    log.close()
    summary = {"steps": step, "skipped_steps": skipped, "seconds": time.time() - start, "final_smooth_loss": smooth}
    (args.out / "train.json").write_text(json.dumps({**summary, **recipe}, indent=2))
    print(f"done: {step} steps in {time.time() - start:.0f}s, final smooth loss {smooth:.4f}", flush=True)


def _save_ema(em, params, ema, out: Path, metadata: dict[str, str]) -> None:
    """Write the EMA weights (swapped in, then the training weights back)."""
    with torch.no_grad():
        live = [p.detach().clone() for p in params]
        torch._foreach_copy_(params, ema)
        save_weights(em, out / WEIGHTS_FILE, metadata)
        torch._foreach_copy_(params, live)


if __name__ == "__main__":
    main()
