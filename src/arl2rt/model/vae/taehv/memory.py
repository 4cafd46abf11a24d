"""The TAEHV decoder's state between AR blocks: each memory block's input at the block's last frame, listed from the
config alone.

A memory block combines every frame of its input with the frame before it, so the one frame it needs from the past
is its input's last frame of the previous block. Those nine tensors (three per level) are the decoder's whole state:
the time-grow layers work frame by frame, and the frames TAEHV drops at a clip's start are the first block's business
(:meth:`TaehvConfig.frames_out`), so nothing else carries over. Memory ``i`` enters a step as the i-th past cache and
leaves it as the i-th present one, shaped ``[batch, width, 1, scale * h, scale * w]`` for a latent of ``h x w``, in
the decoder's precision, in the order the decode meets the blocks; the module and this list both walk
:meth:`TaehvConfig.levels`. The state contract names memory i ``past_vae.i`` / ``present_vae.i``, as it names the
Wan2.1 decoder's caches.
"""

from __future__ import annotations

import torch

from arl2rt.model.vae.caches import VaeCacheSpec, dtype_name
from arl2rt.model.vae.taehv.config import MEM_BLOCKS, TaehvConfig

MEMORY_FRAMES = 1  # a memory block looks one frame back


def memory_specs(config: TaehvConfig, dtype: torch.dtype | str = "float32") -> tuple[VaeCacheSpec, ...]:
    """Every memory of the decoder in step order (9), in precision ``dtype`` (the decoder's weights')."""
    dt = dtype_name(dtype)
    blocks = [(level, j) for level in config.levels() for j in range(MEM_BLOCKS)]
    return tuple(
        VaeCacheSpec(i, f"levels.{level.index}.mem.{j}", level.width, level.scale, dt, MEMORY_FRAMES)
        for i, (level, j) in enumerate(blocks)
    )


def memory_bytes(
    config: TaehvConfig, batch: int, latent_height: int, latent_width: int, dtype: torch.dtype | str = "float16"
) -> int:
    """Bytes of all memories of one decode stream (taew2_1 at 480x832, latent 60x104, fp16: 64 MiB per stream)."""
    return sum(s.nbytes(batch, latent_height, latent_width) for s in memory_specs(config, dtype))
