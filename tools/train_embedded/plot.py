"""Loss curve PNG (matplotlib) and sample GIF (imageio) from a training run's ``loss.csv`` and ``streams.npz``::

python tools/train_embedded/plot.py loss runs/balls/loss.csv benchmarks/results/embedded_model_loss.png
python tools/train_embedded/plot.py loss runs/a/loss.csv runs/b/loss.csv out.png   # b continued a: one curve
python tools/train_embedded/plot.py gif runs/balls/streams.npz benchmarks/results/embedded_model_sample.gif
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def loss_png(csvs: list[Path], png: Path) -> None:
    """One curve over runs that continued each other (``--init``): steps add up, a dotted line where a run starts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses, starts = [], [], []
    for path in csvs:
        rows = list(csv.DictReader(path.open()))
        offset = int(steps[-1][-1]) if steps else 0
        starts.append(offset)
        steps.append(np.array([int(r["step"]) for r in rows]) + offset)
        losses.append(np.array([float(r["loss"]) for r in rows]))
    step, loss = np.concatenate(steps), np.concatenate(losses)
    smooth = np.convolve(loss, np.ones(10) / 10, mode="valid") if len(loss) >= 10 else loss
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(step, loss, lw=0.6, alpha=0.5, label="loss (every 10th step)")
    ax.plot(step[len(step) - len(smooth) :], smooth, lw=1.5, label="moving mean of 10")
    for x in starts[1:]:
        ax.axvline(x, color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step" if len(csvs) == 1 else f"step ({len(csvs)} runs, each continuing the last)")
    ax.set_ylabel("flow-matching MSE (velocity)")
    ax.set_title("bouncing-balls: ARL2 teacher-forcing training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)


def sample_gif(npz: Path, gif: Path, frames: int = 32, scale: int = 2, fps: int = 8) -> None:
    """The first stream of each prompt side by side (``scale`` x, 2 px grey gaps): its first ``frames`` frames, and
    below them its last ``frames`` when the stream is long enough to show both."""
    import imageio.v3 as iio

    data = np.load(npz)
    names = [str(p) for p in data["prompts"]]
    first = [names.index(p) for p in dict.fromkeys(names)]
    video = data["frames"][first]  # [P, F, H, W, 3] uint8
    n = video.shape[1]
    spans = [slice(0, frames)] + ([slice(n - frames, n)] if n >= 2 * frames else [])
    p, _, h, w, _ = video.shape
    gap = 2
    canvas = np.full(
        (min(frames, n), len(spans) * (h * scale + gap) - gap, p * (w * scale + gap) - gap, 3), 96, np.uint8
    )
    for row, span in enumerate(spans):
        for i in range(p):
            up = video[i, span].repeat(scale, axis=1).repeat(scale, axis=2)
            y, x = row * (h * scale + gap), i * (w * scale + gap)
            canvas[:, y : y + h * scale, x : x + w * scale] = up
    iio.imwrite(gif, canvas, duration=1000 / fps, loop=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["loss", "gif"])
    ap.add_argument("src", type=Path, nargs="+", help="loss: one or more loss.csv in run order; gif: one streams.npz")
    ap.add_argument("dst", type=Path)
    args = ap.parse_args()
    if args.what == "loss":
        loss_png(args.src, args.dst)
    elif len(args.src) == 1:
        sample_gif(args.src[0], args.dst)
    else:
        ap.error("gif takes one streams.npz")


if __name__ == "__main__":
    main()
