"""Building blocks of the Wan2.1 VAE decoder, with every causal-conv cache passed in and out explicitly.

A :class:`CacheThread` walks the decoder's caches in step order: each time-mixing conv takes the next past cache (or
none at the stream's start) and leaves its present cache behind. No layer keeps state between calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from arl2rt.model.vae.caches import CACHE_FRAMES


class CacheThread:
    """The past caches of one step (``None``: the stream's first block) and the present caches it produces."""

    def __init__(self, past: Sequence[torch.Tensor] | None) -> None:
        self.past = past
        self.present: list[torch.Tensor] = []

    @property
    def first(self) -> bool:
        return self.past is None

    def next_past(self) -> torch.Tensor | None:
        return None if self.past is None else self.past[len(self.present)]

    def keep(self, present: torch.Tensor) -> None:
        self.present.append(present)


class CausalConv3d(nn.Conv3d):
    """A 3-D conv that sees only the current and earlier frames: the time axis is extended at the front by the
    past cache, or at the stream's start by zeros (exactly what the official decode's padding does), and the last
    ``CACHE_FRAMES`` frames of that extended input become the present cache."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int, int] = (3, 3, 3)) -> None:
        kt, kh, kw = kernel_size
        if kt - 1 != CACHE_FRAMES:
            raise ValueError(f"causal kernel needs {CACHE_FRAMES + 1} frames, got {kt}")
        super().__init__(in_channels, out_channels, kernel_size, padding=(0, kh // 2, kw // 2))

    def forward(self, x: torch.Tensor, caches: CacheThread) -> torch.Tensor:  # type: ignore[override]
        past = caches.next_past()
        x = F.pad(x, (0, 0, 0, 0, CACHE_FRAMES, 0)) if past is None else torch.cat([past, x], dim=2)
        caches.keep(x[:, :, -CACHE_FRAMES:].contiguous())
        return super().forward(x)


class RMSNorm(nn.Module):
    """Scale each position's channel vector to unit L2 norm times sqrt(C), then by a learnt per-channel weight
    (the same as RMS normalisation over channels). Half-precision inputs are normalised in fp32."""

    def __init__(self, dim: int, spatial_dims: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, *([1] * spatial_dims)))
        self.scale = dim**0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        return F.normalize(wide, dim=1).to(x.dtype) * self.scale * self.weight


class ResBlock(nn.Module):
    """norm, SiLU, causal conv, norm, SiLU, causal conv, plus the input (through a 1x1x1 conv when widths differ)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(in_dim, 3)
        self.conv1 = CausalConv3d(in_dim, out_dim)
        self.norm2 = RMSNorm(out_dim, 3)
        self.conv2 = CausalConv3d(out_dim, out_dim)
        self.shortcut = nn.Conv3d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor, caches: CacheThread) -> torch.Tensor:
        y = self.conv1(F.silu(self.norm1(x)), caches)
        y = self.conv2(F.silu(self.norm2(y)), caches)
        return y + (x if self.shortcut is None else self.shortcut(x))


class FrameAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame on its own (no time mixing, so no cache)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, 2)
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x.transpose(1, 2).reshape(b * t, c, h, w))
        # one head kept as an axis: [b*t, 1, h*w, c] (ONNX's attention export wants 4-D q/k/v)
        q, k, v = self.qkv(y).reshape(b * t, 3, c, h * w).transpose(-1, -2).chunk(3, dim=1)
        y = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b * t, c, h, w)
        return x + self.proj(y).reshape(b, t, c, h, w).transpose(1, 2)


class MidBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.res_in = ResBlock(dim, dim)
        self.attn = FrameAttention(dim)
        self.res_out = ResBlock(dim, dim)

    def forward(self, x: torch.Tensor, caches: CacheThread) -> torch.Tensor:
        return self.res_out(self.attn(self.res_in(x, caches)), caches)


class Upsampler(nn.Module):
    """Space x2 (nearest, then a 3x3 conv halving the channels); with ``temporal``, first time x2 as well: a causal
    (3,1,1) conv makes two channel groups that become two interleaved frames.

    The stream's very first frame is not doubled: it passes the time conv untouched (the official decode's "Rep"
    first chunk), and the frames after it start the time conv's history from zeros, not from that first frame.
    """

    def __init__(self, dim: int, temporal: bool) -> None:
        super().__init__()
        self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1)) if temporal else None
        self.conv = nn.Conv2d(dim, dim // 2, 3, padding=1)

    def forward(self, x: torch.Tensor, caches: CacheThread) -> torch.Tensor:
        if self.time_conv is not None:
            x = self._double_time(x, caches)
        b, c, t, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * t, c, h, 1, w, 1)
        # nearest x2 by duplication: the same values as nearest-exact at factor 2, in plain reshape ops
        y = self.conv(y.expand(b * t, c, h, 2, w, 2).reshape(b * t, c, 2 * h, 2 * w))
        return y.reshape(b, t, c // 2, 2 * h, 2 * w).transpose(1, 2)

    def _double_time(self, x: torch.Tensor, caches: CacheThread) -> torch.Tensor:
        assert self.time_conv is not None
        head = None
        if caches.first:
            head, x = x[:, :, :1], x[:, :, 1:]
            if x.shape[2] == 0:  # a one-frame first block: the time conv's history is still all zeros
                b, c, _, h, w = head.shape
                caches.keep(head.new_zeros(b, c, CACHE_FRAMES, h, w))
                return head
        y = self.time_conv(x, caches)
        b, c2, t, h, w = y.shape
        y = y.reshape(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)
        return y if head is None else torch.cat([head, y], dim=2)


class Level(nn.Module):
    """One decoder level: residual blocks, then an optional up-sampler."""

    def __init__(self, in_dim: int, out_dim: int, res_blocks: int, up: str | None) -> None:
        super().__init__()
        self.res = nn.ModuleList(ResBlock(in_dim if j == 0 else out_dim, out_dim) for j in range(res_blocks))
        self.up = None if up is None else Upsampler(out_dim, temporal=up == "up3d")

    def forward(self, x: torch.Tensor, caches: CacheThread) -> torch.Tensor:
        for block in self.res:
            x = block(x, caches)
        return x if self.up is None else self.up(x, caches)
