"""Optimization-profile shapes for the step graphs: ranges of the symbolic dims ``batch`` and ``past_len``.

The VAE decoder's graphs (``decode_first``, ``decode_step``) have ``batch`` as their only symbolic dim: the config fixes
their latents (one block of ``frames_per_block`` frames) and the shape of each cache, so their profiles vary batch only.

``past_len`` is the softmax layers' cache length in tokens. The first block sees an empty cache (0); the last block of
a ``max_frames``-frame stream sees ``max_frames - frames_per_block`` frames, or the rolling window's past when the
config has one. TensorRT tunes its kernels for ``opt``: a mid-stream length, in whole blocks. A stream asks for the
profile of its own length (:func:`stream_max_frames`), as ``arl2rt build --max-frames`` would build it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import BATCH, PAST_LEN, StateSpec
from arl2rt.model.config import ModelConfig

# 81 video frames = 21 latent frames, the clip length the Wan2.1 / Self Forcing models are trained and shown at.
DEFAULT_MAX_FRAMES = 21

Shape = tuple[int, ...]


@dataclass(frozen=True)
class DimRange:
    min: int
    opt: int
    max: int


def dim_ranges(cfg: ModelConfig, *, max_frames: int | None = None, max_batch: int = 1) -> dict[str, DimRange]:
    """Ranges of every symbolic dim of the StateSpec for streams of up to ``max_frames`` latent frames."""
    max_frames = DEFAULT_MAX_FRAMES if max_frames is None else max_frames
    fpb = cfg.frames_per_block
    if max_frames < fpb:
        raise Arl2rtError(
            f"--max-frames {max_frames}: expected at least one block ({fpb} latent frames) for {cfg.name}"
        )
    if max_frames > cfg.rope_max_positions:
        raise Arl2rtError(
            f"--max-frames {max_frames}: expected at most {cfg.rope_max_positions} (the RoPE table of {cfg.name})"
        )
    if max_batch < 1:
        raise Arl2rtError(f"--max-batch {max_batch}: expected >= 1")
    blocks = max_frames // fpb
    past_max, past_opt = (blocks - 1) * fpb, ((blocks - 1) // 2) * fpb
    if cfg.attn_window_frames != -1:
        window_past = cfg.attn_window_frames - fpb
        past_max, past_opt = min(past_max, window_past), min(past_opt, window_past)
    tpf = cfg.tokens_per_frame
    return {BATCH: DimRange(1, 1, max_batch), PAST_LEN: DimRange(0, past_opt * tpf, past_max * tpf)}


def stream_max_frames(cfg: ModelConfig, blocks: int) -> int:
    """The ``--max-frames`` whose profile a stream of ``blocks`` blocks needs: its length in latent frames, or, with a
    rolling window, the shortest length whose ranges are already those of every longer stream (the past stops
    growing, so a long windowed stream needs no RoPE-sized profile)."""
    fpb = cfg.frames_per_block
    frames = blocks * fpb
    if cfg.attn_window_frames != -1:
        # dim_ranges' opt, the middle block's past, reaches the window's past after 2 * ceil(past / fpb) + 1 blocks
        window_past = max(cfg.attn_window_frames - fpb, 0)
        frames = min(frames, (2 * math.ceil(window_past / fpb) + 1) * fpb)
    elif frames > cfg.rope_max_positions:
        raise Arl2rtError(
            f"a stream of {frames} latent frames keeps them all in its K/V cache ({cfg.name} has a global cache), and "
            f"TensorRT engines are built for at most {cfg.rope_max_positions} (the RoPE table); stream at most "
            f"{cfg.rope_max_positions // fpb} blocks on the tensorrt backend"
        )
    return frames


def profile_shapes(spec: StateSpec, graph: str, ranges: dict[str, DimRange]) -> dict[str, tuple[Shape, Shape, Shape]]:
    """input name -> (min, opt, max) shapes, for every input of ``graph`` with a symbolic dim."""
    shapes = {}
    for s in spec.inputs(graph):
        if all(isinstance(d, int) for d in s.shape):
            continue
        shapes[s.name] = tuple(
            tuple(d if isinstance(d, int) else getattr(ranges[d], which) for d in s.shape)
            for which in ("min", "opt", "max")
        )
    return shapes
