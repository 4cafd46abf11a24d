"""Small building blocks of the Wan-style DiT: norms, 3-D RoPE, time embedding, attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def accum_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype norms, gates and RoPE run in: fp32 for 16-bit activations, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


class RMSNorm(nn.Module):
    """Wan's RMSNorm: normalise in fp32 (or float64), cast back, then scale."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(accum_dtype(x.dtype))
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (or float64) for 16-bit activations, as Wan does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = accum_dtype(x.dtype)
        w = self.weight.to(dt) if self.weight is not None else None
        b = self.bias.to(dt) if self.bias is not None else None
        return F.layer_norm(x.to(dt), self.normalized_shape, w, b, self.eps).to(x.dtype)


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + eps)`` over the last axis (ARL2-SPEC.md §5), computed in fp32 or float64."""
    xf = x.to(accum_dtype(x.dtype))
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


class HeadwiseLinear(nn.Module):
    """One D x D matrix per head (ARL2's φ maps), stored as upstream's grouped 1x1 Conv1d: ``weight [H*D, D, 1]``."""

    def __init__(self, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        eye = torch.eye(head_dim).repeat(num_heads, 1)
        self.weight = nn.Parameter(eye[..., None].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, L, H, D]`` -> ``[B, L, H, D]``, per head ``y = M_h x``."""
        m = self.weight.view(self.num_heads, self.head_dim, self.head_dim).to(x.dtype)
        return torch.einsum("blhi,hoi->blho", x, m)


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per head for (time, height, width): Wan's split, 22/21/21 at head_dim 128."""
    hw = head_dim // 6
    return head_dim // 2 - 2 * hw, hw, hw


def _inv_freq(pairs: int, theta: float) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(pairs, dtype=torch.float64, device="cpu") * 2 / (2 * pairs))


class RopeTables:
    """3-D RoPE angle tables, built in float64 once, as Wan builds its 1024-position table.

    Time angles are a table of ``max_positions`` absolute latent-frame indices (gathered by frame offset, so the
    exported graph holds the same rounded values); height and width angles are fixed for a given latent size.
    Built on the CPU whatever the default device, so a model constructed on ``meta`` (checkpoint loading) keeps them.
    """

    def __init__(self, head_dim: int, grid_h: int, grid_w: int, theta: float, max_positions: int) -> None:
        ct, ch, cw = rope_split(head_dim)
        self.max_positions = max_positions
        self.time = torch.outer(torch.arange(max_positions, dtype=torch.float64, device="cpu"), _inv_freq(ct, theta))
        hh = torch.outer(torch.arange(grid_h, dtype=torch.float64, device="cpu"), _inv_freq(ch, theta))
        ww = torch.outer(torch.arange(grid_w, dtype=torch.float64, device="cpu"), _inv_freq(cw, theta))
        self.spatial = torch.cat(
            [hh[:, None, :].expand(grid_h, grid_w, ch), ww[None, :, :].expand(grid_h, grid_w, cw)], dim=-1
        ).reshape(grid_h * grid_w, ch + cw)
        self._cache: dict = {}

    def cos_sin(
        self, frame_offset: torch.Tensor | int, num_frames: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[F*h*w, head_dim/2]`` for frames ``frame_offset .. frame_offset+num_frames-1``."""
        key = (dtype, device)
        tables = self._cache.get(key)
        if tables is None:
            tables = tuple(
                t.to(device=device, dtype=dtype)
                for t in (self.time.cos(), self.time.sin(), self.spatial.cos(), self.spatial.sin())
            )
            # Tables made while torch.export traces are fake tensors: keeping them would poison later eager calls.
            if not torch.compiler.is_compiling():
                self._cache[key] = tables
        tcos, tsin, scos, ssin = tables
        idx = torch.arange(num_frames, device=device) + frame_offset
        hw = scos.shape[0]

        def build(tt: torch.Tensor, st: torch.Tensor) -> torch.Tensor:
            t_part = tt[idx][:, None, :].expand(num_frames, hw, tt.shape[-1])
            s_part = st[None].expand(num_frames, hw, st.shape[-1])
            return torch.cat([t_part, s_part], dim=-1).reshape(num_frames * hw, -1)

        return build(tcos, scos), build(tsin, ssin)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of x ``[B, L, H, D]`` by angles whose cos/sin are ``[L, D/2]``; in the table's dtype."""
    b, l, h, d = x.shape
    xr = x.to(cos.dtype).reshape(b, l, h, d // 2, 2)
    a, c = xr[..., 0], xr[..., 1]
    cs, sn = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack([a * cs - c * sn, a * sn + c * cs], dim=-1).reshape(b, l, h, d).to(x.dtype)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's 1-D sinusoidal timestep embedding ``[..., dim]`` = cat(cos, sin), in fp32 or float64."""
    half = dim // 2
    dt = accum_dtype(t.dtype)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=dt, device=t.device) / half)
    args = t.to(dt)[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bidirectional softmax attention, q ``[B, Lq, H, D]``, k/v ``[B, Lk, H, D]`` -> ``[B, Lq, H, D]``."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


class FeedForward(nn.Sequential):
    """Linear -> GELU(tanh) -> Linear, keys ``ffn.0`` and ``ffn.2`` as in Wan."""

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
