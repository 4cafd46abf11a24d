"""Self-attention of the two layer kinds (softmax over a KV cache; ARL2 hybrid) and text cross-attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arl2rt.model.fusion import fused
from arl2rt.model.layers import (
    HeadwiseLinear,
    RMSNorm,
    accum_dtype,
    attention,
    attention_with_padded_past,
    attention_with_past,
    rms_norm_rope,
    rope_l2norm,
)
from arl2rt.plugins.common import kernels_support
from arl2rt.plugins.gdn import read
from arl2rt.plugins.gdn.naive import naive_block_read
from arl2rt.plugins.gdn.op import gdn_state_update


def memory_read(q: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """The block read: the Triton kernel on CUDA (plugins/gdn/read.py), the reference on a CPU and while tracing."""
    if q.is_cuda and not torch.compiler.is_compiling():
        if kernels_support(q.shape[-1], state.shape[-1], q.dtype):  # Triton is imported on the first launch
            return read.block_read(q, state)
    return naive_block_read(q, state)


@fused
def gated_sum(o_intra: torch.Tensor, gate_logits: torch.Tensor, o_inter: torch.Tensor) -> torch.Tensor:
    """The hybrid output before ``o``: intra-block softmax + sigmoid head-wise gate x memory read."""
    return o_intra + torch.sigmoid(gate_logits)[..., None] * o_inter


class _QKV(nn.Module):
    """Wan's shared projections: q, k, v, o with biases and RMSNorm on q and k over the full width."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim))

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        q_proj, k_proj = self.q(x), self.k(x)
        return *self.rope_qk(q_proj, k_proj, cos, sin), self.heads(self.v(x))

    def rope_qk(self, q_proj, k_proj, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
        """RMSNorm'd, RoPE'd q and k ``[B, L, H, D]`` of the softmax attention from their projections."""
        q = rms_norm_rope(q_proj, self.norm_q.weight, self.norm_q.eps, cos, sin, self.num_heads)
        k = rms_norm_rope(k_proj, self.norm_k.weight, self.norm_k.eps, cos, sin, self.num_heads)
        return q, k


class SoftmaxSelfAttention(_QKV):
    """Block-causal softmax attention: the block's queries see [cached past K/V ‖ this block's K/V].

    Returns the output and this block's RoPE'd K and V (the runtime keeps those of the clean pass only). With
    ``past_tokens`` (int64 device tensor ``[1]``) the past K/V are a cache's whole buffers, valid up to that length.
    """

    def forward(self, x, cos, sin, past_key: torch.Tensor, past_value: torch.Tensor, past_tokens=None):
        q, k, v = self.qkv(x, cos, sin)
        if past_tokens is None:
            out = attention_with_past(q, past_key, past_value, k, v)
        else:
            out = attention_with_padded_past(q, past_key, past_value, past_tokens, k, v)
        return self.o(out.flatten(2)), k, v


class HybridSelfAttention(_QKV):
    """ARL2 hybrid attention (docs/arl2.md §2): intra-block softmax + block-level read of a Gated DeltaNet state.

    The memory path shares the q/k/v projections with the softmax branch and adds a rank-r LoRA delta
    (``W x + b + scale * x A B``), kept unmerged with upstream's names (``lora_q_A [dim, r]``, ``lora_q_B [r, dim]``):
    reusing ``W x`` costs two skinny GEMMs instead of a second dim x dim projection per pass.
    """

    def __init__(self, dim: int, num_heads: int, eps: float, lora_rank: int = 16, lora_scale: float = 2.0) -> None:
        super().__init__(dim, num_heads, eps)
        self.lora_scale = lora_scale
        for name in ("q", "k", "v"):
            setattr(self, f"lora_{name}_A", nn.Parameter(torch.randn(dim, lora_rank) / dim**0.5))
            setattr(self, f"lora_{name}_B", nn.Parameter(torch.zeros(lora_rank, dim)))
        self.phi_q, self.phi_k, self.phi_v = (HeadwiseLinear(num_heads, self.head_dim) for _ in range(3))
        self.a_proj, self.b_proj, self.gate_proj = (nn.Linear(dim, num_heads, bias=False) for _ in range(3))
        self.A_log = nn.Parameter(torch.log(torch.empty(num_heads).uniform_(1.0, 16.0)))
        # dt_bias such that softplus(dt_bias) spans [1e-3, 1e-1], as GDN initialises it
        dt = torch.exp(torch.empty(num_heads).uniform_(-6.9, -2.3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))

    def _lora(self, name: str, x: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        a, b = getattr(self, f"lora_{name}_A"), getattr(self, f"lora_{name}_B")
        return projected + self.lora_scale * ((x @ a) @ b)

    def memory_query(self, x, cos, sin, q_proj: torch.Tensor | None = None) -> torch.Tensor:
        """q̂ = L2norm(RoPE(φ_q(RMSNorm_q(W_q x + b_q + s x A_q B_q)))); pass ``q_proj = W_q x + b_q`` to reuse it."""
        q_proj = self.q(x) if q_proj is None else q_proj
        return rope_l2norm(self.phi_q(self.heads(self.norm_q(self._lora("q", x, q_proj)))), cos, sin)

    def write_inputs(self, x, k_proj, v_proj, cos, sin):
        """k̂, v̂, g (log decay) and β of the GDN write; g and β in fp32 (float64 for a float64 model).

        ``k_proj``/``v_proj`` are the shared projections ``W_k x + b_k`` and ``W_v x + b_v``.
        """
        k = rope_l2norm(self.phi_k(self.heads(self.norm_k(self._lora("k", x, k_proj)))), cos, sin)
        v = self.phi_v(self.heads(self._lora("v", x, v_proj)))
        xf = x.to(accum_dtype(x.dtype))
        a = F.linear(xf, self.a_proj.weight.to(xf.dtype)) + self.dt_bias.to(xf.dtype)
        g = -self.A_log.to(xf.dtype).exp() * F.softplus(a)
        beta = 2.0 * torch.sigmoid(F.linear(xf, self.b_proj.weight.to(xf.dtype)))
        return k, v, g, beta

    def forward(self, x, cos, sin, state: torch.Tensor, write: bool):
        """x ``[B, L, dim]``, state ``[B, H, D, D]`` (pre-update; zeros before the first block).

        Returns the output and, when ``write``, the new state (else None). Every token reads the same ``state``.
        """
        q_proj, k_proj, v_proj = self.q(x), self.k(x), self.v(x)
        q, k = self.rope_qk(q_proj, k_proj, cos, sin)
        o_intra = attention(q, k, self.heads(v_proj))
        o_inter = memory_read(self.memory_query(x, cos, sin, q_proj), state)
        out = self.o(gated_sum(o_intra, self.gate_proj(x), o_inter).flatten(2))
        new_state = None
        if write:
            new_state = gdn_state_update(*self.write_inputs(x, k_proj, v_proj, cos, sin), state)
        return out, new_state


class CrossAttention(_QKV):
    """Text cross-attention; K/V of the text are computed once per prompt by :meth:`context_kv`."""

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.norm_k(self.k(context))), self.heads(self.v(context))

    def forward(self, x, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        q = self.heads(self.norm_q(self.q(x)))
        return self.o(attention(q, key, value).flatten(2))
