"""Parameter count of the wan2.1-t2v-1.3b preset, from the architecture (docs/arl2.md §1, §2, §7), on ``meta``.

Three ways to hold the ARL2 parameters are counted (``pytest -s`` prints them):
* upstream (ARL2 checkpoints): gates, phi maps, memory-path LoRA and FFN LoRA factors (rank 16);
* ours: the same with the FFN LoRA merged into ``ffn.0``/``ffn.2`` (the memory-path LoRA stays factors);
* fully merged memory path: separate dim x dim ``q_mem``/``k_mem``/``v_mem`` projections instead of factors.
"""

from __future__ import annotations

import math

import torch

from arl2rt.model.checkpoint import ARL2_PARAMS
from arl2rt.model.config import PRESETS
from arl2rt.model.dit import CausalDiT

CFG = PRESETS["wan2.1-t2v-1.3b"]


def _linear(fan_in: int, fan_out: int, bias: bool = True) -> int:
    return fan_in * fan_out + (fan_out if bias else 0)


def _wan_base() -> int:
    d, f, patch = CFG.dim, CFG.ffn_dim, math.prod(CFG.patch_size)
    attn = 4 * _linear(d, d) + 2 * d  # q, k, v, o + RMSNorm on q and k
    block = 2 * attn + 2 * d + _linear(d, f) + _linear(f, d) + 6 * d  # self, cross, norm3 (affine), FFN, modulation
    return (
        _linear(CFG.in_channels * patch, d)  # patch embedding (Conv3d)
        + _linear(CFG.text_dim, d) + _linear(d, d)  # text MLP
        + _linear(CFG.freq_dim, d) + _linear(d, d)  # time MLP
        + _linear(d, 6 * d)  # time projection
        + CFG.num_layers * block
        + _linear(d, CFG.out_channels * patch) + 2 * d  # head + its modulation
    )  # fmt: skip


def _arl2_per_layer() -> dict[str, int]:
    d, h, r, f = CFG.dim, CFG.num_heads, CFG.lora_rank, CFG.ffn_dim
    return {
        "gates": 3 * _linear(d, h, bias=False) + 2 * h,  # a/b/gate projections, A_log, dt_bias
        "phi": 3 * d * CFG.head_dim,  # one D x D map per head for q, k, v
        "gdn_lora": 3 * (d * r + r * d),
        "ffn_lora": (d * r + r * f) + (f * r + r * d),
        "mem_proj": 3 * _linear(d, d),
    }


def test_wan_1_3b_parameter_count():
    with torch.device("meta"):
        model = CausalDiT(CFG)
    arl2_names = tuple(f"self_attn.{name}" for name in ARL2_PARAMS)
    counted = {"base": 0, "arl2": 0}
    for name, p in model.named_parameters():
        counted["arl2" if name.endswith(arl2_names) else "base"] += p.numel()

    per = _arl2_per_layer()
    n = len(CFG.hybrid_layers)
    base = _wan_base()
    ours = n * (per["gates"] + per["phi"] + per["gdn_lora"])
    upstream = ours + n * per["ffn_lora"]
    merged_mem = n * (per["gates"] + per["phi"] + per["mem_proj"])
    print(
        f"\nwan2.1-t2v-1.3b, {n} hybrid layers: Wan base {base:,}; ARL2 upstream form {upstream:,} "
        f"(total {base + upstream:,}); ours, FFN LoRA merged {ours:,} (total {base + ours:,}); "
        f"fully merged q/k/v_mem {merged_mem:,} (total {base + merged_mem:,})"
    )
    assert counted == {"base": base, "arl2": ours}
    # the numbers themselves, so that a formula slip shows: ~1.42 B base, ~24.8 M ARL2 as published (~1.75 %)
    assert base == 1_418_996_800
    assert upstream == 24_826_384 and ours == 17_437_200 and merged_mem == 170_008_080
