"""A tiny Wan2.1-shaped VAE config (Wan's structure, widths 8..32, 4 latent channels) and seeded random weights."""

from __future__ import annotations

import torch

from arl2rt.model.vae.config import VaeConfig
from arl2rt.model.vae.decoder import WanVaeDecoder

TINY = VaeConfig(
    name="vae-tiny",
    dim=8,
    z_dim=4,
    latents_mean=(-0.7571, 0.1075, 1.5508, -0.2921),
    latents_std=(2.8184, 1.2196, 2.0743, 1.9160),
)
LATENT_HW = (4, 6)  # frames of 32 x 48 pixels


def random_latents(frames: int, *, batch: int = 1, seed: int = 0, hw: tuple[int, int] = LATENT_HW) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, TINY.z_dim, frames, *hw, generator=g)


def randomise_norms(state: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """RMS-norm weights start at ones, which would hide a swapped norm in a key map: give them random values."""
    g = torch.Generator().manual_seed(seed)

    def is_norm(key: str) -> bool:
        return key.endswith(".gamma") or key.rsplit(".", 2)[-2].startswith("norm")

    return {k: 1.0 + 0.3 * torch.randn(v.shape, generator=g) if is_norm(k) else v for k, v in state.items()}


def random_decoder(seed: int = 0) -> WanVaeDecoder:
    torch.manual_seed(seed)
    decoder = WanVaeDecoder(TINY)
    decoder.load_state_dict(randomise_norms(decoder.state_dict(), seed + 1))
    return decoder.eval().requires_grad_(False)


def peak_relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def stream_with_frames(backend, blocks: int, context, seed: int = 4) -> tuple[list, list]:
    """A fresh stream of ``blocks`` on ``backend``: each block's latents and the video its decode made."""
    from arl2rt.runtime.streamer import Streamer

    s = Streamer(backend, seed=seed)
    s.start(context)
    latents, frames = [], []
    for x0 in s.stream(blocks):
        latents.append(x0)
        frames.append(s.last_frames)
    return latents, frames
