"""The TAEHV decoder (``taew2_1``): DiT latents of one AR block in, that block's frames and the new memories out.

Frames of a block go through each layer together, flattened into the batch, so a block of T latent frames costs one
call per layer. Memory blocks see the frame before each frame: inside the block, the block's own previous frame;
for the block's first frame, the past memory, or zeros at the stream's start (what TAEHV does for a clip's first
frame). At the stream's start the first ``temporal_factor - 1`` frames are dropped, as TAEHV drops them from a whole
clip; later blocks keep all their frames. Nothing else differs between the first block and the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from arl2rt.model.vae.caches import VaeCacheSpec
from arl2rt.model.vae.taehv.config import LATENT_CLAMP, MEM_BLOCKS, TaehvConfig
from arl2rt.model.vae.taehv.memory import memory_specs


def _conv3x3(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)


class MemoryBlock(nn.Module):
    """Three 3x3 convs (ReLU between them) over each frame stacked with the one before it, plus the frame, then ReLU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(2 * width, width)
        self.conv2 = _conv3x3(width, width)
        self.conv3 = _conv3x3(width, width)

    def forward(self, x: torch.Tensor, frames: int, past: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``[B * frames, C, H, W]`` (each batch entry's frames in order); ``past`` ``[B, C, 1, H, W]``, the
        input's frame before this block, or None (zeros). Returns the output and the present memory."""
        _, c, h, w = x.shape
        seq = x.reshape(-1, frames, c, h, w)
        # [B, C, 1, H, W] and [B, 1, C, H, W] hold their elements in the same order: a reshape moves nothing
        before = seq.new_zeros(seq.shape[0], 1, c, h, w) if past is None else past.reshape(-1, 1, c, h, w)
        previous = torch.cat([before, seq[:, :-1]], dim=1).reshape(-1, c, h, w)
        y = F.relu(self.conv1(torch.cat([x, previous], dim=1)))
        y = self.conv3(F.relu(self.conv2(y)))
        # a copy: a view would keep the whole block's activations alive as long as the stream holds its memory
        return F.relu(y + x), seq[:, -1:].reshape(-1, c, 1, h, w).clone()


class TimeGrow(nn.Module):
    """A 1x1 conv to ``stride`` channel groups, which become ``stride`` consecutive frames (group k: frame k)."""

    def __init__(self, width: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        return self.conv(x).reshape(-1, c, h, w)


class DecoderLevel(nn.Module):
    """Memory blocks, then space x2 (nearest), time x ``stride``, and a 3x3 conv to the next width."""

    def __init__(self, width: int, out_width: int, stride: int) -> None:
        super().__init__()
        self.mem = nn.ModuleList(MemoryBlock(width) for _ in range(MEM_BLOCKS))
        self.grow = TimeGrow(width, stride)
        self.proj = _conv3x3(width, out_width, bias=False)


def _double_space(x: torch.Tensor) -> torch.Tensor:
    """Nearest x2 by duplication, in plain reshape ops (the values of nearest interpolation at factor 2)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h, 1, w, 1).expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


class TaehvDecoder(nn.Module):
    """TAEHV's video decoder as a pure function of (latents, past memories); see :mod:`arl2rt.model.vae.stream`."""

    def __init__(self, config: TaehvConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        self.conv_in = _conv3x3(config.z_dim, widths[0])
        self.levels = nn.ModuleList(DecoderLevel(p.width, p.out_width, p.stride) for p in config.levels())
        self.conv_out = _conv3x3(widths[-1], config.out_channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def cache_specs(self) -> tuple[VaeCacheSpec, ...]:
        return memory_specs(self.config, self.dtype)

    def decode(
        self, latents: torch.Tensor, past: Sequence[torch.Tensor] | None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``latents`` ``[B, z_dim, T, h, w]`` (the DiT's latents, any float dtype) and the past memories in
        :func:`memory_specs` order, or ``None`` for the stream's first block. Returns the frames
        ``[B, 3, T_out, 8h, 8w]`` in [-1, 1] (fp32; float64 for a float64 decoder), with T_out = 4T, or 4T - 3 for
        the first block, and the present memories. Shapes are not checked here
        (:func:`~arl2rt.model.vae.stream.decode_step` does that)."""
        io = torch.float64 if self.dtype == torch.float64 else torch.float32  # a float64 reference stays float64
        _, _, t, h, w = latents.shape
        x = torch.tanh(latents.to(io) / LATENT_CLAMP) * LATENT_CLAMP
        x = x.to(self.dtype).transpose(1, 2).reshape(-1, self.config.z_dim, h, w)
        x = F.relu(self.conv_in(x))
        present: list[torch.Tensor] = []
        for plan, level in zip(self.config.levels(), self.levels):
            for block in level.mem:
                x, memory = block(x, t * plan.rate, None if past is None else past[len(present)])
                present.append(memory)
            x = level.proj(level.grow(_double_space(x)))
        y = self.conv_out(F.relu(x))
        frames = y.reshape(-1, t * self.config.temporal_factor, *y.shape[1:]).transpose(1, 2)
        if past is None:
            frames = frames[:, :, self.config.temporal_factor - 1 :]
        # TAEHV's RGB is in [0, 1]; the video writers take [-1, 1], as the Wan2.1 decoder makes it
        return frames.to(io).clamp(0.0, 1.0) * 2.0 - 1.0, present
