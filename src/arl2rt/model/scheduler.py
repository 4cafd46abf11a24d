"""Flow-matching sampler of the AR loop: shifted sigmas, the block's timesteps, x0 and re-noising (docs/arl2.md §4)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.model.config import ModelConfig

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(sigma: float, shift: float) -> float:
    return shift * sigma / (1 + (shift - 1) * sigma)


@dataclass(frozen=True)
class FlowMatchScheduler:
    """Timesteps ``t`` (0..1000) of one block's denoising passes; ``sigma = t / 1000``.

    With ``warp`` the configured list indexes the shifted 1000-step grid as Causal Forcing does: 1000/750/500/250
    with shift 5 become 1000, 937.5, 833.33, 625.
    """

    timesteps: tuple[float, ...]
    sampler: str = "renoise"

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> FlowMatchScheduler:
        steps = cfg.timesteps
        if not steps or any(not 0 < s <= NUM_TRAIN_TIMESTEPS for s in steps):
            raise Arl2rtError(f"config {cfg.name}: timesteps must be in (0, 1000], got {list(steps)}")
        if cfg.warp_timesteps:
            # raw sigma_i = 1 - i/1000 (i = 0..999), shifted; the list entry s picks index 1000 - s
            steps = tuple(
                NUM_TRAIN_TIMESTEPS
                * shift_sigma(1 - (NUM_TRAIN_TIMESTEPS - int(s)) / NUM_TRAIN_TIMESTEPS, cfg.scheduler_shift)
                for s in steps
            )
        return cls(tuple(steps), cfg.sampler)

    @property
    def sigmas(self) -> tuple[float, ...]:
        return tuple(t / NUM_TRAIN_TIMESTEPS for t in self.timesteps)

    @staticmethod
    def x0(x: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
        """Denoised estimate from a velocity ``v ≈ ε − x0``: ``x0 = x − σ v``."""
        return x - sigma * velocity

    @staticmethod
    def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """``x_σ = (1 − σ) x0 + σ ε``."""
        return (1 - sigma) * x0 + sigma * noise

    def next_latents(
        self, x: torch.Tensor, velocity: torch.Tensor, i: int, fresh_noise: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        """Latents of pass ``i + 1`` from pass ``i``'s input and velocity.

        ``renoise``: ``x0`` re-noised to ``sigma_{i+1}`` with ``fresh_noise()``; ``euler``: the flow ODE step
        ``x + (sigma_{i+1} - sigma_i) v`` (``x0`` re-noised with the noise the velocity implies), drawing no noise.
        """
        s, s_next = self.sigmas[i], self.sigmas[i + 1]
        if self.sampler == "euler":
            return x + (s_next - s) * velocity
        return self.add_noise(self.x0(x, velocity, s), fresh_noise(), s_next)
