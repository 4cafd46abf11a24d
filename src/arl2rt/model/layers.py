"""Small building blocks of the Wan-style DiT: norms, 3-D RoPE, time embedding, attention."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from arl2rt.errors import Arl2rtError
from arl2rt.model.fusion import fused, fusion_wanted


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
        return rms_norm(x, self.weight, self.eps)


@fused
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.to(accum_dtype(x.dtype))
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


@fused
def rms_norm_rope(
    x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor, num_heads: int
) -> torch.Tensor:
    """RMSNorm over the full width ``[B, L, H*D]``, split into heads, then RoPE: ``[B, L, H, D]``."""
    return apply_rope(rms_norm(x, weight, eps).unflatten(-1, (num_heads, -1)), cos, sin)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (or float64) for 16-bit activations, as Wan does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)


@fused
def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    dt = accum_dtype(x.dtype)
    w = weight.to(dt) if weight is not None else None
    b = bias.to(dt) if bias is not None else None
    return F.layer_norm(x.to(dt), x.shape[-1:], w, b, eps).to(x.dtype)


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + eps)`` over the last axis (docs/arl2.md §5), computed in fp32 or float64."""
    xf = x.to(accum_dtype(x.dtype))
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


@fused
def rope_l2norm(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``l2norm(apply_rope(x))``: the memory path's q̂ and k̂ (docs/arl2.md §2)."""
    return l2norm(apply_rope(x, cos, sin))


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


def attention_with_past(q, past_key, past_value, key, value) -> torch.Tensor:
    """Attention of q over ``[past ‖ block]`` K/V, all ``[B, L, H, D]``.

    Where fusion runs (CUDA, inference, 16-bit) the two parts are attended separately and merged by their
    log-sum-exp, so the cache is never copied: a ``torch.cat`` of it would cost a cache-sized transient and its
    bandwidth in every pass of every softmax layer.
    """
    if past_key.shape[1] == 0 or q.dtype not in (torch.float16, torch.bfloat16) or not fusion_wanted(q):
        return attention(q, torch.cat([past_key, key], dim=1), torch.cat([past_value, value], dim=1))
    o_past, lse_past = attention_lse(q, past_key, past_value)
    o_block, lse_block = attention_lse(q, key, value)
    return merge_attention(o_past, lse_past, o_block, lse_block)


def attention_with_padded_past(q, past_key, past_value, past_tokens: torch.Tensor, key, value) -> torch.Tensor:
    """:func:`attention_with_past` where ``past_key``/``past_value`` are a cache's whole buffers ``[B, S_cap, H, D]``
    of which only the first ``past_tokens`` (an int64 device tensor ``[1]``) are valid.

    The valid length lives on the device, so the kernels launched do not depend on it: a CUDA graph captured once
    replays at every length up to the capacity (docs/cuda-graphs.md). On CUDA at 16 bits the past is attended by
    flash attention's variable-length kernel, which reads only the used keys; elsewhere the unused tail is masked.
    """
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and not _VARLEN_FAILED:
        try:
            o_past, lse_past = padded_attention_lse(q, past_key, past_value, past_tokens)
        except (RuntimeError, TypeError) as exc:  # a torch build without flash's seqused_k: the masked form
            _varlen_failed(exc)
        else:
            o_block, lse_block = attention_lse(q, key, value)
            return merge_attention(o_past, lse_past, o_block, lse_block)
    used = torch.arange(past_key.shape[1], device=q.device) < past_tokens
    mask = torch.cat([used, torch.ones(key.shape[1], dtype=torch.bool, device=q.device)])
    # the tail beyond the valid length is whatever the buffer held (NaN even): zero it so the mask removes it
    unused = ~used[None, :, None, None]
    k = torch.cat([past_key.masked_fill(unused, 0), key], dim=1)
    v = torch.cat([past_value.masked_fill(unused, 0), value], dim=1)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask[None, None, None, :]).transpose(1, 2)


_VARLEN_FAILED = False


def _varlen_failed(exc: Exception) -> None:
    global _VARLEN_FAILED
    _VARLEN_FAILED = True
    warnings.warn(
        f"arl2rt: flash attention's variable-length kernel is unavailable ({type(exc).__name__}: {str(exc)[:200]}); "
        "attending whole caches with a masked SDPA instead (slower at long caches)",
        RuntimeWarning,
        stacklevel=3,
    )


def padded_attention_lse(
    q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, used: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output ``[B, Lq, H, D]`` and log-sum-exp ``[B, Lq, H]`` of q over the first ``used`` keys of each batch
    item's buffer ``[B, S_cap, H, D]`` (CUDA): the batch laid out as variable-length sequences of length S_cap with
    ``seqused_k`` limiting each to its valid keys. No keys (``used`` = 0) gives zeros and a log-sum-exp of -inf."""
    b, lq, h, d = q.shape
    cap = k_buf.shape[1]
    cu_q = torch.arange(0, (b + 1) * lq, lq, dtype=torch.int32, device=q.device)
    cu_k = torch.arange(0, (b + 1) * cap, cap, dtype=torch.int32, device=q.device)
    seqused = used.to(torch.int32).expand(b).contiguous()
    out, lse = torch.ops.aten._flash_attention_forward(
        q.reshape(b * lq, h, d),
        k_buf.view(b * cap, h, d),
        v_buf.view(b * cap, h, d),
        cu_q,
        cu_k,
        lq,
        cap,
        0.0,
        False,
        False,
        seqused_k=seqused,
    )[:2]
    # flash's variable-length statistics are [H, total_q] (newer) or [B, H, max_q] (older builds)
    lse = lse.reshape(h, b, lq).permute(1, 2, 0) if lse.dim() == 2 else lse.transpose(1, 2)
    lse = lse.masked_fill(lse == float("inf"), float("-inf"))  # an empty row's +inf would poison the merge
    return out.view(b, lq, h, d), lse


def attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Output ``[B, Lq, H, D]`` and natural-log log-sum-exp of the scores ``[B, Lq, H]`` (fp32), fused on CUDA."""
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    if q.is_cuda:
        # cuDNN is the fastest here at long key lengths (the SDPA priority the benchmarks use); flash where it is not
        # built. Both are aten's own kernels behind F.scaled_dot_product_attention, asked for the statistics.
        try:
            out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(qt, kt, vt, None, True)[:2]
        except RuntimeError:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(qt, kt, vt)[:2]
    else:
        scores = (qt.to(accum_dtype(q.dtype)) @ kt.to(accum_dtype(q.dtype)).transpose(-1, -2)) / q.shape[-1] ** 0.5
        lse = torch.logsumexp(scores, dim=-1)
        out = (torch.softmax(scores, dim=-1) @ vt.to(scores.dtype)).to(q.dtype)
    b, h, lq = qt.shape[:3]
    return out.transpose(1, 2), lse.reshape(b, h, lq).transpose(1, 2)


@fused
def merge_attention(o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor, lse_b: torch.Tensor) -> torch.Tensor:
    """Softmax attention over the union of two key sets from each set's output and log-sum-exp ``[B, L, H]``."""
    m = torch.maximum(lse_a, lse_b)
    w_a, w_b = (lse_a - m).exp()[..., None], (lse_b - m).exp()[..., None]
    dt = accum_dtype(o_a.dtype)
    return ((o_a.to(dt) * w_a + o_b.to(dt) * w_b) / (w_a + w_b)).to(o_a.dtype)


def patch_embed(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """Tokens ``[B, F'*H'*W', dim]`` in (frame, row, col) order of a patchifying Conv3d (stride = kernel, no padding)
    applied to ``x`` ``[B, C, F, H, W]``: the same sums as one GEMM over the patches.

    Exported graphs then hold two 6-D Transposes and a MatMul instead of a 3-D Conv, which onnxruntime's CUDA EP ran
    at 3 ms per pass in bf16 for a 0.9 GFLOP patch embedding (benchmarks/results/ort_cuda.md)."""
    (pt, ph, pw), dim = conv.kernel_size, conv.out_channels
    b, c, f, h, w = x.shape
    if f % pt or h % ph or w % pw:
        raise Arl2rtError(
            f"latents {list(x.shape)}: expected frames, height and width that are multiples of the patch {pt, ph, pw}"
        )
    fp, hp, wp = f // pt, h // ph, w // pw
    x = x.reshape(b, c * f, hp, ph, wp, pw).permute(0, 1, 2, 4, 3, 5)  # [B, C*F, H', W', ph, pw]
    x = x.reshape(b, c, fp, pt, hp * wp, ph * pw).permute(0, 2, 4, 1, 3, 5)  # [B, F', H'W', C, pt, ph*pw]
    return F.linear(x.reshape(b, fp * hp * wp, c * pt * ph * pw), conv.weight.reshape(dim, -1), conv.bias)


class FeedForward(nn.Sequential):
    """Linear -> GELU(tanh) -> Linear, keys ``ffn.0`` and ``ffn.2`` as in Wan.

    Where fusion runs (CUDA, inference) the GELU is the first GEMM's epilogue (cuBLASLt's tanh-GELU on the fp32
    accumulator): the hidden activation, 5.8x the width, is written once instead of written, read and written again.
    """

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, down = self[0], self[2]
        if not fusion_wanted(x) or x.dtype not in (torch.float16, torch.bfloat16) or not isinstance(up, nn.Linear):
            return super().forward(x)  # (FP8 layers apply the GELU in the second layer's input quantization)
        hidden = torch._addmm_activation(up.bias, x.reshape(-1, x.shape[-1]), up.weight.t(), use_gelu=True)
        return down(hidden.view(*x.shape[:-1], -1))
