"""A simple colour-blob detector for bouncing-balls frames (numpy only), and the stream quality metrics built on it.

A pixel belongs to a palette colour when it is within ``tol`` (RGB distance, pixels in [-1, 1]) of it; 4-connected
components of one colour with at least ``min_area`` pixels are balls. Soft edges (colour mixed with black) fall
outside ``tol``, so a ball is its solid core (about 29 px at radius 3).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from data import PALETTE

COLOUR_NAMES = tuple(PALETTE)
_RGB = np.array([PALETTE[c] for c in COLOUR_NAMES], dtype=np.float32)  # [C, 3]


@dataclass(frozen=True)
class Blob:
    colour: str
    y: float
    x: float
    area: int


def _components(mask: np.ndarray) -> np.ndarray:
    """Labels ``[N, H, W]`` of 4-connected components per frame (0 = background), by min-label propagation."""
    n, h, w = mask.shape
    big = n * h * w + 1
    labels = np.where(mask, np.arange(1, n * h * w + 1).reshape(n, h, w), big)
    while True:
        m = labels.copy()
        m[:, 1:] = np.minimum(m[:, 1:], labels[:, :-1])
        m[:, :-1] = np.minimum(m[:, :-1], labels[:, 1:])
        m[:, :, 1:] = np.minimum(m[:, :, 1:], labels[:, :, :-1])
        m[:, :, :-1] = np.minimum(m[:, :, :-1], labels[:, :, 1:])
        m = np.where(mask, m, big)
        if np.array_equal(m, labels):
            return np.where(mask, labels, 0)
        labels = m


def detect(frames: np.ndarray, tol: float = 0.6, min_area: int = 6) -> list[list[Blob]]:
    """Blobs of every frame of ``frames [F, 3, H, W]`` (RGB in [-1, 1])."""
    px = np.moveaxis(frames.astype(np.float32), 1, -1)  # [F, H, W, 3]
    dist = np.linalg.norm(px[..., None, :] - _RGB, axis=-1)  # [F, H, W, C]
    nearest = dist.argmin(-1)
    close = dist.min(-1) < tol
    result: list[list[Blob]] = [[] for _ in range(frames.shape[0])]
    for ci, name in enumerate(COLOUR_NAMES):
        labels = _components(close & (nearest == ci))
        for f in range(frames.shape[0]):
            ids, counts = np.unique(labels[f], return_counts=True)
            for lab, area in zip(ids, counts):
                if lab == 0 or area < min_area:
                    continue
                ys, xs = np.nonzero(labels[f] == lab)
                result[f].append(Blob(name, float(ys.mean()), float(xs.mean()), int(area)))
    return result


def colour_counts(blobs: list[Blob]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for b in blobs:
        counts[b.colour] = counts.get(b.colour, 0) + 1
    return counts


def max_displacement(a: list[Blob], b: list[Blob]) -> float | None:
    """Largest centroid move between two frames under the best same-colour matching; None if counts differ."""
    if colour_counts(a) != colour_counts(b):
        return None
    worst = 0.0
    for colour in colour_counts(a):
        pa = [(x.y, x.x) for x in a if x.colour == colour]
        pb = [(x.y, x.x) for x in b if x.colour == colour]
        best = min(
            max(np.hypot(p[0] - q[0], p[1] - q[1]) for p, q in zip(pa, perm)) for perm in itertools.permutations(pb)
        )
        worst = max(worst, best)
    return worst


@dataclass
class StreamQuality:
    prompt: str
    frames: int
    count_ok: float  # fraction of frames whose detected ball count equals the prompt's
    colours_ok: float  # fraction of frames whose per-colour counts equal the prompt's
    motion_ok: float  # fraction of consecutive pairs with the prompt's balls in both and every ball moved <= max speed
    speed_ok: float  # of the consecutive pairs whose blobs can be matched (same per-colour counts), every move <= max
    blank: int  # frames with no coloured pixel at all
    saturated: int  # frames with more than 40 % non-background pixels
    mean_coloured: float  # mean fraction of coloured (non-background) pixels


def stream_quality(
    prompt: str, want: dict[str, int], frames: np.ndarray, max_speed: float, blobs: list[list[Blob]] | None = None
) -> StreamQuality:
    """Quality of one stream ``frames [F, 3, H, W]`` against the prompt's per-colour counts ``want``.

    ``blobs``: ``detect(frames)`` where the caller already has it.
    """
    blobs = detect(frames) if blobs is None else blobs
    n_want = sum(want.values())
    count_ok = np.mean([len(b) == n_want for b in blobs])
    moves = [max_displacement(a, b) for a, b in zip(blobs, blobs[1:])]
    right = [colour_counts(b) == want for b in blobs]
    pairs = [ra and rb and m is not None and m <= max_speed for ra, rb, m in zip(right, right[1:], moves)]
    motion_ok = np.mean(pairs) if pairs else float("nan")  # a one-frame stream has no motion to judge
    matched = [m <= max_speed for m in moves if m is not None]
    speed_ok = np.mean(matched) if matched else float("nan")
    coloured = (np.abs(frames + 1).max(axis=1) > 0.3).mean(axis=(1, 2))  # any channel clearly above black
    return StreamQuality(
        prompt,
        frames.shape[0],
        float(count_ok),
        float(np.mean(right)),
        float(motion_ok),
        float(speed_ok),
        int((coloured == 0).sum()),
        int((coloured > 0.4).sum()),
        float(coloured.mean()),
    )
