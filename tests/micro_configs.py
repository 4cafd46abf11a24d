"""The smallest models with both layer kinds, shared by tests that export, stream or resume (a block costs ms)."""

from __future__ import annotations

from arl2rt.model.config import ModelConfig

_BASE = dict(
    dim=32,
    ffn_dim=64,
    num_layers=2,
    num_heads=2,
    in_channels=4,
    out_channels=4,
    latent_height=4,
    latent_width=4,
    text_dim=16,
    text_len=4,
    hybrid_layers=(0,),
    frames_per_block=1,
    lora_rank=4,
    lora_alpha=8.0,
)


def micro_config(name: str, **overrides) -> ModelConfig:
    """Layer 0 hybrid, layer 1 softmax; dims 32, 2 heads, 4x4 latents, one frame per block unless overridden."""
    return ModelConfig(name=name, **{**_BASE, **overrides})


def micro_rgb_config(name: str) -> ModelConfig:
    """A pixel-space (RGB) micro model whose softmax layer has a rolling window with one sink frame."""
    return micro_config(
        name,
        in_channels=3,
        out_channels=3,
        latent_height=8,
        latent_width=8,
        frames_per_block=2,
        timesteps=(1000.0, 500.0),
        attn_window_frames=6,
        sink_frames=1,
    )
