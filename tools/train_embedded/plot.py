"""Loss curve PNG (matplotlib) and sample GIF (imageio) from a training run's ``loss.csv`` and ``streams.npz``::

python tools/train_embedded/plot.py loss runs/balls/loss.csv benchmarks/results/embedded_model_loss.png
python tools/train_embedded/plot.py gif runs/balls/streams.npz benchmarks/results/embedded_model_sample.gif
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def loss_png(csv_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(csv_path.open()))
    step = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    smooth = np.convolve(loss, np.ones(10) / 10, mode="valid") if len(loss) >= 10 else loss
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(step, loss, lw=0.6, alpha=0.5, label="loss (every 10th step)")
    ax.plot(step[len(step) - len(smooth) :], smooth, lw=1.5, label="moving mean of 10")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching MSE (velocity)")
    ax.set_title("bouncing-balls: ARL2 teacher-forcing training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)


def sample_gif(npz: Path, gif: Path, frames: int = 32, scale: int = 2, fps: int = 8) -> None:
    """A row of all prompts' streams (first ``frames`` frames), upscaled ``scale`` x with 2 px grey gaps."""
    import imageio.v3 as iio

    data = np.load(npz)
    video = data["frames"][:, :frames]  # [P, F, H, W, 3] uint8
    p, f, h, w, _ = video.shape
    gap = 2
    canvas = np.full((f, h * scale, p * (w * scale + gap) - gap, 3), 96, dtype=np.uint8)
    for i in range(p):
        up = video[i].repeat(scale, axis=1).repeat(scale, axis=2)
        canvas[:, :, i * (w * scale + gap) : i * (w * scale + gap) + w * scale] = up
    iio.imwrite(gif, canvas, duration=1000 / fps, loop=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["loss", "gif"])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    args = ap.parse_args()
    (loss_png if args.what == "loss" else sample_gif)(args.src, args.dst)


if __name__ == "__main__":
    main()
