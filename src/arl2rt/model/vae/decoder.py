"""The Wan2.1 VAE decoder: DiT latents of one AR block in, that block's video frames and the new caches out.

From z to video it does what Wan's ``WanVAE.decode`` does: un-normalise with Wan's per-channel statistics
(``z * std + mean``; diffusers leaves this to its pipelines), the 1x1x1 post-quant conv (Wan's ``conv2``), the
decoder, and a clamp to [-1, 1]. Official decodes feed one latent frame at a time; a block of several frames gives
the same result because every time-mixing layer is a causal conv whose cache carries the frames it needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from arl2rt.model.vae.caches import VaeCacheSpec, cache_specs
from arl2rt.model.vae.config import VaeConfig
from arl2rt.model.vae.layers import CacheThread, CausalConv3d, Level, MidBlock, RMSNorm


class WanVaeDecoder(nn.Module):
    """Wan2.1's video decoder as a pure function of (latents, past caches); see :mod:`arl2rt.model.vae.stream`."""

    def __init__(self, config: VaeConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        self.post_quant = nn.Conv3d(config.z_dim, config.z_dim, 1)
        self.conv_in = CausalConv3d(config.z_dim, widths[0])
        self.mid = MidBlock(widths[0])
        self.levels = nn.ModuleList(Level(p.in_dim, p.out_dim, p.res_blocks, p.up) for p in config.levels())
        self.norm_out = RMSNorm(widths[-1], 3)
        self.conv_out = CausalConv3d(widths[-1], config.out_channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def cache_specs(self) -> tuple[VaeCacheSpec, ...]:
        return cache_specs(self.config, self.dtype)

    def decode(
        self, latents: torch.Tensor, past: Sequence[torch.Tensor] | None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``latents`` ``[B, z_dim, T, h, w]`` (the DiT's normalised latents, any float dtype) and the past caches
        in :func:`cache_specs` order, or ``None`` for the stream's first block. Returns the frames
        ``[B, out_channels, T_out, 8h, 8w]`` in [-1, 1] (fp32; float64 for a float64 decoder), with T_out = 4T, or
        4T - 3 for the first block, and the present caches. Shapes are not checked here
        (:func:`~arl2rt.model.vae.stream.decode_step` does that)."""
        caches = CacheThread(past)
        io = torch.float64 if self.dtype == torch.float64 else torch.float32  # a float64 reference stays float64
        mean = torch.tensor(self.config.latents_mean, dtype=io, device=latents.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.config.latents_std, dtype=io, device=latents.device).view(1, -1, 1, 1, 1)
        x = self.post_quant((latents.to(io) * std + mean).to(self.dtype))
        x = self.mid(self.conv_in(x, caches), caches)
        for level in self.levels:
            x = level(x, caches)
        x = self.conv_out(F.silu(self.norm_out(x)), caches)
        return x.to(io).clamp(-1.0, 1.0), caches.present
