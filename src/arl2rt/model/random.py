"""Seeded random weights and text: a config without a checkpoint still runs (smoke tests, benchmarks, parity)."""

from __future__ import annotations

import torch

from arl2rt.model.config import ModelConfig
from arl2rt.model.dit import CausalDiT


def random_model(cfg: ModelConfig, seed: int = 0) -> CausalDiT:
    """A model with reproducible random weights; the global RNG is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return CausalDiT(cfg)


def random_context(cfg: ModelConfig, seed: int, batch: int = 1) -> torch.Tensor:
    """Reproducible random text embeddings ``[batch, text_len, text_dim]`` (float32)."""
    return torch.randn(batch, cfg.text_len, cfg.text_dim, generator=torch.Generator().manual_seed(seed))
