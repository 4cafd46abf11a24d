"""The Wan2.1-style causal DiT with ARL2 hybrid layers, run one AR block (one step) at a time.

Parameter names follow Wan2.1 / Causal Forcing (``blocks.{i}.self_attn.q.weight``, ``head.head.weight``, ...) so
checkpoints load by name; hybrid layers add ARL2's parameters (``a_proj``, ``A_log``, ``phi_q``, ...) and keep the
memory path's LoRA factors unmerged under upstream's names (``lora_q_A [dim, r]``, ``lora_q_B [r, dim]``, same for k
and v): the memory path reuses the shared ``W_q x`` (an earlier draft had merged ``q_mem``/``k_mem``/``v_mem`` Linear
layers, which cost a dim x dim GEMM more per pass; they no longer exist). FFN LoRA is merged into ``ffn.0``/``ffn.2``.

State is explicit: a step takes the pre-step GDN states and past K/V and returns new ones, never hiding them in the
module. That is what lets the exporter turn a step into a graph with the state as named inputs and outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from arl2rt.errors import Arl2rtError
from arl2rt.model.attention import CrossAttention, HybridSelfAttention, SoftmaxSelfAttention
from arl2rt.model.config import ModelConfig
from arl2rt.model.fusion import fused
from arl2rt.model.layers import (
    FeedForward,
    LayerNorm,
    RopeTables,
    accum_dtype,
    layer_norm,
    patch_embed,
    sinusoidal_embedding,
)


@dataclass
class StepOutput:
    """What one step returns: the flow velocity and, for a committing (clean) step, the new states and block K/V."""

    velocity: torch.Tensor
    states: dict[int, torch.Tensor]
    keys: dict[int, torch.Tensor]
    values: dict[int, torch.Tensor]


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, frames: int) -> torch.Tensor:
    """Per-latent-frame AdaLN: x ``[B, F*hw, dim]``, shift/scale ``[B, F, dim]``."""
    xf = x.to(shift.dtype).unflatten(1, (frames, -1))
    return (xf * (1 + scale[:, :, None]) + shift[:, :, None]).flatten(1, 2).to(x.dtype)


def _gated(y: torch.Tensor, gate: torch.Tensor, frames: int) -> torch.Tensor:
    return (y.to(gate.dtype).unflatten(1, (frames, -1)) * gate[:, :, None]).flatten(1, 2).to(y.dtype)


@fused
def norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, frames: int, eps: float) -> torch.Tensor:
    """LayerNorm without affine, then per-latent-frame AdaLN."""
    return _modulate(layer_norm(x, None, None, eps), shift, scale, frames)


@fused
def gated_add(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, frames: int) -> torch.Tensor:
    """The residual update ``x + gate * y`` with a per-latent-frame gate."""
    return x + _gated(y, gate, frames)


class DiTBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, hybrid: bool) -> None:
        super().__init__()
        self.hybrid = hybrid
        self.norm1 = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        if hybrid:
            self.self_attn = HybridSelfAttention(cfg.dim, cfg.num_heads, cfg.eps, cfg.lora_rank, cfg.lora_scale)
        else:
            self.self_attn = SoftmaxSelfAttention(cfg.dim, cfg.num_heads, cfg.eps)
        self.norm3 = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(cfg.dim, cfg.num_heads, cfg.eps)
        self.norm2 = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.ffn = FeedForward(cfg.dim, cfg.ffn_dim)
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)

    def forward(self, x, e, cos, sin, context_kv, state=None, past_kv=None, write=False, past_tokens=None):
        """x ``[B, L, dim]``, e ``[B, F, 6, dim]`` (time projection). Returns x and the layer's new state or K/V."""
        frames = e.shape[1]
        e = (self.modulation.to(e.dtype)[:, None] + e).unbind(2)
        y_in = norm_modulate(x, e[0], e[1], frames, self.norm1.eps)
        if self.hybrid:
            y, new = self.self_attn(y_in, cos, sin, state, write)
        else:
            y, k, v = self.self_attn(y_in, cos, sin, *past_kv, past_tokens)
            new = (k, v)
        x = gated_add(x, y, e[2], frames)
        x = x + self.cross_attn(self.norm3(x), *context_kv)
        return gated_add(x, self.ffn(norm_modulate(x, e[3], e[4], frames, self.norm2.eps)), e[5], frames), new


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        patch = cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
        self.norm = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_channels * patch)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x ``[B, L, dim]``, e ``[B, F, dim]`` (time embedding before projection)."""
        shift, scale = (self.modulation.to(e.dtype)[:, None] + e[:, :, None]).unbind(2)
        return self.head(norm_modulate(x, shift, scale, e.shape[1], self.norm.eps))


def _write_block_kv(buffers, k: torch.Tensor, v: torch.Tensor, past_tokens: torch.Tensor | None):
    """Write a layer's block K/V into its ``kv_out`` buffers and return those: whole (a cache slot) or, with
    ``past_tokens``, at that device-held offset of the cache's buffers (an index copy, so a captured graph writes
    wherever the cache ends; the caller, who knows the length, takes the block's slice)."""
    if past_tokens is None:
        buffers[0].copy_(k)
        buffers[1].copy_(v)
    else:
        index = past_tokens + torch.arange(k.shape[1], device=k.device)
        buffers[0].index_copy_(1, index, k)
        buffers[1].index_copy_(1, index, v)
    return buffers


class CausalDiT(nn.Module):
    """Wan2.1 causal DiT; ``cfg.hybrid_layers`` use ARL2 hybrid attention, the others softmax over a KV cache."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hybrid = set(cfg.hybrid_layers)
        self.patch_embedding = nn.Conv3d(cfg.in_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList(DiTBlock(cfg, i in hybrid) for i in range(cfg.num_layers))
        self.head = Head(cfg)
        grid_h = cfg.latent_height // cfg.patch_size[1]
        grid_w = cfg.latent_width // cfg.patch_size[2]
        self.rope = RopeTables(cfg.head_dim, grid_h, grid_w, cfg.rope_theta, cfg.rope_max_positions)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def encode_context(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Text embeddings ``[B, L_text, text_dim]`` -> per-layer cross-attention (K, V), each ``[B, L_text, H, D]``."""
        ctx = self.text_embedding(context.to(self.dtype))
        return [blk.cross_attn.context_kv(ctx) for blk in self.blocks]

    def step(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        frame_offset: torch.Tensor | int,
        context_kv: list[tuple[torch.Tensor, torch.Tensor]],
        states: dict[int, torch.Tensor],
        past_kv: dict[int, tuple[torch.Tensor, torch.Tensor]],
        write: bool,
        kv_out: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
        past_tokens: torch.Tensor | None = None,
    ) -> StepOutput:
        """One pass of the DiT over one AR block.

        Args:
            x: latents ``[B, C, F, H, W]`` of the block's F latent frames.
            t: timestep per frame ``[B, F]`` (0..1000; 0 for the clean pass).
            frame_offset: absolute index of the block's first latent frame (RoPE time position).
            context_kv: per-layer text K/V from :meth:`encode_context`.
            states: hybrid layer index -> pre-update GDN state ``[B, H, D, D]`` (read only).
            past_kv: softmax layer index -> (K, V) ``[B, S_past, H, D]`` of earlier blocks (RoPE'd K).
            write: the clean pass; returns new states and this block's K/V. Denoising passes leave states alone.
            kv_out: softmax layer index -> (K, V) buffers ``[B, S_block, H, D]`` (e.g. the cache's next slot) that
                layer's block K/V are written into as soon as it has made them, and returned as: the layers' K/V
                are then never all alive at once.
            past_tokens: the number of valid past tokens as an int64 device tensor ``[1]``, for the CUDA-graph path
                (docs/cuda-graphs.md): ``past_kv`` are then each cache's whole buffers ``[B, S_cap, H, D]`` valid up to
                that length, and ``kv_out`` (if given) the same buffers, the block's K/V written at that offset and
                the buffers returned whole.
        """
        cfg = self.cfg
        b, _, f, hh, ww = x.shape
        if isinstance(frame_offset, int) and not 0 <= frame_offset <= cfg.rope_max_positions - f:
            raise Arl2rtError(
                f"frame offset {frame_offset} + {f} frames exceeds the {cfg.rope_max_positions}-position RoPE table"
            )
        pt, ph, pw = cfg.patch_size
        tokens = patch_embed(self.patch_embedding, x.to(self.dtype))  # [B, F*h*w, dim] (f, h, w) order
        acc = accum_dtype(self.dtype)
        e = self.time_embedding(sinusoidal_embedding(t.to(acc), cfg.freq_dim).to(self.dtype)).to(acc)  # [B, F, dim]
        e0 = self.time_projection(e.to(self.dtype)).to(acc).unflatten(-1, (6, cfg.dim))  # [B, F, 6, dim]
        cos, sin = self.rope.cos_sin(frame_offset, f // pt, acc, x.device)

        new_states, keys, values = {}, {}, {}
        for i, blk in enumerate(self.blocks):
            if blk.hybrid:
                tokens, new = blk(tokens, e0, cos, sin, context_kv[i], state=states[i], write=write)
                if write:
                    new_states[i] = new
            else:
                tokens, (k, v) = blk(tokens, e0, cos, sin, context_kv[i], past_kv=past_kv[i], past_tokens=past_tokens)
                if write and kv_out is not None and i in kv_out:
                    k, v = _write_block_kv(kv_out[i], k, v, past_tokens)
                if write:
                    keys[i], values[i] = k, v
        out = self.head(tokens, e)  # [B, L, (pt ph pw c)]
        c = cfg.out_channels
        out = out.view(b, f // pt, hh // ph, ww // pw, pt, ph, pw, c)
        velocity = torch.einsum("bfhwpqrc->bcfphqwr", out).reshape(b, c, f, hh, ww)
        return StepOutput(velocity, new_states, keys, values)
